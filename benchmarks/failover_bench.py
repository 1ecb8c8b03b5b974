"""Failover window and catch-up time of a real 3-node cluster on loopback.

Failover: with a writer issuing one put after another, kill -9 the leader and time
from the kill to the next put that succeeds (the client retries and finds the new
leader by itself). The killed node is restarted and caught up between tries.

Catch-up: stop a follower, write ``--behind`` entries, start it again and time until
it has applied everything the leader has committed. With the default snapshot
settings a node that far behind is sent a snapshot; ``--snapshot-entries`` larger
than ``--behind`` makes it catch up by log instead.

    python benchmarks/failover_bench.py [--tries 20] [--behind 100000]
        [--snapshot-entries N] [--json out.json]

Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from quorumkv.aio import Client as AsyncClient
from quorumkv.local import LocalCluster


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _wait_caught_up(c: LocalCluster, node: int, timeout: float = 600) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        lead = c.leader()
        ls, st = c.nodes[lead].status(), c.nodes[node].status()
        if ls and st and st["applied"] >= ls["commit"]:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise TimeoutError(f"node {node} did not catch up in {timeout} s")


async def _put_until_ok(client: AsyncClient, key: str) -> float:
    await client.put(key, "x")
    return time.monotonic()


def failover(c: LocalCluster, tries: int) -> list[float]:
    windows: list[float] = []

    async def run() -> None:
        async with AsyncClient(c.endpoints, timeout=30) as client:
            for i in range(tries):
                await client.put("warm", str(i))
                lead = c.leader()
                t0 = time.monotonic()
                c.kill(lead)
                t1 = await _put_until_ok(client, f"after-{i}")
                windows.append(t1 - t0)
                print(f"try {i + 1}: killed node {lead}, next write after {t1 - t0:.3f} s")
                c.restart(lead)
                _wait_caught_up(c, lead)

    asyncio.run(run())
    return windows


def catch_up(c: LocalCluster, behind: int) -> dict[str, float]:
    async def load(n: int) -> float:
        t0 = time.monotonic()
        async with AsyncClient(c.endpoints, timeout=60) as client:
            sem = asyncio.Semaphore(256)

            async def one(i: int) -> None:
                async with sem:
                    await client.put(f"load/{i:08d}", b"v" * 100)

            await asyncio.gather(*(one(i) for i in range(n)))
        return time.monotonic() - t0

    lead = c.leader()
    follower = next(i for i in c.nodes if i != lead)
    c.terminate(follower)
    took = asyncio.run(load(behind))
    print(f"wrote {behind} entries with node {follower} down in {took:.1f} s")
    t0 = time.monotonic()
    c.restart(follower, wait=False)
    caught = _wait_caught_up(c, follower) + 0.0
    total = time.monotonic() - t0
    log = c.nodes[follower].log_path.read_text()
    how = "snapshot" if "installed a snapshot" in log.split("stopped")[-1] else "log"
    print(f"node {follower} caught up by {how} in {total:.2f} s (from restart)")
    return {"catch_up_s": total, "poll_s": caught, "by_snapshot": float(how == "snapshot")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--behind", type=int, default=100_000)
    ap.add_argument("--snapshot-entries", type=int, default=None)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    out: dict[str, object] = {}
    with LocalCluster(3, snapshot_entries=args.snapshot_entries) as c:
        if args.tries:
            w = failover(c, args.tries)
            out["failover_s"] = {
                "median": statistics.median(w),
                "p99": _pct(w, 99),
                "min": min(w),
                "max": max(w),
                "tries": len(w),
            }
            med, p99 = statistics.median(w), _pct(w, 99)
            print(f"failover window: median {med:.3f} s, p99 {p99:.3f} s, "
                  f"min {min(w):.3f} s, max {max(w):.3f} s")  # fmt: skip
        if args.behind:
            out["catch_up"] = catch_up(c, args.behind)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
