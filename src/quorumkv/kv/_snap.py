"""One range's snapshot: the stream of chunks, and installing it in a write transaction.

Theory of operation
-------------------
A snapshot is a sequence of msgpack chunks (about 1 MiB each), independent of LMDB's
page size or version on either side:

1. the head: ``[magic, format, applied, revision, compacted, start, end, desc,
   stamped]`` (``snapshot_index`` reads the applied index from it);
2. ``[0, [rev key, record, ...]]`` chunks: the range's records, in ascending revision
   order (the order a ``KeyIndex`` is rebuilt in);
3. ``[1, [client id, session, ...]]`` chunks: the range's sessions, by client id (8
   bytes each, without the range id, which the installer supplies);
4. ``["end", count, crc]``: the number of records and sessions, and the crc32 of every
   chunk before it.

``stream`` is handed the range's revisions as its index held them and a read
transaction opened at that same moment by ``RangeStore.snapshot``, so what it streams is
one consistent state however long the consumer takes and whatever is applied meanwhile.

``install`` writes a stream into the caller's write transaction, after the caller has
checked the head (``read_head``) and deleted what the range held: it verifies every
chunk as it goes (decoding, part order, strictly ascending revisions and client ids,
every record's key inside the head's bounds, no record that another range holds) and,
at the end, the count and the crc. Any failure raises ``SnapshotError``; the caller's
transaction then aborts, so a failed install changes nothing.

This module owns the snapshot format. It must never open, commit or abort a transaction,
nor register a range: ``Engine.restore_range`` does both.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from quorumkv.kv._codec import pack, unpack
from quorumkv.kv._errors import SnapshotError
from quorumkv.kv._exec import Dbs
from quorumkv.kv._index import KeyIndex, append_rev, rev_from_key, rev_key

MAGIC = "quorumkv-range-snapshot"
FORMAT = 3
"""Formats 1 and 2 streamed a whole store's databases; 3 streams one range."""
_CHUNK = 1 << 20
_RECORDS, _SESSIONS = 0, 1
_DECODE_ERRORS = (
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    struct.error,
    msgpack.UnpackException,
)


@dataclass(frozen=True, slots=True)
class SnapHead:
    """What a snapshot says about its range, besides records and sessions."""

    applied: int
    revision: int
    compacted: int
    start: bytes
    end: bytes
    desc: bytes
    stamped: bool

    def doc(self) -> list[object]:
        return [
            MAGIC, FORMAT, self.applied, self.revision, self.compacted,
            self.start, self.end, self.desc, self.stamped,
        ]  # fmt: skip


_HEAD_TYPES = (int, int, int, bytes, bytes, bytes, bool)


def snapshot_index(first_chunk: bytes) -> int:
    """The applied index a snapshot covers, read from its first chunk. Raises
    ``SnapshotError`` for anything but the head of a snapshot of this format."""
    try:
        head = unpack(first_chunk)
    except _DECODE_ERRORS as e:
        raise SnapshotError(f"undecodable snapshot head: {e!r}") from None
    if not isinstance(head, list) or head[:2] != [MAGIC, FORMAT] or len(head) < 3:
        raise SnapshotError("not a quorumkv range snapshot of a known format")
    if type(head[2]) is not int:
        raise SnapshotError(f"bad applied index in the snapshot head: {head[2]!r}")
    return head[2]


def read_head(first_chunk: bytes) -> SnapHead:
    """The head of a snapshot, checked field by field. Raises ``SnapshotError``."""
    snapshot_index(first_chunk)
    head = unpack(first_chunk)
    fields = head[2:]
    if len(fields) != len(_HEAD_TYPES) or any(
        type(v) is not t for v, t in zip(fields, _HEAD_TYPES, strict=True)
    ):
        raise SnapshotError(f"malformed snapshot head {head!r}")
    h = SnapHead(*fields)
    if min(h.applied, h.revision, h.compacted) < 0 or (h.end and h.end <= h.start):
        raise SnapshotError(f"impossible snapshot head {head!r}")
    return h


def stream(txn: Any, dbs: Dbs, head: SnapHead, revs: list[int], prefix: bytes) -> Iterator[bytes]:
    """The chunks of a snapshot: ``revs`` (the range's revisions, in any order; sorted
    here) read in ``txn``, then the sessions under ``prefix``. Aborts ``txn`` when done
    or closed; a stream dropped unstarted releases it when collected."""
    try:
        first = pack(head.doc())
        crc = zlib.crc32(first)
        records = 0
        yield first
        revs.sort()
        batch: list[bytes] = []
        size = 0
        for rev in revs:
            k = rev_key(rev)
            v = txn.get(k, db=dbs.rev)
            assert v is not None, f"the index points at a missing revision {k.hex()}"
            batch += (k, bytes(v))
            size += len(v) + 24
            records += 1
            if size >= _CHUNK:
                chunk = pack([_RECORDS, batch])
                crc = zlib.crc32(chunk, crc)
                yield chunk
                batch, size = [], 0
        if batch:
            chunk = pack([_RECORDS, batch])
            crc = zlib.crc32(chunk, crc)
            yield chunk
            batch, size = [], 0
        cur = txn.cursor(db=dbs.sessions)
        ok = cur.set_range(prefix)
        while ok:
            k = bytes(cur.key())
            if not k.startswith(prefix):
                break
            v = bytes(cur.value())
            batch += (k[len(prefix) :], v)
            size += len(v) + 16
            records += 1
            if size >= _CHUNK:
                chunk = pack([_SESSIONS, batch])
                crc = zlib.crc32(chunk, crc)
                yield chunk
                batch, size = [], 0
            ok = cur.next()
        if batch:
            chunk = pack([_SESSIONS, batch])
            crc = zlib.crc32(chunk, crc)
            yield chunk
        yield pack(["end", records, crc])
    finally:
        txn.abort()


class _Installer:
    """Writes one stream's chunks into a transaction and builds the range's index."""

    def __init__(self, txn: Any, dbs: Dbs, prefix: bytes, head: SnapHead) -> None:
        self.txn = txn
        self.dbs = dbs
        self.prefix = prefix
        self.head = head
        self.revs: dict[bytes, Any] = {}
        self.count = 0  # revisions in ``revs``
        self.nbytes = 0  # the bytes of their records
        self.items = 0  # records and sessions, for the end record's count
        self.part = _RECORDS
        self.last = b""  # the last revision key, then the last client id

    def chunk(self, code: object, flat: object) -> None:
        if code not in (_RECORDS, _SESSIONS) or type(code) is not int or code < self.part:
            raise SnapshotError(f"snapshot chunk of an unknown or misplaced part {code!r}")
        if code != self.part:
            self.part, self.last = code, b""
        if not isinstance(flat, list) or len(flat) % 2:
            raise SnapshotError("malformed snapshot chunk")
        pairs = list(zip(flat[::2], flat[1::2], strict=True))
        self.items += len(pairs)
        if code == _RECORDS:
            self._records(pairs)
        else:
            self._sessions(pairs)

    def _records(self, pairs: list[tuple[Any, Any]]) -> None:
        txn, db, revs = self.txn, self.dbs.rev, self.revs
        start, end = self.head.start, self.head.end
        last = self.last
        for k, v in pairs:
            if type(k) is not bytes or len(k) != 16 or k <= last:
                raise SnapshotError("snapshot records out of order, repeated or malformed")
            last = k
            if type(v) is not bytes:
                raise SnapshotError("malformed snapshot record")
            doc = unpack(v)
            key = doc[0]
            if type(key) is not bytes or key < start or (end and key >= end):
                raise SnapshotError(f"snapshot record of key {key!r} outside its range")
            if not txn.put(k, v, db=db, overwrite=False):
                raise SnapshotError(f"snapshot record {k.hex()} is another range's revision")
            append_rev(revs, key, rev_from_key(k, bool(doc[6])))
            self.nbytes += len(k) + len(v)
        self.count += len(pairs)
        self.last = last

    def _sessions(self, pairs: list[tuple[Any, Any]]) -> None:
        txn, db, prefix = self.txn, self.dbs.sessions, self.prefix
        last = self.last
        for k, v in pairs:
            if type(k) is not bytes or len(k) != 8 or k <= last:
                raise SnapshotError("snapshot sessions out of order, repeated or malformed")
            if type(v) is not bytes or len(v) < 8:
                raise SnapshotError("malformed snapshot session")
            last = k
            txn.put(prefix + k, v, db=db)
        self.last = last


def install(
    txn: Any, dbs: Dbs, prefix: bytes, head: SnapHead, first: bytes, rest: Iterator[bytes]
) -> KeyIndex:
    """Write the records and sessions of the stream ``first`` (its head, already read
    as ``head``) and ``rest`` in ``txn``, sessions under ``prefix``; the range's new
    index. The caller has emptied the range. Raises ``SnapshotError`` (then the caller
    must abort ``txn``)."""
    crc = zlib.crc32(first)
    ins = _Installer(txn, dbs, prefix, head)
    done = False
    for chunk in rest:
        if done:
            raise SnapshotError("data after the end of the snapshot")
        try:
            doc = unpack(chunk)
            if not isinstance(doc, list) or len(doc) not in (2, 3):
                raise SnapshotError("malformed snapshot chunk")
            if doc[0] == "end":
                if doc[1:] != [ins.items, crc]:
                    raise SnapshotError(
                        f"snapshot damaged: {ins.items} records, crc {crc}; "
                        f"the sender counted {doc[1]}, crc {doc[2:]}"
                    )
                done = True
                continue
            crc = zlib.crc32(chunk, crc)
            code, flat = doc
            ins.chunk(code, flat)
        except _DECODE_ERRORS as e:
            raise SnapshotError(f"undecodable snapshot chunk: {e!r}") from None
    if not done:
        raise SnapshotError("snapshot ended early (no end record)")
    return KeyIndex.from_revs(ins.revs, ins.count, ins.nbytes)
