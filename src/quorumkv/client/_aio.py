"""``AsyncClient`` (``quorumkv.aio.Client``): the asyncio client of a quorumkv cluster.

Each method turns its arguments into a request (``_requests``; invalid ones raise
before any I/O), sends it through the ``Router`` it is built on (routing, retries,
exactly-once writes, deadlines) and turns the answer into the response or the error.
``put`` and ``get`` encode their command straight from the arguments (``encode_put``,
``encode_get``, with the checks and errors of ``PutRequest`` and ``RangeRequest``):
they run per operation, and the request object would only be encoded and dropped.
Compare-and-swap, members, cluster status and leader transfer are compositions of
the protocol's operations; ``cluster_status`` asks every member at once from tasks of
its own ``TaskGroup``, which never outlive the call.

This module must never touch a connection or decide a retry itself: that is the
router's. Like the router, it binds to the event loop of its first call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from quorumkv.client._policy import ATTEMPT_TIMEOUT, ELECTION_BACKOFF_MAX, next_delay
from quorumkv.client._replicas import ReadFrom
from quorumkv.client._requests import (
    Data,
    cas_request,
    delete_request,
    expect,
    expect_dict,
    expect_list,
    range_request,
    to_bytes,
)
from quorumkv.client._route import Router
from quorumkv.client._shards import Shards
from quorumkv.errors import (
    ClientError,
    CompareFailedError,
    MalformedRequestError,
    NotLeaderError,
    ProtocolError,
    RequestTimeoutError,
    TooManyRequestsError,
    UnavailableError,
)
from quorumkv.kv import (
    CompactionRequest,
    CompactionResponse,
    Compare,
    DeleteRangeResponse,
    KeyValue,
    Op,
    PutResponse,
    RangeResponse,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from quorumkv.kv._codec import encode_get, encode_put, encode_request
from quorumkv.net import (
    OP_MEMBER_ADD,
    OP_MEMBER_REMOVE,
    OP_NODE_STATE,
    OP_STATUS,
    OP_TRANSFER,
    parse_address,
)
from quorumkv.shard import RangeDescriptor


class AsyncClient(Router):
    """A client of one quorumkv cluster, for asyncio.

    ``endpoints`` are ``"host:port"`` addresses of any of its nodes (a sequence, or one
    comma-separated string); the client finds the leader from them. ``timeout`` is the
    default deadline of a call, retries included; ``connect_timeout`` bounds one dial
    and handshake; ``attempt_timeout`` bounds one try, after which the call moves to
    another node (raise it for reads whose answers take longer than that to produce).
    ``read_from`` says which replicas answer reads: ``"leader"`` (the default, where
    writes go), ``"follower"`` (the followers in turn, the leader only if none can
    answer) or ``"any"`` (every voter in turn); linearizable reads stay linearizable
    wherever they are answered (a follower asks the leader for a read index and answers
    once it has applied up to it), and learners are never asked.
    Use ``async with`` or call ``close()``.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        read_from: ReadFrom = "leader",
    ) -> None:
        super().__init__(
            endpoints,
            timeout=timeout,
            connect_timeout=connect_timeout,
            attempt_timeout=attempt_timeout,
            read_from=read_from,
        )
        self.shards: Shards = Shards(self)

    def __repr__(self) -> str:
        conn = self._conn
        at = f"{conn.addr} (node {conn.node})" if conn is not None and conn.usable else "none"
        state = "closed" if self._closed else f"connected to {at}"
        return f"<quorumkv.aio.Client {','.join(self._endpoints)}: {state}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- key-value operations ----------------------------------------------------------------

    async def put(
        self,
        key: Data,
        value: Data,
        *,
        prev_kv: bool = False,
        lease: int = 0,
        timeout: float | None = None,
    ) -> PutResponse:
        """Set ``key`` to ``value``; with ``prev_kv`` the response carries the old pair."""
        k = key if type(key) is bytes else to_bytes("key", key)  # the common case inline
        v = value if type(value) is bytes else to_bytes("value", value)
        result, addr = await self._write(timeout, "put", encode_put, k, v, lease, prev_kv)
        return expect(result, PutResponse, addr)

    async def get(
        self,
        key: Data,
        *,
        serializable: bool = False,
        revision: int = 0,
        timeout: float | None = None,
    ) -> KeyValue | None:
        """The pair at ``key`` (at ``revision``, 0: the latest), or None. Linearizable,
        unless ``serializable``: then any node may answer from its possibly stale state.
        The client's ``read_from`` says which replica answers."""
        k = key if type(key) is bytes else to_bytes("key", key)
        resp = await self._read(encode_get(k, revision), serializable, timeout, "get")
        return resp.kvs[0] if resp.kvs else None

    async def range(
        self,
        key: Data,
        range_end: Data = b"",
        *,
        prefix: bool = False,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        serializable: bool = False,
        timeout: float | None = None,
    ) -> RangeResponse:
        """The keys in ``[key, range_end)`` (``range_end`` ``ALL_KEYS``: every key from
        ``key`` on), or starting with ``key`` when ``prefix``."""
        req = range_request(
            key, range_end, prefix=prefix, limit=limit, revision=revision,
            keys_only=keys_only, count_only=count_only,
            sort_order=sort_order, sort_target=sort_target,
        )  # fmt: skip
        return await self._read(encode_request(0, 0, req), serializable, timeout, "range")

    async def delete(
        self,
        key: Data,
        range_end: Data = b"",
        *,
        prefix: bool = False,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> DeleteRangeResponse:
        """Delete ``key``, or the keys in ``[key, range_end)``, or those starting with
        ``key`` when ``prefix``."""
        req = delete_request(key, range_end, prefix=prefix, prev_kv=prev_kv)
        result, addr = await self._write(timeout, "delete", encode_request, req)
        return expect(result, DeleteRangeResponse, addr)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResponse:
        """If every compare holds run ``success``, else ``failure``; atomically."""
        req = TxnRequest(tuple(compare), tuple(success), tuple(failure))
        result, addr = await self._write(timeout, "txn", encode_request, req)
        return expect(result, TxnResponse, addr)

    async def compare_and_swap(
        self,
        key: Data,
        expected: Data | None,
        new: Data,
        *,
        timeout: float | None = None,
    ) -> PutResponse:
        """Set ``key`` to ``new`` if it holds ``expected`` (None: if it does not exist).
        Raises ``CompareFailedError`` carrying the value found otherwise."""
        k = to_bytes("key", key)
        req = cas_request(k, expected, new)
        result, addr = await self._write(timeout, "compare_and_swap", encode_request, req)
        resp = expect(result, TxnResponse, addr)
        if not resp.succeeded:
            found = expect(resp.responses[0], RangeResponse, addr) if resp.responses else None
            raise CompareFailedError(k, found.kvs[0].value if found and found.kvs else None)
        return expect(resp.responses[0], PutResponse, addr)

    async def compact(self, revision: int, *, timeout: float | None = None) -> CompactionResponse:
        """Forget history before ``revision``; reads below it fail with ``CompactedError``."""
        req = CompactionRequest(revision)
        result, addr = await self._write(timeout, "compact", encode_request, req)
        return expect(result, CompactionResponse, addr)

    # -- cluster operations ------------------------------------------------------------------

    async def status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The status dict of the node at ``endpoint``; by default of the leader, or, if
        the leader cannot be reached, of the node the client is connected to."""
        if endpoint is not None:
            return await self._status_of(endpoint, timeout)
        loop = self._bind()
        deadline = loop.time() + self._budget(timeout)
        answer, addr = await self._call(OP_STATUS, None, timeout, "status")
        status = expect_dict(answer, "a status", addr)
        self._learn(status)
        leader, leader_addr = status.get("leader"), status.get("leader_addr")
        remaining = deadline - loop.time()
        if (
            not leader
            or leader == status.get("id")
            or not isinstance(leader_addr, str)
            or leader_addr == addr
            or remaining <= 0
        ):
            return status
        conn = self._conn
        if conn is not None and conn.addr == addr:
            self._redirect(conn, leader_addr)
        try:
            answer, addr = await self._call(OP_STATUS, None, remaining, "status")
        except (UnavailableError, RequestTimeoutError, NotLeaderError, TooManyRequestsError):
            return status  # the leader is not reachable now: this node's view will do
        status = expect_dict(answer, "a status", addr)
        self._learn(status)
        return status

    async def cluster_status(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The status of every member, in the order of the leader's member list; a member
        that cannot be asked appears as ``{"id", "addr", "error"}``."""
        first = await self.status(timeout=timeout)
        members = expect_list(first.get("members", []), "members", f"node {first.get('id')}")

        async def one(member: dict[str, Any]) -> dict[str, Any]:
            node, addr = member.get("id"), member.get("addr")
            if node == first.get("id"):
                return first
            if not isinstance(addr, str):
                return {"id": node, "addr": addr, "error": "no address known"}
            try:
                return await self.status(addr, timeout=timeout)
            except ClientError as e:
                if self._closed:
                    raise
                return {"id": node, "addr": addr, "error": str(e)}

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(m)) for m in members]
        return [t.result() for t in tasks]

    async def members(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The members ``[{"id", "addr", "voter"}]`` as the leader's status lists them."""
        status = await self.status(timeout=timeout)
        return expect_list(status.get("members"), "members", f"node {status.get('id')}")

    async def member_add(
        self,
        node_id: int,
        addr: str,
        *,
        learner_only: bool = False,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Add node ``node_id`` listening at ``addr``; it joins as a learner and, unless
        ``learner_only``, is promoted to voter once caught up. Returns the members."""
        _check_node_id(node_id)
        try:
            parse_address(addr)
        except (ValueError, AttributeError) as e:
            raise MalformedRequestError(f"member address: {e}") from None
        body = [node_id, addr, bool(learner_only)]
        answer, at = await self._call(
            OP_MEMBER_ADD, body, timeout, "member_add", idempotent=False, slow=True
        )
        return expect_list(answer, "members", at)

    async def member_remove(
        self, node_id: int, *, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """Remove node ``node_id`` from the cluster. Returns the members."""
        _check_node_id(node_id)
        answer, at = await self._call(
            OP_MEMBER_REMOVE, node_id, timeout, "member_remove", idempotent=False, slow=True
        )
        return expect_list(answer, "members", at)

    async def transfer_leader(self, to: int = 0, *, timeout: float | None = None) -> int:
        """Make node ``to`` (0: the most caught-up voter) the leader; returns the new
        leader's id (0 if no node knew it yet when the deadline passed)."""
        if not isinstance(to, int) or isinstance(to, bool) or to < 0:
            raise MalformedRequestError(f"target node id must be an integer >= 0, not {to!r}")
        loop = self._bind()
        deadline = loop.time() + self._budget(timeout)
        answer, at = await self._call(
            OP_TRANSFER, to, timeout, "transfer_leader", idempotent=False, slow=True
        )
        leader = expect_dict(answer, "a transfer answer", at).get("leader")
        if not isinstance(leader, int):
            raise ProtocolError(f"{at} sent a transfer answer without a leader id: {answer!r}")
        # The old leader may answer 0 when it stepped down before hearing from the new
        # one: ask until some node knows the leader (status() also routes to it).
        waits = 0
        while not leader:
            delay = next_delay(waits, self._rng, deadline - loop.time(), ELECTION_BACKOFF_MAX)
            if delay is None:
                return 0
            await self._sleep(delay)
            waits += 1
            with contextlib.suppress(UnavailableError, RequestTimeoutError, NotLeaderError):
                status = await self.status(timeout=max(deadline - loop.time(), 0.001))
                leader = status.get("leader") or 0
        return int(leader)

    # -- ranges (sharded clusters) -----------------------------------------------------

    async def ranges(
        self, start: Data = b"", end: Data = b"", *, timeout: float | None = None
    ) -> list[RangeDescriptor]:
        """The ranges over ``[start, end)`` (``end`` empty: to the end of the keyspace)
        as the directory knows them now, in key order. Raises ``ClientError`` on an
        unsharded cluster."""
        await self._require_sharded(timeout)
        s, e = to_bytes("start", start) if start else b"", to_bytes("end", end) if end else b""
        att = self.shards.attempt(timeout, "ranges")
        self.shards.reset()
        await self.shards.refresh(s, e, att)
        return await self.shards.spans(s, e, att)

    async def split(
        self, key: Data, *, timeout: float | None = None
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        """Split the range holding ``key`` so that a new range starts at ``key`` (an
        operator's split; the cluster also splits ranges by size and load), at that
        range's leader. Returns the two ranges. A split is not sent again once a try's
        outcome is unknown: then ``RequestTimeoutError``; look at ``ranges``."""
        await self._require_sharded(timeout)
        return await self.shards.split(to_bytes("key", key), timeout)

    async def nodes(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The registered nodes of a sharded cluster as the directory knows them now,
        by id: ``[{"id", "addr", "state", "replicas", "leaders"}]`` (``replicas``: the
        ranges with a replica there, learners included; ``leaders``: the ranges whose
        leader hint names it). Raises ``ClientError`` on an unsharded cluster."""
        descs = await self.ranges(timeout=timeout)
        replicas: dict[int, int] = {}
        leaders: dict[int, int] = {}
        for d in descs:
            for r in d.replicas:
                replicas[int(r.node_id)] = replicas.get(int(r.node_id), 0) + 1
            if d.leader:
                leaders[int(d.leader)] = leaders.get(int(d.leader), 0) + 1
        shards = self.shards
        ids = sorted(set(shards.states) | set(replicas))
        return [
            {
                "id": n,
                "addr": shards.nodes.get(n, ""),
                "state": shards.states.get(n, "unknown"),
                "replicas": replicas.get(n, 0),
                "leaders": leaders.get(n, 0),
            }
            for n in ids
        ]

    async def set_node_state(
        self, node_id: int, state: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Set node ``node_id``'s state in a sharded cluster's directory: ``"draining"``
        (it keeps serving while the placement driver moves every replica and leader off
        it), ``"up"`` (it takes replicas again), or ``"removed"`` (for good: refused with
        ``MembershipError`` while it still holds a replica; the node then stops by
        itself, and its id is never reused). Returns ``{"id", "addr", "state"}``."""
        _check_node_id(node_id)
        if state not in ("up", "draining", "removed"):
            raise MalformedRequestError(
                f"node state must be 'up', 'draining' or 'removed', not {state!r}"
            )
        await self._require_sharded(timeout)
        answer, at = await self._call(
            OP_NODE_STATE, [node_id, state], timeout, "set_node_state", slow=True
        )
        if not isinstance(answer, list) or len(answer) != 5:
            raise ProtocolError(f"{at} sent an unreadable node record: {answer!r:.200}")
        return {"id": answer[0], "addr": answer[1], "state": answer[3]}

    async def transfer_range_leader(
        self, range_id: int, to: int, *, timeout: float | None = None
    ) -> int:
        """Make node ``to``, a voter of range ``range_id``, that range's leader (what
        the placement driver does to balance leaders); returns the new leader as the
        old one reports it once it stepped down. The meta range (1) is
        ``transfer_leader``'s. A transfer whose outcome is unknown is not sent again:
        then ``RequestTimeoutError``. Raises ``ClientError`` on an unsharded cluster,
        for a range the directory does not hold, or for a node that is not one of its
        voters."""
        for name, value in (("range id", range_id), ("target node id", to)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MalformedRequestError(f"{name} must be a positive integer, not {value!r}")
        if range_id == 1:
            raise MalformedRequestError("range 1 is the meta range: use transfer_leader")
        await self._require_sharded(timeout)
        return await self.shards.transfer(range_id, to, timeout)

    async def _require_sharded(self, timeout: float | None) -> None:
        if self.sharded is None:
            await self._learn_mode(timeout)
        if self.sharded is None:
            raise UnavailableError("no node of the cluster could be reached")
        if not self.sharded:
            raise ClientError("this cluster is not sharded: it has one range, group 1")


def _check_node_id(node_id: object) -> None:
    if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id <= 0:
        raise MalformedRequestError(f"node id must be a positive integer, not {node_id!r}")
