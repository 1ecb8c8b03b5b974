"""``Shards``: how the client routes by range on a sharded cluster.

Theory of operation
-------------------
On a sharded cluster (the handshake says so) every key belongs to one range, a Raft
group with its own leader. The client keeps a ``RangeCache`` of descriptors (learned
with ``OP_RANGES`` from any node, which answers from its copy of the directory) and one
``Router`` per range: the router is the unsharded client's machinery (connection,
redirects to the leader, retries with the same session lane and sequence number) with
``route`` set, so that its requests carry the range id and version it was routed by.

A request is sent to the range the cache says holds its key. Two answers mean the
cache was stale: ERR_WRONG_RANGE (the node holds no replica of that range) and an
``OutOfRangeError`` result (the range no longer holds the key: it split). Both say
nothing was done, so the request is routed again, from a refreshed cache, with a fresh
sequence number of the new range's router: the refused try left no session anywhere,
and a try whose outcome was unknown was retried at the old range first (with its own
sequence number), where it is either answered from the session or refused. A
``StaleStampError`` (a write stamped across a change of leader) is simply sent again.

Requests over several ranges:

* a scan runs range by range in key order, each piece clipped to its range, and stops
  once ``limit`` keys are found (the rest of the ranges are then only counted, so
  ``count`` and ``more`` stay right). A sort other than ascending by key fetches every
  piece whole and sorts here. Each piece is linearizable; the scan as a whole is not
  one snapshot across ranges (a write between two pieces may show in one only);
* a delete of a span runs range by range: atomic inside each range, not across;
* a transaction whose keys lie in several ranges raises ``CrossRangeError`` before
  anything is sent;
* a compaction runs on every range (a range whose revision is below the one asked is
  compacted to its own current revision).

This module must never send a request to a range its cache does not name for the key,
nor retry a write whose outcome is unknown anywhere but where it was first sent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from quorumkv.errors import (
    CompactedError,
    CrossRangeError,
    FutureRevisionError,
    OutOfRangeError,
    ProtocolError,
    StaleStampError,
    UnavailableError,
)
from quorumkv.kv import (
    ALL_KEYS,
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KVError,
    PutRequest,
    RangeRequest,
    RangeResponse,
    Request,
    Result,
    SortOrder,
    SortTarget,
    TxnRequest,
)
from quorumkv.kv._codec import encode_request
from quorumkv.net import OP_RANGES
from quorumkv.shard import RangeCache, RangeDescriptor, WrongRange

from ._route import Router, WrongRangeSignal

if TYPE_CHECKING:
    from ._route import Encoder

_MAX_REROUTES = 50
"""Stale-cache answers one request may meet before the client gives up."""
_SORT_KEYS: dict[SortTarget, Callable[[Any], Any]] = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


def request_spans(req: Request) -> list[tuple[bytes, bytes]]:
    """Every ``(key, range_end)`` a request touches (etcd's range form)."""
    if isinstance(req, PutRequest):
        return [(req.key, b"")]
    if isinstance(req, RangeRequest | DeleteRangeRequest):
        return [(req.key, req.range_end)]
    if isinstance(req, TxnRequest):
        out = [(c.key, b"") for c in req.compare]
        for op in (*req.success, *req.failure):
            out += request_spans(op)
        return out
    return []


def _end(range_end: bytes, key: bytes) -> bytes:
    """etcd's range end as a bound: b"" is the end of the keyspace."""
    if not range_end:
        return key + b"\x00"
    return b"" if range_end == ALL_KEYS else range_end


class Shards:
    """The range cache and the per-range routers of one client."""

    def __init__(self, main: Router) -> None:
        self.main = main
        self.cache = RangeCache()
        self.nodes: dict[int, str] = {}
        self.routers: dict[int, Router] = {}

    async def close(self) -> None:
        routers, self.routers = list(self.routers.values()), {}
        for r in routers:
            await r.close()

    # -- the cache -------------------------------------------------------------------

    async def refresh(self, start: bytes, end: bytes, deadline: float) -> None:
        """Ask any node for the descriptors over ``[start, end)`` (end b"": to the end)."""
        main = self.main
        budget = max(0.05, deadline - time.monotonic())
        answer, addr = await main._call(OP_RANGES, [start, end], budget, "range lookup")
        try:
            descs = [RangeDescriptor.from_wire(d) for d in answer["ranges"]]
            nodes = {int(k): str(v) for k, v in answer["nodes"].items()}
        except Exception as e:
            raise ProtocolError(f"{addr} sent an unreadable range list: {e!r}") from None
        self.nodes.update(nodes)
        self.cache.update(descs)

    async def locate(self, key: bytes, deadline: float) -> RangeDescriptor:
        desc = self.cache.lookup(key)
        if desc is None:
            await self.refresh(key, b"", deadline)
            desc = self.cache.lookup(key)
            if desc is None:
                raise UnavailableError(f"no range holds {key!r}: the directory has a gap")
        return desc

    async def spans(self, start: bytes, end: bytes, deadline: float) -> list[RangeDescriptor]:
        """The ranges over ``[start, end)``, in key order, refreshing what is missing."""
        out: list[RangeDescriptor] = []
        at = start
        while True:
            desc = await self.locate(at, deadline)
            out.append(desc)
            if not desc.end or (end and desc.end >= end):
                return out
            at = desc.end

    def stale(self, desc: RangeDescriptor) -> None:
        self.cache.invalidate(desc.range_id)

    def router(self, desc: RangeDescriptor) -> Router:
        r = self.routers.get(desc.range_id)
        main = self.main
        if r is None:
            endpoints = list(dict.fromkeys([*self.nodes.values(), *main.endpoints]))
            r = Router(
                endpoints,
                timeout=main._timeout,
                connect_timeout=main._connect_timeout,
                attempt_timeout=main._attempt_timeout,
            )
            r.sharded = True
            self.routers[desc.range_id] = r
            lead = self.nodes.get(int(desc.leader)) if desc.leader else None
            if lead is not None:
                r._leader_addr = lead
        r.route = (desc.range_id, desc.epoch.version)
        return r

    # -- writes ----------------------------------------------------------------------

    async def write(
        self,
        timeout: float | None,
        what: str,
        req: object,
        encode: Encoder,
        *args: object,
    ) -> tuple[Result, str]:
        """A write of one range (``req`` names its keys; None: ``args[0]`` is the key
        of a put), routed again while the answers say the cache was stale."""
        deadline = time.monotonic() + self.main._budget(timeout)
        if isinstance(req, CompactionRequest):
            return await self._compact(req, deadline)
        if isinstance(req, DeleteRangeRequest) and req.range_end:
            return await self._delete(req, deadline)
        if isinstance(req, PutRequest | RangeRequest | DeleteRangeRequest | TxnRequest):
            spans = request_spans(req)
        else:
            key = args[0]
            assert isinstance(key, bytes), "a write without a request is a put: its key first"
            spans = [(key, b"")]
        return await self._routed(spans, deadline, what, encode, *args)

    async def _routed(
        self,
        spans: list[tuple[bytes, bytes]],
        deadline: float,
        what: str,
        encode: Encoder,
        *args: object,
    ) -> tuple[Result, str]:
        for _ in range(_MAX_REROUTES):
            desc = await self._one_range(spans, deadline)
            router = self.router(desc)
            try:
                result, addr = await router._write(self._left(deadline), what, encode, *args)
            except WrongRangeSignal as e:
                self._hint(e)
                self.stale(desc)
                continue
            if isinstance(result, OutOfRangeError):
                self.stale(desc)
                continue
            if isinstance(result, StaleStampError):
                continue
            return result, addr
        raise UnavailableError(f"{what}: the range cache stayed stale over {_MAX_REROUTES} tries")

    async def _one_range(
        self, spans: list[tuple[bytes, bytes]], deadline: float
    ) -> RangeDescriptor:
        found: dict[int, RangeDescriptor] = {}
        for key, range_end in spans:
            for d in await self.spans(key, _end(range_end, key), deadline):
                found[d.range_id] = d
        if len(found) > 1:
            raise CrossRangeError(
                [(d.range_id, d.start, d.end) for d in sorted(found.values(), key=_start)]
            )
        (desc,) = found.values()
        return desc

    async def _delete(self, req: DeleteRangeRequest, deadline: float) -> tuple[Result, str]:
        deleted, revision, addr = 0, 0, ""
        prev: list[Any] = []
        at, end = req.key, _end(req.range_end, req.key)
        while True:
            desc = await self.locate(at, deadline)
            lo, hi = desc.clip(at, end)
            piece = replace(req, key=lo, range_end=hi or ALL_KEYS)
            spans = [(lo, piece.range_end)]
            result, addr = await self._routed(spans, deadline, "delete", encode_request, piece)
            if isinstance(result, KVError):
                return result, addr
            assert isinstance(result, DeleteRangeResponse)
            deleted += result.deleted
            prev += result.prev_kvs
            revision = max(revision, result.revision)
            if not desc.end or (end and desc.end >= end):
                return DeleteRangeResponse(revision, deleted, tuple(prev)), addr
            at = desc.end

    async def _compact(self, req: CompactionRequest, deadline: float) -> tuple[Result, str]:
        descs = await self.spans(b"", b"", deadline)
        last: Result = CompactionResponse(0)
        addr = ""
        for desc in descs:
            piece = req
            for _ in range(3):
                spans = [(desc.start, b"")]
                result, addr = await self._routed(spans, deadline, "compact", encode_request, piece)
                if isinstance(result, FutureRevisionError) and result.current > 0:
                    piece = CompactionRequest(result.current)
                    continue
                break
            if isinstance(result, CompactedError):
                continue
            if isinstance(result, KVError):
                return result, addr
            last = result
        return last, addr

    # -- reads -----------------------------------------------------------------------

    async def read(
        self, req: RangeRequest, serializable: bool, timeout: float | None, what: str
    ) -> RangeResponse:
        deadline = time.monotonic() + self.main._budget(timeout)
        if not req.range_end:
            return await self._piece(req, serializable, deadline, what, req.key)
        natural = req.sort_order in (SortOrder.NONE, SortOrder.ASCEND) and (
            req.sort_target is SortTarget.KEY
        )
        at, end = req.key, _end(req.range_end, req.key)
        kvs: list[Any] = []
        count, revision = 0, 0
        while True:
            desc = await self.locate(at, deadline)
            lo, hi = desc.clip(at, end)
            full = natural and req.limit and len(kvs) >= req.limit
            piece = replace(
                req,
                key=lo,
                range_end=hi or ALL_KEYS,
                limit=req.limit - len(kvs) if natural and req.limit and not full else 0,
                count_only=req.count_only or bool(full),
                sort_order=SortOrder.NONE,
                sort_target=SortTarget.KEY,
            )
            resp = await self._piece(piece, serializable, deadline, what, lo)
            count += resp.count
            revision = max(revision, resp.revision)
            if not piece.count_only:
                kvs += resp.kvs
            if not desc.end or (end and desc.end >= end):
                break
            at = desc.end
        if not natural:
            kvs.sort(key=_SORT_KEYS[req.sort_target], reverse=req.sort_order is SortOrder.DESCEND)
            if req.limit:
                del kvs[req.limit :]
        more = bool(req.limit) and count > req.limit
        return RangeResponse(revision, tuple(kvs), more, count)

    async def _piece(
        self, req: RangeRequest, serializable: bool, deadline: float, what: str, key: bytes
    ) -> RangeResponse:
        command = encode_request(0, 0, req)
        for _ in range(_MAX_REROUTES):
            desc = await self.locate(key, deadline)
            router = self.router(desc)
            try:
                return await router._read(command, serializable, self._left(deadline), what)
            except WrongRangeSignal as e:
                self._hint(e)
                self.stale(desc)
            except OutOfRangeError:
                self.stale(desc)
        raise UnavailableError(f"{what}: the range cache stayed stale over {_MAX_REROUTES} tries")

    # -- helpers ---------------------------------------------------------------------

    def _hint(self, signal: WrongRangeSignal) -> None:
        with contextlib.suppress(Exception):  # a hint we cannot read: the refresh will do
            self.cache.handle_wrong_range(WrongRange.from_wire(signal.body))

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UnavailableError("the deadline passed while finding the range of the keys")
        return left


def _start(d: RangeDescriptor) -> bytes:
    return d.start
