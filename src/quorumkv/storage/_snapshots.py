"""Snapshot files: one node's state-machine snapshots, for every group on it.

Theory of operation
-------------------
A snapshot of group ``g`` at ``(term, index)`` lives in ``<g>-<term>-<index>.snap``::

    b"QKVSNAP1" | u32 meta length | u32 crc32(meta) | u64 data length | u32 crc32(data)
    | meta (msgpack: [group, snapshot metadata]) | data

``save`` writes ``<name>.tmp``, fsyncs it, renames it over ``<name>`` and fsyncs the
directory; a crash at any point leaves either no new file or a whole, durable one, and
never a damaged file under a final name. Leftover ``.tmp`` files are half-written and
are deleted when the store opens.

Which snapshot is *current* is not the store's decision: the WAL records it. So ``save``
deletes nothing; ``purge(group, keep)`` removes a group's other snapshots once the WAL
record naming ``keep`` is durable. (Deleting the old file at ``save`` time would lose the
snapshot the WAL still names if the node crashed before the new WAL record was synced.)

Two snapshots of one group at the same ``(term, index)`` hold the same state, since the
state machine is deterministic; saving the second atomically replaces the first.

Streaming: ``chunks`` yields a snapshot file's bytes (header included) in pieces, and a
``SnapshotReceiver`` writes received pieces to a temporary file, then verifies, fsyncs
and renames it into place, so a receiver never installs a partial or damaged snapshot.

Every read verifies both checksums; a mismatch raises ``CorruptSnapshotError`` naming the
file. Whole files are read into memory, which suits the snapshot sizes of today.
"""

from __future__ import annotations

import posixpath
import re
import struct
import zlib
from collections.abc import Iterator

from quorumkv.consensus import GroupId, Index, Snapshot, SnapshotMeta, Term

from . import _codec as codec
from ._errors import CorruptSnapshotError
from ._fs import FileSystem

MAGIC = b"QKVSNAP1"
_HEADER = struct.Struct("<8sIIQI")
_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.snap$")
TMP_SUFFIX = ".tmp"
DEFAULT_CHUNK_BYTES = 1 << 20


def snapshot_name(group: GroupId, term: int, index: int) -> str:
    return f"{group}-{term}-{index}.snap"


def encode_snapshot(group: GroupId, snap: Snapshot) -> bytes:
    meta = codec.pack([group, codec.encode_meta(snap.meta)])
    header = _HEADER.pack(MAGIC, len(meta), zlib.crc32(meta), len(snap.data), zlib.crc32(snap.data))
    return header + meta + snap.data


def decode_snapshot(path: str, raw: bytes) -> tuple[GroupId, Snapshot]:
    """Parse and verify a snapshot file's bytes; ``path`` is for error messages."""
    if len(raw) < _HEADER.size:
        raise CorruptSnapshotError(path, f"short header ({len(raw)} bytes)")
    magic, meta_len, meta_crc, data_len, data_crc = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CorruptSnapshotError(path, "bad magic")
    meta_end = _HEADER.size + meta_len
    if len(raw) != meta_end + data_len:
        raise CorruptSnapshotError(path, f"size {len(raw)} != {meta_end + data_len}")
    meta_bytes, data = raw[_HEADER.size : meta_end], raw[meta_end:]
    if zlib.crc32(meta_bytes) != meta_crc:
        raise CorruptSnapshotError(path, "metadata checksum mismatch")
    if zlib.crc32(data) != data_crc:
        raise CorruptSnapshotError(path, "data checksum mismatch")
    try:
        group, meta = codec.unpack(meta_bytes)
        return GroupId(group), Snapshot(codec.decode_meta(meta), data)
    except (ValueError, TypeError) as exc:
        raise CorruptSnapshotError(path, f"undecodable metadata: {exc}") from exc


class SnapshotStore:
    """The snapshot files of every group of one node, in ``dirpath``."""

    def __init__(self, fs: FileSystem, dirpath: str) -> None:
        self.fs = fs
        self.dirpath = dirpath
        fs.makedirs(dirpath)
        self.remove_tmp()

    def _path(self, name: str) -> str:
        return posixpath.join(self.dirpath, name)

    def _files(self, group: GroupId) -> list[tuple[int, int, str]]:
        """(index, term, name) of the group's snapshot files, oldest first."""
        found = []
        for name in self.fs.listdir(self.dirpath):
            m = _NAME.match(name)
            if m and int(m[1]) == group:
                found.append((int(m[3]), int(m[2]), name))
        return sorted(found)

    def groups(self) -> list[GroupId]:
        """Every group with at least one snapshot file."""
        found = {int(m[1]) for n in self.fs.listdir(self.dirpath) if (m := _NAME.match(n))}
        return [GroupId(g) for g in sorted(found)]

    def remove_tmp(self) -> int:
        """Delete half-written ``.tmp`` files; returns how many there were."""
        tmp = [n for n in self.fs.listdir(self.dirpath) if n.endswith(TMP_SUFFIX)]
        for name in tmp:
            self.fs.remove(self._path(name))
        if tmp:
            self.fs.fsync_dir(self.dirpath)
        return len(tmp)

    def save(self, group: GroupId, snap: Snapshot) -> str:
        """Write ``snap`` durably and atomically; returns its path. Deletes nothing."""
        name = snapshot_name(group, snap.meta.term, snap.meta.index)
        self._install(name, encode_snapshot(group, snap))
        return self._path(name)

    def _install(self, name: str, raw: bytes) -> None:
        tmp = self._path(name + TMP_SUFFIX)
        if self.fs.exists(tmp):
            self.fs.remove(tmp)
        f = self.fs.open_append(tmp)
        try:
            f.write(raw)
            f.sync()
        finally:
            f.close()
        self.fs.rename(tmp, self._path(name))
        self.fs.fsync_dir(self.dirpath)

    def load(self, group: GroupId, meta: SnapshotMeta) -> Snapshot:
        """The snapshot of ``group`` at ``meta``'s term and index, verified."""
        path = self._path(snapshot_name(group, meta.term, meta.index))
        if not self.fs.exists(path):
            raise CorruptSnapshotError(path, "missing, though the WAL names it")
        return self._read(group, path)

    def _read(self, group: GroupId, path: str) -> Snapshot:
        owner, snap = decode_snapshot(path, self.fs.read(path))
        if owner != group:
            raise CorruptSnapshotError(path, f"holds group {owner}, not {group}")
        return snap

    def load_latest(self, group: GroupId) -> Snapshot | None:
        """The group's newest snapshot file, verified, or None."""
        files = self._files(group)
        if not files:
            return None
        return self._read(group, self._path(files[-1][2]))

    def metas(self, group: GroupId) -> list[tuple[Index, Term]]:
        """(index, term) of every snapshot file of the group, oldest first."""
        return [(Index(i), Term(t)) for i, t, _ in self._files(group)]

    def purge(self, group: GroupId, keep: SnapshotMeta | None) -> list[str]:
        """Delete every snapshot of ``group`` except ``keep``; returns the paths."""
        keep_name = snapshot_name(group, keep.term, keep.index) if keep else None
        removed = [self._path(n) for _, _, n in self._files(group) if n != keep_name]
        for path in removed:
            self.fs.remove(path)
        if removed:
            self.fs.fsync_dir(self.dirpath)
        return removed

    def chunks(
        self, group: GroupId, index: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> Iterator[bytes]:
        """The bytes of the group's snapshot file at ``index``, in pieces, to stream to a
        peer's ``SnapshotReceiver``."""
        names = [n for i, _, n in self._files(group) if i == index]
        if not names:
            raise FileNotFoundError(f"no snapshot of group {group} at index {index}")
        path = self._path(names[-1])
        size = self.fs.size(path)
        for offset in range(0, size, chunk_bytes):
            yield self.fs.read_range(path, offset, chunk_bytes)

    def receiver(self, group: GroupId) -> SnapshotReceiver:
        return SnapshotReceiver(self, group)


class SnapshotReceiver:
    """Accepts a streamed snapshot file for ``group``; installs it only when whole.

    ``write`` each chunk in order, then ``finish`` verifies the checksums, fsyncs and
    renames the file into place and returns the snapshot; ``abort`` throws it away. A
    failed ``finish`` (a damaged stream) removes the temporary file and raises
    ``CorruptSnapshotError``."""

    def __init__(self, store: SnapshotStore, group: GroupId) -> None:
        self.store = store
        self.group = group
        self.tmp = store._path(f"{group}-recv.snap{TMP_SUFFIX}")
        if store.fs.exists(self.tmp):
            store.fs.remove(self.tmp)
        self._file = store.fs.open_append(self.tmp)
        self.received = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.received += len(chunk)

    def finish(self) -> Snapshot:
        fs = self.store.fs
        self._file.sync()
        self._file.close()
        try:
            snap = self.store._read(self.group, self.tmp)
        except CorruptSnapshotError:
            fs.remove(self.tmp)
            raise
        name = snapshot_name(self.group, snap.meta.term, snap.meta.index)
        fs.rename(self.tmp, self.store._path(name))
        fs.fsync_dir(self.store.dirpath)
        return snap

    def abort(self) -> None:
        self._file.close()
        if self.store.fs.exists(self.tmp):
            self.store.fs.remove(self.tmp)
