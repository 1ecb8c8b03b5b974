"""Reads and writes of etcd's data model inside one LMDB transaction.

Theory of operation
-------------------
The layout follows etcd's mvcc: a revision-keyed store in the engine plus a per-key
index of revisions, which (as etcd's ``treeIndex``) lives in memory (``KeyIndex``):

``rev``
    ``(main, sub)`` as 16 big-endian bytes -> msgpack ``[key, value, create_revision,
    mod_revision, version, lease, tombstone]``. Every write (a put, or a delete of one
    live key) is one record; the records of one write txn share ``main`` and are
    ordered by ``sub``, as in etcd. Keys only ever grow, so writes append, and a batch
    of writes dirties only the tail pages of the database (its commit syncs a few
    pages, not one random page per key written).
``KeyIndex``
    user key -> its surviving revisions, each with a tombstone bit; rebuilt from
    ``rev`` when the store opens.

A key is live at revision ``R`` when its newest revision at or below ``R`` exists and is
not a tombstone. A range at ``R`` walks the index's sorted keys from the start key and
reads the ``rev`` record only for keys it returns (never for ``count_only``).

Compaction at ``C`` keeps, per key, only the newest revision at or below ``C`` unless it
is a tombstone, and everything above ``C``; reads at ``R >= C`` therefore see exactly
what they saw before, and reads below ``C`` fail with ``CompactedError``. Only keys
written since the previous compaction can have anything to drop, so a store whose
records are alone in ``rev`` walks ``rev`` from the previous compacted revision to ``C``
and visits those keys. A range that shares ``rev`` with other ranges (``walk_index``)
would visit their records too, every range all of them: it walks its own index instead
(O(its keys); ``KeyIndex.compactable``) and never reads another range's record.

A write request takes main revision ``current + 1``, or the revision stamp ``run`` is
given (a sharded range: revisions come from the cluster's allocator, unique across
ranges but not dense; the caller has checked that the stamp exceeds ``current``). The
records of a store that numbers its own revisions are appended; a stamped range's
interleave with other ranges' records, so they are inserted, and one that exists
already is a broken invariant (two writes stamped alike).

A write request is checked completely before its first write (revisions in its ranges,
the compares on its path), so a refused request leaves nothing behind and ``apply`` can
carry on with the batch. Compares of nested txns are judged against the state before
the outer txn, as etcd's ``compareToPath`` does.

This module must never commit, abort or open transactions, nor begin or end the index's
journal: the caller owns them (one write transaction per applied batch). It never reads
a clock or does I/O of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from quorumkv.kv._codec import packer, unpack
from quorumkv.kv._errors import CompactedError, FutureRevisionError
from quorumkv.kv._index import (
    _MAIN_SHIFT,
    _REV,
    REV_KEY_BYTES,
    KeyIndex,
    make_rev,
    rev_from_key,
    rev_key,
    rev_main,
)
from quorumkv.kv._types import (
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

_COMPACT_CHUNK = 4096  # keys handled per pass of a compaction


@dataclass(frozen=True, slots=True)
class Dbs:
    """The named LMDB databases of one environment (handles are ``lmdb._Database``)."""

    rev: Any
    meta: Any
    sessions: Any


def _record(txn: Any, dbs: Dbs, rev: int) -> KeyValue:
    data = txn.get(rev_key(rev), db=dbs.rev)
    assert data is not None, f"the index points at a missing revision {rev_key(rev).hex()}"
    key, value, create, mod, version, lease, _ = unpack(data)
    return KeyValue(key, value, create, mod, version, lease)


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
    txn: Any,
    dbs: Dbs,
    index: KeyIndex,
    req: RangeRequest,
    current: int,
    compacted: int,
    header: int,
) -> RangeResponse:
    """Serve ``req`` against the state at ``current`` (or the older ``req.revision``).
    ``header`` is the revision the response reports. Sort ties fall back to key order."""
    check_read_revision(req.revision, current, compacted)
    at = None if req.revision in (0, current) else req.revision
    if not req.range_end and at is None and not req.count_only and not req.keys_only:
        # One key, now: the common get. Limit and sort cannot change one result.
        rev = index.pick(req.key, None)
        if rev is None or rev & 1:
            return RangeResponse(header, (), False, 0)
        return RangeResponse(header, (_record(txn, dbs, rev),), False, 1)
    order, target = req.sort_order, req.sort_target
    if order is SortOrder.NONE:
        order = SortOrder.ASCEND
    natural = order is SortOrder.ASCEND and target is SortTarget.KEY
    count = 0
    revs: list[int] = []
    for _, rev in index.live(req.key, req.range_end, at):
        count += 1
        if not req.count_only and (not natural or not req.limit or len(revs) < req.limit):
            revs.append(rev)
    kvs = [_record(txn, dbs, r) for r in revs]
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
    state's revisions as of the last request; the caller persists them. ``append``:
    the store numbers its own revisions and its records are alone in ``rev`` (else
    they are inserted, never overwriting one); ``walk_index``: compact by walking the
    index, not ``rev`` (a range sharing ``rev``)."""

    def __init__(
        self,
        txn: Any,
        dbs: Dbs,
        index: KeyIndex,
        current: int,
        compacted: int,
        *,
        append: bool = True,
        walk_index: bool = False,
    ) -> None:
        self.txn = txn
        self.dbs = dbs
        self.index = index
        self.current = current
        self.compacted = compacted
        self.append = append
        self.walk_index = walk_index
        self.main = current + 1  # the main revision of the running request's writes
        self._sub = 0  # writes so far in the running request; they share ``main``
        self._pack = packer()  # this thread's: an executor runs on the applying thread
        # Records are written through a cursor with positional flags: a transaction's
        # put parses its keywords on every call, which cost 2,000 instructions a write.
        self._rev_put = txn.cursor(db=dbs.rev).put

    # -- entry point -----------------------------------------------------------------

    def run(self, req: Request, stamp: int = 0) -> Response:
        """Apply one request; it is refused (raising ``KVError``) before any write. Its
        writes take main revision ``stamp`` if given (the caller checked that it is
        above ``current``), else ``current + 1``; one that writes nothing leaves
        ``current`` as it was."""
        assert self._sub == 0
        main = self.main = stamp or self.current + 1
        if type(req) is PutRequest:  # the common case: no compares, no read revisions
            put = self._put(req)
            self.current = main
            self._sub = 0
            return put
        if isinstance(req, CompactionRequest):
            return self._compact(req.revision)
        path: list[bool] = []
        self._plan(req, path)
        res = self._op(req, iter(path))
        if self._sub:
            self.current = main
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
        rev = self.index.pick(key, None)
        if rev is None or rev & 1:
            return None
        return _record(self.txn, self.dbs, rev)

    # -- operations --------------------------------------------------------------------

    def _header(self) -> int:
        return self.main if self._sub else self.current

    def _op(self, op: Request, path: Iterator[bool]) -> OpResponse:
        if isinstance(op, PutRequest):
            return self._put(op)
        if isinstance(op, DeleteRangeRequest):
            return self._delete(op)
        if isinstance(op, RangeRequest):
            cur = self._header()
            return read_range(self.txn, self.dbs, self.index, op, cur, self.compacted, cur)
        assert isinstance(op, TxnRequest)
        ok = next(path)
        responses = tuple(self._op(sub, path) for sub in (op.success if ok else op.failure))
        return TxnResponse(self._header(), ok, responses)

    def _write(
        self, key: bytes, value: bytes, create: int, version: int, lease: int, tombstone: bool
    ) -> None:
        """Store one record at the running request's next revision (a live one's
        ``create`` and ``version`` remembered by the index)."""
        main, sub = self.main, self._sub
        self._sub = sub + 1
        doc = self._pack([key, value, create, main, version, lease, tombstone])
        # make_rev and rev_key, inline: this runs for every write on every replica
        rev = (main << _MAIN_SHIFT) | (sub << 1) | tombstone
        at = _REV.pack(main, sub)
        # Broken invariants, raised even under ``python -O``: the batch rolls back.
        if self.append:  # put's flags: dupdata, overwrite, append
            if not self._rev_put(at, doc, False, True, True):
                raise AssertionError(f"revision {(main, sub)} is not above every stored one")
        elif not self._rev_put(at, doc, False, False):
            raise AssertionError(f"revision {(main, sub)} is stored already: stamped twice")
        self.index.add(key, rev, REV_KEY_BYTES + len(doc), 0 if tombstone else create, version)

    def put(self, key: bytes, value: bytes, lease: int, stamp: int = 0) -> int:
        """``run(PutRequest(key, value, lease), stamp)`` for a checked plain put (no
        ``prev_kv``), without the request and response objects: the same writes. Returns
        the response's revision."""
        assert self._sub == 0
        main = self.main = stamp or self.current + 1
        self._replace(key, value, lease, False)
        self.current = main
        self._sub = 0
        return main

    def _put(self, op: PutRequest) -> PutResponse:
        main, key = self.main, op.key
        prev = self._replace(key, op.value, op.lease, op.prev_kv)
        if prev is None or not op.prev_kv:
            return PutResponse(main, None)
        _, value, create, mod, version, lease, _ = prev
        return PutResponse(main, KeyValue(key, value, create, mod, version, lease))

    def _replace(self, key: bytes, value: bytes, lease: int, want_prev: bool) -> list[Any] | None:
        """Write ``key``'s new record. With ``want_prev``, returns the unpacked record it
        replaces, if live; else None. The hot path of the state machine: an overwrite
        takes the old record's create revision and version from the index's memory
        when it has them, and reads the old record only when it must."""
        newest = self.index.newest(key)
        if newest is None or newest[0] & 1:  # no record, or a tombstone: a new key
            self._write(key, value, self.main, 1, lease, False)
            return None
        rev, create, version = newest
        prev: list[Any] | None = None
        if want_prev or not create:
            data = self.txn.get(rev_key(rev), db=self.dbs.rev)
            assert data is not None, f"the index points at a missing revision {rev_key(rev).hex()}"
            prev = unpack(data)
            create, version = prev[2], prev[4]
        self._write(key, value, create, version + 1, lease, False)
        return prev

    def _delete(self, op: DeleteRangeRequest) -> DeleteRangeResponse:
        victims = list(self.index.live(op.key, op.range_end, None))
        prev: list[KeyValue] = []
        for key, rev in victims:
            if op.prev_kv:
                prev.append(_record(self.txn, self.dbs, rev))
            self._write(key, b"", 0, 0, 0, True)
        return DeleteRangeResponse(self._header(), len(victims), tuple(prev))

    # -- compaction ----------------------------------------------------------------------

    def _compact(self, revision: int) -> CompactionResponse:
        if revision <= self.compacted:
            raise CompactedError(revision, self.compacted)
        if revision > self.current:
            raise FutureRevisionError(revision, self.current)
        if self.walk_index:
            for key in self.index.compactable(revision):
                self._compact_key(key, revision)
        else:
            seek = rev_key(make_rev(self.compacted + 1, 0, False))
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
            if rev_main(rev_from_key(rk, False)) > revision:
                break
            keys[unpack(cur.value())[0]] = None
            if len(keys) >= _COMPACT_CHUNK:
                return list(keys), rk + b"\x00"
            ok = cur.next()
        return list(keys), b""

    def _compact_key(self, key: bytes, revision: int) -> None:
        for rev in self.index.compact(key, revision):
            gone = self.txn.pop(rev_key(rev), db=self.dbs.rev)
            assert gone is not None, f"compaction lost track of {key!r} at {rev_key(rev).hex()}"
            self.index.shrink(REV_KEY_BYTES + len(gone))


_TARGETS = {
    CompareTarget.VERSION: lambda kv: kv.version,
    CompareTarget.CREATE: lambda kv: kv.create_revision,
    CompareTarget.MOD: lambda kv: kv.mod_revision,
    CompareTarget.LEASE: lambda kv: kv.lease,
}
