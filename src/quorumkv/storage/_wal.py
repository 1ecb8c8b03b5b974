"""The write-ahead log: one per node, shared by every Raft group on it.

Theory of operation
-------------------
The WAL is a directory of *segments*, ``<seq:016x>.wal``, written strictly in order; only
the last one (the *active* segment) is ever appended to. A segment is a run of records
(see ``_codec``), each ``[group, kind, body]``:

* ``ENTRIES``: log entries of ``group``; they replace every stored entry of the group from
  the first one's index on. Entries at or below the group's snapshot index are dropped.
* ``HARD_STATE``: the group's term, vote and commit index.
* ``INSTALL``: the group installed a snapshot (its metadata); every stored entry is dead.
* ``COMPACT``: the group compacted its log to a snapshot; entries up to it are dead.
* ``RESET``: the group's replica on this node was deleted (its range moved away): its
  snapshot and entries are dead, and only the term and vote it carries stay, which must
  never go back should the group come here again. The next snapshot may have any index.

Writes are buffered (``append_ready``, ``save_snapshot_meta``) and ``sync`` writes the
whole buffer, from every group, with one ``write`` and one fsync: group commit.
(``flush`` writes the buffer without fsync, as an OS may at any time; tests use it to
leave an unsynced, tearable tail for a crash.) Only
after the fsync returns is the buffer folded into the in-memory, durable per-group state
that ``load`` serves, so ``load`` never shows what a crash could still take away. If a
write or fsync fails, what reached the disk is unknown, so the WAL refuses all further
work (``StorageError``); the node must restart and recover.

Rotation: before a batch is written, if the active segment has reached ``segment_bytes``
a new segment is created and its directory fsynced. A batch never spans two segments.

Garbage collection: ``gc`` deletes the oldest segments, in order, while each holds nothing
live: for every group that has records in it, its entries are all at or below the group's
current snapshot index, and its hard-state and snapshot records have later copies in
later segments. Deleting only a prefix keeps recovery simple: replaying what is left
yields the same state, because everything a deleted record could still have influenced
is at or below a snapshot index that a kept record restates. Snapshot indexes must
therefore only grow; a lower one is refused, except after a ``RESET``: every record of
the group before a reset is dead, since the reset restates all that stays. A group
whose latest hard state sits in an old segment pins that segment (an idle group is
never rewritten yet).

Recovery (at construction): replay every segment in order. In the last segment, the first
position that does not hold a valid record is a *torn tail* if no valid record follows
it anywhere in the file: a crash in the middle of an unsynced write. It is cut off (the
file is truncated and fsynced) with a warning naming the file and offset. A checksum
mismatch in the final record is treated the same way, on purpose: with nothing valid after
it, damage to the last record cannot be told from a torn write, and that record was not
necessarily acknowledged. A bad record with valid records after it, or any bad record in
a segment that is not the last (those were fsynced whole before the next was created),
is corruption of data that was durable: ``CorruptWALError`` names the file and offset
and the node must not start.

The WAL makes no Raft decision and acknowledges nothing; it stores what it is given.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any, NoReturn

from quorumkv.consensus import (
    Entry,
    GroupId,
    HardState,
    Index,
    RaftState,
    Ready,
    Snapshot,
    SnapshotMeta,
)

from . import _codec as codec
from ._errors import CorruptWALError, StorageError
from ._fs import AppendFile, FileSystem

log = logging.getLogger("quorumkv.storage.wal")

ENTRIES, HARD_STATE, INSTALL, COMPACT, RESET = 1, 2, 3, 4, 5
_KINDS = (ENTRIES, HARD_STATE, INSTALL, COMPACT, RESET)
SEGMENT_SUFFIX = ".wal"
DEFAULT_SEGMENT_BYTES = 64 << 20


@dataclass(slots=True)
class GroupLog:
    """The durable state of one group, as recovery and every sync leave it."""

    hard_state: HardState = HardState()
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)
    hs_segment: int = 0
    """The segment holding the latest hard-state record (0: none)."""
    snap_segment: int = 0
    reset_segment: int = 0
    """The segment holding the latest reset record: every record before it is dead."""

    def snap_index(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    def apply(self, kind: int, value: Any) -> None:
        if kind == ENTRIES:
            ents: tuple[Entry, ...] = value
            if self.entries:
                cut = min(max(0, ents[0].index - self.entries[0].index), len(self.entries))
                del self.entries[cut:]
            floor = self.snap_index()
            self.entries.extend(e for e in ents if e.index > floor)
        elif kind == HARD_STATE:
            self.hard_state = value
        elif kind == INSTALL:
            self.snapshot = value
            self.entries = []
        elif kind == RESET:
            self.hard_state = value
            self.snapshot = None
            self.entries = []
        else:
            meta: SnapshotMeta = value
            self.entries = [e for e in self.entries if e.index > meta.index]
            self.snapshot = meta


@dataclass(slots=True)
class _Segment:
    seq: int
    path: str
    max_entry: dict[GroupId, int] = field(default_factory=dict)
    hard_states: set[GroupId] = field(default_factory=set)
    snapshots: set[GroupId] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class SyncStats:
    records: int
    bytes: int


def _decode(kind: int, body: Any) -> Any:
    if kind == ENTRIES:
        return tuple(codec.decode_entry(e) for e in body)
    if kind in (HARD_STATE, RESET):
        return codec.decode_hard_state(body)
    return codec.decode_meta(body)


class WAL:
    """One node's write-ahead log over ``fs`` in ``dirpath``; recovers on construction."""

    def __init__(
        self, fs: FileSystem, dirpath: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> None:
        self.fs = fs
        self.dirpath = dirpath
        self.segment_bytes = segment_bytes
        self._groups: dict[GroupId, GroupLog] = {}
        self._segments: list[_Segment] = []
        self._buffer: list[tuple[GroupId, int, Any, bytes]] = []
        self._unsynced: list[tuple[GroupId, int, Any, bytes]] = []
        """Records written to the active segment by ``flush`` and not yet fsynced."""
        self._pending_snap: dict[GroupId, int] = {}
        self._broken: BaseException | None = None
        fs.makedirs(dirpath)
        self._recover()
        if not self._segments:
            self._segments.append(self._create_segment(1))
        self._active: AppendFile = fs.open_append(self._segments[-1].path)

    @classmethod
    def open(cls, fs: FileSystem, dirpath: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> WAL:
        return cls(fs, dirpath, segment_bytes)

    # -- writing ------------------------------------------------------------------------

    def append_ready(self, group: GroupId, rd: Ready) -> None:
        """Buffer a Ready's snapshot metadata, entries and hard state, in that order."""
        if rd.snapshot is not None:
            self._append(group, INSTALL, rd.snapshot.meta)
        if rd.entries:
            self._append(group, ENTRIES, rd.entries)
        if rd.hard_state is not None:
            self._append(group, HARD_STATE, rd.hard_state)

    def append_entries(self, group: GroupId, entries: tuple[Entry, ...]) -> None:
        if entries:
            self._append(group, ENTRIES, tuple(entries))

    def append_hard_state(self, group: GroupId, hs: HardState) -> None:
        self._append(group, HARD_STATE, hs)

    def reset(self, group: GroupId, hs: HardState) -> None:
        """Buffer a reset of the group: its snapshot and entries are dead; ``hs`` (its
        term and vote, commit 0) is all that stays."""
        self._append(group, RESET, hs)

    def save_snapshot_meta(self, group: GroupId, meta: SnapshotMeta) -> None:
        """Buffer a compaction: the group's log up to ``meta.index`` is dead."""
        self._append(group, COMPACT, meta)

    def _append(self, group: GroupId, kind: int, value: Any) -> None:
        self._check()
        if kind in (INSTALL, COMPACT):
            meta: SnapshotMeta = value
            current = self._pending_snap.get(group)
            if current is None:
                g = self._groups.get(group)
                current = g.snap_index() if g else 0
            if meta.index < current:
                raise StorageError(
                    f"group {group}: snapshot index {meta.index} is below {current}; "
                    "snapshot indexes must only grow"
                )
            self._pending_snap[group] = meta.index
            body: Any = codec.encode_meta(meta)
        elif kind == ENTRIES:
            body = [[e.term, e.index, e.type.value, e.data] for e in value]  # encode_entry
        else:
            if kind == RESET:
                self._pending_snap[group] = 0
            body = codec.encode_hard_state(value)
        record = codec.frame(codec.pack([group, kind, body]))
        self._buffer.append((group, kind, value, record))

    def pending(self) -> int:
        """Records written or buffered and not yet synced."""
        return len(self._unsynced) + len(self._buffer)

    def flush(self) -> None:
        """Write the buffered records to the active segment without fsync, as an OS may
        do at any moment; a crash may then keep any prefix of them (a torn tail)."""
        self._check()
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        self._write(b"".join(rec for *_, rec in batch))
        self._unsynced.extend(batch)

    def sync(self) -> SyncStats:
        """Write every buffered record with one write and make it durable with one fsync.
        Returns how many records and bytes were synced (none: no fsync at all)."""
        self._check()
        if not self._buffer and not self._unsynced:
            return SyncStats(0, 0)
        batch, self._buffer = self._buffer, []
        self._pending_snap.clear()
        try:
            if not self._unsynced and self._active.size() >= self.segment_bytes:
                self._rotate()  # a segment is sealed only once all of it is fsynced
            self._write(b"".join(rec for *_, rec in batch))
            self._active.sync()
        except OSError as exc:
            self._fail(exc)
        batch = self._unsynced + batch
        self._unsynced = []
        seg = self._segments[-1]
        for group, kind, value, _ in batch:
            self._note(seg, group, kind, value)
        return SyncStats(len(batch), sum(len(rec) for *_, rec in batch))

    def _write(self, data: bytes) -> None:
        try:
            self._active.write(data)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> NoReturn:
        self._broken = exc
        raise StorageError(f"WAL write or fsync failed in {self.dirpath}: {exc}") from exc

    def _note(self, seg: _Segment, group: GroupId, kind: int, value: Any) -> None:
        g = self._groups.get(group)
        if g is None:
            g = self._groups[group] = GroupLog()
        g.apply(kind, value)
        if kind == ENTRIES:
            seg.max_entry[group] = max(seg.max_entry.get(group, 0), value[-1].index)
        elif kind == HARD_STATE:
            seg.hard_states.add(group)
            g.hs_segment = seg.seq
        elif kind == RESET:
            seg.hard_states.add(group)
            g.hs_segment = g.reset_segment = seg.seq
            g.snap_segment = 0  # no snapshot record of the group is live any more
        else:
            seg.snapshots.add(group)
            g.snap_segment = seg.seq

    def _check(self) -> None:
        if self._broken is not None:
            raise StorageError(f"WAL in {self.dirpath} failed earlier: {self._broken}")

    def _segment_path(self, seq: int) -> str:
        return posixpath.join(self.dirpath, f"{seq:016x}{SEGMENT_SUFFIX}")

    def _create_segment(self, seq: int) -> _Segment:
        path = self._segment_path(seq)
        self.fs.open_append(path).close()
        self.fs.fsync_dir(self.dirpath)
        return _Segment(seq, path)

    def _rotate(self) -> None:
        self._active.close()
        self._segments.append(self._create_segment(self._segments[-1].seq + 1))
        self._active = self.fs.open_append(self._segments[-1].path)

    # -- garbage collection ---------------------------------------------------------------

    def _dead(self, seg: _Segment) -> bool:
        for group, top in seg.max_entry.items():
            g = self._groups[group]
            if seg.seq >= g.reset_segment and top > g.snap_index():
                return False
        if any(self._groups[g].hs_segment == seg.seq for g in seg.hard_states):
            return False
        return not any(self._groups[g].snap_segment == seg.seq for g in seg.snapshots)

    def gc(self) -> list[str]:
        """Delete the oldest segments while they hold nothing live; returns their paths."""
        self._check()
        removed: list[str] = []
        while len(self._segments) > 1 and self._dead(self._segments[0]):
            seg = self._segments.pop(0)
            self.fs.remove(seg.path)
            removed.append(seg.path)
        if removed:
            self.fs.fsync_dir(self.dirpath)
        return removed

    def segments(self) -> list[str]:
        return [s.path for s in self._segments]

    # -- reading --------------------------------------------------------------------------

    def groups(self) -> list[GroupId]:
        return sorted(self._groups)

    def load(self, group: GroupId) -> RaftState:
        """The group's durable state. Its snapshot, if any, carries the metadata only
        (empty ``data``): snapshot data lives in the snapshot store."""
        g = self._groups.get(group)
        if g is None:
            return RaftState()
        snap = Snapshot(g.snapshot) if g.snapshot is not None else None
        return RaftState(g.hard_state, snap, tuple(g.entries), Index(g.snap_index()))

    def snapshot_meta(self, group: GroupId) -> SnapshotMeta | None:
        g = self._groups.get(group)
        return g.snapshot if g else None

    def close(self) -> None:
        self._active.close()

    # -- recovery -------------------------------------------------------------------------

    def _recover(self) -> None:
        names = [n for n in self.fs.listdir(self.dirpath) if n.endswith(SEGMENT_SUFFIX)]
        seqs = sorted(int(n[: -len(SEGMENT_SUFFIX)], 16) for n in names)
        for i, seq in enumerate(seqs):
            if i and seq != seqs[i - 1] + 1:
                path = self._segment_path(seq)
                raise CorruptWALError(path, 0, f"segment {seqs[i - 1] + 1:016x} is missing")
            seg = _Segment(seq, self._segment_path(seq))
            self._segments.append(seg)
            self._replay(seg, last=i == len(seqs) - 1)

    def _replay(self, seg: _Segment, *, last: bool) -> None:
        data = self.fs.read(seg.path)
        offset = 0
        while offset < len(data):
            parsed = codec.parse_frame(data, offset)
            if isinstance(parsed, str):
                if not last:
                    raise CorruptWALError(seg.path, offset, parsed + " in a sealed segment")
                after = _next_valid_record(data, offset + 1)
                if after is not None:
                    raise CorruptWALError(
                        seg.path, offset, f"{parsed}, with a valid record at {after} after it"
                    )
                log.warning(
                    "WAL %s: torn tail at byte offset %d (%s); cutting %d bytes",
                    seg.path,
                    offset,
                    parsed,
                    len(data) - offset,
                )
                self.fs.truncate(seg.path, offset)
                return
            end, payload = parsed
            try:
                group, kind, body = codec.unpack(payload)
                if kind not in _KINDS:
                    raise ValueError(f"unknown record kind {kind}")
                value = _decode(kind, body)
            except (ValueError, TypeError) as exc:
                raise CorruptWALError(seg.path, offset, f"undecodable record: {exc}") from exc
            self._note(seg, GroupId(group), kind, value)
            offset = end


def _next_valid_record(data: bytes, start: int) -> int | None:
    """The first offset at or after ``start`` where a valid record begins, if any."""
    for offset in range(start, len(data) - codec.HEADER_SIZE):
        if not isinstance(codec.parse_frame(data, offset), str):
            return offset
    return None
