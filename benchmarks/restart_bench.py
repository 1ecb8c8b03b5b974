"""Restart time of one node: 1M keys applied in the state machine, 100k entries of log tail.

What a restarting node does, timed in a fresh process: open the LMDB state machine and
read its applied index; open the WAL (replaying its segments) and load the group's Raft
state; re-apply the log entries after the applied index, in batches of 512.

    python benchmarks/restart_bench.py [--keys 1000000] [--tail 100000] [--runs 3]

Data goes under $BENCH_DIR (default: the system temp dir). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from quorumkv.consensus import (
    ConfState,
    Entry,
    GroupId,
    HardState,
    Index,
    NodeId,
    RaftState,
    Ready,
    Snapshot,
    SnapshotMeta,
    Term,
)
from quorumkv.kv import Command, MVCCStore, PutRequest, encode_command
from quorumkv.storage import NodeStorage, OSFileSystem

GROUP = GroupId(1)
VALUE = b"v" * 100
BATCH = 512


def command(i: int) -> bytes:
    return encode_command(Command(0, 0, PutRequest(b"key/%012d" % i, VALUE)))


def build(base: Path, keys: int, tail: int) -> None:
    kv = MVCCStore(base / "kv", sync=False)
    for start in range(0, keys, BATCH):
        n = min(BATCH, keys - start)
        kv.apply([(start + i + 1, command(start + i)) for i in range(n)])
    kv.close()
    storage = NodeStorage(OSFileSystem(), str(base / "raft"))
    meta = SnapshotMeta(Index(keys), Term(1), ConfState(voters=frozenset({NodeId(1)})))
    storage.bootstrap(
        GROUP,
        RaftState(HardState(Term(1), NodeId(1), Index(keys)), Snapshot(meta), (), Index(keys)),
    )
    for start in range(keys, keys + tail, BATCH):
        end = min(start + BATCH, keys + tail)
        ents = tuple(Entry(Term(1), Index(i + 1), data=command(i)) for i in range(start, end))
        storage.write_ready(
            GROUP, Ready(entries=ents, hard_state=HardState(Term(1), NodeId(1), Index(end)))
        )
        storage.sync()
    storage.close()


def restart(base: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    kv = MVCCStore(base / "kv")
    applied = kv.applied_index()
    t1 = time.perf_counter()
    storage = NodeStorage(OSFileSystem(), str(base / "raft"))
    state = storage.load(GROUP)
    t2 = time.perf_counter()
    tail = [(e.index, e.data) for e in state.entries if e.index > applied]
    for i in range(0, len(tail), BATCH):
        kv.apply(tail[i : i + BATCH])
    t3 = time.perf_counter()
    final = kv.applied_index()
    kv.close()
    return {
        "open_kv": t1 - t0,
        "open_wal": t2 - t1,
        "replay": t3 - t2,
        "total": t3 - t0,
        "replayed": len(tail),
        "applied_after": final,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--tail", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--child", nargs=2, metavar=("PHASE", "DIR"))
    args = p.parse_args()
    if args.child:
        phase, d = args.child
        if phase == "build":
            build(Path(d), args.keys, args.tail)
        else:
            print(json.dumps(restart(Path(d))))
        return
    base = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR")))
    me = [sys.executable, __file__, "--keys", str(args.keys), "--tail", str(args.tail)]
    print(f"building {args.keys:,} keys and a {args.tail:,}-entry log tail in {base} ...")
    subprocess.run([*me, "--child", "build", str(base)], check=True)
    runs = []
    for _ in range(args.runs):
        # Each restart replays the tail anew on a copy of the state machine.
        work = Path(tempfile.mkdtemp(dir=base))
        subprocess.run(["cp", "-r", str(base / "kv"), str(base / "raft"), str(work)], check=True)
        out = subprocess.run(
            [*me, "--child", "restart", str(work)], capture_output=True, check=True
        )
        runs.append(json.loads(out.stdout))
        subprocess.run(["rm", "-rf", str(work)], check=True)
    for key in ("open_kv", "open_wal", "replay", "total"):
        vals = [r[key] for r in runs]
        each = ", ".join(f"{v:.3f}" for v in vals)
        print(f"{key:9}: median {statistics.median(vals):.3f} s (runs {each})")
    first = runs[0]
    print(f"replayed {first['replayed']:,} entries; applied after: {first['applied_after']:,}")
    rss = statistics.median(r["max_rss"] for r in runs) / 2**20
    print(f"max RSS of the restarting process: median {rss:.0f} MiB")
    subprocess.run(["rm", "-rf", str(base)], check=True)


if __name__ == "__main__":
    main()
