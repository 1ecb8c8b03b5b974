"""``run_compare``: quorumkv, etcd and PySyncObj measured side by side in one run.

Theory of operation
-------------------
1. **Rounds.** For each round, each system in turn (round 1: quorumkv, etcd,
   PySyncObj; round 2: the same order; ...): start a fresh 3-node cluster on loopback
   with its data in the run's temp dir, check that a put then a linearizable get
   round-trips, write every one of ``keys`` keys once (so gets find them), then
   measure each point, puts then gets, at each concurrency: ``warmup`` seconds
   unmeasured, then ``duration`` seconds measured. Stop the cluster (every process
   by its pid) and remove its data. Interleaving the rounds spreads slow drifts of
   the machine over every system alike; the report gives medians with min-max.
2. **Profile** (``profile``): after quorumkv's points in round 1, one more put
   point at the highest concurrency while py-spy samples the leader and the
   generator; it is reported apart and never counted in the table.
3. **Failover**: ``failover_tries`` kills of the leader per system on a fresh
   cluster (``_systems``: time to the next acknowledged write).
4. **Memory**: a fresh cluster per system, ``memory_keys`` keys written once, then
   the resident memory of each node process and the disk used.

Everything is reported by ``_report``: printed, and written as ``results.json`` and
``results.md`` in ``out_dir``. A point that fails is recorded with its error and the
run goes on; so does a system that fails to start.

What this module must never do: measure two systems at once, leave a process it
started running, or keep a cluster's data after the cluster is stopped (unless
``keep_data``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm import tqdm

from quorumkv.bench._etcd import ELECTION_MS, HEARTBEAT_MS, etcd_version
from quorumkv.bench._load import Hooks, PointResult
from quorumkv.bench._procs import CpuWindow, dir_bytes, rss_bytes
from quorumkv.bench._pysyncobj import pysyncobj_version
from quorumkv.bench._pysyncobj_node import COMPACTION_ENTRIES
from quorumkv.bench._report import (
    render_all,
    summarize,
    summarize_profile,
    summary_dicts,
    write_report,
)
from quorumkv.bench._systems import ETCD_ATTEMPT, SYSTEMS, System, make_system

Echo = Callable[[str], None]


@dataclass(frozen=True)
class CompareConfig:
    """Everything a run is asked to do (the command's flags)."""

    out_dir: Path
    systems: tuple[str, ...] = SYSTEMS
    ops: tuple[str, ...] = ("put", "get")
    concurrencies: tuple[int, ...] = (1, 16, 64, 256)
    duration: float = 10.0
    warmup: float = 2.0
    rounds: int = 3
    keys: int = 100_000
    value_size: int = 100
    fill_concurrency: int = 256
    client_timeout: float = 30.0
    failover_tries: int = 5
    memory_keys: int = 1_000_000
    profile: bool = False
    pysyncobj_batch: bool = True
    pysyncobj_compaction: int = COMPACTION_ENTRIES
    work_dir: Path | None = None
    keep_data: bool = False
    quiet: bool = False

    def points_per_round(self) -> int:
        return len(self.systems) * len(self.ops) * len(self.concurrencies)


@dataclass
class _Run:
    cfg: CompareConfig
    work: Path
    echo: Echo
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failover: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    fills: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, what: str, e: BaseException) -> None:
        line = f"{what}: {type(e).__name__}: {e}"
        self.errors.append(line)
        self.echo(f"ERROR {line}")
        with (self.cfg.out_dir / "errors.log").open("a") as f:
            f.write(f"{line}\n{traceback.format_exc()}\n")


@contextlib.contextmanager
def _running(run: _Run, name: str, where: Path) -> Iterator[System]:
    system = make_system(
        name,
        where,
        timeout=run.cfg.client_timeout,
        pysyncobj_compaction=run.cfg.pysyncobj_compaction,
        pysyncobj_batch=run.cfg.pysyncobj_batch,
    )
    system.start()
    try:
        yield system
    finally:
        system.stop()
        if not run.cfg.keep_data:
            shutil.rmtree(where, ignore_errors=True)


def _point_line(r: int, name: str, op: str, c: int, res: PointResult) -> str:
    cpu = "in-node" if res.cpu_pct is None else f"{res.cpu_pct:.0f}%"
    err = f", {res.errors} errors ({res.first_error})" if res.errors else ""
    return (
        f"round {r} {name:<9} {op} c={c:<3}: {res.ops_per_s:>9,.0f} ops/s  "
        f"p50 {res.p50_ms:7.2f} ms  p99 {res.p99_ms:7.2f} ms  gen CPU {cpu}{err}"
    )


def _round(run: _Run, r: int, name: str, bar: tqdm[Any]) -> None:
    cfg = run.cfg
    where = run.work / f"round{r}" / name
    with _running(run, name, where) as system:
        system.verify()
        fill = system.fill(cfg.keys, cfg.value_size, cfg.fill_concurrency)
        run.fills.append({"round": r, "system": name, **fill.to_dict()})
        for op in cfg.ops:
            for c in cfg.concurrencies:
                bar.set_description(f"round {r} {name} {op} c={c}")
                window = CpuWindow(system.node_pids())
                hooks = Hooks(open=window.open, close=window.close)
                try:
                    res = system.point(
                        op, c, cfg.warmup, cfg.duration, cfg.keys, cfg.value_size, hooks
                    )
                except Exception as e:
                    run.fail(f"round {r} {name} {op} c={c}", e)
                else:
                    res.extra.update(window.result())
                    rec = {"round": r, "system": name, "op": op, "concurrency": c}
                    run.records.append({**rec, **res.to_dict()})
                    tqdm.write(_point_line(r, name, op, c, res), file=sys.stderr)
                bar.update(1)
        if cfg.profile and r == 1 and name == "quorumkv" and "put" in cfg.ops:
            try:
                _profile_point(run, system)
            except Exception as e:
                run.fail("profile", e)


def _py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("py-spy is not installed (python -m pip install py-spy)")
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", "100", "--format", "raw", "--nonblocking", "--output", str(out)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _profile_point(run: _Run, system: System) -> None:
    """One unrecorded put point at the top concurrency with py-spy on the leader and
    on the generator, started when the warm-up ends."""
    cfg = run.cfg
    c = max(cfg.concurrencies)
    leader = system.leader_pid()
    out_dir = cfg.out_dir / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    spies: dict[str, tuple[Path, subprocess.Popen[bytes]]] = {}
    timers: list[threading.Timer] = []

    def spy(label: str, pid: int) -> None:
        out = out_dir / f"{label}.txt"
        spies[label] = (out, _py_spy(pid, cfg.duration, out))

    def on_start(gen_pid: int) -> None:
        for label, pid in ((f"quorumkv-leader-put-c{c}", leader),
                           (f"quorumkv-generator-put-c{c}", gen_pid)):  # fmt: skip
            t = threading.Timer(cfg.warmup + 0.5, spy, (label, pid))
            t.start()
            timers.append(t)

    run.echo(f"profiling the quorumkv leader (pid {leader}) during put c={c} ...")
    hooks = Hooks(start=on_start)
    res = system.point("put", c, cfg.warmup, cfg.duration, cfg.keys, cfg.value_size, hooks)
    for t in timers:
        t.join()
    for label, (out, proc) in spies.items():
        _, err = proc.communicate(timeout=cfg.duration + 30)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy on {label} failed: {err.decode(errors='replace')[-500:]}")
        prof = summarize_profile(out.read_text())
        prof["point"] = res.to_dict()
        prof["possible_samples"] = int(100 * max(1, round(cfg.duration)))
        prof["file"] = str(out)
        run.profiles[label] = prof


def _failover(run: _Run, name: str) -> None:
    cfg = run.cfg
    with _running(run, name, run.work / "failover" / name) as system:
        times = []
        for i in range(cfg.failover_tries):
            took = system.failover_once(cfg.client_timeout)
            times.append(took)
            run.echo(f"failover {name} try {i + 1}: next write {took:.3f} s after the kill")
        run.failover[name] = times


def _memory(run: _Run, name: str) -> None:
    cfg = run.cfg
    where = run.work / "memory" / name
    with _running(run, name, where) as system:
        run.echo(f"memory {name}: writing {cfg.memory_keys:,} keys ...")
        fill = system.fill(cfg.memory_keys, cfg.value_size, cfg.fill_concurrency)
        time.sleep(3.0)  # let background work (compaction, snapshots) settle
        rss = {n: rss_bytes(pid) for n, pid in system.node_pids().items()}
        run.memory[name] = {
            "keys": cfg.memory_keys,
            "rss_bytes": rss,
            "disk_bytes": dir_bytes(where),
            "load_s": fill.seconds,
            "load_ops_per_s": fill.ops_per_s,
        }
        total = sum(rss.values()) / 2**20
        run.echo(
            f"memory {name}: RSS {total:.0f} MiB over {len(rss)} nodes after {fill.seconds:.0f} s"
        )


def environment() -> dict[str, Any]:
    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "quorumkv": ver("quorumkv"),
        "etcd": etcd_version(),
        "pysyncobj": pysyncobj_version(),
        "grpcio": ver("grpcio"),
        "protobuf": ver("protobuf"),
    }


def notes(cfg: CompareConfig) -> list[str]:
    """What a reader must know to read the figures honestly."""
    return [
        "One generator process per point (quorumkv, etcd): one client instance pipelining "
        "every caller, on uvloop's event loop for both systems (etcd's gRPC client "
        "measured the same on the standard loop; quorumkv's client is faster on uvloop, "
        "as its users run it). 'gen CPU' is that process's "
        f"CPU over the window in % of one core; 'SAT' marks >= 90%: the figure is then the "
        f"generator's limit, not the system's. The machine has {environment()['cpus']} "
        "cores, shared by the generator and all three nodes.",
        "quorumkv: LocalCluster defaults (tick 50 ms, elections after 0.5-1 s, snapshot "
        "every 10,000 entries), WAL fsynced before acknowledging; client "
        "quorumkv.aio.Client; gets are linearizable (ReadIndex).",
        f"etcd: 3 members, default durability (WAL fsynced before acknowledging, "
        f"snapshot-count 100,000), heartbeat {HEARTBEAT_MS} ms and election timeout "
        f"{ELECTION_MS} ms to match quorumkv's timing; gRPC KV API through stubs compiled "
        "with grpcio-tools (protobuf's native upb backend), one channel to the leader; "
        "gets are Range with serializable=false (linearizable).",
        "PySyncObj does NOT fsync: its journal is an mmap'ed file never synced; an "
        "acknowledged write can be lost on power failure.",
        "PySyncObj's load runs INSIDE its leader process (it has no client protocol): "
        "callers are chains of @replicated calls with callbacks, so there is no client "
        "network hop or request encoding, and the load shares the leader's CPU and GIL. "
        "Its 'gen CPU' cell shows the leader process's CPU, load included.",
        "PySyncObj get* is a @replicated read: an entry appended, replicated and applied "
        "(linearizable, as costly as a write). A local read on the leader would not be "
        "linearizable and is not measured.",
        f"PySyncObj config: journalFile and fullDumpFile on disk; log compaction every "
        f"{cfg.pysyncobj_compaction:,} entries (logCompactionMinEntries; as etcd's "
        "snapshot-count), dumped by a forked child (useFork) so the node never stalls "
        "serializing; its default of 5,000 forks and gzips the whole state every fraction "
        "of a second under load, taking a core from everything else on this machine. "
        f"appendEntriesUseBatch={cfg.pysyncobj_batch}"
        + (
            " (its default): entries go out once per appendEntriesPeriod (50 ms here), "
            "which bounds its latency at low concurrency; --no-pysyncobj-batch sends at "
            "once (lower latency, less throughput at high concurrency)."
            if cfg.pysyncobj_batch
            else " (sent at once; its default batches per appendEntriesPeriod)."
        )
        + " Heartbeat 50 ms, elections after 0.5-1.0 s, as quorumkv.",
        f"Failover: a client that just wrote through the leader sees it killed (SIGKILL); "
        f"the figure is the time from the kill to the end of the next acknowledged write, "
        f"within a {cfg.client_timeout:g} s deadline. quorumkv's client retries by itself; "
        f"the etcd client tries the members in turn, {ETCD_ATTEMPT:g} s a try; PySyncObj's "
        f"write is issued inside a surviving node, retried after {ETCD_ATTEMPT:g} s "
        "without an answer or on an error.",
        "Memory: RSS of each node process after writing every key once (it includes the "
        "pages of memory-mapped files touched: LMDB for quorumkv, bbolt for etcd); disk is "
        "what the data directories hold.",
    ]


def run_compare(cfg: CompareConfig, echo: Echo | None = None) -> dict[str, Any]:
    """Run everything ``cfg`` asks for; the report document (also written to
    ``cfg.out_dir``)."""
    say: Echo = echo or (lambda line: tqdm.write(line, file=sys.stderr))
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qkv-bench-", dir=cfg.work_dir))
    run = _Run(cfg, work, say)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    say(f"qkv bench compare: data under {work}, results to {cfg.out_dir}")
    total = cfg.rounds * cfg.points_per_round()
    try:
        with tqdm(total=total, unit="point", disable=cfg.quiet, file=sys.stderr) as bar:
            for r in range(1, cfg.rounds + 1):
                for name in cfg.systems:
                    try:
                        _round(run, r, name, bar)
                    except Exception as e:
                        run.fail(f"round {r} {name}", e)
        if cfg.failover_tries > 0:
            for name in cfg.systems:
                try:
                    _failover(run, name)
                except Exception as e:
                    run.fail(f"failover {name}", e)
        if cfg.memory_keys > 0:
            for name in cfg.systems:
                try:
                    _memory(run, name)
                except Exception as e:
                    run.fail(f"memory {name}", e)
    finally:
        if not cfg.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    doc: dict[str, Any] = {
        "config": {**config, "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
        "environment": environment(),
        "records": run.records,
        "fills": run.fills,
        "summary": summary_dicts(summarize(run.records)),
        "failover": run.failover,
        "memory": run.memory,
        "profiles": run.profiles,
        "errors": run.errors,
        "notes": notes(cfg),
    }
    write_report(cfg.out_dir, doc)
    return doc


def report_text(doc: dict[str, Any]) -> str:
    """The report as printed on the terminal."""
    text = render_all(doc)
    if doc.get("errors"):
        text += "\nerrors:\n" + "\n".join(f"- {e}" for e in doc["errors"]) + "\n"
    return text
