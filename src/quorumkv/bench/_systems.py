"""The three systems under test behind one interface: start, load, fail over, stop.

``QuorumKV`` runs a ``LocalCluster``; ``Etcd`` an ``EtcdCluster``; both are driven by
the generator process of ``_load``. ``PySyncObj`` runs a ``PySyncObjCluster`` whose
leader drives its own load (``_pysyncobj_node``). Every cluster lives in its own
directory under the run's temp dir and is stopped by pid in ``stop``.

Failover (``failover_once``): a client that has just written through the leader sees
the leader killed with SIGKILL; the figure is the time from the kill to the end of
the next write that succeeds, each system's client retrying within the same deadline.
quorumkv's own client retries by itself; the etcd client here tries the endpoints in
turn, ``ETCD_ATTEMPT`` seconds a try (a put sent to a follower that still believes
in the dead leader is otherwise lost until the deadline); PySyncObj's probe runs in a
surviving node and retries a ``set`` that fails or goes unanswered for the same
``ETCD_ATTEMPT``. The killed node is then restarted on its data and the cluster
waited for, before the next try.

What this module must never do: leave a process running after ``stop``, or measure a
point while a cluster is unhealthy (``start`` and ``restore`` wait for health).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Protocol

from quorumkv.bench._etcd import EtcdCluster
from quorumkv.bench._etcdproto import EtcdKV, load_stubs
from quorumkv.bench._load import Hooks, LoadSpec, PointResult, run_point
from quorumkv.bench._procs import dir_bytes
from quorumkv.bench._pysyncobj import PySyncObjCluster
from quorumkv.bench._pysyncobj_node import COMPACTION_ENTRIES
from quorumkv.client import AsyncClient
from quorumkv.local import LocalCluster

SYSTEMS = ("quorumkv", "etcd", "pysyncobj")
ETCD_ATTEMPT = 0.2
"""Seconds one failover write try may take (etcd and PySyncObj)."""


class System(Protocol):
    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def verify(self) -> None: ...
    def fill(self, keys: int, value_size: int, concurrency: int) -> PointResult: ...
    def point(
        self,
        op: str,
        concurrency: int,
        warmup: float,
        duration: float,
        keys: int,
        value_size: int,
        hooks: Hooks | None = None,
    ) -> PointResult: ...
    def node_pids(self) -> dict[str, int]: ...
    def leader_pid(self) -> int: ...
    def failover_once(self, deadline: float) -> float: ...
    def data_bytes(self) -> int: ...


class _GeneratorDriven:
    """A system loaded by the generator process of ``_load`` (quorumkv, etcd)."""

    name = ""

    def __init__(self, root: Path, timeout: float) -> None:
        self.root = root
        self.timeout = timeout

    def load_endpoints(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _run(self, spec: LoadSpec, hooks: Hooks | None = None) -> PointResult:
        return run_point(spec, self.root / "generator.log", hooks)

    def verify(self) -> None:
        self._run(LoadSpec(self.name, self.load_endpoints(), "verify", timeout=self.timeout))

    def fill(self, keys: int, value_size: int, concurrency: int) -> PointResult:
        spec = LoadSpec(
            self.name, self.load_endpoints(), "fill", concurrency=concurrency, keys=keys,
            value_size=value_size, timeout=self.timeout,
        )  # fmt: skip
        return self._run(spec)

    def point(
        self,
        op: str,
        concurrency: int,
        warmup: float,
        duration: float,
        keys: int,
        value_size: int,
        hooks: Hooks | None = None,
    ) -> PointResult:
        spec = LoadSpec(
            self.name, self.load_endpoints(), op, concurrency=concurrency, warmup=warmup,
            duration=duration, keys=keys, value_size=value_size, timeout=self.timeout,
        )  # fmt: skip
        return self._run(spec, hooks)


class QuorumKV(_GeneratorDriven):
    name = "quorumkv"

    def __init__(self, root: Path, timeout: float = 30.0) -> None:
        super().__init__(root, timeout)
        self.cluster = LocalCluster(3, root)

    def start(self) -> None:
        self.cluster.start(timeout=60)

    def stop(self) -> None:
        self.cluster.stop()

    def load_endpoints(self) -> tuple[str, ...]:
        return tuple(self.cluster.endpoints)

    def node_pids(self) -> dict[str, int]:
        return {f"node{i}": p.pid for i, p in self.cluster.nodes.items() if p.pid and p.alive}

    def leader_pid(self) -> int:
        pid = self.cluster.nodes[self.cluster.leader()].pid
        assert pid is not None
        return pid

    def failover_once(self, deadline: float) -> float:
        async def run() -> tuple[int, float]:
            async with AsyncClient(self.cluster.endpoints, timeout=deadline) as client:
                await client.put(b"bench/failover", b"before")
                lead = self.cluster.leader()
                t0 = time.monotonic()
                self.cluster.kill(lead)
                await client.put(b"bench/failover", b"after")
                return lead, time.monotonic() - t0

        lead, took = asyncio.run(run())
        self.cluster.restart(lead, timeout=60)
        self.cluster.wait_healthy(timeout=60)
        return took

    def data_bytes(self) -> int:
        return sum(dir_bytes(p.data_dir) for p in self.cluster.nodes.values())


class Etcd(_GeneratorDriven):
    name = "etcd"

    def __init__(self, root: Path, timeout: float = 30.0) -> None:
        super().__init__(root, timeout)
        self.cluster = EtcdCluster(root)

    def start(self) -> None:
        self.cluster.start(timeout=60)

    def stop(self) -> None:
        self.cluster.stop()

    def load_endpoints(self) -> tuple[str, ...]:
        return (self.cluster.endpoint(self.cluster.require_leader()),)

    def node_pids(self) -> dict[str, int]:
        return self.cluster.pids()

    def leader_pid(self) -> int:
        return self.cluster.procs[self.cluster.require_leader()].pid

    def failover_once(self, deadline: float) -> float:
        lead = self.cluster.require_leader()
        eps = self.cluster.endpoints
        first = eps.index(self.cluster.endpoint(lead))

        async def run() -> float:
            stubs = load_stubs()
            clients = [EtcdKV(e, stubs) for e in eps[first:] + eps[:first]]
            try:
                await clients[0].put(b"bench/failover", b"before", timeout=deadline)
                t0 = time.monotonic()
                self.cluster.kill(lead)
                end, i, last = t0 + deadline, 0, ""
                while time.monotonic() < end:
                    try:
                        await clients[i].put(b"bench/failover", b"after", timeout=ETCD_ATTEMPT)
                        return time.monotonic() - t0
                    except Exception as e:  # grpc's AioRpcError
                        last = str(e).splitlines()[0] if str(e) else type(e).__name__
                        i = (i + 1) % len(clients)
                        await asyncio.sleep(0.01)
                raise RuntimeError(f"etcd: no write within {deadline:g} s of the kill: {last}")
            finally:
                for c in clients:
                    await c.close()

        took = asyncio.run(run())
        self.cluster.restart(lead, timeout=60)
        return took

    def data_bytes(self) -> int:
        return sum(dir_bytes(self.root / n) for n in self.cluster.names)


class PySyncObj:
    name = "pysyncobj"

    def __init__(
        self,
        root: Path,
        compaction_entries: int = COMPACTION_ENTRIES,
        batch: bool = True,
    ) -> None:
        self.root = root
        self.cluster = PySyncObjCluster(root, compaction_entries=compaction_entries, batch=batch)

    def start(self) -> None:
        self.cluster.start(timeout=60)

    def stop(self) -> None:
        self.cluster.stop()

    def verify(self) -> None:
        lead = self.cluster.require_leader()
        self.cluster.call(lead, {"cmd": "fill", "keys": 1, "concurrency": 1})

    def fill(self, keys: int, value_size: int, concurrency: int) -> PointResult:
        lead = self.cluster.require_leader()
        cmd = {"cmd": "fill", "keys": keys, "value_size": value_size, "concurrency": concurrency}
        return PointResult.from_dict(self.cluster.call(lead, cmd, timeout=keys / 50 + 120))

    def point(
        self,
        op: str,
        concurrency: int,
        warmup: float,
        duration: float,
        keys: int,
        value_size: int,
        hooks: Hooks | None = None,
    ) -> PointResult:
        lead = self.cluster.require_leader()
        cmd = {
            "cmd": "load", "op": op, "concurrency": concurrency, "warmup": warmup,
            "duration": duration, "keys": keys, "value_size": value_size,
        }  # fmt: skip
        hooks = hooks or Hooks()
        answer = self.cluster.call(lead, cmd, timeout=warmup + duration + 90, on_event=hooks.event)
        return PointResult.from_dict(answer)

    def node_pids(self) -> dict[str, int]:
        return self.cluster.pids()

    def leader_pid(self) -> int:
        return self.cluster.procs[self.cluster.require_leader()].pid

    def failover_once(self, deadline: float) -> float:
        lead = self.cluster.require_leader()
        other = next(n for n in self.cluster.names if n != lead)
        self.cluster.call(other, {"cmd": "probe", "deadline": deadline, "attempt": ETCD_ATTEMPT})
        t0 = time.monotonic()
        self.cluster.kill(lead)
        probe = {"cmd": "probe", "deadline": deadline, "attempt": ETCD_ATTEMPT}
        ok = self.cluster.call(other, probe, timeout=deadline + 10)
        took = float(ok["ok_at"]) - t0
        self.cluster.restart(lead, timeout=120)
        return took

    def data_bytes(self) -> int:
        return sum(dir_bytes(self.root / n) for n in self.cluster.names)


def make_system(
    name: str,
    root: Path,
    *,
    timeout: float = 30.0,
    pysyncobj_compaction: int = COMPACTION_ENTRIES,
    pysyncobj_batch: bool = True,
) -> System:
    """A not yet started system called ``name`` with its data under ``root``."""
    if name == "quorumkv":
        return QuorumKV(root, timeout)
    if name == "etcd":
        return Etcd(root, timeout)
    if name == "pysyncobj":
        return PySyncObj(root, pysyncobj_compaction, pysyncobj_batch)
    raise ValueError(f"unknown system {name!r}; know {', '.join(SYSTEMS)}")
