"""Fake quorumkv nodes for client tests: real TCP on localhost, a real state machine,
scripted faults.

A ``FakeCluster`` is N ``FakeNode`` servers sharing one ``MVCCStore`` (in a tmp dir)
and a notion of who leads. Each node speaks the client side of ``quorumkv.net``
exactly: the handshake, then ``[req_id, op, body]`` → ``[req_id, code, body]``. A node
that is not the leader answers ERR_NOT_LEADER ``[leader, leader_addr]`` to everything
but status and serializable reads; with ``followers_read`` set it answers linearizable
reads too, as the server does (there through a read index from the leader). Writes are
applied through ``MVCCStore.apply``, so a retried ``(client, seq)`` gets the stored
answer exactly as from a real node.

Faults are scripted per node: ``faults`` is a queue consumed one per request,
``always`` applies when the queue is empty. A fault is an answer ``(code, body)`` sent
instead of doing the work, or one of ``DROP`` (close without doing anything),
``DROP_AFTER`` (do the work, then close without answering), ``SILENT`` (never
answer), ``GARBLED`` (answer as the server does to a frame it cannot parse:
``[None, ERR_BAD_REQUEST, why]``, then close), or ``After(code, body)`` (do the work,
then answer that instead: a leader that applied a write but says the outcome is
unknown). ``refuse`` refuses handshakes with
that message; ``reorder = n`` holds answers until n are ready and sends them in
reverse. Everything a node received is in ``seen``; ``wait_seen(n)`` waits for the
n-th request without sleeping.

``ThreadedCluster`` runs a cluster on a loop of its own in a thread, for the blocking
client (``Threaded`` runs any backend so, such as ``fakeshard.FakeShardedCluster``).

A node does the protocol and the faults; what a request does is its cluster's
(``Backend.work``), so the same node serves an unsharded cluster (``FakeCluster``) or a
sharded one (``fakeshard``).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from quorumkv.errors import KVError
from quorumkv.kv import Command, MVCCStore, RangeRequest, decode_command, encode_result
from quorumkv.net import (
    ERR_BAD_REQUEST,
    ERR_MEMBERSHIP,
    ERR_NOT_LEADER,
    ERR_PROTOCOL,
    ERR_TIMEOUT,
    OK,
    OP_MEMBER_ADD,
    OP_MEMBER_REMOVE,
    OP_RANGE_READ,
    OP_RANGE_WRITE,
    OP_READ,
    OP_STATUS,
    OP_TRANSFER,
    OP_WRITE,
    accept,
    check_hello,
    encode,
    refuse,
    unpack,
)

T = TypeVar("T")

DROP, DROP_AFTER, SILENT, GARBLED = "drop", "drop-after", "silent", "garbled"


@dataclass(frozen=True)
class After:
    """A fault: do the work, then answer ``(code, body)`` instead of its answer."""

    code: int
    body: Any


Fault = tuple[int, Any] | str | After
CLUSTER_ID = 0x5EED


@dataclass
class Seen:
    """One request as a node received it."""

    op: int
    body: Any
    command: Command | None = None
    serializable: bool = False


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(4)
    return unpack(await reader.readexactly(int.from_bytes(head, "big")))


class Backend(Protocol):
    """What a fake node serves: an unsharded or a sharded cluster."""

    sharded: bool

    def work(self, node: FakeNode, seen: Seen) -> tuple[int, Any]:
        """The answer ``(code, body)`` to one request that ``node`` received."""
        ...


@dataclass
class FakeNode:
    cluster: Backend
    node_id: int
    faults: deque[Fault] = field(default_factory=deque)
    always: Fault | None = None
    refuse: str | None = None
    reorder: int = 0
    seen: list[Seen] = field(default_factory=list)
    handshakes: int = 0
    addr: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _held: list[tuple[asyncio.StreamWriter, bytes]] = field(default_factory=list)
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def ops(self, op: int) -> list[Seen]:
        return [s for s in self.seen if s.op == op]

    async def wait_seen(self, n: int) -> None:
        while len(self.seen) < n:
            self._event.clear()
            await self._event.wait()

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.addr = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        """Stop listening and drop every connection (the node 'crashes')."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            hello = await _read_frame(reader)
            self.handshakes += 1
            _kind, reason = check_hello(hello, CLUSTER_ID)
            reason = self.refuse or reason
            if reason:
                writer.write(encode(refuse(ERR_PROTOCOL, reason)))
                return
            writer.write(encode(accept(self.node_id, CLUSTER_ID, self.cluster.sharded)))
            while True:
                req_id, op, body = await _read_frame(reader)
                if not self._handle(writer, req_id, op, body):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    def _handle(self, writer: asyncio.StreamWriter, req_id: int, op: int, body: Any) -> bool:
        """Serve one request; False: drop the connection."""
        seen = Seen(op, body)
        if op == OP_WRITE:
            seen.command = decode_command(body)
        elif op == OP_READ:
            seen.command, seen.serializable = decode_command(body[0]), body[1]
        elif op == OP_RANGE_WRITE:
            seen.command = decode_command(body[2])
        elif op == OP_RANGE_READ:
            seen.command, seen.serializable = decode_command(body[2]), body[3]
        self.seen.append(seen)
        self._event.set()
        fault = self.faults.popleft() if self.faults else self.always
        if fault == DROP:
            return False
        if fault == SILENT:
            return True
        if fault == GARBLED:
            writer.write(encode([None, ERR_BAD_REQUEST, "a request must be [req_id, op, body]"]))
            return False
        if isinstance(fault, tuple):
            answer = fault
        elif isinstance(fault, After):
            self.cluster.work(self, seen)
            answer = (fault.code, fault.body)
        else:
            answer = self.cluster.work(self, seen)
            if fault == DROP_AFTER:
                return False
        frame = encode([req_id, *answer])
        if self.reorder:
            self._held.append((writer, frame))
            if len(self._held) >= self.reorder:
                for w, f in reversed(self._held):
                    w.write(f)
                self._held.clear()
        else:
            writer.write(frame)
        return True


class FakeCluster:
    """``n`` fake nodes (ids 1..n) sharing one store; ``leader`` 0: none elected."""

    sharded = False

    def __init__(self, path: Path, n: int = 1, leader: int = 1) -> None:
        self.store = MVCCStore(path / "kv", map_size=1 << 26, sync=False)
        self.index = 0
        self.leader = leader
        self.nodes = {i: FakeNode(self, i) for i in range(1, n + 1)}
        self.members: list[dict[str, Any]] = []
        self.followers_read = False
        """Followers answer linearizable reads (a follower read, ``read_from``)."""

    def work(self, node: FakeNode, seen: Seen) -> tuple[int, Any]:
        cl = self
        if seen.op == OP_STATUS:
            return OK, cl.status(node.node_id)
        follower_read = cl.followers_read and seen.op == OP_READ
        if node.node_id != cl.leader and not seen.serializable and not follower_read:
            return ERR_NOT_LEADER, [cl.leader, cl.addr_of(cl.leader)]
        if seen.op == OP_WRITE:
            assert seen.command is not None
            result = cl.apply(seen.body)
            if result is None:
                return ERR_TIMEOUT, "stale retry"
            return OK, encode_result(result)
        if seen.op == OP_READ:
            assert seen.command is not None and isinstance(seen.command.request, RangeRequest)
            try:
                return OK, encode_result(cl.store.range(seen.command.request))
            except KVError as e:
                return OK, encode_result(e)
        if seen.op == OP_MEMBER_ADD:
            node, addr, learner = seen.body
            if any(m["id"] == node for m in cl.members):
                return ERR_MEMBERSHIP, f"node {node} is already a member"
            cl.members.append({"id": node, "addr": addr, "voter": not learner})
            return OK, cl.members
        if seen.op == OP_MEMBER_REMOVE:
            if not any(m["id"] == seen.body for m in cl.members):
                return ERR_MEMBERSHIP, f"node {seen.body} is not a member"
            cl.members = [m for m in cl.members if m["id"] != seen.body]
            return OK, cl.members
        if seen.op == OP_TRANSFER:
            to = seen.body or next(m["id"] for m in cl.members if m["id"] != cl.leader)
            cl.leader = to
            return OK, {"leader": to}
        return ERR_BAD_REQUEST, f"unknown op {seen.op}"

    def __getitem__(self, node_id: int) -> FakeNode:
        return self.nodes[node_id]

    def addr_of(self, node_id: int) -> str | None:
        node = self.nodes.get(node_id)
        return node.addr if node is not None else None

    def apply(self, data: bytes) -> Any:
        self.index += 1
        return self.store.apply([(self.index, data)])[0]

    def status(self, node_id: int) -> dict[str, Any]:
        return {
            "id": node_id,
            "cluster_id": CLUSTER_ID,
            "role": "leader" if node_id == self.leader else "follower",
            "term": 1,
            "leader": self.leader,
            "leader_addr": self.addr_of(self.leader),
            "revision": self.store.revision(),
            "members": self.members,
        }

    def writes(self) -> list[Seen]:
        return [s for node in self.nodes.values() for s in node.ops(OP_WRITE)]

    async def __aenter__(self) -> FakeCluster:
        for node in self.nodes.values():
            await node.start()
        self.members = [{"id": i, "addr": n.addr, "voter": True} for i, n in self.nodes.items()]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for node in self.nodes.values():
            await node.stop()
        self.store.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a test coroutine in a fresh debug-mode loop, bounded by a safety timeout;
    fail if it leaves any task running."""

    async def main() -> T:
        async with asyncio.timeout(10):
            result = await coro
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert not others, f"tasks left running: {others}"
        return result

    return asyncio.run(main(), debug=True)


class AsyncBackend(Protocol):
    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


B = TypeVar("B", bound=AsyncBackend)


class Threaded(Generic[B]):
    """A fake cluster, made by ``make`` on an event loop of its own in a thread, for
    the blocking client (and the CLI, which uses it)."""

    def __init__(self, make: Callable[[], B]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._make = make
        self.cluster: B

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def __enter__(self) -> B:
        self._thread.start()

        async def start() -> B:
            return await self._make().__aenter__()

        self.cluster = self.call(start())
        return self.cluster

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.call(self.cluster.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class ThreadedCluster(Threaded[FakeCluster]):
    """A ``FakeCluster`` served by an event loop in a thread of its own."""

    def __init__(self, path: Path, n: int = 1, leader: int = 1) -> None:
        super().__init__(lambda: FakeCluster(path, n, leader))
