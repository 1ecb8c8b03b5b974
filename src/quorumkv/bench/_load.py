"""The load generator: one process, one client, ``concurrency`` closed-loop callers.

``python -m quorumkv.bench._load`` reads one ``LoadSpec`` as JSON on stdin, runs it on
an asyncio event loop (uvloop's where it is installed, for both systems: the standard
loop's own overhead would otherwise be part of what is measured), and writes one
``PointResult`` as JSON on stdout (after an ``open`` and a ``close`` event line as its
window opens and closes). ``run_point``
(in the bench process) starts that child, so the generator never shares a process or
a GIL with the bench or with a node; it is stopped by its pid if it overruns.

Theory of operation: one client instance (``quorumkv.client.AsyncClient``, or
``EtcdKV`` on one gRPC channel to the etcd leader) carries every caller's requests,
pipelined. Each caller loops: pick a key uniformly among ``keys``, issue the
operation, await it, record its latency. After ``warmup`` seconds the window opens:
operations that complete inside it are counted, and their latencies kept; the CPU
time the generator process used (``getrusage``, every thread: grpc runs its own) over
the window is reported, so a generator that saturates its core shows it. ``fill``
writes every key once instead (the window is the whole run), and ``verify`` checks
that a put then a linearizable get round-trips.

What this module must never do: share a process with the system it measures, or count
a failed operation as done (failures are counted apart, with the first message).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import quorumkv
from quorumkv.bench._etcdproto import EtcdKV, load_stubs
from quorumkv.client import AsyncClient

OPS = ("put", "get", "fill", "verify")
try:
    from uvloop import run as _run_loop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    _run_loop = asyncio.run  # type: ignore[assignment]

KEY_FORMAT = b"bench/%07d"


@dataclass(frozen=True)
class LoadSpec:
    """What one generator run does. ``system`` is ``quorumkv`` or ``etcd``."""

    system: str
    endpoints: tuple[str, ...]
    op: str
    concurrency: int = 1
    warmup: float = 2.0
    duration: float = 10.0
    keys: int = 100_000
    value_size: int = 100
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, not {self.op!r}")
        if self.system not in ("quorumkv", "etcd"):
            raise ValueError(f"the generator drives quorumkv or etcd, not {self.system!r}")
        if self.concurrency < 1 or self.keys < 1:
            raise ValueError("concurrency and keys must be positive")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> LoadSpec:
        doc = json.loads(text)
        doc["endpoints"] = tuple(doc["endpoints"])
        return LoadSpec(**doc)


@dataclass
class PointResult:
    """One measured point. Latencies in ms; ``cpu_s`` is the generator's (None when
    the load ran inside the system's own processes)."""

    ops: int
    seconds: float
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_s: float | None = None
    first_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_pct(self) -> float | None:
        """The generator's CPU over the window, in percent of one core."""
        if self.cpu_s is None or self.seconds <= 0:
            return None
        return 100.0 * self.cpu_s / self.seconds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops_per_s"] = self.ops_per_s
        d["cpu_pct"] = self.cpu_pct
        return d

    @staticmethod
    def from_dict(doc: dict[str, Any]) -> PointResult:
        names = ("ops", "seconds", "errors", "p50_ms", "p99_ms", "cpu_s", "first_error", "extra")
        return PointResult(**{k: doc[k] for k in names if k in doc})


def percentile(sorted_values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of already sorted values; 0 if none."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100), at least 1
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def key(i: int) -> bytes:
    return KEY_FORMAT % i


Op = Callable[[bytes], Awaitable[object]]
"""One operation of the closed loop on a key; what it returns is not looked at."""


class KV(Protocol):
    async def put(self, key: bytes, value: bytes) -> None: ...
    async def get(self, key: bytes) -> bytes | None: ...
    async def close(self) -> None: ...

    def op(self, name: str, value: bytes) -> Op:
        """``put`` (of ``value``) or ``get`` as the client's own call, with no wrapper
        around it: the generator's CPU per operation is part of what is measured."""
        ...


class _QkvKV:
    def __init__(self, spec: LoadSpec) -> None:
        self._c = AsyncClient(list(spec.endpoints), timeout=spec.timeout)

    async def put(self, key: bytes, value: bytes) -> None:
        await self._c.put(key, value)

    async def get(self, key: bytes) -> bytes | None:
        kv = await self._c.get(key)
        return None if kv is None else kv.value

    def op(self, name: str, value: bytes) -> Op:
        return functools.partial(self._c.put, value=value) if name == "put" else self._c.get

    async def close(self) -> None:
        await self._c.close()


class _EtcdKV:
    def __init__(self, spec: LoadSpec) -> None:
        self._c = EtcdKV(spec.endpoints[0], load_stubs())
        self._timeout = spec.timeout

    async def put(self, key: bytes, value: bytes) -> None:
        await self._c.put(key, value, timeout=self._timeout)

    async def get(self, key: bytes) -> bytes | None:
        return await self._c.get(key, timeout=self._timeout)

    def op(self, name: str, value: bytes) -> Op:
        if name == "put":
            return functools.partial(self._c.put, value=value, timeout=self._timeout)
        return functools.partial(self._c.get, timeout=self._timeout)

    async def close(self) -> None:
        await self._c.close()


def _client(spec: LoadSpec) -> KV:
    return _QkvKV(spec) if spec.system == "quorumkv" else _EtcdKV(spec)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class _Window:
    """Counts completions (one latency each) and keeps latencies while open."""

    def __init__(self) -> None:
        self.open = False
        self.errors = 0
        self.first_error = ""
        self.latencies: list[float] = []

    @property
    def done(self) -> int:
        return len(self.latencies)

    def record(self, latency: float) -> None:
        if self.open:
            self.latencies.append(latency)

    def fail(self, e: BaseException) -> None:
        if not self.first_error:
            self.first_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if self.open:
            self.errors += 1


async def _closed_loop(spec: LoadSpec, kv: KV) -> PointResult:
    value = os.urandom(spec.value_size)
    win = _Window()
    stopping = False
    op = kv.op(spec.op, value)
    keys = spec.keys

    async def caller(seed: int) -> None:
        # Per operation: a uniform key (int(random() * keys): randrange costs two Python
        # calls more), the call, its latency if the window is open (win.record inline).
        draw = random.Random(seed).random
        perf = time.perf_counter
        latencies = win.latencies
        while not stopping:
            k = KEY_FORMAT % int(draw() * keys)
            t0 = perf()
            try:
                await op(k)
            except Exception as e:
                win.fail(e)
                await asyncio.sleep(0.01)
                continue
            if win.open:
                latencies.append(perf() - t0)

    tasks = [asyncio.create_task(caller(i)) for i in range(spec.concurrency)]
    await asyncio.sleep(spec.warmup)
    emit("open")
    cpu0, t0 = _cpu(), time.perf_counter()
    win.open = True
    await asyncio.sleep(spec.duration)
    win.open = False
    cpu1, t1 = _cpu(), time.perf_counter()
    emit("close")
    stopping = True
    _done, pending = await asyncio.wait(tasks, timeout=spec.timeout)
    for t in pending:
        t.cancel()
    lat = sorted(win.latencies)
    return PointResult(
        ops=win.done,
        seconds=t1 - t0,
        errors=win.errors,
        p50_ms=1000 * percentile(lat, 50),
        p99_ms=1000 * percentile(lat, 99),
        cpu_s=cpu1 - cpu0,
        first_error=win.first_error,
    )


async def _fill(spec: LoadSpec, kv: KV) -> PointResult:
    value = os.urandom(spec.value_size)
    win = _Window()
    win.open = True
    todo = iter(range(spec.keys))

    async def caller() -> None:
        for i in todo:
            t0 = time.perf_counter()
            await kv.put(KEY_FORMAT % i, value)  # a failed fill is fatal
            win.record(time.perf_counter() - t0)

    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(spec.concurrency)))
    lat = sorted(win.latencies)
    return PointResult(
        ops=win.done,
        seconds=time.perf_counter() - t0,
        p50_ms=1000 * percentile(lat, 50),
        p99_ms=1000 * percentile(lat, 99),
        cpu_s=_cpu() - cpu0,
    )


async def _verify(kv: KV) -> PointResult:
    value = b"round-trip " + os.urandom(8).hex().encode()
    t0 = time.perf_counter()
    await kv.put(b"bench/verify", value)
    got = await kv.get(b"bench/verify")
    if got != value:
        raise RuntimeError(f"put then get did not round-trip: wrote {value!r}, read {got!r}")
    return PointResult(ops=2, seconds=time.perf_counter() - t0)


async def run_async(spec: LoadSpec) -> PointResult:
    kv = _client(spec)
    try:
        if spec.op == "verify":
            return await _verify(kv)
        if spec.op == "fill":
            return await _fill(spec, kv)
        return await _closed_loop(spec, kv)
    finally:
        await kv.close()


def _run_here(spec: LoadSpec) -> PointResult:
    # uvloop for both clients (grpc.aio runs on it too); the standard loop where it is
    # not installed. At high concurrency the generator is on every request's path: on
    # the standard loop its callbacks cost quorumkv about a fifth of its puts a second
    # (measured), and etcd's figures were the same on either loop.
    return _run_loop(run_async(spec))


def child_env() -> dict[str, str]:
    """The environment of a child that must import this very quorumkv."""
    env = dict(os.environ)
    src = str(Path(quorumkv.__file__).resolve().parent.parent)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = src if not path else f"{src}{os.pathsep}{path}"
    return env


@dataclass
class Hooks:
    """Callbacks of one point, each optional: ``start(pid)`` once the generator runs
    (a profiler may attach), ``open()`` and ``close()`` as its window opens and
    closes (to sample the CPU of the nodes and of the machine over the same window)."""

    start: Callable[[int], None] | None = None
    open: Callable[[], None] | None = None
    close: Callable[[], None] | None = None

    def event(self, name: str) -> None:
        """Call the hook of a window event (``open`` or ``close``) if there is one."""
        hook = self.open if name == "open" else self.close if name == "close" else None
        if hook is not None:
            hook()


def emit(event: str) -> None:
    """Tell the bench process (on stdout) that the window opens or closes."""
    sys.stdout.write(json.dumps({"event": event}) + "\n")
    sys.stdout.flush()


def run_point(spec: LoadSpec, log_path: Path, hooks: Hooks | None = None) -> PointResult:
    """Run ``spec`` in a new generator process; its result. RuntimeError if it fails
    or overruns (then it is killed by its pid)."""
    hooks = hooks or Hooks()
    budget = spec.warmup + spec.duration + 2 * spec.timeout + 60
    if spec.op == "fill":
        budget += spec.keys / 100  # at worst 100 writes a second
    overran = threading.Event()
    result: dict[str, Any] | None = None
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quorumkv.bench._load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=child_env(),
        )
        assert proc.stdin is not None and proc.stdout is not None

        def overrun() -> None:
            overran.set()
            proc.kill()

        watchdog = threading.Timer(budget, overrun)
        watchdog.start()
        try:
            if hooks.start is not None:
                hooks.start(proc.pid)
            proc.stdin.write(spec.to_json().encode())
            proc.stdin.close()
            for raw in proc.stdout:
                doc = json.loads(raw)
                if "event" in doc:
                    hooks.event(doc["event"])
                else:
                    result = doc
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    if overran.is_set():
        raise RuntimeError(f"the load generator overran {budget:.0f} s ({spec})")
    if proc.returncode != 0 or result is None:
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(
            f"the load generator exited {proc.returncode} for {spec.op} on {spec.system}: "
            + " | ".join(tail)
        )
    return PointResult.from_dict(result)


def main() -> int:
    spec = LoadSpec.from_json(sys.stdin.read())
    result = _run_here(spec)
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
