"""A soak of automatic splits: load --keys keys into a 3-node sharded cluster with a small
split threshold, then check that the ranges tile the keyspace and that a scan across
them returns every key, in order, with the value written.

    python benchmarks/split_soak.py [--keys 1000000] [--split-keys 20000]

The load runs through the asyncio client at concurrency 256, 100-byte values; ranges
split by themselves as they pass ``--split-keys`` keys (the placement driver looks
every 2 s), so splits happen under load. After the load the script waits for the splits
to settle, then scans the keyspace in pages of 10,000 keys (each page may cross ranges)
and compares. Exits non-zero on any difference. Every process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path

from quorumkv.aio import Client as AsyncClient
from quorumkv.local import LocalCluster

PAGE = 10_000


def _key(i: int) -> bytes:
    return b"soak/%08d" % i


def _value(i: int) -> bytes:
    return (b"%08d" % i) * 12 + b"----"  # 100 bytes


async def _load(endpoints: list[str], keys: int) -> float:
    t0 = time.monotonic()
    async with AsyncClient(endpoints, timeout=60) as cl:
        next_i = 0

        async def worker() -> None:
            nonlocal next_i
            while next_i < keys:
                i = next_i
                next_i += 1
                await cl.put(_key(i), _value(i))
                if (i + 1) % 100_000 == 0:
                    print(f"  {i + 1:,} keys, {time.monotonic() - t0:.0f} s", flush=True)

        await asyncio.gather(*(worker() for _ in range(256)))
    return time.monotonic() - t0


async def _check(endpoints: list[str], keys: int) -> list[str]:
    problems: list[str] = []
    async with AsyncClient(endpoints, timeout=60) as cl:
        descs = await cl.ranges()
        for a, b in itertools.pairwise(descs):
            if a.end != b.start:
                problems.append(f"ranges {a.range_id} and {b.range_id} do not meet")
        if descs[0].start != b"" or descs[-1].end != b"":
            problems.append("the ranges do not cover the keyspace")
        print(f"{len(descs)} ranges; scanning in pages of {PAGE:,} keys ...")
        start, seen = _key(0), 0
        while True:
            res = await cl.range(start, b"soak0", limit=PAGE)
            for kv in res.kvs:
                if kv.key != _key(seen) or kv.value != _value(seen):
                    problems.append(f"position {seen}: got {kv.key!r}")
                    return problems
                seen += 1
            if not res.more or not res.kvs:
                break
            start = res.kvs[-1].key + b"\x00"
        if seen != keys:
            problems.append(f"the scan returned {seen:,} keys, not {keys:,}")
        count = await cl.range(b"soak/", prefix=True, count_only=True)
        if count.count != keys:
            problems.append(f"count_only says {count.count:,}, not {keys:,}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--split-keys", type=int, default=20_000)
    p.add_argument("--settle", type=float, default=20.0)
    args = p.parse_args()
    extra = ["--split-keys", str(args.split_keys)]
    with tempfile.TemporaryDirectory(prefix="qkv-split-soak-") as tmp:
        cluster = LocalCluster(3, data_dir=Path(tmp) / "c", sharded=True, extra_args=extra)
        cluster.start(timeout=60)
        try:
            print(f"loading {args.keys:,} keys (split at {args.split_keys:,}) ...")
            took = asyncio.run(_load(cluster.endpoints, args.keys))
            print(f"loaded in {took:.0f} s ({args.keys / took:,.0f} puts/s)")
            time.sleep(args.settle)
            problems = asyncio.run(_check(cluster.endpoints, args.keys))
        finally:
            cluster.stop()
    for line in problems:
        print("PROBLEM:", line)
    print("PASS" if not problems else "FAIL")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
