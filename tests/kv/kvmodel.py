"""A deliberately naive reference for ``MVCCStore``: a list of every write ever made.

State at revision R is recomputed by replaying every event with ``main <= R``; the
compacted revision is only a number that makes older reads fail, since compaction must
never change what a read at or above it sees. Written from etcd's documented semantics,
not from ``quorumkv.kv._exec``, so the two can disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from quorumkv.kv import (
    ALL_KEYS,
    CompactedError,
    CompactionRequest,
    CompactionResponse,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    FutureRevisionError,
    KeyValue,
    KVError,
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


@dataclass(frozen=True)
class Event:
    main: int
    key: bytes
    kv: KeyValue | None  # None: a deletion


class Model:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.revision = 1
        self.compacted = 0

    def state(self, rev: int) -> dict[bytes, KeyValue]:
        out: dict[bytes, KeyValue] = {}
        for e in self.events:
            if e.main > rev:
                break
            if e.kv is None:
                out.pop(e.key, None)
            else:
                out[e.key] = e.kv
        return out

    def run(self, req: Request) -> Response | KVError:
        try:
            if isinstance(req, CompactionRequest):
                if req.revision <= self.compacted:
                    raise CompactedError(req.revision, self.compacted)
                if req.revision > self.revision:
                    raise FutureRevisionError(req.revision, self.revision)
                self.compacted = req.revision
                return CompactionResponse(self.revision)
            before = self.state(self.revision)
            path: list[bool] = []
            self._plan(req, before, path)
            self._wrote = False
            res = self._op(req, iter(path))
            if self._wrote:
                self.revision += 1
            return res
        except KVError as e:
            return e

    def _check(self, rev: int, current: int) -> None:
        if rev > current:
            raise FutureRevisionError(rev, current)
        if 0 < rev < self.compacted:
            raise CompactedError(rev, self.compacted)

    def _plan(self, op: Request, before: dict[bytes, KeyValue], path: list[bool]) -> None:
        if isinstance(op, RangeRequest):
            self._check(op.revision, self.revision)
        elif isinstance(op, TxnRequest):
            ok = all(_holds(c, before.get(c.key)) for c in op.compare)
            path.append(ok)
            for sub in op.success if ok else op.failure:
                self._plan(sub, before, path)

    def _now(self) -> int:
        return self.revision + 1 if self._wrote else self.revision

    def _op(self, op: Request, path: object) -> OpResponse:
        assert not isinstance(op, CompactionRequest)
        now = self.state(self.revision + 1)  # includes this request's writes so far
        main = self.revision + 1
        if isinstance(op, PutRequest):
            prev = now.get(op.key)
            create, version = (main, 1) if prev is None else (prev.create_revision, prev.version)
            kv = KeyValue(op.key, op.value, create, main, version + (prev is not None), op.lease)
            self.events.append(Event(main, op.key, kv))
            self._wrote = True
            return PutResponse(main, prev if op.prev_kv else None)
        if isinstance(op, DeleteRangeRequest):
            gone = [now[k] for k in sorted(now) if _in(k, op.key, op.range_end)]
            for kv in gone:
                self.events.append(Event(main, kv.key, None))
            self._wrote = self._wrote or bool(gone)
            return DeleteRangeResponse(self._now(), len(gone), tuple(gone) if op.prev_kv else ())
        if isinstance(op, RangeRequest):
            current = self._now()
            self._check(op.revision, current)
            view = now if op.revision in (0, current) else self.state(op.revision)
            return _range(view, op, current)
        ok = next(path)  # type: ignore[call-overload]
        responses = tuple(self._op(sub, path) for sub in (op.success if ok else op.failure))
        return TxnResponse(self._now(), ok, responses)


def _in(k: bytes, key: bytes, end: bytes) -> bool:
    if not end:
        return k == key
    return key <= k and (end == ALL_KEYS or k < end)


def _holds(c: Compare, kv: KeyValue | None) -> bool:
    if c.target is CompareTarget.VALUE:
        if kv is None:
            return False
        mine: bytes | int = kv.value
    elif kv is None:
        mine = 0
    else:
        mine = {
            CompareTarget.VERSION: kv.version,
            CompareTarget.CREATE: kv.create_revision,
            CompareTarget.MOD: kv.mod_revision,
            CompareTarget.LEASE: kv.lease,
        }[c.target]
    ops = {
        CompareOp.EQUAL: lambda a, b: a == b,
        CompareOp.NOT_EQUAL: lambda a, b: a != b,
        CompareOp.LESS: lambda a, b: a < b,
        CompareOp.GREATER: lambda a, b: a > b,
    }
    return bool(ops[c.op](mine, c.value))


def _range(view: dict[bytes, KeyValue], req: RangeRequest, header: int) -> RangeResponse:
    kvs = [view[k] for k in sorted(view) if _in(k, req.key, req.range_end)]
    count = len(kvs)
    order = SortOrder.ASCEND if req.sort_order is SortOrder.NONE else req.sort_order
    field = {
        SortTarget.KEY: lambda kv: kv.key,
        SortTarget.VERSION: lambda kv: kv.version,
        SortTarget.CREATE: lambda kv: kv.create_revision,
        SortTarget.MOD: lambda kv: kv.mod_revision,
        SortTarget.VALUE: lambda kv: kv.value,
    }[req.sort_target]
    kvs.sort(key=field, reverse=order is SortOrder.DESCEND)
    if req.limit:
        kvs = kvs[: req.limit]
    if req.count_only:
        kvs = []
    if req.keys_only:
        kvs = [
            KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in kvs
        ]
    return RangeResponse(header, tuple(kvs), bool(req.limit) and count > req.limit, count)
