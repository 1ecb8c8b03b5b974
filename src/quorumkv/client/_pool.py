"""``Pool``: one connection per node, shared by the routers of every range.

Theory of operation
-------------------
On a sharded cluster the client routes each request by range, and each range has a
``Router`` of its own (its leader hint, its retries). Many ranges are led by the same
node, so the routers do not dial connections of their own: they ask the pool, which
keeps at most one usable ``Connection`` per node address and one dial per address at a
time (callers that need the same node while it is being dialled wait for that dial).
Requests of every range to a node are pipelined on its one connection.

A pooled connection ends as any other does: lost (the pool forgets it when its loss
callback fires), or retired by a router that saw its node stall or stop (it closes once
its requests in flight have ended). Either way it is no longer ``usable``, and the next
``get`` for that address dials a new one. A router that merely stops routing one range
to a node (the node is not that range's leader) leaves the connection alone: the other
ranges still use it.

This module owns the pooled connections and their dials; it must never retry, choose
a node or interpret an answer (the routers do). It binds to the event loop of its first
``get``; ``close`` cancels the dials and aborts every connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from quorumkv.client._conn import Connection, open_connection
from quorumkv.errors import ClientError


class Pool:
    """Connections of one client, at most one usable per node address."""

    def __init__(self, closed_error: Callable[[], ClientError]) -> None:
        self._closed_error = closed_error
        self._conns: dict[str, Connection] = {}
        self._dials: dict[str, asyncio.Task[Connection]] = {}
        self._all: set[Connection] = set()
        self._closed = False

    def __len__(self) -> int:
        """How many pooled connections are open (usable or finishing their requests)."""
        return len(self._all)

    async def get(self, addr: str, dial_timeout: float) -> Connection:
        """The usable connection to ``addr``, dialled if there is none. Raises what
        ``open_connection`` raises (``Unreachable``, ``ProtocolError``)."""
        if self._closed:
            raise self._closed_error()
        conn = self._conns.get(addr)
        if conn is not None and conn.usable:
            return conn
        task = self._dials.get(addr)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._dial(addr, dial_timeout))
            self._dials[addr] = task
        # A caller that gives up (its deadline, its router closing) must not cancel the
        # dial the others wait for.
        return await asyncio.shield(task)

    async def _dial(self, addr: str, dial_timeout: float) -> Connection:
        try:
            conn = await open_connection(addr, dial_timeout, self._lost)
        finally:
            self._dials.pop(addr, None)
        if self._closed:
            conn.abort(self._closed_error)
            raise self._closed_error()
        self._conns[addr] = conn
        self._all.add(conn)
        return conn

    def _lost(self, conn: Connection) -> None:
        self._all.discard(conn)
        if self._conns.get(conn.addr) is conn:
            del self._conns[conn.addr]

    async def close(self) -> None:
        """Cancel the dials and abort every connection (their requests fail with the
        closed error). Idempotent."""
        self._closed = True
        dials = list(self._dials.values())
        for task in dials:
            task.cancel()
        if dials:
            await asyncio.wait(dials)
            for task in dials:
                if not task.cancelled():
                    task.exception()  # retrieved: nobody else may be waiting for it
        conns = list(self._all)
        self._all.clear()
        self._conns.clear()
        for conn in conns:
            conn.abort(self._closed_error)
        for conn in conns:
            await conn.wait_closed()
