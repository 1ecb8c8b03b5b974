"""Benchmarks of ``quorumkv.kv.MVCCStore`` (not a test).

    python benchmarks/kv_bench.py            # everything, medians of 3 runs
    python benchmarks/kv_bench.py --quick    # smaller, one run

Measures: apply throughput (puts/s) in batches of 1, 64 and 512, with fsync on every
commit (``sync=True``, the durable setting) and without; max RSS (``getrusage``) and
disk size after loading 1M keys of 100-byte values in batches of 512; restart time
(open the environment and read the applied index) of that 1M-key store. Commands are
encoded before the clock starts, as a proposer would have done. Each load and restart
runs in a fresh subprocess so that max RSS belongs to that run alone.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from quorumkv.kv import Command, MVCCStore, PutRequest, encode_command

VALUE = b"v" * 100


def commands(n: int, start: int = 0) -> list[tuple[int, bytes]]:
    return [
        (
            start + i + 1,
            encode_command(Command(0, 0, PutRequest(b"key/%012d" % (start + i), VALUE))),
        )
        for i in range(n)
    ]


def throughput(batch: int, n: int, sync: bool) -> float:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        store = MVCCStore(Path(tmp) / "kv", sync=sync)
        entries = commands(n)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            store.apply(entries[i : i + batch])
        elapsed = time.perf_counter() - t0
        store.close()
    return n / elapsed


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.iterdir())


def load(path: str, n: int) -> dict[str, float]:
    store = MVCCStore(path)
    t0 = time.perf_counter()
    for start in range(0, n, 512):
        store.apply(commands(min(512, n - start), start))
    elapsed = time.perf_counter() - t0
    stats = store.stats()
    store.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": elapsed, "max_rss": rss, "disk": disk_bytes(Path(path)),
            "used": stats["used_bytes"], "keys": stats["index"]}  # fmt: skip


def restart(path: str) -> dict[str, float]:
    t0 = time.perf_counter()
    store = MVCCStore(path)
    applied = store.applied_index()
    elapsed = time.perf_counter() - t0
    store.close()
    return {"seconds": elapsed, "applied": applied}


def child(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, check=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    quick = "--quick" in sys.argv
    runs = 1 if quick else 3
    sizes = {1: 300 if quick else 1000, 64: 20_000, 512: 50_000 if quick else 100_000}
    for sync in (True, False):
        for batch, n in sizes.items():
            rates = [throughput(batch, n, sync) for _ in range(runs)]
            each = ", ".join(f"{r:,.0f}" for r in rates)
            med = statistics.median(rates)
            print(
                f"apply sync={sync!s:5} batch={batch:3}: {med:9,.0f} puts/s ({n} puts; runs {each})"
            )
    n = 100_000 if quick else 1_000_000
    base = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR")))
    try:
        loads = [child("load", str(base / f"run{i}"), str(n)) for i in range(runs)]
        for name, fmt in [("seconds", "{:.1f} s"), ("max_rss", "{:,.0f} B"), ("disk", "{:,.0f} B"),
                          ("used", "{:,.0f} B")]:  # fmt: skip
            vals = [r[name] for r in loads]
            each = ", ".join(fmt.format(v) for v in vals)
            mid = fmt.format(statistics.median(vals))
            print(f"load {n:,} keys x 100 B, batch 512: {name} median {mid} (runs {each})")
        for i in range(1, runs):
            shutil.rmtree(base / f"run{i}")
        subprocess.run(["sync"], check=False)
        rs = [child("restart", str(base / "run0")) for _ in range(3)]
        times = [r["seconds"] * 1000 for r in rs]
        each = ", ".join(f"{t:.2f}" for t in times)
        med = statistics.median(times)
        print(f"restart {n:,} keys (open + read applied index): median {med:.2f} ms (runs {each})")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        print(json.dumps(load(sys.argv[2], int(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "restart":
        print(json.dumps(restart(sys.argv[2])))
    else:
        main()
