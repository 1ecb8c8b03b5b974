"""Instructions per applied put, counted by valgrind: a deterministic A/B (not a test).

    python benchmarks/apply_instructions.py                 # 20,000 keys, 40 batches
    python benchmarks/apply_instructions.py --keys 100000 --batches 80

On a shared virtual machine, CPU time per operation moves by up to 2x between runs of
the same code, so a change of a few percent to the apply path cannot be seen in
timings. The number of instructions executed can: this script loads ``--keys`` keys
into a fresh range of an engine, then applies ``--batches`` batches of 256 puts of
100-byte values to random keys, as a replica applies them (encoded entries, with a
client session each, in one engine round, committed every 10 batches). It runs that
twice under ``valgrind --tool=callgrind`` (once applying no batch, once applying them;
both load the keys and encode the batches) and prints the difference divided by the
puts applied: the instructions of applying one put, without start-up, loading or
encoding.

It measures the quorumkv of the tree it sits in (its ``src`` comes first on the path):
to compare two commits, run each tree's copy. Needs valgrind (Debian: ``valgrind``).
Takes about a minute.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from quorumkv.kv import Engine
from quorumkv.kv._codec import encode_put

BATCH = 256
VALUE = b"x" * 100


def workload(keys: int, batches: int, seed: int, apply: bool) -> None:
    """Load ``keys`` keys and encode ``batches`` batches; apply them if ``apply``."""
    with tempfile.TemporaryDirectory(prefix="qkv-instr-") as tmp:
        engine = Engine(tmp, map_size=4 << 30, sync=False)
        rs = engine.create_range(1, b"", b"")
        index = 0

        def batch(names: list[bytes]) -> list[tuple[int, bytes]]:
            nonlocal index
            out = []
            for client, key in enumerate(names, start=1):
                index += 1
                out.append((index, encode_put(client, index, key, VALUE)))
            return out

        for start in range(0, keys, 1000):
            engine.begin_round()
            rs.apply(batch([b"key%08d" % i for i in range(start, min(keys, start + 1000))]))
            engine.end_round()
        rng = random.Random(seed)
        todo = [
            batch([b"key%08d" % rng.randrange(keys) for _ in range(BATCH)]) for _ in range(batches)
        ]
        gc.disable()  # a collection's cost depends on the heap, not on the code measured
        for i, entries in enumerate(todo if apply else []):
            engine.begin_round()
            rs.apply(entries, encoded=True)
            if i % 10 == 9:
                engine.end_round()
        engine.end_round()
        engine.close()


def _count(keys: int, batches: int, seed: int, apply: bool) -> int:
    argv = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--run", "--keys", str(keys), "--batches", str(batches),
        "--seed", str(seed), "--apply" if apply else "--no-apply",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every run
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stderr
    m = re.search(r"Collected : ([\d,]+)", out)
    if m is None:
        raise SystemExit(f"valgrind printed no instruction count:\n{out[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # under valgrind
    ap.add_argument("--apply", action=argparse.BooleanOptionalAction, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        workload(args.keys, args.batches, args.seed, bool(args.apply))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    base = _count(args.keys, args.batches, args.seed, apply=False)
    full = _count(args.keys, args.batches, args.seed, apply=True)
    puts = args.batches * BATCH
    print(
        f"{(full - base) / puts:,.0f} instructions per applied put "
        f"({args.keys:,} keys, {puts:,} puts in batches of {BATCH})"
    )


if __name__ == "__main__":
    main()
