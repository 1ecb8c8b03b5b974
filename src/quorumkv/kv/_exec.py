"""Reads and writes of etcd's data model inside one LMDB transaction.

Theory of operation
-------------------
The layout follows etcd's mvcc (a per-key index of revisions plus a revision-keyed
store), with LMDB's sorted, duplicate-sorted databases standing in for etcd's btree:

``rev``
    ``(main, sub)`` as 16 big-endian bytes -> msgpack ``[key, value, create_revision,
    mod_revision, version, lease, tombstone]``. Every write (a put, or a delete of one
    live key) is one record; the records of one write txn share ``main`` and are
    ordered by ``sub``, as in etcd. Keys only ever grow, so writes append.
``index`` (``dupsort``)
    user key -> one 17-byte pointer ``(main, sub, tombstone)`` per surviving revision of
    the key. Duplicates sort bytewise, which for big-endian numbers is revision order,
    so a key's newest revision is its last duplicate and its newest revision at or below
    ``R`` is one ``MDB_GET_BOTH_RANGE`` seek and one step back.

A key is live at revision ``R`` when its newest pointer at or below ``R`` exists and is
not a tombstone. A range at ``R`` walks ``index`` from the start key, one step per user
key, and reads the ``rev`` record only for keys it returns (never for ``count_only``).

Compaction at ``C`` keeps, per key, only the newest revision at or below ``C`` unless it
is a tombstone, and everything above ``C``; reads at ``R >= C`` therefore see exactly
what they saw before, and reads below ``C`` fail with ``CompactedError``. Only keys
written since the previous compaction can have anything to drop, so compaction walks
``rev`` from the previous compacted revision to ``C`` and visits those keys.

A write request is checked completely before its first write (revisions in its ranges,
the compares on its path), so a refused request leaves nothing behind and ``apply`` can
carry on with the batch. Compares of nested txns are judged against the state before
the outer txn, as etcd's ``compareToPath`` does.

This module must never commit, abort or open transactions: the caller owns them (one
write transaction per applied batch). It never reads a clock or does I/O of its own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from quorumkv.kv._codec import pack, unpack
from quorumkv.kv._errors import CompactedError, FutureRevisionError
from quorumkv.kv._types import (
    ALL_KEYS,
    CompactionRequest,
    CompactionResponse,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    OpResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    Request,
    Response,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

_REV = struct.Struct(">QQ")
_PTR = struct.Struct(">QQB")
_COMPACT_CHUNK = 4096  # keys handled per pass of a compaction


@dataclass(frozen=True, slots=True)
class Dbs:
    """The named LMDB databases of one environment (handles are ``lmdb._Database``)."""

    rev: Any
    index: Any
    meta: Any
    sessions: Any


def _record(txn: Any, dbs: Dbs, ptr: bytes) -> KeyValue:
    data = txn.get(ptr[:16], db=dbs.rev)
    assert data is not None, f"index points at missing revision {_PTR.unpack(ptr)}"
    key, value, create, mod, version, lease, _ = unpack(data)
    return KeyValue(key, value, create, mod, version, lease)


def _pick(cur: Any, key: bytes, at: int | None) -> bytes | None:
    """Pointer of ``key``'s newest revision at or below ``at`` (None: newest of all).
    The cursor must be on ``key``; afterwards it is on ``key`` or unpositioned."""
    if at is None:
        cur.last_dup()
        return bytes(cur.value())
    if cur.set_range_dup(key, _PTR.pack(at + 1, 0, 0)):
        return bytes(cur.value()) if cur.prev_dup() else None
    cur.set_key(key)  # every revision of key is at or below ``at``
    cur.last_dup()
    return bytes(cur.value())


def live_keys(
    txn: Any, dbs: Dbs, key: bytes, range_end: bytes, at: int | None
) -> Iterator[tuple[bytes, bytes]]:
    """``(key, pointer)`` of every key live at ``at`` in the request's range, in key
    order. Do not write to ``index`` while iterating."""
    cur = txn.cursor(db=dbs.index)
    if not range_end:
        if cur.set_key(key):
            ptr = _pick(cur, key, at)
            if ptr is not None and not ptr[16]:
                yield key, ptr
        return
    end = None if range_end == ALL_KEYS else range_end
    ok = cur.set_range(key)
    while ok:
        k = bytes(cur.key())
        if end is not None and k >= end:
            return
        ptr = _pick(cur, k, at)
        if ptr is not None and not ptr[16]:
            yield k, ptr
        ok = cur.next_nodup() if at is None else cur.set_range(k + b"\x00")


_SORT_KEYS = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


def check_read_revision(revision: int, current: int, compacted: int) -> None:
    if revision > current:
        raise FutureRevisionError(revision, current)
    if 0 < revision < compacted:
        raise CompactedError(revision, compacted)


def read_range(
    txn: Any, dbs: Dbs, req: RangeRequest, current: int, compacted: int, header: int
) -> RangeResponse:
    """Serve ``req`` against the state at ``current`` (or the older ``req.revision``).
    ``header`` is the revision the response reports. Sort ties fall back to key order."""
    check_read_revision(req.revision, current, compacted)
    at = None if req.revision in (0, current) else req.revision
    order, target = req.sort_order, req.sort_target
    if order is SortOrder.NONE:
        order = SortOrder.ASCEND
    natural = order is SortOrder.ASCEND and target is SortTarget.KEY
    count = 0
    ptrs: list[bytes] = []
    for _, ptr in live_keys(txn, dbs, req.key, req.range_end, at):
        count += 1
        if not req.count_only and (not natural or not req.limit or len(ptrs) < req.limit):
            ptrs.append(ptr)
    kvs = [_record(txn, dbs, p) for p in ptrs]
    if not natural:
        kvs.sort(key=_SORT_KEYS[target], reverse=order is SortOrder.DESCEND)
        if req.limit:
            del kvs[req.limit :]
    if req.keys_only:
        kvs = [
            KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in kvs
        ]
    more = bool(req.limit) and count > req.limit
    return RangeResponse(header, tuple(kvs), more, count)


class Executor:
    """Runs requests in one write transaction. ``current`` and ``compacted`` are the
    state's revisions as of the last request; the caller persists them."""

    def __init__(self, txn: Any, dbs: Dbs, current: int, compacted: int) -> None:
        self.txn = txn
        self.dbs = dbs
        self.current = current
        self.compacted = compacted
        self._sub = 0  # writes so far in the running request; they share ``current + 1``

    # -- entry point -----------------------------------------------------------------

    def run(self, req: Request) -> Response:
        """Apply one request; it is refused (raising ``KVError``) before any write."""
        assert self._sub == 0
        if isinstance(req, CompactionRequest):
            return self._compact(req.revision)
        path: list[bool] = []
        self._plan(req, path)
        res = self._op(req, iter(path))
        if self._sub:
            self.current += 1
            self._sub = 0
        return res

    # -- checks before the first write -----------------------------------------------

    def _plan(self, op: Request, path: list[bool]) -> None:
        """Judge every compare on the path (pre-order) and check read revisions."""
        if isinstance(op, RangeRequest):
            check_read_revision(op.revision, self.current, self.compacted)
        elif isinstance(op, TxnRequest):
            ok = all(self._compare(c) for c in op.compare)
            path.append(ok)
            for sub in op.success if ok else op.failure:
                self._plan(sub, path)

    def _compare(self, c: Compare) -> bool:
        kv = self._get(c.key)
        if kv is None and c.target is CompareTarget.VALUE:
            return False  # etcd: a value compare on a missing key always fails
        mine: bytes | int
        if c.target is CompareTarget.VALUE:
            assert kv is not None
            mine = kv.value
        else:
            mine = 0 if kv is None else _TARGETS[c.target](kv)
        theirs = c.value
        if c.op is CompareOp.EQUAL:
            return mine == theirs
        if c.op is CompareOp.NOT_EQUAL:
            return mine != theirs
        if c.op is CompareOp.LESS:
            return mine < theirs  # type: ignore[operator]
        return mine > theirs  # type: ignore[operator]

    def _get(self, key: bytes) -> KeyValue | None:
        for _, ptr in live_keys(self.txn, self.dbs, key, b"", None):
            return _record(self.txn, self.dbs, ptr)
        return None

    # -- operations --------------------------------------------------------------------

    def _header(self) -> int:
        return self.current + 1 if self._sub else self.current

    def _op(self, op: Request, path: Iterator[bool]) -> OpResponse:
        if isinstance(op, PutRequest):
            return self._put(op)
        if isinstance(op, DeleteRangeRequest):
            return self._delete(op)
        if isinstance(op, RangeRequest):
            cur = self._header()
            return read_range(self.txn, self.dbs, op, cur, self.compacted, cur)
        assert isinstance(op, TxnRequest)
        ok = next(path)
        responses = tuple(self._op(sub, path) for sub in (op.success if ok else op.failure))
        return TxnResponse(self._header(), ok, responses)

    def _write(self, key: bytes, kv: KeyValue, tombstone: bool) -> None:
        main, sub = self.current + 1, self._sub
        self._sub += 1
        rev = _REV.pack(main, sub)
        doc = [key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease]
        ok = self.txn.put(rev, pack([*doc, tombstone]), db=self.dbs.rev, append=True)
        assert ok, f"revision {(main, sub)} is not above every stored revision"
        self.txn.put(key, _PTR.pack(main, sub, tombstone), db=self.dbs.index)

    def _put(self, op: PutRequest) -> PutResponse:
        prev = self._get(op.key)
        main = self.current + 1
        if prev is None:
            kv = KeyValue(op.key, op.value, main, main, 1, op.lease)
        else:
            kv = KeyValue(op.key, op.value, prev.create_revision, main, prev.version + 1, op.lease)
        self._write(op.key, kv, tombstone=False)
        return PutResponse(main, prev if op.prev_kv else None)

    def _delete(self, op: DeleteRangeRequest) -> DeleteRangeResponse:
        victims = list(live_keys(self.txn, self.dbs, op.key, op.range_end, None))
        prev: list[KeyValue] = []
        main = self.current + 1
        for key, ptr in victims:
            if op.prev_kv:
                prev.append(_record(self.txn, self.dbs, ptr))
            self._write(key, KeyValue(key, b"", 0, main, 0, 0), tombstone=True)
        return DeleteRangeResponse(self._header(), len(victims), tuple(prev))

    # -- compaction ----------------------------------------------------------------------

    def _compact(self, revision: int) -> CompactionResponse:
        if revision <= self.compacted:
            raise CompactedError(revision, self.compacted)
        if revision > self.current:
            raise FutureRevisionError(revision, self.current)
        seek = _REV.pack(self.compacted + 1, 0)
        while seek:
            keys, seek = self._touched(seek, revision)
            for key in keys:
                self._compact_key(key, revision)
        self.compacted = revision
        return CompactionResponse(self.current)

    def _touched(self, seek: bytes, revision: int) -> tuple[list[bytes], bytes]:
        """Up to ``_COMPACT_CHUNK`` keys written from ``seek`` up to ``revision``, and
        where the next pass starts (empty when done)."""
        cur = self.txn.cursor(db=self.dbs.rev)
        keys: dict[bytes, None] = {}
        ok = cur.set_range(seek)
        while ok:
            rk = bytes(cur.key())
            if _REV.unpack(rk)[0] > revision:
                break
            keys[unpack(cur.value())[0]] = None
            if len(keys) >= _COMPACT_CHUNK:
                return list(keys), rk + b"\x00"
            ok = cur.next()
        return list(keys), b""

    def _compact_key(self, key: bytes, revision: int) -> None:
        cur = self.txn.cursor(db=self.dbs.index)
        if not cur.set_key(key):
            return  # an earlier pass of this compaction already dropped it all
        old = [bytes(p) for p in cur.iternext_dup(keys=False)]
        old = [p for p in old if _PTR.unpack(p)[0] <= revision]
        drop = old[:-1] if old and not old[-1][16] else old
        for ptr in drop:
            gone = self.txn.delete(key, ptr, db=self.dbs.index)
            gone &= self.txn.delete(ptr[:16], db=self.dbs.rev)
            assert gone, f"compaction lost track of {key!r} at {_PTR.unpack(ptr)}"


_TARGETS = {
    CompareTarget.VERSION: lambda kv: kv.version,
    CompareTarget.CREATE: lambda kv: kv.create_revision,
    CompareTarget.MOD: lambda kv: kv.mod_revision,
    CompareTarget.LEASE: lambda kv: kv.lease,
}
