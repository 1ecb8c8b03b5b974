"""``Client`` (``quorumkv.Client``): the blocking client, a shell around ``AsyncClient``.

Theory of operation
-------------------
Each ``Client`` owns one private event loop, run by a daemon thread, and one
``AsyncClient`` living on it. A method call builds the coroutine of the matching
``AsyncClient`` method and hands it to that loop with
``asyncio.run_coroutine_threadsafe``, then blocks on the returned future. Any number of
threads may call at once: their requests are pipelined on the same connection, and the
``AsyncClient`` state is only ever touched from the loop's thread. Deadlines are the
``AsyncClient``'s, so a call never blocks longer than its timeout (plus a dial).

The loop is uvloop's where uvloop is installed (a dependency wherever it builds), else
the standard one: it is private to the client's thread, so the application's own loop,
if any, is whatever the application chose. ``close()`` (or leaving the ``with`` block)
closes the ``AsyncClient`` on the loop, which fails the calls still in flight with
``ClientError``, then stops the loop and joins the thread; later calls raise
``ClientError`` without touching the loop. A client dropped without ``close()`` is
stopped by a finalizer when it is garbage-collected.

This module must never hold a lock while a call blocks, never run a coroutine on the
caller's thread, and never keep a reference from the loop thread to the ``Client``
(that would keep the finalizer from running).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from quorumkv.client._aio import AsyncClient
from quorumkv.client._policy import ATTEMPT_TIMEOUT
from quorumkv.client._replicas import ReadFrom
from quorumkv.client._requests import Data
from quorumkv.errors import ClientError
from quorumkv.kv import (
    CompactionResponse,
    Compare,
    DeleteRangeResponse,
    KeyValue,
    Op,
    PutResponse,
    RangeResponse,
    SortOrder,
    SortTarget,
    TxnResponse,
)
from quorumkv.shard import RangeDescriptor

try:
    from uvloop import new_event_loop as _new_loop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    _new_loop = asyncio.new_event_loop  # type: ignore[assignment]

P = ParamSpec("P")
T = TypeVar("T")


def _run_loop(loop: asyncio.AbstractEventLoop, aio: AsyncClient, started: threading.Event) -> None:
    """The loop thread: run until stopped, then close the client and finish every task
    (so every caller's future is settled) before closing the loop."""
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        try:
            loop.run_until_complete(aio.close())
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop the loop thread; safe from any thread, and when it has stopped already."""
    if thread.is_alive():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join()


class Client:
    """A blocking client of one quorumkv cluster; methods as ``quorumkv.aio.Client``.

    Thread-safe: share one per process. Use it as a context manager or call
    ``close()``.
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
        self._aio = AsyncClient(
            endpoints,
            timeout=timeout,
            connect_timeout=connect_timeout,
            attempt_timeout=attempt_timeout,
            read_from=read_from,
        )
        self._lock = threading.Lock()
        self._closed = False
        self._loop = _new_loop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=_run_loop,
            args=(self._loop, self._aio, started),
            name="quorumkv-client",
            daemon=True,
        )
        self._thread.start()
        started.wait()
        self._finalizer = weakref.finalize(self, _stop, self._loop, self._thread)

    def __repr__(self) -> str:
        return repr(self._aio).replace("quorumkv.aio.Client", "quorumkv.Client", 1)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def endpoints(self) -> list[str]:
        """The endpoints given, then addresses learned from redirects and statuses."""
        return self._run(_endpoints, self._aio)

    def close(self) -> None:
        """Close the connections and stop the loop thread. Calls in flight in other
        threads fail with ``ClientError``. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer()

    def _run(self, fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
        with self._lock:
            if self._closed:
                raise ClientError("the client is closed")
            fut = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self._loop)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise ClientError("the client was closed while the request was in flight") from None
        except BaseException:
            fut.cancel()  # KeyboardInterrupt in the caller: do not leave the call running
            raise

    # -- the methods of AsyncClient, blocking --------------------------------------------------

    def put(
        self,
        key: Data,
        value: Data,
        *,
        prev_kv: bool = False,
        lease: int = 0,
        timeout: float | None = None,
    ) -> PutResponse:
        """Set ``key`` to ``value``; with ``prev_kv`` the response carries the old pair."""
        return self._run(self._aio.put, key, value, prev_kv=prev_kv, lease=lease, timeout=timeout)

    def get(
        self,
        key: Data,
        *,
        serializable: bool = False,
        revision: int = 0,
        timeout: float | None = None,
    ) -> KeyValue | None:
        """The pair at ``key`` (at ``revision``, 0: the latest), or None."""
        return self._run(
            self._aio.get, key, serializable=serializable, revision=revision, timeout=timeout
        )

    def range(
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
        """The keys in ``[key, range_end)``, or starting with ``key`` when ``prefix``."""
        return self._run(
            self._aio.range, key, range_end, prefix=prefix, limit=limit, revision=revision,
            keys_only=keys_only, count_only=count_only, sort_order=sort_order,
            sort_target=sort_target, serializable=serializable, timeout=timeout,
        )  # fmt: skip

    def delete(
        self,
        key: Data,
        range_end: Data = b"",
        *,
        prefix: bool = False,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> DeleteRangeResponse:
        """Delete ``key``, ``[key, range_end)``, or the keys starting with ``key``."""
        return self._run(
            self._aio.delete, key, range_end, prefix=prefix, prev_kv=prev_kv, timeout=timeout
        )

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResponse:
        """If every compare holds run ``success``, else ``failure``; atomically."""
        return self._run(self._aio.txn, compare, success, failure, timeout=timeout)

    def compare_and_swap(
        self,
        key: Data,
        expected: Data | None,
        new: Data,
        *,
        timeout: float | None = None,
    ) -> PutResponse:
        """Set ``key`` to ``new`` if it holds ``expected`` (None: if it does not exist)."""
        return self._run(self._aio.compare_and_swap, key, expected, new, timeout=timeout)

    def compact(self, revision: int, *, timeout: float | None = None) -> CompactionResponse:
        """Forget history before ``revision``."""
        return self._run(self._aio.compact, revision, timeout=timeout)

    def status(
        self, endpoint: str | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The status dict of ``endpoint``, by default of the leader."""
        return self._run(self._aio.status, endpoint, timeout=timeout)

    def cluster_status(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The status of every member; unreachable ones carry an ``"error"``."""
        return self._run(self._aio.cluster_status, timeout=timeout)

    def members(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The members ``[{"id", "addr", "voter"}]``."""
        return self._run(self._aio.members, timeout=timeout)

    def member_add(
        self,
        node_id: int,
        addr: str,
        *,
        learner_only: bool = False,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Add node ``node_id`` listening at ``addr``. Returns the members."""
        return self._run(
            self._aio.member_add, node_id, addr, learner_only=learner_only, timeout=timeout
        )

    def member_remove(self, node_id: int, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Remove node ``node_id``. Returns the members."""
        return self._run(self._aio.member_remove, node_id, timeout=timeout)

    def transfer_leader(self, to: int = 0, *, timeout: float | None = None) -> int:
        """Make node ``to`` (0: the most caught-up voter) the leader; returns its id."""
        return self._run(self._aio.transfer_leader, to, timeout=timeout)

    def ranges(
        self, start: Data = b"", end: Data = b"", *, timeout: float | None = None
    ) -> list[RangeDescriptor]:
        """``AsyncClient.ranges``: the ranges of a sharded cluster, in key order."""
        return self._run(self._aio.ranges, start, end, timeout=timeout)

    def split(
        self, key: Data, *, timeout: float | None = None
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        """``AsyncClient.split``: split the range holding ``key`` at ``key``."""
        return self._run(self._aio.split, key, timeout=timeout)

    def nodes(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """``AsyncClient.nodes``: the registered nodes, their states and replica counts."""
        return self._run(self._aio.nodes, timeout=timeout)

    def set_node_state(
        self, node_id: int, state: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """``AsyncClient.set_node_state``: drain a node, bring it back up, or remove it."""
        return self._run(self._aio.set_node_state, node_id, state, timeout=timeout)

    def transfer_range_leader(self, range_id: int, to: int, *, timeout: float | None = None) -> int:
        """``AsyncClient.transfer_range_leader``: make node ``to`` range ``range_id``'s
        leader."""
        return self._run(self._aio.transfer_range_leader, range_id, to, timeout=timeout)


async def _endpoints(aio: AsyncClient) -> list[str]:
    return aio.endpoints
