"""Reads over several ranges of a sharded cluster: scans, counts and sorted pages.

Theory of operation
-------------------
A scan of ``[key, range_end)`` is cut into pieces, one per range, each clipped to its
range's bounds and read at that range's leader (``Shards.read_piece``, which routes
a piece again, picked and clipped afresh, when the cache was stale). The pieces are
put together here so that the answer is the one a single range holding every key
would give (etcd's ``RangeResponse``):

* ascending by key (the default order): pieces in key order. With ``limit`` they are
  read one after the other, each asking only for what is still missing, and once the
  limit is reached the rest of the span is only counted (``count_only`` pieces, read
  concurrently), so ``count`` is the number of keys in the whole span and ``more`` says
  whether any were left out. Without ``limit`` every piece is read concurrently;
* descending by key: the same, walking the ranges from the end of the span backwards;
* any other sort (by version, create or mod revision, or value): every range returns
  its own first ``limit`` pairs in the asked order (concurrently), and they are merged
  here; the first ``limit`` of the merge are the answer, ties in key order as on one
  range. Sorting by value with ``keys_only`` fetches the values to sort by and drops
  them afterwards;
* ``count_only``: the ranges' counts, summed.

``revision`` in the answer is the highest of the pieces'. Each piece is linearizable on
its own, but the pieces are read at different moments: the scan as a whole is not a
snapshot across ranges (a write between two pieces may show in one and not the other).
A scan pinned at a ``revision`` reads every piece at that revision; a range answers for
its own history (a range refuses a revision above its own current one with
``FutureRevisionError``, which is raised as it is).

This module only composes pieces: it must never send a request itself (``Shards``
routes every piece) nor merge answers of pieces that overlap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from quorumkv.kv import ALL_KEYS, KeyValue, RangeRequest, RangeResponse, SortOrder, SortTarget
from quorumkv.shard import RangeDescriptor

if TYPE_CHECKING:
    from quorumkv.client._shards import Attempt, Shards

T = TypeVar("T")

Pick = Callable[[], Awaitable[RangeDescriptor]]
"""Which range a piece goes to, asked again on every try of the piece."""

SORT_KEYS: dict[SortTarget, Callable[[KeyValue], Any]] = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


def span_end(range_end: bytes, key: bytes) -> bytes:
    """etcd's ``range_end`` as an exclusive bound: ``key`` alone ends at ``key + 0``,
    ``ALL_KEYS`` at the end of the keyspace (``b""``)."""
    if not range_end:
        return key + b"\x00"
    return b"" if range_end == ALL_KEYS else range_end


def reaches_end(desc: RangeDescriptor, end: bytes) -> bool:
    """Whether ``desc`` holds the last part of a span that ends at ``end`` (b"": the
    end of the keyspace)."""
    return not desc.end or (bool(end) and desc.end >= end)


async def gather(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run ``coros`` concurrently; on the first error cancel the others, wait for them,
    and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def scan(
    shards: Shards, req: RangeRequest, serializable: bool, att: Attempt
) -> RangeResponse:
    """``req`` (with a ``range_end``) over every range it spans."""
    s = _Scan(shards, serializable, att)
    start, end = req.key, span_end(req.range_end, req.key)
    if req.count_only:
        count, revision = await s.count(req, start, end)
        return RangeResponse(revision, (), bool(req.limit) and count > req.limit, count)
    order = SortOrder.ASCEND if req.sort_order is SortOrder.NONE else req.sort_order
    if req.sort_target is SortTarget.KEY:
        return await s.by_key(req, start, end, reverse=order is SortOrder.DESCEND)
    return await s.merged(req, start, end, order)


class _Scan:
    """One scan's shards, consistency and deadline, and the ways to read its span."""

    __slots__ = ("att", "serializable", "shards")

    def __init__(self, shards: Shards, serializable: bool, att: Attempt) -> None:
        self.shards = shards
        self.serializable = serializable
        self.att = att

    def _from(self, key: bytes, end: bytes) -> Pick:
        """Pick the range holding ``key`` (the first piece of ``[key, end)``)."""
        return lambda: self.shards.locate(key, self.att, end)

    def _before(self, start: bytes, end: bytes) -> Pick:
        """Pick the range holding the last keys of ``[start, end)``."""

        async def pick() -> RangeDescriptor:
            return (await self.shards.spans(start, end, self.att))[-1]

        return pick

    async def _piece(
        self, req: RangeRequest, pick: Pick, lo: bytes, hi: bytes
    ) -> tuple[RangeResponse, RangeDescriptor]:
        return await self.shards.read_piece(req, pick, lo, hi, self.serializable, self.att)

    async def walk(self, req: RangeRequest, lo: bytes, hi: bytes) -> list[RangeResponse]:
        """Every piece of ``[lo, hi)``, read one after the other, in key order."""
        out: list[RangeResponse] = []
        while True:
            resp, desc = await self._piece(req, self._from(lo, hi), lo, hi)
            out.append(resp)
            if reaches_end(desc, hi):
                return out
            lo = desc.end

    async def fan(self, req: RangeRequest, lo: bytes, hi: bytes) -> list[RangeResponse]:
        """Every piece of ``[lo, hi)`` in key order, the ranges read concurrently (a
        range that split meanwhile is walked piece by piece)."""
        descs = await self.shards.spans(lo, hi, self.att)
        parts = await gather(self.walk(req, *d.clip(lo, hi)) for d in descs)
        return [r for part in parts for r in part]

    async def count(self, req: RangeRequest, lo: bytes, hi: bytes) -> tuple[int, int]:
        """``(keys in [lo, hi), highest revision)``, counted by every range at once."""
        counting = replace(req, count_only=True, limit=0, keys_only=False,
                           sort_order=SortOrder.NONE, sort_target=SortTarget.KEY)  # fmt: skip
        resps = await self.fan(counting, lo, hi)
        return sum(r.count for r in resps), max((r.revision for r in resps), default=0)

    async def by_key(
        self, req: RangeRequest, start: bytes, end: bytes, *, reverse: bool
    ) -> RangeResponse:
        order = SortOrder.DESCEND if reverse else SortOrder.NONE
        piece = replace(req, sort_order=order, sort_target=SortTarget.KEY)
        limit = req.limit
        if not limit:
            resps = await self.fan(piece, start, end)
            if reverse:
                resps.reverse()
            kvs = tuple(kv for r in resps for kv in r.kvs)
            revision = max((r.revision for r in resps), default=0)
            return RangeResponse(revision, kvs, False, sum(r.count for r in resps))
        found: list[KeyValue] = []
        count = revision = 0
        lo, hi = start, end
        while True:
            pick = self._before(start, hi) if reverse else self._from(lo, end)
            resp, desc = await self._piece(replace(piece, limit=limit - len(found)), pick, lo, hi)
            found += resp.kvs
            count += resp.count
            revision = max(revision, resp.revision)
            if (desc.start <= start) if reverse else reaches_end(desc, end):
                break
            if reverse:
                hi = desc.start
            else:
                lo = desc.end
            if len(found) >= limit:  # the rest is only counted
                rest, rev = await self.count(req, lo, hi)
                count += rest
                revision = max(revision, rev)
                break
        return RangeResponse(revision, tuple(found), count > limit, count)

    async def merged(
        self, req: RangeRequest, start: bytes, end: bytes, order: SortOrder
    ) -> RangeResponse:
        target = req.sort_target
        need_values = req.keys_only and target is SortTarget.VALUE
        piece = replace(req, keys_only=req.keys_only and not need_values)
        resps = await self.fan(piece, start, end)
        kvs = [kv for r in resps for kv in r.kvs]  # in key order: sort ties stay so
        kvs.sort(key=SORT_KEYS[target], reverse=order is SortOrder.DESCEND)
        if req.limit:
            del kvs[req.limit :]
        if need_values:
            kvs = [replace(kv, value=b"") for kv in kvs]
        count = sum(r.count for r in resps)
        revision = max((r.revision for r in resps), default=0)
        return RangeResponse(revision, tuple(kvs), bool(req.limit) and count > req.limit, count)
