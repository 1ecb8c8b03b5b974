"""The simulator's replicated state machine: a tiny key-value register with sessions.

Theory of operation
-------------------
Commands are JSON documents carried in log entries: put, delete and compare-and-set,
each stamped with the client's id and a sequence number. A client has one command
outstanding at a time and retries it with the same number, so the state machine keeps,
per client, the last number applied and its result: a retry that arrives after the
original was applied gets the stored result and changes nothing (thesis 6.3). Without
this, a retried put could take effect twice and the history would not be linearizable.

Reads do not go through the log; the simulator serves them from ``get`` after a
ReadIndex round. Snapshots are the whole state as canonical JSON.

``RangeKV`` is the same register for one range of a sharded cluster: it knows its
bounds and split version, and ``split_off`` cuts it in two at a key (the sharded
cluster refuses keys a range does not own; this module only answers ``owns``).

The real MVCC state machine lives in ``quorumkv.kv``; this one exists to test Raft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Self

from quorumkv.consensus import Entry, EntryType, Index


@dataclass(frozen=True, slots=True)
class Command:
    client: int
    seq: int
    op: str  # "put" | "delete" | "cas"
    key: str
    value: str | None = None
    expected: str | None = None

    def encode(self) -> bytes:
        doc = [self.client, self.seq, self.op, self.key, self.value, self.expected]
        return json.dumps(doc, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> Command:
        client, seq, op, key, value, expected = json.loads(data)
        return Command(client, seq, op, key, value, expected)


Result = bool | None
"""A CAS answers whether it swapped; put and delete answer None."""


class KVStateMachine:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.sessions: dict[int, tuple[int, Result]] = {}
        self.applied = Index(0)

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def apply(self, entry: Entry) -> tuple[Command, Result] | None:
        """Apply one committed entry; returns the command and its result, if any."""
        if entry.index != self.applied + 1:
            raise AssertionError(f"apply out of order: {entry.index} after {self.applied}")
        self.applied = entry.index
        if entry.type is not EntryType.NORMAL or not entry.data:
            return None
        cmd = Command.decode(entry.data)
        last = self.sessions.get(cmd.client)
        if last is not None and cmd.seq <= last[0]:
            # A duplicate: answer as the original did, if it is the latest.
            return (cmd, last[1]) if cmd.seq == last[0] else None
        result: Result = None
        if cmd.op == "put":
            assert cmd.value is not None
            self.data[cmd.key] = cmd.value
        elif cmd.op == "delete":
            self.data.pop(cmd.key, None)
        elif cmd.op == "cas":
            assert cmd.value is not None
            result = self.data.get(cmd.key) == cmd.expected
            if result:
                self.data[cmd.key] = cmd.value
        else:
            raise AssertionError(f"unknown op {cmd.op!r}")
        self.sessions[cmd.client] = (cmd.seq, result)
        return cmd, result

    def skip(self, index: Index) -> None:
        """Apply entry ``index`` as one that changes nothing here (refused, or applied by
        the driver itself)."""
        if index != self.applied + 1:
            raise AssertionError(f"apply out of order: {index} after {self.applied}")
        self.applied = index

    def _doc(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "data": self.data,
            "sessions": {str(c): list(v) for c, v in self.sessions.items()},
        }

    def _load(self, doc: dict[str, Any]) -> None:
        self.data = dict(doc["data"])
        self.sessions = {int(c): (v[0], v[1]) for c, v in doc["sessions"].items()}

    def snapshot(self) -> bytes:
        return json.dumps(self._doc(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def restore(cls, data: bytes, index: Index) -> Self:
        sm = cls()
        sm.applied = index
        if data:
            doc = json.loads(data)
            if doc["applied"] != index:
                raise AssertionError(f"snapshot data at {doc['applied']}, meta says {index}")
            sm._load(doc)
        return sm


class RangeKV(KVStateMachine):
    """The register of one range ``[start, end)`` (``end == ""``: to the end of the
    keyspace) at split version ``version``; ``range_id`` 0 is a replica still waiting for
    its first snapshot, which owns no key. Snapshots carry the bounds, so a replica
    restored from one past a split knows it was cut."""

    def __init__(self) -> None:
        super().__init__()
        self.range_id = 0
        self.start = ""
        self.end = ""
        self.version = 0

    def owns(self, key: str) -> bool:
        return self.range_id != 0 and self.start <= key and (self.end == "" or key < self.end)

    def split_off(self, key: str, child_id: int) -> RangeKV:
        """Cut at ``key``: this range keeps ``[start, key)``, the returned one (at index
        1, as a new group starts) takes the rest and a copy of the sessions, so a write
        retried across the split is still applied once. Both get ``version + 1``."""
        child = RangeKV()
        child.range_id, child.start, child.end = child_id, key, self.end
        child.version = self.version = self.version + 1
        child.applied = Index(1)
        child.sessions = dict(self.sessions)
        child.data = {k: v for k, v in self.data.items() if k >= key}
        self.data = {k: v for k, v in self.data.items() if k < key}
        self.end = key
        return child

    def _doc(self) -> dict[str, Any]:
        doc = super()._doc()
        doc["range"] = [self.range_id, self.start, self.end, self.version]
        return doc

    def _load(self, doc: dict[str, Any]) -> None:
        super()._load(doc)
        self.range_id, self.start, self.end, self.version = doc["range"]
