"""``Connection``: one client connection to one node, carrying pipelined requests.

Theory of operation
-------------------
``open_connection`` dials ``"host:port"``, sends the client HELLO of ``quorumkv.net``
and waits for the node's answer; the returned ``Connection`` is handshaken. From then
on ``call(op, body, deadline)`` writes ``[req_id, op, body]`` and waits for the answer
``[req_id, code, body]``. Request ids are this connection's own counter; answers are
matched by id, in whatever order they come. Every request in flight is one future in
``_pending`` and one ``(deadline, req_id)`` entry in ``_deadlines``: nothing else is
created per request (no task, no timer handle, no log line). Deadlines mostly come in
order (one attempt timeout after each send), so ``_deadlines`` is a queue in deadline
order, appended to and popped from its front; a deadline earlier than the last one
queued (a call with a shorter timeout) goes to the heap ``_early`` instead. One loop
timer per connection is armed at the earliest deadline; when it fires it expires the
requests whose deadline has come, drops the entries of requests already over (an
entry stays when its request ends; the timer pops it, or rebuilds both when such
entries outnumber the live ones), and re-arms at the next live deadline. Frames written
within one event-loop iteration leave in one ``writelines``, so a burst of concurrent
requests costs one system call, not one each. Frames are packed with the connection's
own msgpack ``Packer`` and split without copying their bodies; both run per request.

Every way a request can end removes it from ``_pending``: its answer, its deadline
(``Expired``), the connection's loss (``ConnectionLost``, which says whether the
request had been written), a protocol violation by the node (``ProtocolError``),
``abort(error)`` by the client, or the caller's own cancellation.
A connection is *retired* once the client routes new work elsewhere; it closes itself
when its last request ends.

This module owns the socket and the framing of one connection. It must never retry,
choose a node, or interpret an answer's code or body: that is ``_aio``'s routing.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import msgpack

from quorumkv.errors import ClientError, ProtocolError
from quorumkv.net import (
    HEADER,
    MAX_PEER_FRAME,
    FrameError,
    client_hello,
    describe_garbage,
    encode,
    parse_address,
)

_EXPIRY_SLACK = 0.001
"""Requests due within this many seconds expire together: the loop may run a timer a
clock tick early, and a request 1 ms from its deadline is not worth another wakeup."""

MAX_ANSWER_FRAME = MAX_PEER_FRAME
"""The largest answer frame accepted (64 MiB): a range answer can be far bigger than a
request, but a length beyond this is garbage (HTTP reads as about 1.2 GB)."""

Answer = tuple[int, Any]
"""``(code, body)`` of one answer."""

_LEN = struct.Struct(">I")


class ConnectionLost(Exception):
    """The connection closed before the answer came. ``sent`` says whether the request
    had been handed to the socket (then the node may have acted on it)."""

    def __init__(self, addr: str, reason: str, *, sent: bool) -> None:
        super().__init__(f"connection to {addr} lost: {reason}")
        self.sent = sent


class Expired(Exception):
    """The request's deadline passed with no answer."""


class Unreachable(Exception):
    """The node could not be dialled or did not complete the handshake in time."""


def _settle(hello: asyncio.Future[None], error: Exception) -> None:
    """Fail the handshake future; marked retrieved, since nobody may be waiting for it
    (a dial that timed out before the connection was made)."""
    if not hello.done():
        hello.set_exception(error)
        hello.exception()


class Connection(asyncio.Protocol):
    """A handshaken client connection to the node at ``addr`` (see the module doc)."""

    __slots__ = (
        "_buf",
        "_closed",
        "_deadlines",
        "_early",
        "_error",
        "_handshake_done",
        "_hello",
        "_last_deadline",
        "_loop",
        "_next_id",
        "_on_lost",
        "_out",
        "_pack",
        "_pending",
        "_retired",
        "_timer",
        "_timer_at",
        "_transport",
        "addr",
        "cluster",
        "node",
        "sharded",
    )

    def __init__(
        self,
        addr: str,
        loop: asyncio.AbstractEventLoop,
        on_lost: Callable[[Connection], None] | None = None,
    ) -> None:
        self.addr = addr
        self.node = 0
        self.cluster = 0
        self.sharded = False
        """The node said, in its handshake, that its cluster is sharded."""
        self._loop = loop
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()  # the start of a frame not yet complete
        self._pack: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._next_id = 1
        self._deadlines: deque[tuple[float, int]] = deque()
        self._last_deadline = -math.inf
        self._early: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._out: list[bytes] = []
        self._hello: asyncio.Future[None] | None = loop.create_future()
        # The same future, kept: on uvloop the answer can be handled (and _hello
        # cleared) before create_connection() even returns to the dialler.
        self._handshake_done: asyncio.Future[None] = self._hello
        self._closed: asyncio.Future[None] = loop.create_future()
        self._error = ""  # why the connection closed; empty while it is open
        self._retired = False

    # -- what the client sees --------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open and not retired: new requests may be routed here."""
        return not self._error and not self._retired

    def in_flight(self) -> int:
        return len(self._pending)

    async def call(self, op: int, body: object, deadline: float) -> Answer:
        """Send one request and wait for its ``(code, body)`` until ``deadline`` (loop
        time). Raises ``Expired``, ``ConnectionLost``, ``ProtocolError``, or the error
        the connection was aborted with."""
        transport = self._transport
        if self._error or transport is None or transport.is_closing():
            raise ConnectionLost(self.addr, self._error or "closing", sent=False)
        req_id = self._next_id
        data = self._pack([req_id, op, body])
        self._next_id = req_id + 1
        loop = self._loop
        pending = self._pending
        fut: asyncio.Future[Answer] = loop.create_future()
        pending[req_id] = fut
        if deadline >= self._last_deadline:
            self._last_deadline = deadline
            self._deadlines.append((deadline, req_id))
        else:
            heapq.heappush(self._early, (deadline, req_id))
        if deadline < self._timer_at:
            self._arm(deadline)
        out = self._out
        if not out:
            loop.call_soon(self._flush)
        out.append(_LEN.pack(len(data)))
        out.append(data)
        try:
            return await fut
        finally:
            pending.pop(req_id, None)
            if self._retired and not pending:
                self.close()

    def retire(self) -> None:
        """Take no new work; close once the requests in flight have ended."""
        self._retired = True
        if not self._pending:
            self.close()

    def close(self) -> None:
        """Close after writing what is buffered; requests still in flight fail with
        ``ConnectionLost``."""
        self._retired = True
        if self._transport is not None:
            self._flush()
            self._transport.close()
        elif not self._closed.done():
            self._closed.set_result(None)

    def abort(self, error: Callable[[], BaseException]) -> None:
        """Close at once; each request in flight fails with a fresh ``error()``."""
        self._retired = True
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()
        elif not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance here.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(encode(client_hello()))

    def data_received(self, data: bytes) -> None:
        try:
            bodies = self._frames(data)
        except FrameError as e:
            self._violation(str(e))
            return
        pending = self._pending
        for raw in bodies:
            try:
                msg = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=False)
            except (ValueError, TypeError, msgpack.UnpackException) as e:
                # what quorumkv.net's unpack says of it
                self._violation(f"undecodable frame body: {e}")
                return
            if self._hello is not None:
                if not self._handle_hello(msg):
                    return
                continue
            try:
                req_id, code, body = msg
                fut = pending.pop(req_id, None)
            except (TypeError, ValueError):
                self._violation(f"an answer is not [req_id, code, body]: {msg!r:.100}")
                return
            if fut is not None:
                if not fut.done():
                    fut.set_result((code, body))
            elif req_id is None and code:
                # an error about the connection itself, not one request: the node
                # could not parse what we sent, and closes
                self._violation(f"it refused our data: {body!r:.200}")
                return

    def _frames(self, data: bytes) -> list[memoryview]:
        """The complete frame bodies in what was buffered and ``data``, as views into
        it (quorumkv.net's ``FrameDecoder``, without a copy of each body). Raises
        ``FrameError`` for a length over ``MAX_ANSWER_FRAME``."""
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        view = memoryview(data)
        out: list[memoryview] = []
        pos, end = 0, len(data)
        while end - pos >= HEADER:
            (n,) = _LEN.unpack_from(data, pos)
            if n > MAX_ANSWER_FRAME:
                raise FrameError(
                    f"frame of {n} bytes is over the limit of {MAX_ANSWER_FRAME}; "
                    + describe_garbage(data[pos : pos + 16])
                )
            start = pos + HEADER
            pos = start + n
            if pos > end:
                pos = start - HEADER
                break
            out.append(view[start:pos])
        if pos < end:
            buf += view[pos:]
        return out

    def connection_lost(self, exc: Exception | None) -> None:
        reason = str(exc) if exc is not None else "closed by the node"
        if not self._error:
            self._error = reason or type(exc).__name__
        self._fail(lambda: ConnectionLost(self.addr, self._error, sent=True))
        self._out.clear()
        self._deadlines.clear()
        self._early.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        if not self._closed.done():
            self._closed.set_result(None)
        if self._on_lost is not None:
            self._on_lost(self)

    # -- internals ---------------------------------------------------------------------------

    async def handshake(self) -> None:
        """Wait for the node's answer to our HELLO."""
        await self._handshake_done

    def _handle_hello(self, msg: object) -> bool:
        hello = self._hello
        assert hello is not None
        self._hello = None
        if isinstance(msg, dict) and msg.get("ok") is True:
            node, cluster = msg.get("node"), msg.get("cluster")
            self.node = node if isinstance(node, int) else 0
            self.cluster = cluster if isinstance(cluster, int) else 0
            self.sharded = msg.get("sharded") is True
            if not hello.done():
                hello.set_result(None)
            return True
        if isinstance(msg, dict) and msg.get("ok") is False:
            reason = f"{self.addr} refused the connection: {msg.get('message', msg)}"
        else:
            reason = f"{self.addr} answered the handshake with {msg!r:.100}"
        self._error = reason
        _settle(hello, ProtocolError(reason))
        self.abort(lambda: ProtocolError(reason))
        return False

    def _violation(self, reason: str) -> None:
        """The node broke the protocol: nothing more from it can be trusted."""
        text = f"{self.addr} broke the protocol: {reason}"
        self._error = text
        hello, self._hello = self._hello, None
        if hello is not None:
            _settle(hello, ProtocolError(text))
        self.abort(lambda: ProtocolError(text))

    def _fail(self, error: Callable[[], BaseException]) -> None:
        hello, self._hello = self._hello, None
        if hello is not None:
            _settle(hello, ConnectionLost(self.addr, self._error or "aborted", sent=False))
        pending = list(self._pending.values())
        self._pending.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(error())

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """The timer: expire what is due, forget what is over, re-arm."""
        self._timer, self._timer_at = None, math.inf
        queue, heap, pending = self._deadlines, self._early, self._pending
        now = self._loop.time() + _EXPIRY_SLACK
        while queue:
            deadline, req_id = queue[0]
            fut = pending.get(req_id)
            if fut is not None and deadline > now:
                break
            queue.popleft()
            if fut is not None:
                del pending[req_id]
                if not fut.done():
                    fut.set_exception(Expired())
        while heap:
            deadline, req_id = heap[0]
            fut = pending.get(req_id)
            if fut is not None and deadline > now:
                break
            heapq.heappop(heap)
            if fut is not None:
                del pending[req_id]
                if not fut.done():
                    fut.set_exception(Expired())
        if len(queue) + len(heap) > 2 * len(pending) + 64:
            live = [entry for entry in queue if entry[1] in pending]
            queue.clear()
            queue.extend(live)
            heap[:] = [entry for entry in heap if entry[1] in pending]
            heapq.heapify(heap)
        if queue or heap:
            self._arm(min(queue[0][0] if queue else math.inf, heap[0][0] if heap else math.inf))

    def _flush(self) -> None:
        out = self._out
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(out)
        out.clear()


async def open_connection(
    addr: str, timeout: float, on_lost: Callable[[Connection], None] | None = None
) -> Connection:
    """A handshaken ``Connection`` to ``addr``. Raises ``Unreachable`` (could not dial,
    or no handshake within ``timeout`` seconds) or ``ProtocolError`` (refused)."""
    try:
        host, port = parse_address(addr)
    except ValueError as e:
        raise Unreachable(str(e)) from None
    loop = asyncio.get_running_loop()
    conn = Connection(addr, loop, on_lost)
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(lambda: conn, host, port)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.getsockname() == sock.getpeername():
                # TCP simultaneous open: dialling a free local port can connect the
                # socket to itself, which would then "answer" our own hello
                transport.abort()
                raise Unreachable(f"{addr}: nothing listens there")
            await conn.handshake()
    except TimeoutError:  # before OSError: TimeoutError is one
        conn.abort(lambda: ClientError("handshake timed out"))
        raise Unreachable(f"{addr}: no connection within {timeout:g}s") from None
    except ConnectionLost:
        raise Unreachable(f"{addr} closed the connection during the handshake") from None
    except OSError as e:
        raise Unreachable(f"{addr}: {e.strerror or e}") from None
    except BaseException:
        conn.abort(lambda: ClientError("connection abandoned"))
        raise
    return conn
