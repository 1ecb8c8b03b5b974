"""Time to move a range of about 100 MB: a node holding a replica of it is killed, and
the range gets its third voter back on the node that had none.

    python benchmarks/move_bench.py [--mb 100] [--value-size 1000] [--down-after 2]

A 3-node sharded cluster (automatic splits off) is loaded with ``--mb`` MB of values in
one range, through the client at concurrency 64. A fourth node joins (``--join``) and
gets its meta replica. Then one node that does not lead the range is killed (SIGKILL);
after ``--down-after`` seconds the placement driver (every 2 s) re-replicates the range
on the fourth node: a learner is added, filled by one snapshot of the whole range,
promoted, and the dead voter removed. Printed: the time from the kill to the range having
three voters on live nodes (its leader agreeing), and that time less the detection delay
(``--down-after``), which is about the move itself. Every process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from quorumkv.aio import Client as AsyncClient
from quorumkv.local import LocalCluster


async def _load(endpoints: list[str], count: int, size: int) -> float:
    value = b"x" * size
    t0 = time.monotonic()
    async with AsyncClient(endpoints, timeout=60) as cl:
        sem = asyncio.Semaphore(64)
        done = 0

        async def put(i: int) -> None:
            nonlocal done
            async with sem:
                await cl.put(b"move/%08d" % i, value)
            done += 1
            if done % 10_000 == 0:
                print(f"  loaded {done:,} of {count:,}", flush=True)

        await asyncio.gather(*(put(i) for i in range(count)))
    return time.monotonic() - t0


def _range_state(cluster: LocalCluster, alive: list[int]) -> tuple[list[int], list[int]] | None:
    """The one range's voters and learners as its leader reports them."""
    for n in alive:
        st = cluster.nodes[n].status() or {}
        for r in st.get("ranges", []):
            if r.get("role") == "leader":
                return list(r["voters"]), list(r["learners"])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=100)
    p.add_argument("--value-size", type=int, default=1000)
    p.add_argument("--down-after", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    count = int(args.mb * 1e6 / args.value_size)
    extra = ["--sharded", "--split-keys", "100000000", "--hot-write-ops", "1e9",
             "--down-after", str(args.down_after)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="qkv-move-bench-") as tmp:
        cluster = LocalCluster(3, data_dir=Path(tmp) / "c", extra_args=extra)
        cluster.start(timeout=60)
        try:
            print(f"loading {count:,} values of {args.value_size} B into one range ...")
            took = asyncio.run(_load(cluster.endpoints, count, args.value_size))
            print(f"  loaded in {took:.0f} s")
            new = cluster.add_node()
            deadline = time.monotonic() + 120
            while (cluster.nodes[new].status() or {}).get("leader", 0) == 0:
                if time.monotonic() > deadline:
                    raise SystemExit(f"node {new} never joined")
                time.sleep(0.2)
            state = _range_state(cluster, [1, 2, 3])
            assert state is not None and sorted(state[0]) == [1, 2, 3], state
            lead = next(
                n for n in (1, 2, 3)
                for r in (cluster.nodes[n].status() or {}).get("ranges", [])
                if r.get("role") == "leader"
            )  # fmt: skip
            victim = next(n for n in (1, 2, 3) if n != lead)
            alive = [n for n in (1, 2, 3, new) if n != victim]
            print(f"node {new} joined; killing node {victim} (range leader: node {lead})")
            t0 = time.monotonic()
            cluster.kill(victim)
            while True:
                state = _range_state(cluster, alive)
                if state is not None and sorted(state[0]) == sorted(alive) and not state[1]:
                    break
                if time.monotonic() - t0 > args.timeout:
                    raise SystemExit(f"not re-replicated in {args.timeout:g} s: {state}")
                time.sleep(0.1)
            total = time.monotonic() - t0
            moved = total - args.down_after
            print(f"range of {args.mb:g} MB: three voters again {total:.1f} s after the "
                  f"kill; {moved:.1f} s after the node counted as down")  # fmt: skip
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
