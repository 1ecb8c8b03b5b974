"""NodeStorage over a crashing MemFileSystem against the simulator's MemDisk as the model.

After any sequence of write_ready / flush / sync / save_snapshot / crash, every group's
``load()`` must equal what MemDisk (one per group) returns. A crash without torn writes
loses everything unsynced, exactly as MemDisk's does. A crash that tears the WAL's
written-but-unsynced tail may keep whole records of it, in order, and never part of one:
the state must then equal MemDisk's after syncing some prefix of the pending writes.
"""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from storage_helpers import ents, hs, ready, snap

from quorumkv.consensus import GroupId, RaftState
from quorumkv.sim._disk import MemDisk
from quorumkv.storage import MemFileSystem, NodeStorage

GROUPS = [GroupId(g) for g in (1, 2, 3)]
groups = st.sampled_from(GROUPS)


class StorageVersusMemDisk(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fs = MemFileSystem()
        self.storage = NodeStorage(self.fs, "/node", segment_bytes=128)
        self.disks = {g: MemDisk() for g in GROUPS}
        self.pending: list[tuple[GroupId, str, object]] = []  # every group's, in order
        self.flushed = 0  # how many of ``pending`` the WAL wrote (unsynced) to its file
        self.last = dict.fromkeys(GROUPS, 0)  # last index written, or snapshot index
        self.snap = dict.fromkeys(GROUPS, 0)

    def _queue(self, group: GroupId, kind: str, item: object) -> None:
        self.disks[group].pending.append((kind, item))
        self.pending.append((group, kind, item))

    @rule(
        group=groups,
        back=st.integers(0, 3),
        count=st.integers(0, 3),
        term=st.integers(1, 3),
        with_hs=st.booleans(),
        install=st.none() | st.integers(1, 4),
    )
    def write_ready(
        self, group: GroupId, back: int, count: int, term: int, with_hs: bool, install: int | None
    ) -> None:
        snapshot = None
        if install is not None:
            snapshot = snap(self.last[group] + install)
            self.last[group] = self.snap[group] = snapshot.meta.index
            first = self.last[group] + 1
        else:
            first = max(self.snap[group] + 1, self.last[group] + 1 - back)
        entries = ents(first, first + count - 1, term=term)
        hard = hs(term, 1, first - 1) if with_hs else None
        rd = ready(entries, hard, snapshot)
        self.storage.write_ready(group, rd)
        if snapshot is not None:
            self._queue(group, "install", snapshot)
        if entries:
            self._queue(group, "entries", entries)
            self.last[group] = entries[-1].index
        if hard is not None:
            self._queue(group, "hard_state", hard)

    @rule()
    def flush(self) -> None:
        self.storage.flush()
        self.flushed = len(self.pending)

    @rule()
    def sync(self) -> None:
        self.storage.sync()
        for disk in self.disks.values():
            disk.sync()
        self.pending.clear()
        self.flushed = 0

    @rule(group=groups, back=st.integers(0, 5))
    def save_snapshot(self, group: GroupId, back: int) -> None:
        if self.last[group] == 0:
            return
        index = max(self.snap[group], self.last[group] - back, 1)
        s = snap(index)
        self.storage.save_snapshot(group, s)
        self.sync()  # NodeStorage syncs every group's pending writes with it
        self.disks[group].save_snapshot(s)
        self.snap[group] = index

    @rule(seed=st.integers(0, 2**32))
    def flush_then_torn_crash(self, seed: int) -> None:
        self.flush()
        self.crash(torn=True, seed=seed)

    @rule(torn=st.booleans(), seed=st.integers(0, 2**32))
    def crash(self, torn: bool, seed: int) -> None:
        self.storage.close()
        self.fs.crash(random.Random(seed) if torn else None)
        self.storage = NodeStorage(self.fs, "/node", segment_bytes=128)
        got = {g: self.storage.load(g) for g in GROUPS}
        for keep in range(self.flushed + 1):
            model = self._model_with(self.pending[:keep])
            if all(got[g] == model[g] for g in GROUPS):
                break
        else:
            raise AssertionError(f"recovered state matches no prefix of {self.flushed} writes")
        assert torn or keep == 0
        self.disks = {g: MemDisk(model[g]) for g in GROUPS}
        self.pending.clear()
        self.flushed = 0
        for g in GROUPS:
            state = model[g]
            self.snap[g] = state.applied
            self.last[g] = state.entries[-1].index if state.entries else state.applied

    def _model_with(self, kept: list[tuple[GroupId, str, object]]) -> dict[GroupId, RaftState]:
        disks = {g: MemDisk(self.disks[g].load()) for g in GROUPS}
        for group, kind, item in kept:
            disks[group].pending.append((kind, item))
        for disk in disks.values():
            disk.sync()
        return {g: d.load() for g, d in disks.items()}

    @invariant()
    def loads_match_the_model(self) -> None:
        for g in GROUPS:
            assert self.storage.load(g) == self.disks[g].load(), g


StorageVersusMemDisk.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, derandomize=True
)
TestStorageVersusMemDisk = StorageVersusMemDisk.TestCase
