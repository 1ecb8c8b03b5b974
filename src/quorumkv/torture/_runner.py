"""``run_torture``: one whole torture run, from an empty directory to a verdict.

Theory of operation
-------------------
1. Draw the plan from the seed (``_schedule``) and write it, with the configuration,
   to ``plan.json``.
2. Open the network (namespaces need root; a failure here stops the run with a
   ``TortureError`` that says so), start the cluster (``_cluster``) and wait until it is
   healthy. A sharded cluster is then split at the middle torture key
   (``_sharded.initial_splits``), so that the colliding keys lie in two ranges, two
   Raft groups, from the first operation on; the nodes' split threshold and the
   ``range-split`` events cut further. The run's clock starts now: history, fault log
   and plan share it.
3. Start the load (``_load``) and let the nemesis (``_nemesis``) carry out the plan on
   the main thread for ``duration`` seconds, printing progress; then heal everything,
   keep the load on for ``settle`` seconds (so recovery after the last fault is
   measured), and stop it (waiting for every call in flight).
4. Without any further help, the cluster must become whole within
   ``recovery_timeout`` (``TortureCluster.converge``). Then one linearizable read of
   every key is made and added to the history: an acknowledged write that was lost
   shows up there as an illegal read.
5. Stop every process by pid, unmount the disks, delete the namespaces, links and
   bridge (this also happens when anything above fails), write ``history.jsonl``,
   ``faults.jsonl``, ``summary.json`` and ``summary.txt``, and return the ``Summary``.

The node logs stay in ``<out>/cluster/node-<id>.log``; the nodes' data is deleted
after a passing run and kept after a failing one (except what lived on a tmpfs).
This module must never leave a process, mount, namespace or link behind, nor give a
PASS that the checker did not prove.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quorumkv.errors import QuorumKVError
from quorumkv.sim._linearizability import OpKind
from quorumkv.torture._analysis import Summary, analyze
from quorumkv.torture._cluster import TortureCluster
from quorumkv.torture._history import FINAL_CLIENT, Outcome, Recorder, write_history
from quorumkv.torture._load import LoadConfig, Workload, key_names
from quorumkv.torture._nemesis import FaultLog, Nemesis
from quorumkv.torture._network import Loopback, Netns, Network
from quorumkv.torture._schedule import SHARDED_KINDS, FaultKind, default_kinds, make_plan
from quorumkv.torture._sharded import initial_splits
from quorumkv.torture._system import TortureError, is_root, require_root

DISK_PARTS = {"data": "", "wal": "raft/wal", "kv": "kv"}
"""``disk_at`` choices: where in a node's data directory its tmpfs is mounted."""


@dataclass(frozen=True, slots=True)
class TortureConfig:
    """One run. ``faults`` None: every kind the network mode and privileges allow."""

    out: Path
    nodes: int = 3
    duration: float = 60.0
    seed: int = 1
    netns: bool = False
    faults: tuple[FaultKind, ...] | None = None
    load: LoadConfig = field(default_factory=LoadConfig)
    disk_mb: int = 64
    """Size of each node's tmpfs disk (only with the disk-full fault)."""
    disk_at: str = "data"
    """What the tmpfs holds: the whole data directory (``data``), only the
    write-ahead log (``wal``), or only the state machine's store (``kv``)."""
    recovery_timeout: float = 60.0
    settle: float = 3.0
    progress_every: float = 5.0
    sharded: bool = False
    """Found a sharded cluster (a meta range and ranges of keys, each its own group)."""
    split_keys: int = 2
    """Sharded: the nodes' ``--split-keys``, so ranges also split by themselves as the
    load fills them (the torture keys are few)."""

    def __post_init__(self) -> None:
        if self.nodes < 3:
            raise ValueError(f"a torture run needs at least 3 nodes, not {self.nodes}")
        if self.sharded and self.load.keys < 2:
            raise ValueError("a sharded run needs at least 2 keys, to spread them over ranges")
        if self.split_keys < 1:
            raise ValueError(f"split_keys must be positive, not {self.split_keys}")
        if self.duration <= 0:
            raise ValueError(f"duration must be positive, not {self.duration:g}")
        if self.disk_at not in DISK_PARTS:
            raise ValueError(
                f"disk_at must be one of {', '.join(DISK_PARTS)}, not {self.disk_at!r}"
            )

    def kinds(self) -> tuple[FaultKind, ...]:
        """The fault kinds of the run; ``TortureError`` for ones it cannot do."""
        if self.faults is None:
            return default_kinds(netns=self.netns, root=is_root(), sharded=self.sharded)
        needs_sharded = [k.value for k in self.faults if k in SHARDED_KINDS]
        if needs_sharded and not self.sharded:
            raise TortureError(
                f"fault kinds {', '.join(needs_sharded)} act on ranges: they need --sharded"
            )
        needs_netns = [k.value for k in self.faults if k.is_partition]
        if needs_netns and not self.netns:
            raise TortureError(
                f"fault kinds {', '.join(needs_netns)} cut the network: they need --netns"
            )
        if FaultKind.DISK_FULL in self.faults:
            require_root("the disk-full fault (it mounts a tmpfs per node)")
        return self.faults

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "duration": self.duration,
            "seed": self.seed,
            "network": "netns" if self.netns else "loopback",
            "faults": [k.value for k in self.kinds()],
            "load": {k: v for k, v in asdict(self.load).items() if k != "mix"}
            | {"mix": {k.value: w for k, w in self.load.mix}},
            "disk_mb": self.disk_mb,
            "disk_at": self.disk_at,
            "recovery_timeout": self.recovery_timeout,
            "settle": self.settle,
            "sharded": self.sharded,
        } | ({"split_keys": self.split_keys} if self.sharded else {})


def run_torture(cfg: TortureConfig, echo: Callable[[str], None] = print) -> Summary:
    """Run ``cfg`` (see the module docstring) and return its summary."""
    kinds = cfg.kinds()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    if (out / "history.jsonl").exists() or (out / "cluster").exists():
        raise TortureError(f"{out} holds an earlier run: use another --out directory")
    plan = make_plan(cfg.seed, cfg.duration, kinds)
    (out / "plan.json").write_text(
        json.dumps({"config": cfg.to_json(), "plan": [f.to_json() for f in plan]}, indent=1)
    )
    network: Network = Netns() if cfg.netns else Loopback()
    disk = cfg.disk_mb << 20 if FaultKind.DISK_FULL in kinds else None
    keys = key_names(cfg.load.keys)
    cluster = TortureCluster(
        out / "cluster",
        cfg.nodes,
        network,
        disk_bytes=disk,
        disk_at=DISK_PARTS[cfg.disk_at],
        sharded=cfg.sharded,
        split_keys=cfg.split_keys if cfg.sharded else None,
        keys=keys,
        log=echo,
    )
    recorder: Recorder | None = None
    with contextlib.ExitStack() as stack:
        stack.callback(network.close)  # runs last: after every process is gone
        network.open()
        stack.callback(cluster.stop)
        shape = f"sharded (split at {cfg.split_keys} keys)" if cfg.sharded else "unsharded"
        echo(
            f"qkv torture: seed {cfg.seed}, {cfg.nodes} nodes on {network.name}, {shape}, "
            f"{cfg.duration:g} s of faults ({', '.join(k.value for k in kinds)}), "
            f"{len(plan)} planned; output in {out}"
        )
        cluster.start()
        echo(f"cluster up: {', '.join(cluster.endpoints())}")
        if cfg.sharded:
            for key in initial_splits(keys):
                done, what = cluster.split(key, timeout=20.0)
                if not done:
                    raise TortureError(f"the sharded cluster could not be prepared: {what}")
                echo(what)
        t0 = time.monotonic()

        def clock() -> float:
            return time.monotonic() - t0

        recorder = Recorder(clock)
        log = FaultLog(clock, out / "faults.jsonl", echo)
        stack.callback(log.close)
        load = Workload(cluster.endpoints, recorder, cfg.load, cfg.seed)
        load.start()
        stack.callback(_quietly(load.stop))
        nemesis = Nemesis(cluster, log, clock, tick=_progress(clock, recorder, log, cfg, echo))
        nemesis.run(plan, until=cfg.duration)
        nemesis.heal_all()
        nemesis.run((), until=clock() + cfg.settle)
        load.stop()
        load_end = clock()
        echo(f"[{load_end:7.2f}s] load stopped; waiting for the cluster to recover by itself")
        healthy, health = cluster.converge(cfg.recovery_timeout)
        echo(f"[{clock():7.2f}s] {'recovered' if healthy else 'NOT recovered'}: {health[0]}")
        problems = _final_reads(cluster, recorder, keys, timeout=10.0 if healthy else 3.0)
        problems += nemesis.failures
        codes = cluster.stop()
        notes = [f"node {i} exited with status {c} when stopped" for i, c in codes.items() if c]
        notes += nemesis.observations + [f"client contract: {s}" for s in load.surprises[:20]]
        if nemesis.side_summary():
            notes.append(f"side events that did what they asked: {nemesis.side_summary()}")
        network.close()
    records = recorder.records()
    write_history(out / "history.jsonl", records)
    echo(f"checking linearizability of {len(records)} operations")
    summary = analyze(
        records,
        log.intervals,
        healthy=healthy and not problems,
        health=health + problems,
        meta={"network": network.name, **cfg.to_json()},
        load_start=0.0,
        load_end=load_end,
        notes=notes,
    )
    (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    (out / "summary.txt").write_text(summary.render() + "\n")
    if summary.passed:
        _drop_data(cluster)
    echo(summary.render())
    return summary


def _final_reads(
    cluster: TortureCluster, recorder: Recorder, keys: list[bytes], timeout: float
) -> list[str]:
    """One linearizable read of every key, recorded; the problems met."""
    problems = []
    with cluster.client(timeout=timeout) as c:
        for key in keys:
            op = recorder.invoke(FINAL_CLIENT, OpKind.GET, key)
            try:
                kv = c.get(key)
            except QuorumKVError as e:
                recorder.error(op, e)
                problems.append(f"the final read of {key!r} failed: {e}")
                continue
            recorder.ok(op, None if kv is None else kv.value)
    return problems


def _progress(
    clock: Callable[[], float],
    recorder: Recorder,
    log: FaultLog,
    cfg: TortureConfig,
    echo: Callable[[str], None],
) -> Callable[[], None]:
    last = [0.0]

    def tick() -> None:
        now = clock()
        if now - last[0] < cfg.progress_every:
            return
        last[0] = now
        c = recorder.counts()
        echo(
            f"[{now:7.2f}s] operations: {c[Outcome.OK]} ok, {c[Outcome.FAIL]} failed, "
            f"{c[Outcome.UNKNOWN]} unknown or in flight; {len(log.intervals)} faults done"
        )

    return tick


def _quietly(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` for a cleanup path: its error must not hide the one being raised."""

    def call() -> None:
        with contextlib.suppress(Exception):
            fn()

    return call


def _drop_data(cluster: TortureCluster) -> None:
    """Delete the nodes' data directories (the logs stay)."""
    for path in cluster.workdir.iterdir():
        if path.is_dir() and path.name.startswith("node-"):
            shutil.rmtree(path, ignore_errors=True)
