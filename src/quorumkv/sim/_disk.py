"""The simulator's disks: a model one (``MemDisk``) and the real storage (``StorageDisk``).

Theory of operation
-------------------
Writes (a snapshot, log entries, a hard state) land in a *pending* list, in order. ``sync``
folds the pending list into the *durable* state, as an fsync would. ``crash`` throws the
pending list away: a crash loses what was written but not synced, and nothing else.
``load`` returns what a restarting node would read back.

The planted-bug switch ``forget_vote`` writes every hard state with no vote, the classic
bug that lets a node vote twice in one term after a restart; tests use it to show that
the simulator's checks catch it. It is off unless a test turns it on.

``MemDisk`` is the executable specification: the scenario scripts use it, and the
storage tests check ``quorumkv.storage`` against it. The simulator runs ``StorageDisk``,
the real WAL and snapshot store over an in-memory file system that loses unsynced bytes.

This module never applies entries to a state machine; it only stores Raft's state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from quorumkv.consensus import NONE, Entry, GroupId, HardState, Index, RaftState, Ready, Snapshot
from quorumkv.storage import MemFileSystem, NodeStorage


@dataclass(slots=True)
class DiskState:
    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def offset(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0


class MemDisk:
    def __init__(self, initial: RaftState | None = None, *, forget_vote: bool = False) -> None:
        self.durable = DiskState()
        if initial is not None:
            self.durable = DiskState(initial.hard_state, initial.snapshot, list(initial.entries))
        self.pending: list[tuple[str, object]] = []
        self.forget_vote = forget_vote
        self.syncs = 0

    def write_ready(self, rd: Ready) -> None:
        """Queue a Ready's snapshot, entries and hard state, in the contract's order."""
        if rd.snapshot is not None:
            self.pending.append(("install", rd.snapshot))
        if rd.entries:
            self.pending.append(("entries", rd.entries))
        if rd.hard_state is not None:
            hs = rd.hard_state
            if self.forget_vote:
                hs = HardState(hs.term, NONE, hs.commit)
            self.pending.append(("hard_state", hs))

    def save_snapshot(self, snap: Snapshot) -> None:
        """A compaction snapshot, written and synced at once (with what came before)."""
        self.pending.append(("compact", snap))
        self.sync()

    def sync(self) -> None:
        d = self.durable
        for kind, item in self.pending:
            if kind == "entries":
                assert isinstance(item, tuple)
                first = item[0].index
                del d.entries[max(0, first - d.offset() - 1) :]
                d.entries.extend(e for e in item if e.index > d.offset())
            elif kind == "hard_state":
                assert isinstance(item, HardState)
                d.hard_state = item
            elif kind == "install":
                assert isinstance(item, Snapshot)
                d.snapshot = item
                d.entries = []
            elif kind == "compact":
                assert isinstance(item, Snapshot)
                d.entries = [e for e in d.entries if e.index > item.meta.index]
                d.snapshot = item
        self.pending.clear()
        self.syncs += 1

    def crash(self) -> int:
        """Lose everything not synced; returns how many writes were lost."""
        lost = len(self.pending)
        self.pending.clear()
        return lost

    def load(self) -> RaftState:
        d = self.durable
        applied = d.snapshot.meta.index if d.snapshot else Index(0)
        return RaftState(d.hard_state, d.snapshot, tuple(d.entries), applied)


_GROUP = GroupId(1)


class StorageDisk:
    """The same interface as ``MemDisk``, backed by the real ``quorumkv.storage``: a
    ``NodeStorage`` (WAL and snapshot store) over a crash-injecting ``MemFileSystem``.

    Each call names its Raft group (group 1 unless told): the sharded simulator keeps
    every group of a node in this one WAL, as a real node does, so one ``sync`` makes
    all of them durable and one crash loses all of their unsynced writes.

    Writes are flushed to the in-memory files when taken and fsynced by ``sync``; a crash
    keeps the synced bytes and, drawn from ``rng``, may keep a torn prefix of the rest,
    as a real disk may. Every restart reopens the storage, so simulated crashes run the
    real recovery code: replaying segments, cutting torn tails, picking the snapshot.
    """

    def __init__(
        self, initial: RaftState, rng: random.Random, *, forget_vote: bool = False
    ) -> None:
        self.fs = MemFileSystem()
        self.rng = rng
        self.forget_vote = forget_vote
        self.storage: NodeStorage | None = NodeStorage(self.fs, "/node")
        if initial != RaftState():
            self.storage.bootstrap(_GROUP, initial)
        self.unsynced = 0
        self.syncs = 0

    def _open(self) -> NodeStorage:
        if self.storage is None:
            self.storage = NodeStorage(self.fs, "/node")  # recovery runs here
        return self.storage

    def write_ready(self, rd: Ready, group: GroupId = _GROUP) -> None:
        if self.forget_vote and rd.hard_state is not None:
            hs = rd.hard_state
            rd = replace(rd, hard_state=HardState(hs.term, NONE, hs.commit))
        storage = self._open()
        storage.write_ready(group, rd)
        storage.flush()
        self.unsynced += 1

    def save_snapshot(self, snap: Snapshot, group: GroupId = _GROUP) -> None:
        self._open().save_snapshot(group, snap)
        self.unsynced = 0

    def bootstrap(self, group: GroupId, state: RaftState) -> None:
        """A new group's starting state (a split's right half), durably, with everything
        written before it."""
        self._open().bootstrap(group, state)
        self.unsynced = 0

    def reset(self, group: GroupId, hs: HardState) -> None:
        """Forget a group's log and snapshots (its replica here was deleted), durably,
        keeping the term and vote of ``hs``."""
        self._open().reset(group, hs)
        self.unsynced = 0

    def groups(self) -> list[GroupId]:
        return self._open().groups()

    def sync(self) -> None:
        self._open().sync()
        self.unsynced = 0
        self.syncs += 1

    def crash(self) -> int:
        """Lose (most of) what was not synced; returns how many writes were at risk."""
        at_risk = self.unsynced
        self.fs.crash(self.rng)
        self.storage = None
        self.unsynced = 0
        return at_risk

    def load(self, group: GroupId = _GROUP) -> RaftState:
        return self._open().load(group)
