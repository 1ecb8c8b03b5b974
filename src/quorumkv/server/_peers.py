"""Outbound links to peers: one connection per peer, batched frames, reconnects.

Theory of operation
-------------------
Each node dials every peer it must talk to and sends on that connection only; the
peer's messages to us come on the connection it dialled (``_conn.PeerConn``). So each
side owns its own send queue and reconnects on its own schedule, and a node that
restarts is reachable again as soon as its peers' next dial succeeds.

``PeerLink.send`` queues encoded messages; ``flush`` writes everything queued since the
last flush as ONE frame (all groups together). Raft tolerates loss, so the link never
queues without bound: while disconnected, or while the kernel buffer towards the peer
is over ``HIGH_WATER`` (a slow or stalled peer), messages are dropped and the caller is
told (``flush`` returns False), which reports the peer unreachable to the core; the
leader then probes gently instead of streaming into a void.

Reconnection backs off from 50 ms to 1 s, with jitter. A peer that refuses our
handshake (another cluster) is logged once per state change, not per attempt.

Snapshots go on their own short-lived connection (``send_snapshot``), so a large one
never delays heartbeats. This module owns sockets and bytes; it makes no Raft decision.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from quorumkv.net import (
    KIND_PEER,
    KIND_SNAP,
    MAX_PEER_FRAME,
    FrameDecoder,
    FrameError,
    encode,
    frame,
    pack,
    parse_address,
    peer_hello,
    unpack,
)

log = logging.getLogger("quorumkv.server")

HIGH_WATER = 8 << 20
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 1.0


class _HelloProtocol(asyncio.Protocol):
    """Reads the handshake answer, then ignores the peer (it never writes to us)."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.decoder = FrameDecoder(1 << 16)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.paused = False

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        try:
            frames = self.decoder.feed(data)
            if frames:
                self.answer.set_result(unpack(frames[0]))
        except FrameError as e:
            self.answer.set_exception(e)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionError("closed during handshake"))
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


async def dial(addr: str, hello: dict[str, Any], timeout: float) -> tuple[asyncio.Transport, Any]:
    """Connect and handshake; returns (transport, protocol) or raises OSError/ConnectionError."""
    host, port = parse_address(addr)
    loop = asyncio.get_running_loop()
    transport, proto = await asyncio.wait_for(
        loop.create_connection(_HelloProtocol, host, port), timeout
    )
    transport.write(encode(hello))
    try:
        answer = await asyncio.wait_for(proto.answer, timeout)
    except BaseException:
        transport.close()
        raise
    if not isinstance(answer, dict) or not answer.get("ok"):
        transport.close()
        why = answer.get("message") if isinstance(answer, dict) else repr(answer)
        raise ConnectionRefusedError(f"{addr} refused the handshake: {why}")
    return transport, proto


class PeerLink:
    """The outbound connection to one peer."""

    def __init__(
        self,
        node_id: int,
        peer_id: int,
        addr: str,
        hello: Callable[[], dict[str, Any]],
        on_connected: Callable[[int], None],
    ) -> None:
        self.node_id = node_id
        self.peer_id = peer_id
        self.addr = addr
        self._hello = hello
        self._on_connected = on_connected
        self.queue: list[list[Any]] = []
        self.transport: asyncio.Transport | None = None
        self.proto: _HelloProtocol | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.last_error = ""
        self.bytes_out = 0
        self.last_write = 0.0

    def send(self, doc: list[Any]) -> None:
        self.queue.append(doc)

    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def flush(self) -> bool:
        """Write the queued messages as one frame; False if they were dropped."""
        if not self.queue:
            return True
        batch, self.queue = self.queue, []
        t = self.transport
        if t is None or t.is_closing():
            self.transport = None
            self._ensure_dialing()
            return False
        if t.get_write_buffer_size() > HIGH_WATER:
            return False
        data = frame(pack(batch))
        if len(data) > MAX_PEER_FRAME:
            # Split; Raft bounds each message, so halves always fit eventually.
            half = len(batch) // 2
            self.queue = batch[:half]
            ok = self.flush()
            self.queue = batch[half:]
            return self.flush() and ok
        t.write(data)
        self.bytes_out += len(data)
        self.last_write = time.monotonic()
        return True

    def keepalive(self, now: float, every: float) -> None:
        """Write an empty frame if nothing was written for ``every`` seconds: the peer
        counts any frame as a sign of life (quiet groups rely on it)."""
        t = self.transport
        if now - self.last_write < every or t is None or t.is_closing():
            return
        data = frame(pack([]))
        t.write(data)
        self.bytes_out += len(data)
        self.last_write = now

    def _ensure_dialing(self) -> None:
        if self.closed or (self.task is not None and not self.task.done()):
            return
        self.task = asyncio.get_running_loop().create_task(self._dial_loop())

    def start(self) -> None:
        self._ensure_dialing()

    async def _dial_loop(self) -> None:
        backoff = _BACKOFF_MIN
        while not self.closed:
            try:
                transport, proto = await dial(self.addr, self._hello(), 2.0)
            except (OSError, ConnectionError, FrameError, TimeoutError) as e:
                why = str(e) or type(e).__name__
                if why != self.last_error:
                    log.info("node %d cannot reach node %d at %s: %s",
                             self.node_id, self.peer_id, self.addr, why)  # fmt: skip
                    self.last_error = why
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if self.is_closed():
                transport.close()
                return
            if self.last_error:
                log.info("node %d reached node %d at %s", self.node_id, self.peer_id, self.addr)
            self.last_error = ""
            self.transport, self.proto = transport, proto
            self._on_connected(self.peer_id)
            await proto.lost
            self.transport = None
            backoff = _BACKOFF_MIN
            if not self.closed:
                log.info("node %d lost its link to node %d", self.node_id, self.peer_id)

    def is_closed(self) -> bool:
        return self.closed

    def set_address(self, addr: str) -> None:
        if addr != self.addr:
            self.addr = addr
            if self.transport is not None:
                self.transport.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self.task is not None:
            self.task.cancel()


async def send_snapshot(
    addr: str,
    hello: dict[str, Any],
    message_doc: list[Any],
    chunks: Iterable[bytes],
    timeout: float,
) -> tuple[bool, str, int]:
    """Stream one snapshot; returns (installed, reason, bytes sent)."""
    transport, proto = await dial(addr, hello, timeout)
    sent = 0
    try:
        transport.write(frame(pack(message_doc)))
        for chunk in chunks:
            if proto.lost.done():
                return False, "connection lost while streaming", sent
            data = encode(["chunk", chunk])
            transport.write(data)
            sent += len(data)
            while transport.get_write_buffer_size() > HIGH_WATER and not proto.lost.done():
                await asyncio.sleep(0.005)
        if proto.lost.done():
            return False, "connection lost while streaming", sent
        # The receiver answers once it has installed the snapshot (or refused it).
        proto.decoder = FrameDecoder(1 << 16)
        proto.answer = asyncio.get_running_loop().create_future()
        transport.write(encode(["end"]))
        done, _ = await asyncio.wait(
            {proto.answer, proto.lost}, timeout=timeout * 30, return_when=asyncio.FIRST_COMPLETED
        )
        if proto.answer in done and proto.answer.exception() is None:
            answer = proto.answer.result()
            if answer == ["ok"]:
                return True, "", sent
            return False, f"receiver refused: {answer!r}", sent
        return False, "no answer from the receiver", sent
    finally:
        transport.close()


def snap_hello(cluster: int, frm: int, addr: str) -> dict[str, Any]:
    return peer_hello(KIND_SNAP, cluster, frm, addr)


def link_hello(cluster: int, frm: int, addr: str) -> dict[str, Any]:
    return peer_hello(KIND_PEER, cluster, frm, addr)
