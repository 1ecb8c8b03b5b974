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

The real MVCC state machine lives in ``quorumkv.kv``; this one exists to test Raft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

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

    def snapshot(self) -> bytes:
        doc = {
            "applied": self.applied,
            "data": self.data,
            "sessions": {str(c): list(v) for c, v in self.sessions.items()},
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def restore(data: bytes, index: Index) -> KVStateMachine:
        sm = KVStateMachine()
        sm.applied = index
        if data:
            doc = json.loads(data)
            if doc["applied"] != index:
                raise AssertionError(f"snapshot data at {doc['applied']}, meta says {index}")
            sm.data = dict(doc["data"])
            sm.sessions = {int(c): (v[0], v[1]) for c, v in doc["sessions"].items()}
        return sm
