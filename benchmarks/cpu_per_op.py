"""Where the CPU of one operation goes: per process, in microseconds per operation.

Starts a 3-node quorumkv cluster on loopback, fills ``--keys`` keys, then runs one
load point (``--op`` at ``--concurrency``) from the benchmark's generator process and
reads every process's CPU time (user + system, from /proc) and every node's timing
histograms (``/metrics``) as the window opens and closes. Prints ops/s; for the leader,
each follower and the generator, the CPU each used per operation and how busy it was;
and for each node, how often and how long it fsynced its WAL, applied and ran a Ready.
With ``--spy DIR`` it also samples every node and the generator with py-spy over the
window (raw collapsed stacks, one file a process) for a profile. With ``--sched S`` it
traces the scheduler for S seconds of the window and says why CPUs sat idle
(``sched_idle.py``; needs ``perf``).

It always measures the quorumkv of the tree it sits in (its ``src`` comes first on the
path, and the nodes run what this process imported): to compare two commits, run each
tree's own copy of this script.

On a machine with fewer cores than busy processes, the per-operation CPU figures are
what to compare between two commits; ops/s follows from them.

    python benchmarks/cpu_per_op.py [--op put] [--concurrency 256] [--duration 8]
        [--keys 100000] [--spy /tmp/spy] [--sched 1]

Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import sched_idle

from quorumkv.bench._load import Hooks, LoadSpec, run_point
from quorumkv.local import LocalCluster

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """Seconds of CPU (user + system) that ``pid`` has used, every thread."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


_HISTOGRAMS = (
    "quorumkv_wal_fsync_seconds",
    "quorumkv_apply_seconds",
    "quorumkv_ready_seconds",
    "quorumkv_apply_batch_entries",
)


def _scrape(url: str) -> dict[str, float]:
    """The ``_sum`` and ``_count`` of the node's histograms in ``_HISTOGRAMS``."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_sum", "_count")) and name.rsplit("_", 1)[0] in _HISTOGRAMS:
            out[name] = float(value)
    return out


def _machine() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, every core, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    return float(sum(vals) - idle), float(sum(vals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", default="put", choices=("put", "get"))
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--fill", type=int, default=None, help="keys loaded first (--keys)")
    ap.add_argument("--spy", type=Path, default=None, help="py-spy output dir")
    ap.add_argument(
        "--sched",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="trace the scheduler this long from the window's start (sched_idle.py)",
    )
    args = ap.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="qkv-cpu-") as tmp,
        LocalCluster(3, Path(tmp) / "c") as cluster,
    ):
        cluster.wait_healthy(timeout=60)
        eps = tuple(cluster.endpoints)
        fill = args.keys if args.fill is None else args.fill
        if fill:
            run_point(
                LoadSpec("quorumkv", eps, "fill", concurrency=256, keys=fill),
                Path(tmp) / "gen.log",
            )
        lead = cluster.leader()
        pids = {
            (f"leader (node {i})" if i == lead else f"follower (node {i})"): p.pid
            for i, p in sorted(cluster.nodes.items())
            if p.pid
        }
        gen_pid: list[int] = []
        before: dict[str, float] = {}
        after: dict[str, float] = {}
        clock: list[float] = []
        urls = {
            (f"leader {i}" if i == lead else f"follower {i}"): cluster.http_urls[i - 1]
            for i in sorted(cluster.nodes)
        }
        scraped: list[dict[str, dict[str, float]]] = []
        machine: list[tuple[float, float]] = []
        spies: list[subprocess.Popen[bytes]] = []
        trace = Path(tmp) / "sched.data"
        tracer: list[subprocess.Popen[bytes]] = []

        def start(pid: int) -> None:
            gen_pid.append(pid)

        def opened() -> None:
            clock.append(time.monotonic())
            every = {**pids, "generator": gen_pid[0]}
            before.update({k: _cpu(p) for k, p in every.items()})
            machine.append(_machine())
            scraped.append({name: _scrape(url) for name, url in urls.items()})
            if args.sched:
                tracer.append(sched_idle.record(trace, min(args.sched, args.duration)))
            if args.spy:
                args.spy.mkdir(parents=True, exist_ok=True)
                for name, pid in every.items():
                    out = args.spy / (name.split(" ")[0] + f"-{pid}.txt")
                    argv = ["py-spy", "record", "-p", str(pid), "-r", "100", "-f", "raw"]
                    argv += ["--nonblocking", "-d", str(int(args.duration))]
                    argv += ["-o", str(out)]
                    spies.append(
                        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    )

        def closed() -> None:
            clock.append(time.monotonic())
            every = {**pids, "generator": gen_pid[0]}
            after.update({k: _cpu(p) for k, p in every.items()})
            machine.append(_machine())
            scraped.append({name: _scrape(url) for name, url in urls.items()})

        spec = LoadSpec(
            "quorumkv", eps, args.op, concurrency=args.concurrency, warmup=args.warmup,
            duration=args.duration, keys=args.keys,
        )  # fmt: skip
        res = run_point(spec, Path(tmp) / "gen.log", Hooks(start, opened, closed))
        for s in spies + tracer:
            s.wait()
        window = clock[1] - clock[0]
        ops = res.ops
        print(
            f"{args.op} c={args.concurrency}: {res.ops_per_s:,.0f} ops/s over {res.seconds:.1f} s"
            f" (p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms, errors {res.errors})"
        )
        total = 0.0
        for name, start_cpu in before.items():
            used = after[name] - start_cpu
            total += used
            print(f"  {name:20s} {used / ops * 1e6:7.1f} us/op   busy {used / window:5.0%}")
        print(f"  {'all':20s} {total / ops * 1e6:7.1f} us/op   busy {total / window:5.0%}")
        (b0, t0), (b1, t1) = machine
        cores = os.cpu_count() or 1
        print(f"  machine: {(b1 - b0) / (t1 - t0):.0%} of {cores} cores busy over the window")
        for node in urls:
            m0, m1 = scraped[0][node], scraped[1][node]
            for h in _HISTOGRAMS:
                n = m1[h + "_count"] - m0[h + "_count"]
                total_s = m1[h + "_sum"] - m0[h + "_sum"]
                if n:
                    short = h.removeprefix("quorumkv_")
                    timed = h.endswith("_seconds")
                    share = f"  {total_s / window:5.1%} of the time" if timed else ""
                    rate = f"{n / window:7.0f}/s  mean {total_s / n:.4g}"
                    print(f"  {node:11s} {short:22s} {rate}{share}")
        if tracer:
            print(sched_idle.report(trace, {**pids, "generator": gen_pid[0]}))


if __name__ == "__main__":
    main()
