"""``qkv torture``: a Jepsen-style run on real node processes, checked for linearizability.

Parses the options into a ``quorumkv.torture.TortureConfig``, runs it (printing the
faults as they happen, progress, and the summary), and exits 0 only when the history
was proved linearizable and the cluster recovered by itself; 1 otherwise. The torture
package is imported only when the command runs, so other commands do not load it.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

from quorumkv.cli._common import UsageError, count


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def cmd_torture(args: argparse.Namespace) -> int:
    from quorumkv import torture  # noqa: PLC0415 -- only this command loads the harness

    try:
        kinds = torture.parse_kinds(args.faults) if args.faults else None
    except ValueError as e:
        raise UsageError(f"--faults: {e}") from None
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    if args.clients < 10:
        raise UsageError(f"--clients must be at least 10, not {args.clients}")
    if args.keys < 1:
        raise UsageError("--keys must be at least 1")
    if args.split_keys is not None and not args.sharded:
        raise UsageError("--split-keys is the nodes' split threshold: it needs --sharded")
    if args.split_keys is not None and args.split_keys < 1:
        raise UsageError("--split-keys must be at least 1")
    if args.sharded and args.keys < 2:
        raise UsageError("--sharded needs at least 2 --keys, to spread them over ranges")
    cfg = torture.TortureConfig(
        out=Path(args.out or f"qkv-torture-seed{seed}"),
        nodes=args.nodes,
        duration=args.duration,
        seed=seed,
        netns=args.netns,
        faults=kinds,
        load=torture.LoadConfig(clients=args.clients, keys=args.keys),
        disk_mb=args.disk_mb,
        disk_at=args.disk_at,
        recovery_timeout=args.recovery_timeout,
        sharded=args.sharded,
        **({"split_keys": args.split_keys} if args.split_keys is not None else {}),
    )

    def echo(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    summary = torture.run_torture(cfg, echo)
    if args.quiet:
        print(f"seed {seed}: {summary.ops_checked} operations checked; {summary.verdict}")
    else:
        print(f"written: {cfg.out}/history.jsonl, faults.jsonl, summary.json, summary.txt")
    if not summary.passed:
        print(f"qkv torture: {summary.verdict} (seed {seed}, see {cfg.out})", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    """Add ``torture`` to ``sub``."""
    s = sub.add_parser(
        "torture",
        help="fault injection on real node processes, checked for linearizability",
        description="Start a cluster of real node processes, drive it with concurrent "
        "clients, inject faults drawn from a seed (kill -9, SIGSTOP, partitions, a full "
        "disk, membership changes, leader transfers; with --sharded also range splits, "
        "and nodes joining), heal them, and check that the "
        "history is linearizable and the cluster recovers by itself. Writes "
        "history.jsonl, faults.jsonl, summary.json and summary.txt to --out. Exits 0 "
        "only on a linearizable, healthy result. Partitions need --netns (root); slow "
        "links are not injected (no tc netem).",
    )
    s.add_argument("--nodes", type=int, choices=(3, 5), default=3, help="cluster size (3)")
    s.add_argument(
        "--duration", type=_positive, default=60.0, metavar="SECONDS",
        help="how long faults are injected (default 60)",
    )  # fmt: skip
    s.add_argument("--seed", type=count, help="seed of the fault plan and the load (random)")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument(
        "--netns", action="store_true",
        help="one network namespace per node, so partitions are possible (needs root)",
    )  # fmt: skip
    mode.add_argument(
        "--loopback", dest="netns", action="store_false",
        help="every node on 127.0.0.1: no partitions (the default)",
    )  # fmt: skip
    s.add_argument(
        "--sharded", action="store_true",
        help="a sharded cluster: the load's keys spread over ranges, each its own Raft "
        "group; 'leader' faults act on the meta range's leader or a range's",
    )  # fmt: skip
    s.add_argument(
        "--split-keys", type=count, metavar="N",
        help="with --sharded: the nodes split ranges at N keys (2)",
    )  # fmt: skip
    s.add_argument("--out", metavar="DIR", help="output directory (qkv-torture-seed<N>)")
    s.add_argument(
        "--faults", metavar="KIND,...",
        help="fault kinds (default: all the mode allows): kill, kill-leader, pause, "
        "pause-leader, isolate, split, bridge, one-way, disk-full, member, transfer, "
        "range-split (sharded only)",
    )  # fmt: skip
    s.add_argument("--clients", type=count, default=10, help="concurrent clients (10)")
    s.add_argument("--keys", type=count, default=5, help="keys they collide on (5)")
    s.add_argument("--disk-mb", type=count, default=64, help="each node's tmpfs for disk-full")
    s.add_argument(
        "--disk-at", choices=("data", "wal", "kv"), default="data",
        help="what the tmpfs holds: the whole data dir, only the WAL, or only the store",
    )  # fmt: skip
    s.add_argument(
        "--recovery-timeout", type=_positive, default=60.0, metavar="SECONDS",
        help="how long the healed cluster has to become whole (60)",
    )  # fmt: skip
    s.add_argument("--quiet", action="store_true", help="print only the verdict line")
    s.set_defaults(func=cmd_torture)
