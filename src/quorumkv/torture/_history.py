"""The client history of a torture run: every invocation and completion, with outcome.

Theory of operation
-------------------
A ``Recorder`` hands out an operation id when a client invokes an operation (time
taken *before* the request leaves) and closes it when the call returns (time taken
*after* the answer or error arrived), so every recorded interval contains the real one.
The outcome of a call is one of:

- ``ok``: the cluster answered; a CAS whose compare failed is ok with output False;
- ``fail``: the call certainly did nothing. For a write that is only an error raised
  before anything was sent or applied (a request over a limit, a malformed one); for a
  read, any error (a failed read constrains nothing and is dropped);
- ``unknown``: a write whose call ended in any other error, or never ended. A
  ``NotLeaderError`` or ``UnavailableError`` at the deadline only says the *last*
  attempt did nothing; an earlier one may have been applied, and may even be applied
  after the call gave up. So it is checked as pending forever (``complete=None``).

``Record.operation`` turns a record into the checker's ``Operation`` by those rules, and
``read_history``/``write_history`` keep a history as JSON lines (bytes as text: UTF-8,
with undecodable bytes escaped as lone surrogates so they round-trip).

The recorder is thread-safe (one lock, held for a dict operation); it never does I/O.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from quorumkv.errors import CompareFailedError, KVLimitError, MalformedRequestError
from quorumkv.sim._linearizability import Operation, OpKind

FINAL_CLIENT = -1
"""The client id of the final reads made after every fault healed."""


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Record:
    """One operation of the history. ``complete`` is when the call returned (None: it
    never did); ``output`` is a GET's value (None: absent) or a CAS's swapped flag."""

    id: int
    client: int
    kind: OpKind
    key: bytes
    value: bytes | None
    expected: bytes | None
    invoke: float
    complete: float | None
    outcome: Outcome
    output: bytes | bool | None = None
    error: str = ""

    @property
    def is_write(self) -> bool:
        return self.kind is not OpKind.GET

    def operation(self) -> Operation | None:
        """The checker's view: None for operations that constrain nothing (failed
        ones), ``complete=None`` for unknown ones."""
        if self.outcome is Outcome.FAIL:
            return None
        if self.outcome is Outcome.UNKNOWN:
            if not self.is_write:
                return None
            return Operation(
                self.client, self.key, self.kind, self.value, self.expected, None, self.invoke
            )
        return Operation(
            self.client,
            self.key,
            self.kind,
            self.value,
            self.expected,
            self.output,
            self.invoke,
            self.complete,
        )

    def to_json(self) -> dict[str, Any]:
        out = self.output
        return {
            "id": self.id,
            "client": self.client,
            "kind": self.kind.value,
            "key": _text(self.key),
            "value": _text(self.value),
            "expected": _text(self.expected),
            "invoke": round(self.invoke, 6),
            "complete": None if self.complete is None else round(self.complete, 6),
            "outcome": self.outcome.value,
            "output": out if isinstance(out, bool) else _text(out),
            "error": self.error,
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Record:
        out = doc.get("output")
        return Record(
            id=int(doc["id"]),
            client=int(doc["client"]),
            kind=OpKind(doc["kind"]),
            key=_bytes(doc["key"]) or b"",
            value=_bytes(doc.get("value")),
            expected=_bytes(doc.get("expected")),
            invoke=float(doc["invoke"]),
            complete=None if doc.get("complete") is None else float(doc["complete"]),
            outcome=Outcome(doc["outcome"]),
            output=out if isinstance(out, bool) else _bytes(out),
            error=str(doc.get("error", "")),
        )


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "surrogateescape")


def _bytes(text: object) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"expected a string or null in a history record, not {text!r}")
    return text.encode("utf-8", "surrogateescape")


def classify(kind: OpKind, error: BaseException) -> tuple[Outcome, bytes | bool | None]:
    """The outcome (and output) of a call of ``kind`` that raised ``error``."""
    if kind is OpKind.CAS and isinstance(error, CompareFailedError):
        return Outcome.OK, False
    if kind is OpKind.GET:
        return Outcome.FAIL, None
    if isinstance(error, KVLimitError | MalformedRequestError):
        return Outcome.FAIL, None  # refused before anything could be applied
    return Outcome.UNKNOWN, None


class Recorder:
    """Records invocations and completions on one clock (seconds, monotonic)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0
        self._open: dict[int, Record] = {}
        self._done: list[Record] = []
        self._counts: dict[Outcome, int] = dict.fromkeys(Outcome, 0)

    def invoke(
        self,
        client: int,
        kind: OpKind,
        key: bytes,
        value: bytes | None = None,
        expected: bytes | None = None,
    ) -> int:
        """Note that ``client`` starts an operation; returns its id."""
        now = self._clock()
        with self._lock:
            op_id = self._next
            self._next += 1
            self._open[op_id] = Record(
                op_id, client, kind, key, value, expected, now, None, Outcome.UNKNOWN
            )
        return op_id

    def ok(self, op_id: int, output: bytes | bool | None = None) -> Record:
        """The call returned an answer (``output``: a GET's value, a CAS's flag)."""
        return self._close(op_id, Outcome.OK, output, "")

    def error(self, op_id: int, error: BaseException) -> Record:
        """The call raised ``error``; its outcome follows ``classify``."""
        with self._lock:
            kind = self._open[op_id].kind
        outcome, output = classify(kind, error)
        text = "" if outcome is Outcome.OK else f"{type(error).__name__}: {error}"
        return self._close(op_id, outcome, output, text[:300])

    def _close(
        self, op_id: int, outcome: Outcome, output: bytes | bool | None, error: str
    ) -> Record:
        now = self._clock()
        with self._lock:
            rec = replace(
                self._open.pop(op_id), complete=now, outcome=outcome, output=output, error=error
            )
            self._done.append(rec)
            self._counts[outcome] += 1
        return rec

    def counts(self) -> dict[Outcome, int]:
        """Completed operations by outcome, plus those still open as UNKNOWN."""
        with self._lock:
            out = dict(self._counts)
            out[Outcome.UNKNOWN] += len(self._open)
        return out

    def records(self) -> list[Record]:
        """Every operation by id; those still open are UNKNOWN with no completion."""
        with self._lock:
            out = [*self._done, *self._open.values()]
        return sorted(out, key=lambda r: r.id)


def operations(records: Iterable[Record]) -> list[Operation]:
    """The checker's history: records that constrain something, as ``Operation``s."""
    return [op for op in (r.operation() for r in records) if op is not None]


def write_history(path: Path, records: Iterable[Record]) -> int:
    """Write ``records`` as JSON lines; returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), separators=(",", ":")) + "\n")
            n += 1
    return n


def read_history(path: Path) -> list[Record]:
    """The records of a history written by ``write_history``."""
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(Record.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not a history record: {e}") from None
    return out
