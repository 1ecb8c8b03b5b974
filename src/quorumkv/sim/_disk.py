"""An in-memory disk for one node's Raft state, that knows written from fsynced.

Theory of operation
-------------------
Writes (a snapshot, log entries, a hard state) land in a *pending* list, in order. ``sync``
folds the pending list into the *durable* state, as an fsync would. ``crash`` throws the
pending list away: a crash loses what was written but not synced, and nothing else.
``load`` returns what a restarting node would read back.

The planted-bug switch ``forget_vote`` writes every hard state with no vote, the classic
bug that lets a node vote twice in one term after a restart; tests use it to show that
the simulator's checks catch it. It is off unless a test turns it on.

This module never applies entries to a state machine; it only stores Raft's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quorumkv.raft import NONE, Entry, HardState, Index, RaftState, Ready, Snapshot


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
