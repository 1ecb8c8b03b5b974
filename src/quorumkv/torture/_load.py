"""The load of a torture run: concurrent clients colliding on a few keys, recorded.

Theory of operation
-------------------
``Workload`` runs one asyncio event loop in a thread of its own, with ``clients``
tasks, each with its own ``quorumkv.aio.Client`` (its own connection, routing and
sessions), so the clients fail over independently as real ones would. Each task loops
until ``stop``: it picks a key among ``keys`` (so operations collide), an operation by
the mix (linearizable get, put, compare-and-swap, delete), records the invocation,
awaits the call, and records the completion with its outcome (``_history``). Every put
and every CAS writes a value no other operation writes (``<client>.<n>``), which is
what lets the checker tell one write from another. A CAS usually expects the value last
seen for the key by any client (else absence), so some succeed and some fail.

A client whose operation ended with an unknown outcome is closed and replaced by a
fresh one on the current endpoints, as a crashed Jepsen process is. ``stop`` stops new
operations and waits for those in flight (each is bounded by ``op_timeout``); any that
are still open then are cancelled and stay unknown.

Errors that are not ``QuorumKVError``s break the client's contract (its calls raise
only typed errors); they are recorded as unknown outcomes and kept in ``surprises`` for
the summary. This module must never retry an operation itself (the client does), nor
reuse a written value.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from quorumkv.client import AsyncClient
from quorumkv.errors import CompareFailedError, QuorumKVError
from quorumkv.sim._linearizability import OpKind
from quorumkv.torture._history import Outcome, Recorder

DEFAULT_MIX: tuple[tuple[OpKind, float], ...] = (
    (OpKind.GET, 0.4),
    (OpKind.PUT, 0.3),
    (OpKind.CAS, 0.2),
    (OpKind.DELETE, 0.1),
)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    clients: int = 10
    keys: int = 5
    think: float = 0.01
    """Mean seconds a client waits between two operations (uniform on [0, 2x])."""
    op_timeout: float = 10.0
    """Each call's deadline, retries included: longer than any fault's hold, so that
    most calls caught by a fault still end with a known outcome."""
    mix: tuple[tuple[OpKind, float], ...] = DEFAULT_MIX

    def __post_init__(self) -> None:
        if self.clients < 1 or self.keys < 1:
            raise ValueError("a load needs at least one client and one key")
        if self.think < 0 or self.op_timeout <= 0:
            raise ValueError("think must be >= 0 and op_timeout > 0")


def key_names(keys: int) -> list[bytes]:
    return [f"k{i}".encode() for i in range(keys)]


class Workload:
    """Concurrent recorded clients (see the module docstring)."""

    def __init__(
        self,
        endpoints: Callable[[], list[str]],
        recorder: Recorder,
        cfg: LoadConfig,
        seed: int,
    ) -> None:
        self._endpoints = endpoints
        self._rec = recorder
        self.cfg = cfg
        self.seed = seed
        self.keys = key_names(cfg.keys)
        self.surprises: list[str] = []
        self._seen: dict[bytes, bytes | None] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="torture-load", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop issuing operations, wait for those in flight, end the thread."""
        if self._thread is None:
            return
        loop, halt = self._loop, self._halt
        if loop is not None and halt is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(halt.set)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise RuntimeError(f"the load generator failed: {self._error!r}") from self._error

    # -- the loop thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            self._error = e
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._halt = asyncio.Event()
        self._started.set()
        tasks = [asyncio.create_task(self._worker(i)) for i in range(self.cfg.clients)]
        await self._halt.wait()
        done, pending = await asyncio.wait(tasks, timeout=self.cfg.op_timeout + 10)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            t.result()

    async def _worker(self, index: int) -> None:
        assert self._halt is not None
        rng = random.Random(f"{self.seed}/{index}")
        kinds = [k for k, _ in self.cfg.mix]
        weights = [w for _, w in self.cfg.mix]
        client = self._client(rng)
        n = 0
        try:
            while not self._halt.is_set():
                n += 1
                kind = rng.choices(kinds, weights)[0]
                outcome = await self._one(client, index, n, kind, rng.choice(self.keys), rng)
                if outcome is Outcome.UNKNOWN:
                    await client.close()
                    client = self._client(rng)
                pause = rng.uniform(0, 2 * self.cfg.think)
                if pause > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._halt.wait(), pause)
        finally:
            await client.close()

    def _client(self, rng: random.Random) -> AsyncClient:
        """A fresh client on the current endpoints, in an order of its own (clients
        given one list in one order would all dial the same node first)."""
        endpoints = self._endpoints()
        rng.shuffle(endpoints)
        return AsyncClient(endpoints, timeout=self.cfg.op_timeout)

    async def _one(
        self,
        client: AsyncClient,
        index: int,
        n: int,
        kind: OpKind,
        key: bytes,
        rng: random.Random,
    ) -> Outcome:
        rec = self._rec
        value = f"{index}.{n}".encode() if kind in (OpKind.PUT, OpKind.CAS) else None
        expected = None
        if kind is OpKind.CAS and rng.random() < 0.75:
            expected = self._seen.get(key)
        op = rec.invoke(index, kind, key, value, expected)
        try:
            if kind is OpKind.GET:
                kv = await client.get(key)
                got = None if kv is None else kv.value
                rec.ok(op, got)
                self._seen[key] = got
            elif kind is OpKind.PUT:
                assert value is not None
                await client.put(key, value)
                rec.ok(op)
                self._seen[key] = value
            elif kind is OpKind.CAS:
                assert value is not None
                await client.compare_and_swap(key, expected, value)
                rec.ok(op, True)
                self._seen[key] = value
            else:
                await client.delete(key)
                rec.ok(op)
                self._seen[key] = None
        except CompareFailedError as e:
            rec.error(op, e)
            self._seen[key] = e.actual
        except QuorumKVError as e:
            return rec.error(op, e).outcome
        except Exception as e:
            self.surprises.append(f"{kind.value} {key!r}: {type(e).__name__}: {e}")
            return rec.error(op, e).outcome
        return Outcome.OK
