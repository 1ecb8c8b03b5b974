"""Sharding on one machine: write throughput with 1, 3, 6 ranges; leaders per node; the
idle CPU of nodes holding many quiet ranges.

    python benchmarks/ranges_bench.py [--duration 6] [--concurrency 256] [--idle-ranges 100]
    python benchmarks/ranges_bench.py --idle-only --idle-ranges 1000

One 3-node sharded cluster (automatic splits off: ``--split-keys`` and
``--hot-write-ops`` set out of reach) is split at evenly spaced keys of the load
generator's keyspace (``bench/0000000`` .. ``bench/0099999``) into 1, then 3, then 6
ranges. After each step the placement driver has ``--settle`` seconds to spread the
leaders; then the benchmark's load generator (its own process, the client routing by
range) puts 100-byte values at ``--concurrency`` for ``--duration`` seconds, after a
warm-up. An unsharded 3-node cluster is measured the same way first, for reference.
Then the sharded cluster is split into ``--idle-ranges`` ranges and left alone for
``--idle-seconds``: each node's CPU over that window is read from ``/proc``.

Every process is stopped by its pid (``LocalCluster``). Medians need several runs of
this script on a quiet machine: one run prints one figure per point.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from quorumkv.bench._load import KEY_FORMAT, LoadSpec, run_point
from quorumkv.local import LocalCluster

KEYS = 100_000
_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def measure(cluster: LocalCluster, args: argparse.Namespace, log: Path) -> float:
    spec = LoadSpec(
        "quorumkv", tuple(cluster.endpoints), "put", concurrency=args.concurrency,
        warmup=args.warmup, duration=args.duration, keys=KEYS, value_size=100,
    )  # fmt: skip
    res = run_point(spec, log)
    if res.errors:
        print(f"    ({res.errors} errors; first: {res.first_error})")
    print(f"    {res.ops_per_s:9,.0f} puts/s  p50 {res.p50_ms:.1f} ms  p99 {res.p99_ms:.1f} ms"
          f"  generator CPU {res.cpu_pct or 0:.0f}%")  # fmt: skip
    return res.ops_per_s


def leaders(cluster: LocalCluster) -> Counter[int]:
    out: Counter[int] = Counter()
    for p in cluster.nodes.values():
        st = p.status() or {}
        for r in st.get("ranges", []):
            if r.get("role") == "leader":
                out[int(st["id"])] += 1
    return out


def split_into(cluster: LocalCluster, n: int) -> None:
    with cluster.client(timeout=30) as cl:
        have = {d.start for d in cl.ranges()}
        for i in range(1, n):
            key = KEY_FORMAT % (i * KEYS // n)
            if key not in have:
                cl.split(key)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--settle", type=float, default=8.0)
    p.add_argument("--ranges", default="1,3,6")
    p.add_argument("--idle-ranges", type=int, default=100)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--idle-only", action="store_true", help="skip the throughput points")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qkv-ranges-bench-"))
    log = work / "generator.log"
    if args.idle_only:
        args.ranges = ""
    else:
        print(f"unsharded, one Raft group ({work}):")
        plain = LocalCluster(3, work / "plain")
        try:
            plain.start()
            measure(plain, args, log)
        finally:
            plain.stop()
    no_auto = ["--split-keys", "1000000000", "--hot-write-ops", "1000000000"]
    cluster = LocalCluster(3, work / "sharded", sharded=True, extra_args=no_auto)
    try:
        cluster.start()
        for n in (int(x) for x in args.ranges.split(",") if x):
            split_into(cluster, n)
            time.sleep(args.settle)
            spread = leaders(cluster)
            print(f"sharded, {n} range(s); leaders per node {dict(sorted(spread.items()))}:")
            measure(cluster, args, log)
        n = args.idle_ranges
        t0 = time.monotonic()
        with cluster.client(timeout=60) as cl:
            have = {d.start for d in cl.ranges()}
            for i in range(1, n):
                key = b"idle/%06d" % i
                if key not in have:
                    cl.split(key)
                if i % 100 == 0:
                    print(f"  {i} splits, {time.monotonic() - t0:.0f} s", flush=True)
            total = len(cl.ranges())
        print(f"split into {total} ranges in {time.monotonic() - t0:.1f} s")
        time.sleep(args.settle)
        spread = leaders(cluster)
        counts = sorted(spread.values())
        print(f"leaders per node after {args.settle:g} s: {dict(sorted(spread.items()))} "
              f"(max/min {counts[-1]}/{counts[0] if len(counts) == 3 else 0})")  # fmt: skip
        pids = {i: proc.pid for i, proc in cluster.nodes.items() if proc.pid}
        before = {i: cpu_seconds(pid) for i, pid in pids.items() if pid}
        time.sleep(args.idle_seconds)
        after = {i: cpu_seconds(pid) for i, pid in pids.items() if pid}
        for i in sorted(before):
            pct = 100 * (after[i] - before[i]) / args.idle_seconds
            st = cluster.nodes[i].status() or {}
            quiet = sum(bool(r.get("quiet")) for r in st.get("ranges", []))
            print(f"idle node {i} with {total} ranges ({quiet} quiet): {pct:.1f}% of a core")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
