"""WAL append throughput with group commit on real files (not a test).

Usage: python benchmarks/wal_bench.py [--dir /tmp] [--seconds 1.0] [--runs 3]

For each entry size (100 B, 4 KiB) and batch size (1, 64, 512 entries per sync), appends
batches of entries spread over 8 groups and syncs after each batch, for about
``--seconds``; reports entries/s, MB/s of entry payload and fsyncs/s, the median of
``--runs`` runs, each in a fresh directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from quorumkv.consensus import Entry, GroupId, HardState, Index, Ready, Term
from quorumkv.storage import WAL, OSFileSystem


def run_once(directory: str, entry_bytes: int, batch: int, seconds: float) -> tuple[float, ...]:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        wal = WAL(OSFileSystem(), tmp)
        payload = b"x" * entry_bytes
        groups = [GroupId(g) for g in range(1, 9)]
        nxt = dict.fromkeys(groups, 1)
        entries = syncs = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            per_group = max(1, batch // len(groups))
            for g in groups[: min(len(groups), batch)]:
                first = nxt[g]
                ents = tuple(
                    Entry(Term(1), Index(i), data=payload) for i in range(first, first + per_group)
                )
                nxt[g] = first + per_group
                hs = HardState(Term(1), commit=Index(first))
                wal.append_ready(g, Ready(entries=ents, hard_state=hs, must_sync=True))
                entries += per_group
            wal.sync()
            syncs += 1
        elapsed = time.perf_counter() - start
        wal.close()
    return entries / elapsed, entries * entry_bytes / elapsed / 1e6, syncs / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"{'entry':>6} {'batch':>6} {'entries/s':>11} {'MB/s':>8} {'fsyncs/s':>9}")
    for entry_bytes in (100, 4096):
        for batch in (1, 64, 512):
            runs = [run_once(args.dir, entry_bytes, batch, args.seconds) for _ in range(args.runs)]
            eps, mbs, fps = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"{entry_bytes:>6} {batch:>6} {eps:>11,.0f} {mbs:>8.1f} {fps:>9,.0f}")


if __name__ == "__main__":
    main()
