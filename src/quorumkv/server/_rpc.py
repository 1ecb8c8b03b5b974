"""Requests from one node to another, over the client protocol.

Theory of operation
-------------------
A node of a sharded cluster asks the meta range's leader for things: revisions for the
writes it is about to propose, a directory change. It does so as a client would: an
``RpcConn`` dials the other node's address, says hello as a client, and pipelines
``[req_id, op, body]`` frames, matching answers by id. ``call`` returns the answer's
``(code, body)``; following an ERR_NOT_LEADER hint is the caller's business. A lost
connection fails every call waiting on it with ``ConnectionError``; the next call dials
again.

This module must never interpret an answer's body or retry on its own.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from quorumkv.net import MAX_CLIENT_FRAME, FrameDecoder, FrameError, client_hello, encode, unpack

from ._peers import dial


class _Answers(asyncio.Protocol):
    def __init__(self, conn: RpcConn) -> None:
        self.conn = conn
        self.decoder = FrameDecoder(MAX_CLIENT_FRAME)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FrameError as e:
            self.conn.lost(ConnectionError(f"bad frame from {self.conn.addr}: {e}"))
            return
        for body in frames:
            doc = unpack(body)
            fut = self.conn.waiting.pop(doc[0], None)
            if fut is not None and not fut.done():
                fut.set_result((doc[1], doc[2]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.lost(ConnectionError(f"connection to {self.conn.addr} lost"))


class RpcConn:
    """Pipelined requests to one node at ``addr``."""

    def __init__(self, addr: str, timeout: float = 2.0) -> None:
        self.addr = addr
        self.timeout = timeout
        self.waiting: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self._ids = itertools.count(1)
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def _connect(self) -> None:
        transport, proto = await dial(self.addr, client_hello(), self.timeout)
        # The handshake is done: from here on the answers go to the request matcher.
        answers = _Answers(self)
        answers.decoder = proto.decoder
        transport.set_protocol(answers)
        self._transport = transport

    async def call(self, op: int, body: Any, timeout: float | None = None) -> tuple[int, Any]:
        if self._transport is None or self._transport.is_closing():
            if self._connecting is None or self._connecting.done():
                self._connecting = asyncio.ensure_future(self._connect())
            await asyncio.shield(self._connecting)
        assert self._transport is not None
        req_id = next(self._ids)
        fut: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[req_id] = fut
        self._transport.write(encode([req_id, op, body]))
        try:
            return await asyncio.wait_for(fut, timeout or self.timeout)
        finally:
            self.waiting.pop(req_id, None)

    def lost(self, exc: Exception) -> None:
        waiting, self.waiting = self.waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def close(self) -> None:
        self.lost(ConnectionError("closed"))
