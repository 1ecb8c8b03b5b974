"""NodeStorage: the durable Raft storage of one node, for every group on it.

Theory of operation
-------------------
``NodeStorage`` joins the WAL (``<dir>/wal``) and the snapshot store (``<dir>/snap``)
behind the interface of the simulator's ``MemDisk``, with the group named in each call:
``write_ready(group, rd)`` buffers, ``sync()`` makes every group's buffered writes durable
with one fsync, ``save_snapshot(group, snap)`` records a compaction durably, and
``load(group)`` returns what a restarting node loads. Over a ``MemFileSystem`` it is the
fault-injecting in-memory storage; over ``OSFileSystem`` it is the real one.

The one ordering rule: a snapshot's WAL record must never be durable before its data
file is. So the data file is written (fsynced, renamed, directory fsynced) first, at
``write_ready``/``save_snapshot`` time, and its WAL record is buffered after it. The WAL
decides which snapshot is current; files it does not name (older ones, or newer ones
whose WAL record a crash lost) are deleted after a sync and when the storage opens.

What this gives, as MemDisk does: after a crash, ``load`` returns exactly what was synced,
and nothing of what was written after the last sync. A snapshot installed by
``write_ready`` is lost with its batch if the crash comes before ``sync``.

It makes no Raft decision and acknowledges nothing: the driver sends messages only after
``sync`` returns.
"""

from __future__ import annotations

import posixpath

from quorumkv.consensus import GroupId, HardState, Index, RaftState, Ready, Snapshot

from ._fs import FileSystem
from ._snapshots import SnapshotStore
from ._wal import DEFAULT_SEGMENT_BYTES, WAL, SyncStats


class NodeStorage:
    """One node's WAL and snapshots under ``dirpath``; recovers on construction."""

    def __init__(
        self, fs: FileSystem, dirpath: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> None:
        self.fs = fs
        self.dirpath = dirpath
        fs.makedirs(dirpath)
        self.wal = WAL(fs, posixpath.join(dirpath, "wal"), segment_bytes)
        self.snapshots = SnapshotStore(fs, posixpath.join(dirpath, "snap"))
        self._purge: set[GroupId] = set()
        self.syncs = 0
        for group in self.snapshots.groups():
            self.snapshots.purge(group, self.wal.snapshot_meta(group))

    def bootstrap(self, group: GroupId, state: RaftState) -> None:
        """Store a group's starting state (such as ``bootstrap_state(voters)``) durably."""
        self.write_ready(group, Ready(hard_state=state.hard_state, snapshot=state.snapshot))
        self.wal.append_entries(group, state.entries)
        self.sync()

    def write_ready(self, group: GroupId, rd: Ready) -> None:
        """Buffer a Ready's snapshot, entries and hard state, in the contract's order. A
        snapshot's data is made durable now, before its WAL record can be."""
        if rd.snapshot is not None:
            self.snapshots.save(group, rd.snapshot)
            self._purge.add(group)
        self.wal.append_ready(group, rd)

    def flush(self) -> None:
        """Write buffered WAL records without fsync (fault injection: a crash may then
        keep a torn prefix of them)."""
        self.wal.flush()

    def sync(self) -> SyncStats:
        """Make everything buffered, from every group, durable with one fsync."""
        stats = self.wal.sync()
        self.syncs += 1
        for group in sorted(self._purge):
            self.snapshots.purge(group, self.wal.snapshot_meta(group))
        self._purge.clear()
        return stats

    def reset(self, group: GroupId, hs: HardState) -> None:
        """Forget the group's log and snapshots on this node (its replica was deleted),
        durably, keeping the term and vote of ``hs``."""
        self.wal.reset(group, HardState(hs.term, hs.vote, Index(0)))
        self._purge.add(group)
        self.sync()

    def save_snapshot(self, group: GroupId, snap: Snapshot) -> None:
        """A compaction snapshot: its data, durably, then its WAL record, synced with
        everything buffered before it; then old snapshots and dead segments go."""
        self.snapshots.save(group, snap)
        self._purge.add(group)
        self.wal.save_snapshot_meta(group, snap.meta)
        self.sync()
        self.wal.gc()

    def load(self, group: GroupId) -> RaftState:
        """What a restarting node of ``group`` loads: hard state, snapshot (with its
        data), the entries after it, and applied = the snapshot's index."""
        state = self.wal.load(group)
        if state.snapshot is None:
            return state
        snap = self.snapshots.load(group, state.snapshot.meta)
        return RaftState(state.hard_state, snap, state.entries, state.applied)

    def groups(self) -> list[GroupId]:
        return self.wal.groups()

    def close(self) -> None:
        self.wal.close()
