"""``Shards``: how the client routes by range on a sharded cluster.

Theory of operation
-------------------
On a sharded cluster (the handshake says so) every key belongs to one range, a Raft
group with its own leader. The client keeps a ``RangeCache`` of descriptors, learned with
``OP_RANGES`` from any node that hosts the meta range (which answers from its copy of
the directory), and one ``Router`` per range: the unsharded client's machinery
(redirects to the leader, backoff, deadlines) with that range's replicas as its
addresses and that range's leader as its hint, so a redirect for one range never moves
another. The routers share one ``Pool``: one connection per node, carrying every
range's requests to it. Every request carries ``[range_id, version, ...]`` of the
descriptor it was routed by.

Three answers mean the cache was stale, and say that nothing was done:
ERR_WRONG_RANGE (the node holds no replica of that range: the hint it sends is learned,
the range is forgotten, the router avoids that node), an ``OutOfRangeError`` result (the
range no longer holds the key: it split), and, for a cache miss, no answer at all. The
request is then routed again from a refreshed cache. A ``StaleStampError`` (a write
stamped across a change of leader) is sent again as it is. The first two reroutes are
immediate; later ones back off (a split's right half exists on a replica only once it
applied the split), until the request's deadline.

Reads of a client built with ``read_from`` ``"follower"`` or ``"any"`` are spread over
the voters of the range's descriptor (``_replicas``): one try at each replica picked,
then the range's leader through its router as any request. A replica that has not
applied the split that created the range, or holds no replica of it, is just passed
over; one that applied a split the cache missed answers ``OutOfRangeError`` as a leader
would.

Exactly-once. A write takes ONE session lane of the client (``_lanes``) and encodes its
command once, for that ``(client, seq)``; every try, at every range and node it is routed
to, sends those same bytes. The state machine looks a command's session up before it
checks the bounds, and a split copies the parent's sessions to both halves, so a retry
of a write that was applied is answered from the session wherever the key went; a
refusal (``OutOfRangeError``, ``StaleStampError``) records nothing, so the retry of the
same sequence number runs for real where it belongs. A try whose outcome was unknown
makes the call's give-up error ``RequestTimeoutError``, across reroutes too.

An operator's split (``split``) and leader transfer (``transfer``, the placement
driver's own ``OP_META`` request) go to the range's leader like any request of the
range; neither is sent again once a try's outcome is unknown.

Requests over several ranges (``_scan`` reads them):

* a scan runs range by range in key order, each piece clipped to its range; see
  ``_scan`` for ``limit``, ``count``, ``more`` and the sort orders;
* a delete of a span runs range by range, in key order: atomic inside each range, NOT
  across ranges (a failure part way leaves the earlier ranges' keys deleted); a piece
  routed again after a split is clipped again, and a re-clipped piece is a new command
  with a sequence number of its own;
* a transaction whose keys (compares and operations, nested ones included) lie in more
  than one range raises ``CrossRangeError`` naming them before anything is sent;
* a compaction runs on every range in turn (a range whose revision is below the one
  asked is compacted to its own current revision; one that is compacted further
  already is left as it is). A range split off while the compaction runs may be left
  uncompacted.

This module must never send a write anywhere with a ``(client, seq)`` other than the
one it took for that command, never send a piece of a request that reaches beyond the
bounds of the descriptor it names, and never answer with a result it did not receive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from quorumkv.client._lanes import Lane
from quorumkv.client._policy import ELECTION_BACKOFF_MAX, next_delay
from quorumkv.client._pool import Pool
from quorumkv.client._requests import decode, expect, expect_dict
from quorumkv.client._route import Router, WrongRangeSignal, closed_error
from quorumkv.client._scan import Pick, reaches_end, scan, span_end
from quorumkv.errors import (
    ClientError,
    CompactedError,
    CrossRangeError,
    FutureRevisionError,
    NotLeaderError,
    OutOfRangeError,
    ProtocolError,
    RequestTimeoutError,
    StaleStampError,
    TooManyRequestsError,
    UnavailableError,
)
from quorumkv.kv import (
    ALL_KEYS,
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    KVError,
    PutRequest,
    RangeRequest,
    RangeResponse,
    Request,
    Result,
    TxnRequest,
)
from quorumkv.kv._codec import encode_request
from quorumkv.net import OP_META, OP_RANGE_READ, OP_RANGE_WRITE, OP_RANGES, OP_SPLIT
from quorumkv.shard import RangeCache, RangeDescriptor, RangeId, WrongRange

if TYPE_CHECKING:
    from quorumkv.client._route import Encoder

IMMEDIATE_REROUTES = 2
"""Stale-cache answers one request follows at once; later ones wait a backoff first."""


def request_spans(req: Request) -> list[tuple[bytes, bytes]]:
    """Every ``(key, range_end)`` a request touches (etcd's range form): the keys of a
    transaction's compares and of its operations, nested transactions included."""
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


@dataclass(slots=True)
class Attempt:
    """One call over the ranges: its name, its deadline (loop time), and whether any
    try of it may have been applied (then giving up says so)."""

    what: str
    deadline: float
    unknown: bool = False


class Shards:
    """The range cache, the per-range routers and the connection pool of one client."""

    def __init__(self, main: Router) -> None:
        self.main = main
        self.cache = RangeCache()
        self.nodes: dict[int, str] = {}
        """Node id → address, from ``OP_RANGES`` answers."""
        self.states: dict[int, str] = {}
        """Node id → state (``up``, ``draining``, ``removed``), from the same answers."""
        self.routers: dict[int, Router] = {}
        self._epochs: dict[int, object] = {}
        """The epoch each router was last pointed at its replicas by."""
        self.pool = Pool(closed_error)

    async def close(self) -> None:
        routers, self.routers = list(self.routers.values()), {}
        for r in routers:
            await r.close()
        await self.pool.close()

    def attempt(self, timeout: float | None, what: str) -> Attempt:
        loop = self.main._bind()
        return Attempt(what, loop.time() + self.main._budget(timeout))

    def reset(self) -> None:
        """Forget every cached descriptor (the routers and connections stay)."""
        self.cache = RangeCache()

    # -- the cache -------------------------------------------------------------------

    async def refresh(self, start: bytes, end: bytes, att: Attempt) -> None:
        """Learn the descriptors over ``[start, end)`` (end b"": to the end) from a node
        hosting the meta range."""
        main = self.main
        answer, addr = await main._call(OP_RANGES, [start, end], self.left(att), "range lookup")
        doc = expect_dict(answer, "a range list", addr)
        try:
            descs = [RangeDescriptor.from_wire(d) for d in doc["ranges"]]
            nodes = {int(k): str(v) for k, v in doc["nodes"].items()}
            states = {int(k): str(v) for k, v in doc.get("states", {}).items()}
        except Exception as e:
            raise ProtocolError(f"{addr} sent an unreadable range list: {e!r}") from None
        self.nodes.update(nodes)
        self.states.update(states)
        self.cache.update(descs)

    async def locate(self, key: bytes, att: Attempt, upto: bytes | None = None) -> RangeDescriptor:
        """The range holding ``key``; on a miss, the directory is asked for the ranges
        over ``[key, upto)`` (default: ``key``'s alone)."""
        desc = self.cache.lookup(key)
        if desc is None:
            await self.refresh(key, key + b"\x00" if upto is None else upto, att)
            desc = self.cache.lookup(key)
            if desc is None:
                raise UnavailableError(f"{att.what}: no range holds {key!r} (a directory gap)")
        return desc

    async def spans(self, start: bytes, end: bytes, att: Attempt) -> list[RangeDescriptor]:
        """The ranges over ``[start, end)`` (end b"": to the end), in key order."""
        out: list[RangeDescriptor] = []
        at = start
        while True:
            desc = await self.locate(at, att, end)
            out.append(desc)
            if reaches_end(desc, end):
                return out
            at = desc.end

    def router(self, desc: RangeDescriptor) -> Router:
        """The router of ``desc``'s range, pointed at its replicas and leader."""
        rid = int(desc.range_id)
        r = self.routers.get(rid)
        if r is not None and self._epochs.get(rid) == desc.epoch:
            return r
        nodes = self.nodes
        addrs = [nodes[int(x.node_id)] for x in desc.replicas if int(x.node_id) in nodes]
        leader = nodes.get(int(desc.leader)) if desc.leader else None
        if r is None:
            main = self.main
            r = Router(
                addrs or main.endpoints,
                timeout=main._timeout,
                connect_timeout=main._connect_timeout,
                attempt_timeout=main._attempt_timeout,
                read_from=main._read_from,
                pool=self.pool,
            )
            r.sharded = True
            self.routers[rid] = r
            r._retarget([], leader)
        else:
            r._retarget(addrs, leader)
        self._epochs[rid] = desc.epoch
        return r

    # -- one try, and what a stale answer costs ----------------------------------------

    async def send(
        self, desc: RangeDescriptor, op: int, body: list[Any], att: Attempt
    ) -> tuple[Result, str] | None:
        """One routed call to ``desc``'s range (with the router's own retries). None: the
        answer said the cache was stale (nothing was done); route again."""
        router = self.router(desc)
        try:
            if op == OP_RANGE_READ and router._replica_reads is not None:
                nodes = self.nodes
                voters = [nodes[v] for v in desc.voters() if v in nodes]
                leader = router._leader_addr or nodes.get(int(desc.leader))
                answer, addr = await router._spread(
                    voters, leader, op, body, self.left(att), att.what
                )
            else:
                answer, addr = await router._call(op, body, self.left(att), att.what)
        except WrongRangeSignal as e:
            att.unknown = att.unknown or e.unknown
            with contextlib.suppress(Exception):  # an unreadable hint: the refresh will do
                self.cache.handle_wrong_range(WrongRange.from_wire(e.body))
            self.cache.invalidate(desc.range_id)
            router._avoid(e.addr)
            return None
        except (UnavailableError, NotLeaderError, TooManyRequestsError) as e:
            if att.unknown:
                raise RequestTimeoutError(f"{e}; an earlier try's outcome is unknown") from None
            raise
        result = decode(answer, addr)
        if isinstance(result, OutOfRangeError):
            self.cache.invalidate(desc.range_id)
            return None
        if isinstance(result, StaleStampError):
            return None
        return result, addr

    async def pause(self, stale: int, att: Attempt) -> int:
        """After the ``stale``-th stale answer of a request: wait (or not), and return
        the count to pass next time. Raises the give-up error at the deadline."""
        if stale < IMMEDIATE_REROUTES:
            return stale + 1
        main = self.main
        loop = asyncio.get_running_loop()
        remaining = att.deadline - loop.time()
        delay = next_delay(stale - IMMEDIATE_REROUTES, main._rng, remaining, ELECTION_BACKOFF_MAX)
        if delay is None:
            raise self.give_up(att, f"the ranges kept moving ({stale + 1} stale answers)")
        await main._sleep(delay)
        return stale + 1

    def left(self, att: Attempt) -> float:
        """Seconds left to ``att``'s deadline; raises its give-up error when none are."""
        left = att.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise self.give_up(att, "the deadline passed while finding the range of the keys")
        return left

    @staticmethod
    def give_up(att: Attempt, why: str) -> ClientError:
        if att.unknown:
            return RequestTimeoutError(f"{att.what}: {why}; an earlier try's outcome is unknown")
        return UnavailableError(f"{att.what}: {why}")

    # -- writes ----------------------------------------------------------------------

    async def write(
        self, timeout: float | None, what: str, encode: Encoder, *args: object
    ) -> tuple[Result, str]:
        """A write, routed by the keys it names: ``args[0]`` is a request for
        ``encode_request``, the key of a put for ``encode_put``."""
        att = self.attempt(timeout, what)
        req = args[0]
        if encode is encode_request:
            assert isinstance(req, PutRequest | DeleteRangeRequest | TxnRequest | CompactionRequest)
            if isinstance(req, CompactionRequest):
                return await self._compact(req, att)
            if isinstance(req, DeleteRangeRequest) and req.range_end:
                return await self._delete(req, att)
            spans = request_spans(req)
        else:
            assert isinstance(req, bytes), "a write without a request is a put: its key first"
            spans = [(req, b"")]
        lanes = self.main._lanes
        lane = lanes.take()
        try:
            command = encode(lane.client, lane.seq, *args)  # raises for a bad request
            stale = 0
            while True:
                desc = await self._one_range(spans, att)
                body = [desc.range_id, desc.epoch.version, command]
                got = await self.send(desc, OP_RANGE_WRITE, body, att)
                if got is not None:
                    return got
                stale = await self.pause(stale, att)
        finally:
            lanes.give(lane)

    async def _one_range(self, spans: list[tuple[bytes, bytes]], att: Attempt) -> RangeDescriptor:
        """The one range holding every span, or ``CrossRangeError`` naming them."""
        found: dict[int, RangeDescriptor] = {}
        for key, range_end in spans:
            for d in await self.spans(key, span_end(range_end, key), att):
                found[d.range_id] = d
        if len(found) > 1:
            named = sorted(found.values(), key=lambda d: d.start)
            raise CrossRangeError([(d.range_id, d.start, d.end) for d in named])
        (desc,) = found.values()
        return desc

    async def _piece_write(
        self, make: Callable[[RangeDescriptor], Request], at: bytes, end: bytes, att: Attempt
    ) -> tuple[RangeDescriptor, Result, str]:
        """Write ``make(desc)`` to the range holding ``at`` (``end``: where the request
        ends, for the lookup), routed again while the answers are stale. The lane is
        kept while the piece's bytes stay the same, and replaced when they change."""
        lanes = self.main._lanes
        lane: Lane | None = None
        sent: Request | None = None
        command = b""
        stale = 0
        try:
            while True:
                desc = await self.locate(at, att, end)
                piece = make(desc)
                if piece != sent:
                    if lane is not None:
                        lanes.give(lane)
                    lane = lanes.take()
                    command, sent = encode_request(lane.client, lane.seq, piece), piece
                body = [desc.range_id, desc.epoch.version, command]
                got = await self.send(desc, OP_RANGE_WRITE, body, att)
                if got is not None:
                    return desc, *got
                stale = await self.pause(stale, att)
        finally:
            if lane is not None:
                lanes.give(lane)

    async def _delete(self, req: DeleteRangeRequest, att: Attempt) -> tuple[Result, str]:
        deleted, revision, addr = 0, 0, ""
        prev: list[KeyValue] = []
        at, end = req.key, span_end(req.range_end, req.key)

        def piece(desc: RangeDescriptor) -> Request:  # of [at, end): ``at`` as it is now
            lo, hi = desc.clip(at, end)
            return replace(req, key=lo, range_end=hi or ALL_KEYS)

        while True:
            desc, result, addr = await self._piece_write(piece, at, end, att)
            if isinstance(result, KVError):
                return result, addr
            resp = expect(result, DeleteRangeResponse, addr)
            deleted += resp.deleted
            prev += resp.prev_kvs
            revision = max(revision, resp.revision)
            if reaches_end(desc, end):
                return DeleteRangeResponse(revision, deleted, tuple(prev)), addr
            at = desc.end

    async def _compact(self, req: CompactionRequest, att: Attempt) -> tuple[Result, str]:
        """Compact every range in key order. A range whose own revision is below the one
        asked (nothing was written there since) is compacted at its revision, one never
        written to is passed over; if no range has reached the revision at all, the
        answer is the ``FutureRevisionError`` a single range would give."""
        last: Result = CompactionResponse(0)
        addr, at = "", b""
        reached, newest = False, 0
        while True:
            ask = req
            for _ in range(3):
                desc, result, addr = await self._piece_write(_always(ask), at, b"", att)
                if isinstance(result, FutureRevisionError) and result.current < ask.revision:
                    newest = max(newest, result.current)
                    if result.current > 0:
                        ask = CompactionRequest(result.current)  # nothing newer in this range
                        continue
                break
            reached = reached or (ask is req and not isinstance(result, FutureRevisionError))
            if isinstance(result, KVError):
                if not isinstance(result, CompactedError | FutureRevisionError):
                    return result, addr
            else:
                last = result
            if not desc.end:
                if not reached:
                    return FutureRevisionError(req.revision, newest), addr
                return last, addr
            at = desc.end

    # -- reads -----------------------------------------------------------------------

    async def read(
        self, req: RangeRequest, serializable: bool, timeout: float | None, what: str
    ) -> RangeResponse:
        att = self.attempt(timeout, what)
        if not req.range_end:
            pick = self._at(req.key, att)
            resp, _ = await self.read_piece(req, pick, b"", b"", serializable, att)
            return resp
        return await scan(self, req, serializable, att)

    def _at(self, key: bytes, att: Attempt, end: bytes | None = None) -> Pick:
        return lambda: self.locate(key, att, end)

    async def read_piece(
        self,
        req: RangeRequest,
        pick: Pick,
        lo: bytes,
        hi: bytes,
        serializable: bool,
        att: Attempt,
    ) -> tuple[RangeResponse, RangeDescriptor]:
        """``req`` clipped to ``[lo, hi)`` and to the range ``pick()`` returns, read there;
        picked and clipped again while the answers are stale. A single-key ``req``
        (no ``range_end``) is sent as it is."""
        stale = 0
        while True:
            desc = await pick()
            piece = req
            if req.range_end:
                a, b = desc.clip(lo, hi)
                piece = replace(req, key=a, range_end=b or ALL_KEYS)
            body = [desc.range_id, desc.epoch.version, encode_request(0, 0, piece), serializable]
            got = await self.send(desc, OP_RANGE_READ, body, att)
            if got is not None:
                result, addr = got
                return expect(result, RangeResponse, addr), desc
            stale = await self.pause(stale, att)

    # -- operator's split --------------------------------------------------------------

    async def split(
        self, key: bytes, timeout: float | None
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        """Split the range holding ``key`` at ``key`` (see ``AsyncClient.split``)."""
        att = self.attempt(timeout, "split")
        self.reset()
        stale = 0
        while True:
            desc = await self.locate(key, att)
            if key and desc.start == key:
                # A split by the cluster itself, or an earlier try whose answer was lost:
                # the node would refuse a split at a range's start as malformed.
                raise ClientError(
                    f"split: cannot split at {key!r}: range {desc.range_id} starts there "
                    "already (nothing to split)"
                )
            router = self.router(desc)
            body = [desc.range_id, desc.epoch.version, key]
            try:
                answer, at = await router._call(
                    OP_SPLIT, body, self.left(att), "split", idempotent=False, slow=True
                )
            except WrongRangeSignal as e:  # the node holds no replica: nothing was done
                self.cache.invalidate(desc.range_id)
                router._avoid(e.addr)
                stale = await self.pause(stale, att)
                continue
            doc = expect_dict(answer, "a split answer", at)
            try:
                left = RangeDescriptor.from_wire(doc["left"])
                right = RangeDescriptor.from_wire(doc["right"])
            except Exception as e:
                raise ProtocolError(f"{at} sent an unreadable split answer: {e!r}") from None
            self.cache.update([left, right])
            return left, right

    # -- operator's leader transfer ----------------------------------------------------

    async def transfer(self, range_id: int, to: int, timeout: float | None) -> int:
        """Hand range ``range_id``'s leadership to node ``to`` (see
        ``AsyncClient.transfer_range_leader``): the placement driver's own request
        (``OP_META`` ``transfer``), sent to the range's leader."""
        att = self.attempt(timeout, "transfer_range_leader")
        stale = 0
        while True:
            self.reset()
            await self.refresh(b"", b"", att)
            desc = self.cache.get(RangeId(range_id))
            if desc is None:
                raise ClientError(f"transfer_range_leader: no range {range_id} in the directory")
            if to not in desc.voters():
                shown = ", ".join(str(v) for v in desc.voters())
                raise ClientError(
                    f"transfer_range_leader: node {to} is not a voter of range {range_id} "
                    f"(voters {shown})"
                )
            router = self.router(desc)
            body = ["transfer", [range_id, to]]
            try:
                answer, at = await router._call(
                    OP_META, body, self.left(att), att.what, idempotent=False, slow=True
                )
            except WrongRangeSignal as e:  # the node holds no replica: nothing was done
                self.cache.invalidate(desc.range_id)
                router._avoid(e.addr)
                stale = await self.pause(stale, att)
                continue
            leader = expect_dict(answer, "a transfer answer", at).get("leader")
            if not isinstance(leader, int) or isinstance(leader, bool):
                raise ProtocolError(f"{at} sent a transfer answer without a leader id: {answer!r}")
            return leader


def _always(req: Request) -> Callable[[RangeDescriptor], Request]:
    """A piece that is the whole request, whichever range it goes to."""
    return lambda _desc: req
