"""``qkv bench compare``: quorumkv side by side with etcd and PySyncObj on this machine.

Parses the flags into a ``quorumkv.bench.CompareConfig`` and runs it. The bench
package is imported only when the command runs, so ``qkv`` works without the bench's
optional dependencies; missing ones are named with how to install them (or installed,
with ``--install``). Not part of the test suite: a full run takes the better part of
an hour.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from quorumkv.cli._common import UsageError

SYSTEM_NAMES = ("quorumkv", "etcd", "pysyncobj")
OP_NAMES = ("put", "get")


def int_list(text: str) -> tuple[int, ...]:
    """An argparse type: ``1,16,64,256`` as positive integers, in order, no repeats."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value} is not positive")
        if value not in out:
            out.append(value)
    if not out:
        raise argparse.ArgumentTypeError("names no value")
    return tuple(out)


def _name_list(known: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{', '.join(unknown) or 'nothing'}: choose from {','.join(known)}"
            )
        return names

    return parse


def seconds(text: str) -> float:
    """An argparse type: a number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a duration")
    return value


def count(text: str) -> int:
    """An argparse type: an integer >= 0 (``1m``, ``100k`` allowed)."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale != 1 else text
    try:
        value = int(digits.replace("_", "")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def default_out_dir() -> Path:
    return Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")


def config_from_args(args: argparse.Namespace) -> Any:
    """The ``CompareConfig`` the flags ask for (UsageError if they disagree)."""
    from quorumkv.bench import CompareConfig  # noqa: PLC0415 -- only this command loads it

    if args.duration <= 0:
        raise UsageError("--duration must be positive")
    if args.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    if args.keys < 1:
        raise UsageError("--keys must be at least 1")
    return CompareConfig(
        out_dir=args.out or default_out_dir(),
        systems=args.systems,
        ops=args.ops,
        concurrencies=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds,
        keys=args.keys,
        value_size=args.value_size,
        client_timeout=args.client_timeout,
        failover_tries=args.failover_tries,
        memory_keys=args.memory_keys,
        profile=args.profile,
        pysyncobj_batch=args.pysyncobj_batch,
        pysyncobj_compaction=args.pysyncobj_compaction,
        work_dir=args.work_dir,
        keep_data=args.keep_data,
        quiet=args.quiet,
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from quorumkv import bench  # noqa: PLC0415 -- only this command loads it

    cfg = config_from_args(args)
    lacking = bench.missing(cfg.systems)
    if lacking and args.install:
        print(f"qkv bench: installing {', '.join(lacking)} ...", file=sys.stderr)
        bench.install(cfg.systems)
        lacking = bench.missing(cfg.systems)
    if lacking:
        print(f"qkv bench: missing {', '.join(lacking)}: {bench.install_hint()}", file=sys.stderr)
        return 1
    doc = bench.run_compare(cfg)
    print(bench.report_text(doc))
    print(f"written: {cfg.out_dir / 'results.json'} and {cfg.out_dir / 'results.md'}")
    return 1 if doc["errors"] else 0


def register(sub: Any) -> None:
    """Add ``bench compare`` to ``sub``."""
    b = sub.add_parser(
        "bench",
        help="benchmarks (not tests): quorumkv side by side with etcd and PySyncObj",
        description="Benchmarks that start real clusters on this machine.",
    )
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="COMMAND")
    c = bsub.add_parser(
        "compare",
        help="measure quorumkv, etcd and PySyncObj side by side",
        description="Start a 3-node cluster of each system on loopback, one after the "
        "other, drive each with the same load from a separate process (puts of "
        "--value-size bytes over --keys keys, linearizable gets of loaded keys, at each "
        "concurrency), repeat in interleaved rounds, then measure failover (kill -9 of "
        "the leader) and memory. Prints medians with min-max, and writes results.json "
        "and results.md. Needs etcd (Debian's etcd-server and etcd-client) and the "
        "'bench' extra (PySyncObj, grpcio, grpcio-tools, protobuf): --install fetches "
        "them (scripts/install-bench-deps.sh). Quick run: --duration 2 --rounds 1 "
        "--failover-tries 2 --memory-keys 100k.",
    )
    c.add_argument("--duration", type=seconds, default=10.0, help="measured seconds a point (10)")
    c.add_argument("--warmup", type=seconds, default=2.0, help="unmeasured seconds first (2)")
    c.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    c.add_argument(
        "--concurrency",
        type=int_list,
        default=(1, 16, 64, 256),
        metavar="N,...",
        help="concurrent callers per point (1,16,64,256)",
    )
    c.add_argument(
        "--systems",
        type=_name_list(SYSTEM_NAMES),
        default=SYSTEM_NAMES,
        metavar="NAME,...",
        help=f"which systems, in round order ({','.join(SYSTEM_NAMES)})",
    )
    c.add_argument(
        "--ops",
        type=_name_list(OP_NAMES),
        default=OP_NAMES,
        metavar="OP,...",
        help="put, get or both (put,get)",
    )
    c.add_argument("--keys", type=count, default=100_000, help="keys written and read (100k)")
    c.add_argument("--value-size", type=count, default=100, help="bytes a value (100)")
    c.add_argument(
        "--failover-tries", type=count, default=5, help="leader kills per system; 0: skip (5)"
    )
    c.add_argument(
        "--memory-keys",
        type=count,
        default=1_000_000,
        help="keys written before measuring memory; 0: skip (1m)",
    )
    c.add_argument(
        "--client-timeout",
        type=seconds,
        default=30.0,
        help="every client's deadline per call, also for failover (30)",
    )
    c.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the quorumkv leader and generator during one extra put point",
    )
    c.add_argument(
        "--pysyncobj-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PySyncObj's appendEntriesUseBatch (its default: on)",
    )
    c.add_argument(
        "--pysyncobj-compaction",
        type=count,
        default=100_000,
        help="PySyncObj's logCompactionMinEntries (100k)",
    )
    c.add_argument("--out", type=Path, help="output dir (./bench-results/<timestamp>/)")
    c.add_argument("--work-dir", type=Path, help="where the clusters' temp dirs go (/tmp)")
    c.add_argument("--keep-data", action="store_true", help="keep the clusters' data dirs")
    c.add_argument("--install", action="store_true", help="install missing dependencies first")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_compare)
