"""``Router``: the connections, routing and retry loop under ``AsyncClient``.

Theory of operation
-------------------
The router keeps one *primary* connection (``_conn``), to the leader once it knows
it, and sends every request there, pipelined. Routing is a small state: the addresses
it may dial (``_addrs``: the endpoints given, then leader addresses learned from
redirects and member addresses from statuses), a rotation index into them, and a
leader hint (``_leader_addr``). With no usable primary, one dial task (``_dialing``)
connects to the hint if there is one, else to the next address in rotation; every
caller that needs a connection waits for that same dial. An answer ERR_NOT_LEADER
naming a leader sets the hint and retires the primary (its requests in flight finish
there); the retry dials the leader at once. Unavailability, shutdown and lost
connections drop the primary and clear the hint, so the next dial rotates. A node of
another cluster than the first one reached is refused (``ProtocolError``).

``_call`` is the retry loop of one request (the table in ``_policy``): it runs until an
answer that settles the request or the request's deadline, whose error is that of the
last failure. Writes are exactly-once across those retries: ``_write`` takes a session
lane (``_lanes``), has the command encoded for its ``(client, seq)`` (an ``Encoder``),
and every try sends those same bytes. Operations that the state machine cannot
deduplicate (membership changes, leader transfer) pass ``idempotent=False``: they are
retried only when the answer proves nothing was done, and raise ``RequestTimeoutError``
at once when a try's outcome is unknown rather than risk doing the work twice.

A router built with ``read_from`` ``"follower"`` or ``"any"`` sends reads by ``_spread``
instead: one try at each replica ``_replicas`` picks among the voters (an unsharded
client learns them from a node's status; a range's router is given its descriptor's), on
connections of a ``Pool``, then ``_call`` to the leader if none could answer; the
give-up error also says why each replica tried could not. Writes never go that way.

The hot path, a request on an open primary, is one future, one deadline entry and one
frame: no task, no timer handle, no lock, no log line. Tasks exist only for dials and
are tracked in ``_tasks``. ``close`` cancels them, aborts every connection (so each
request in flight fails with a ``ClientError`` saying the client was closed) and wakes
every backoff; afterwards nothing of the router is left running.

On a sharded cluster (the first handshake says so: ``sharded``) the client's own router
keeps only the cluster-wide operations (status, range lookups, membership); reads and
writes go by range (``_shards``), which builds one router per range on the shared
connections of a ``Pool``. A pooled router leaves a connection open when it merely
stops routing its range to that node (a redirect, no leader of its range there): the
other ranges still use it. The unsharded hot path pays one attribute test for all this.

The router binds to the event loop of its first call and must be used from that loop
only. It never builds a request or interprets a result (``_aio`` does), never
installs an event loop policy and never logs on success; it logs at DEBUG level when
it redirects, drops a connection or fails to dial.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from quorumkv.client._conn import Connection, ConnectionLost, Expired, Unreachable, open_connection
from quorumkv.client._lanes import Lanes
from quorumkv.client._policy import (
    ATTEMPT_TIMEOUT,
    MAX_IMMEDIATE_REDIRECTS,
    Failure,
    Kind,
    backoff_cap,
    give_up,
    message,
    next_delay,
    parse_not_leader,
    terminal_error,
)
from quorumkv.client._pool import Pool
from quorumkv.client._replicas import MEMBERS_TTL_S, ReadFrom, ReplicaReads, check_read_from
from quorumkv.client._requests import decode, expect, expect_dict, parse_endpoints
from quorumkv.errors import (
    ClientError,
    MalformedRequestError,
    NotLeaderError,
    ProtocolError,
    RequestTimeoutError,
    TooManyRequestsError,
    UnavailableError,
)
from quorumkv.kv import RangeRequest, RangeResponse, Result, decode_command
from quorumkv.net import (
    ERR_NOT_LEADER,
    ERR_SHUTTING_DOWN,
    ERR_TIMEOUT,
    ERR_TOO_MANY,
    ERR_UNAVAILABLE,
    ERR_WRONG_RANGE,
    OK,
    OP_RANGE_WRITE,
    OP_READ,
    OP_STATUS,
    OP_WRITE,
    parse_address,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


Encoder = Callable[..., bytes]
"""Encodes one write's command: ``encode(client, seq, *args)``, with the ``(client,
seq)`` of the lane it goes out on."""


if TYPE_CHECKING:
    from quorumkv.client._shards import Shards

_WRITES = (OP_WRITE, OP_RANGE_WRITE)
_REPLICA_FAILURES = frozenset(
    {ERR_UNAVAILABLE, ERR_SHUTTING_DOWN, ERR_TIMEOUT, ERR_TOO_MANY, ERR_WRONG_RANGE}
)
"""Answers of a replica that could not serve a spread read: the next replica is tried."""
_UNSHARDED = (OP_WRITE, OP_READ)


class _Sharded(Exception):
    """The first connection's handshake said the cluster is sharded: the request goes
    by range instead (nothing was sent)."""


class WrongRangeSignal(Exception):
    """A node holds no replica of the range a request named (ERR_WRONG_RANGE): the
    sharded layer above refreshes its range cache and routes the request again.
    ``unknown``: an earlier try of this call may have been applied (a write's session
    then answers its retry, wherever the range went)."""

    def __init__(self, addr: str, body: object, unknown: bool) -> None:
        super().__init__(f"{addr}: wrong range")
        self.addr = addr
        self.body = body
        self.unknown = unknown


def closed_error() -> ClientError:
    return ClientError(
        "the client was closed while the request was in flight "
        "(a write may or may not have been applied)"
    )


class Router:
    """Connections to the nodes of one cluster, and requests routed over them with
    retries (see the module docstring). ``AsyncClient`` is its public face."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        read_from: ReadFrom = "leader",
        pool: Pool | None = None,
    ) -> None:
        if not timeout > 0 or not connect_timeout > 0 or not attempt_timeout > 0:
            raise ValueError(
                f"timeouts must be positive, not {timeout!r}, {connect_timeout!r}, "
                f"{attempt_timeout!r}"
            )
        self._read_from = check_read_from(read_from)
        self._replica_reads = None if read_from == "leader" else ReplicaReads(self._read_from)
        """Set when reads are spread over the replicas (``_replicas``)."""
        self._read_pool: Pool | None = None
        """An unsharded client's connections to the replicas its reads are spread over
        (a range's router uses ``_pool``)."""
        self._read_voters: tuple[list[str], str | None, float] | None = None
        """An unsharded client's voters, leader and until when to trust them (loop
        time), from a node's status, for spread reads."""
        self._endpoints = parse_endpoints(endpoints)
        self._timeout = float(timeout)
        self._connect_timeout = float(connect_timeout)
        self._attempt_timeout = float(attempt_timeout)
        self._stalled: dict[str, float] = {}
        """Nodes that left a try unanswered, until when they are not redirected to: the
        others keep naming a stalled leader until they elect a new one."""
        self._addrs = list(self._endpoints)
        self._next = 0
        self._leader_addr: str | None = None
        self._cluster = 0
        self._lanes = Lanes()
        self._rng = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Future[None] | None = None
        self._closed = False
        self._conn: Connection | None = None
        self._conns: set[Connection] = set()
        self._dialing: asyncio.Task[Connection] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool = pool
        """Set on the router of one range of a sharded cluster: its connections are the
        client's, one per node, shared with the other ranges' routers."""
        self.sharded: bool | None = None
        """Whether the cluster is sharded, from the first handshake (None: unknown)."""
        self.shards: Shards | None = None
        """The client's routing by range (``_shards``), used once ``sharded`` is True;
        None on the per-range routers themselves."""
        self._by_range: Shards | None = None
        """``shards`` once a handshake said the cluster is sharded: the one attribute
        the unsharded hot path tests."""

    @property
    def endpoints(self) -> list[str]:
        """The endpoints given, then addresses learned from redirects and statuses."""
        return list(self._addrs)

    # -- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every connection. Calls in flight fail with ``ClientError``; later calls
        raise it at once. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.shards is not None:
            await self.shards.close()
        if self._read_pool is not None:
            await self._read_pool.close()
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        conns = list(self._conns)
        self._conns.clear()
        self._conn = None
        for conn in conns:
            conn.abort(closed_error)
        if tasks:
            await asyncio.wait(tasks)
        for conn in conns:
            await conn.wait_closed()

    # -- the request path --------------------------------------------------------------------

    async def _write(
        self, timeout: float | None, what: str, encode: Encoder, *args: object
    ) -> tuple[Result, str]:
        """A write whose command ``encode(client, seq, *args)`` makes for the session
        lane it goes out on (``encode_put``, ``encode_request``); raises what ``encode``
        raises for a bad request, before any I/O."""
        by_range = self._by_range
        if by_range is not None:
            return await by_range.write(timeout, what, encode, *args)
        lanes = self._lanes
        lane = lanes.take()
        try:
            body = encode(lane.client, lane.seq, *args)
            answer, addr = await self._call(OP_WRITE, body, timeout, what)
        except _Sharded:
            assert self.shards is not None
            return await self.shards.write(timeout, what, encode, *args)
        finally:
            lanes.give(lane)
        return decode(answer, addr), addr

    async def _read(
        self, command: bytes, serializable: bool, timeout: float | None, what: str
    ) -> RangeResponse:
        """A read of the range request encoded in ``command`` (``encode_get``,
        ``encode_request(0, 0, req)``)."""
        by_range = self._by_range
        if by_range is not None:
            return await self._shard_read(by_range, command, serializable, timeout, what)
        body: list[Any] = [command, bool(serializable)]
        try:
            if self._replica_reads is None:
                answer, addr = await self._call(OP_READ, body, timeout, what)
            else:
                answer, addr = await self._read_at_replicas(body, timeout, what)
        except _Sharded:
            assert self.shards is not None
            return await self._shard_read(self.shards, command, serializable, timeout, what)
        return expect(decode(answer, addr), RangeResponse, addr)

    async def _shard_read(
        self, shards: Shards, command: bytes, serializable: bool, timeout: float | None, what: str
    ) -> RangeResponse:
        req = decode_command(command).request
        assert isinstance(req, RangeRequest)
        return await shards.read(req, serializable, timeout, what)

    async def _read_at_replicas(
        self, body: list[Any], timeout: float | None, what: str
    ) -> tuple[Any, str]:
        """An unsharded read spread over the cluster's voters (``_replicas``), which a
        node's status names. Raises ``_Sharded`` if the cluster turns out sharded."""
        loop = self._bind()
        deadline = loop.time() + self._budget(timeout)
        if self.sharded is None:
            await self._learn_mode(timeout)
        if self.sharded and self.shards is not None:
            raise _Sharded
        known = self._read_voters
        if known is None or known[2] <= loop.time():
            answer, addr = await self._call(OP_STATUS, None, deadline - loop.time(), what)
            status = expect_dict(answer, "a status", addr)
            self._learn(status)
            members = status.get("members")
            voters = [
                m["addr"]
                for m in (members if isinstance(members, list) else ())
                if isinstance(m, dict) and m.get("voter") is True and isinstance(m.get("addr"), str)
            ]
            leader = status.get("leader_addr")
            lead = leader if isinstance(leader, str) else None
            known = self._read_voters = (voters, lead, loop.time() + MEMBERS_TTL_S)
        voters, leader = known[0], self._leader_addr or known[1]
        return await self._spread(voters, leader, OP_READ, body, deadline - loop.time(), what)

    async def _spread(
        self,
        voters: Sequence[str],
        leader: str | None,
        op: int,
        body: object,
        timeout: float,
        what: str,
    ) -> tuple[Any, str]:
        """A read at the replicas ``_replica_reads`` picks among ``voters``, one try
        each; once none could answer (or none was picked), at the leader through
        ``_call``'s retries. The give-up error then also says why each replica tried
        could not answer."""
        spread = self._replica_reads
        assert spread is not None
        loop = self._bind()
        deadline = loop.time() + timeout
        failures: list[str] = []
        for addr in spread.order(voters, leader, loop.time()):
            got = await self._try_replica(addr, op, body, deadline)
            if isinstance(got, str):
                failures.append(got)
                spread.failed(addr, loop.time())
                continue
            spread.answered(addr)
            return got
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise UnavailableError(f"{what}: no replica answered within {timeout:g}s")
            return await self._call(op, body, left, what)
        except ClientError as e:
            if failures and e.args and isinstance(e.args[0], str):
                tried = "; ".join(failures)
                e.args = (f"{e.args[0]} (replicas tried first: {tried})", *e.args[1:])
            raise

    async def _try_replica(
        self, addr: str, op: int, body: object, deadline: float
    ) -> tuple[Any, str] | str:
        """One try of a read at ``addr``: its answer and address, or why it could not
        answer (a failure a try elsewhere may not have). Raises for an answer no retry
        can change."""
        loop = asyncio.get_running_loop()
        attempt = min(self._connect_timeout, self._attempt_timeout, deadline - loop.time())
        if attempt <= 0:
            return f"{addr}: no time left"
        pool = self._pool
        if pool is None:
            pool = self._read_pool = self._read_pool or Pool(closed_error)
        try:
            conn = await pool.get(addr, attempt)
        except (Unreachable, ProtocolError) as e:
            return str(e)
        if self._cluster and conn.cluster and conn.cluster != self._cluster:
            return f"{addr} is a node of another cluster ({conn.cluster:016x})"
        try:
            code, answer = await conn.call(
                op, body, min(deadline, loop.time() + self._attempt_timeout)
            )
        except ConnectionLost as e:
            return str(e)
        except Expired:
            conn.retire()  # a stalled node, as ``_call`` sees one: dial afresh later
            return f"{addr} did not answer within {self._attempt_timeout:g}s"
        if code == OK:
            return answer, addr
        if code == ERR_NOT_LEADER:
            leader, at = parse_not_leader(answer)
            return f"{addr} (node {conn.node}) could not read; it names node {leader} at {at}"
        if code in _REPLICA_FAILURES:
            return f"{addr} (node {conn.node}): {message(answer)}"
        raise terminal_error(code, answer, addr)

    async def _learn_mode(self, timeout: float | None) -> None:
        """Connect once to learn whether the cluster is sharded; a failure leaves it
        unknown, and the request's own path reports it."""
        loop = self._bind()
        with contextlib.suppress(Exception):
            await self._connect(loop.time() + self._budget(timeout))

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None:
                raise ClientError("this client belongs to another event loop; use one per loop")
            self._loop = loop
            self._closing = loop.create_future()
        if self._closed:
            raise ClientError("the client is closed")
        return loop

    def _budget(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout

    async def _call(
        self,
        op: int,
        body: object,
        timeout: float | None,
        what: str,
        *,
        idempotent: bool = True,
        slow: bool = False,
    ) -> tuple[Any, str]:
        """Send one request, retrying per ``_policy`` until an answer settles it or its
        deadline passes. Returns the OK answer's body and the address that sent it.
        ``idempotent`` False: raise at once when a try's outcome is unknown. ``slow``: the
        node answers only once the work is done (a membership change waits for the new
        node to catch up; a split, for the range to apply it), so one try may take the
        whole deadline rather than ``attempt_timeout``."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._closed:
            loop = self._bind()  # binds, or raises why this loop cannot use the client
        budget = self._timeout if timeout is None else timeout
        now = loop.time()
        deadline = now + budget
        fresh = True  # ``now`` is still the time: nothing was awaited since it was read
        failure: Failure | None = None
        tries = waits = redirects = 0
        # Once a try of a write may have taken effect, giving up must say "unknown",
        # whatever the later tries answered.
        unknown = False
        while True:
            if self._closed:
                raise closed_error()
            conn = self._conn
            if conn is None or not conn.usable:
                fresh = False
                try:
                    conn = await self._connect(deadline)
                except Expired:
                    raise give_up(what, failure, budget, tries, unknown) from None
                except Unreachable as e:
                    failure = Failure(Kind.UNAVAILABLE, str(e))
                    await self._backoff(waits, deadline, what, failure, budget, tries, unknown)
                    waits += 1
                    continue
            if conn.sharded and op in _UNSHARDED and self.shards is not None:
                raise _Sharded  # learned from this first connection: route by range
            tries += 1
            if not fresh:
                now = loop.time()
            fresh = False
            # A node that stops answering with its connection open (SIGSTOP, a stall)
            # would hold the call until its deadline; one try gets ATTEMPT_TIMEOUT, then
            # the call moves on (an election elsewhere takes about that long).
            attempt_deadline = deadline if slow else min(deadline, now + self._attempt_timeout)
            try:
                code, answer = await conn.call(op, body, attempt_deadline)
            except ConnectionLost as e:
                self._drop(conn, str(e))
                if e.sent and not idempotent:
                    raise RequestTimeoutError(f"{what}: {e}; the outcome is unknown") from None
                unknown = unknown or (e.sent and op in _WRITES)
                failure = Failure(Kind.UNAVAILABLE, str(e))
                await self._backoff(waits, deadline, what, failure, budget, tries, unknown)
                waits += 1
                continue
            except Expired:
                if attempt_deadline >= deadline or not idempotent:
                    raise RequestTimeoutError(
                        f"{what}: no answer from {conn.addr} within {budget:g}s "
                        f"(the outcome is unknown)"
                    ) from None
                unknown = unknown or op in _WRITES
                detail = f"{conn.addr} did not answer within {self._attempt_timeout:g}s"
                failure = Failure(Kind.UNAVAILABLE, detail)
                self._stalled[conn.addr] = loop.time() + 2 * self._attempt_timeout
                self._drop(conn, detail)  # a stalled node: try the others
                await self._backoff(waits, deadline, what, failure, budget, tries, unknown)
                waits += 1
                continue
            if code == OK:
                return answer, conn.addr
            if code == ERR_NOT_LEADER:
                leader, addr = parse_not_leader(answer)
                named = f"; it names node {leader} at {addr}" if leader else "; no leader known"
                detail = f"{conn.addr} (node {conn.node}) is not the leader{named}"
                failure = Failure(Kind.NOT_LEADER, detail, leader)
                if addr is not None and self._stalled.get(addr, 0.0) > loop.time():
                    addr = None  # it named a node we just saw stall: ask around instead
                if addr is not None and addr != conn.addr:
                    self._redirect(conn, addr)
                    redirects += 1
                    if redirects <= MAX_IMMEDIATE_REDIRECTS:
                        continue
                else:
                    self._drop(conn, detail, dead=False)
            elif code in (ERR_UNAVAILABLE, ERR_SHUTTING_DOWN):
                failure = Failure(Kind.UNAVAILABLE, f"{conn.addr}: {message(answer)}")
                self._drop(conn, failure.detail, dead=code == ERR_SHUTTING_DOWN)
            elif code == ERR_TOO_MANY:
                failure = Failure(Kind.TOO_MANY, f"{conn.addr}: {message(answer)}")
            elif code == ERR_WRONG_RANGE and self._pool is not None:  # a range's router
                raise WrongRangeSignal(conn.addr, answer, unknown)
            elif code == ERR_TIMEOUT:
                detail = f"{conn.addr}: {message(answer)}"
                if not idempotent:
                    raise RequestTimeoutError(f"{what}: {detail} (the outcome is unknown)")
                unknown = unknown or op in _WRITES
                failure = Failure(Kind.TIMEOUT, detail)
            else:
                raise terminal_error(code, answer, conn.addr)
            await self._backoff(waits, deadline, what, failure, budget, tries, unknown)
            waits += 1

    async def _backoff(
        self,
        waits: int,
        deadline: float,
        what: str,
        failure: Failure,
        budget: float,
        tries: int,
        unknown: bool = False,
    ) -> None:
        """Wait before the next try, or raise the give-up error if there is no time
        left for one (``_policy.next_delay``)."""
        assert self._loop is not None and self._closing is not None
        cap = backoff_cap(failure.kind)
        delay = next_delay(waits, self._rng, deadline - self._loop.time(), cap)
        if delay is None:
            raise give_up(what, failure, budget, tries, unknown)
        await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        """Sleep, but raise the closed error as soon as the client is closed."""
        assert self._closing is not None
        await asyncio.wait((self._closing,), timeout=delay)
        if self._closed:
            raise closed_error()

    # -- routing -----------------------------------------------------------------------------

    async def _connect(self, deadline: float) -> Connection:
        """The primary connection, dialled by the one shared dial task. Raises
        ``Expired`` at the deadline, ``Unreachable`` or ``ProtocolError``."""
        task = self._dialing
        if task is None:
            task = self._dialing = self._spawn(self._dial())
        await self._wait(task, deadline)
        error = task.exception()
        if error is None:
            return task.result()
        # several callers may share this dial: each raises an exception of its own
        if isinstance(error, Unreachable):
            raise Unreachable(str(error))
        if isinstance(error, ProtocolError):
            raise ProtocolError(str(error))
        raise error

    async def _dial(self) -> Connection:
        addr = self._leader_addr or self._rotate()
        try:
            try:
                dial_timeout = min(self._connect_timeout, self._attempt_timeout)
                if self._pool is None:
                    conn = await open_connection(addr, dial_timeout, self._lost)
                else:
                    conn = await self._pool.get(addr, dial_timeout)
            except Unreachable as e:
                log.debug("quorumkv client: cannot connect: %s", e)
                if self._leader_addr == addr:
                    self._leader_addr = None
                raise
            if self._cluster and conn.cluster and conn.cluster != self._cluster:
                if self._pool is None:
                    conn.close()
                raise ProtocolError(
                    f"{addr} is a node of cluster {conn.cluster:016x}, but the client's "
                    f"other nodes are of cluster {self._cluster:016x}: check the endpoints"
                )
            self._cluster = self._cluster or conn.cluster
            self.sharded = conn.sharded
            if conn.sharded and self.shards is not None:
                self._by_range = self.shards
            if self._pool is None:
                self._conns.add(conn)
            self._conn = conn
            return conn
        finally:
            self._dialing = None

    def _rotate(self) -> str:
        """The next endpoint in turn, passing over nodes seen stalled lately while
        another one is left to try."""
        now = asyncio.get_running_loop().time()
        for _ in range(len(self._addrs)):
            addr = self._addrs[self._next % len(self._addrs)]
            self._next += 1
            if self._stalled.get(addr, 0.0) <= now:
                return addr
        addr = self._addrs[self._next % len(self._addrs)]
        self._next += 1
        return addr

    def _redirect(self, conn: Connection, leader_addr: str) -> None:
        """``conn``'s node named the leader at ``leader_addr``: route new work there."""
        log.debug("quorumkv client: %s redirects to the leader at %s", conn.addr, leader_addr)
        self._leader_addr = leader_addr
        if leader_addr not in self._addrs:
            self._addrs.append(leader_addr)
        if self._conn is conn:
            self._conn = None
            if self._pool is None:  # a pooled connection still serves other ranges
                conn.retire()

    def _drop(self, conn: Connection, reason: str, *, dead: bool = True) -> None:
        """Stop routing to ``conn``'s node; the next dial rotates to another. ``dead``
        False: the node is up but cannot serve this router's requests now (no leader of
        its range there), so a pooled connection stays open for the other ranges."""
        log.debug("quorumkv client: leaving %s: %s", conn.addr, reason)
        if self._leader_addr == conn.addr:
            self._leader_addr = None
        if self._conn is conn:
            self._conn = None
        if dead or self._pool is None:
            conn.retire()

    def _avoid(self, addr: str) -> None:
        """``addr`` holds no replica of this router's range (ERR_WRONG_RANGE): route
        the next try elsewhere, leaving a pooled connection to the other ranges."""
        if self._leader_addr == addr:
            self._leader_addr = None
        conn = self._conn
        if conn is not None and conn.addr == addr:
            self._conn = None
            if self._pool is None:
                conn.retire()

    def _retarget(self, addrs: Sequence[str], leader_addr: str | None) -> None:
        """The addresses of this range's replicas, from a fresh descriptor: the ones
        to rotate through, and the leader it names unless a redirect named one."""
        if addrs:
            self._addrs = list(dict.fromkeys(addrs))
        if self._leader_addr is None and leader_addr is not None:
            self._leader_addr = leader_addr

    def _learn(self, status: dict[str, Any]) -> None:
        """Add the members' addresses in a status to those the client rotates through,
        so that it can fail over to nodes it was not given."""
        members = status.get("members")
        for member in members if isinstance(members, list) else ():
            addr = member.get("addr") if isinstance(member, dict) else None
            if isinstance(addr, str) and addr not in self._addrs:
                try:
                    parse_address(addr)
                except ValueError:
                    continue
                self._addrs.append(addr)

    def _lost(self, conn: Connection) -> None:
        self._conns.discard(conn)
        if self._conn is conn:
            self._conn = None

    # -- tasks -------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here; whoever waits still gets it

    async def _wait(self, task: asyncio.Task[Any], deadline: float) -> None:
        """Wait until ``task`` is done; raises ``Expired`` at the deadline, and the
        closed error if the client is closed meanwhile (``task`` is then cancelled)."""
        assert self._loop is not None and self._closing is not None
        remaining = deadline - self._loop.time()
        if not task.done() and remaining > 0:
            await asyncio.wait(
                (task, self._closing), timeout=remaining, return_when="FIRST_COMPLETED"
            )
        if self._closed or task.cancelled():
            raise closed_error()
        if not task.done():
            raise Expired()

    async def _status_of(self, endpoint: str, timeout: float | None) -> dict[str, Any]:
        """One status request to ``endpoint``: on the primary connection if it goes
        there, else on a connection of its own, closed afterwards. No retries."""
        try:
            parse_address(endpoint)
        except (ValueError, AttributeError) as e:
            raise MalformedRequestError(f"status endpoint: {e}") from None
        loop = self._bind()
        budget = self._budget(timeout)
        deadline = loop.time() + budget
        conn = self._conn
        own = conn is None or not conn.usable or conn.addr != endpoint
        if own:
            dial = self._spawn(open_connection(endpoint, min(self._connect_timeout, budget)))
            try:
                await self._wait(dial, deadline)
            except Expired:
                dial.cancel()
                raise UnavailableError(f"status of {endpoint}: no connection in time") from None
            error = dial.exception()
            if isinstance(error, Unreachable):
                raise UnavailableError(str(error)) from None
            conn = dial.result()
            self._conns.add(conn)
        assert conn is not None
        try:
            code, answer = await conn.call(OP_STATUS, None, deadline)
        except ConnectionLost as e:
            raise UnavailableError(f"status of {endpoint}: {e}") from None
        except Expired:
            raise RequestTimeoutError(
                f"status of {endpoint}: no answer within {budget:g}s"
            ) from None
        finally:
            if own:
                self._conns.discard(conn)
                conn.close()
        if code == OK:
            return expect_dict(answer, "a status", endpoint)
        text = f"status of {endpoint}: {message(answer)}"
        if code in (ERR_UNAVAILABLE, ERR_SHUTTING_DOWN):
            raise UnavailableError(text)
        if code == ERR_TOO_MANY:
            raise TooManyRequestsError(text)
        if code == ERR_TIMEOUT:
            raise RequestTimeoutError(text)
        if code == ERR_NOT_LEADER:
            raise NotLeaderError(text, parse_not_leader(answer)[0])
        raise terminal_error(code, answer, endpoint)
