"""``qkv sim``: run the deterministic simulator over many seeds, or replay one.

Prints one summary line (``seeds: N, steps: N, faults: N, violations: N``), and for a
failing seed the command that replays it; exits 1 if any seed found a violation.
``--sharded`` runs the sharded cluster (many ranges per node, with range splits, replica
moves and range leader transfers among the faults) and also prints how many of those
took effect.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from quorumkv.sim import FAULT_KINDS, SHARDED_FAULT_KINDS, SimResult, Summary, run_seed

RunMany = Callable[..., Summary]


def sim_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.sharded:
        out["sharded"] = True
    if args.nodes:
        out["nodes"] = args.nodes
    if args.duration_ms:
        out["duration_us"] = args.duration_ms * 1000
    if args.lease_reads:
        out["lease_reads"] = True
    if args.faults:
        kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
        known = SHARDED_FAULT_KINDS if args.sharded else FAULT_KINDS
        unknown = set(kinds) - set(known)
        if unknown:
            raise SystemExit(f"qkv sim: unknown fault kinds {sorted(unknown)}; know {known}")
        out["faults"] = kinds
    return out


def replay_command(seed: int, overrides: dict[str, Any]) -> str:
    """The ``qkv sim`` command line that replays ``seed`` under the same overrides."""
    flags = [f"qkv sim --seed {seed} --trace"]
    if overrides.get("sharded"):
        flags.append("--sharded")
    if "nodes" in overrides:
        flags.append(f"--nodes {overrides['nodes']}")
    if "duration_us" in overrides:
        flags.append(f"--duration-ms {overrides['duration_us'] // 1000}")
    if overrides.get("lease_reads"):
        flags.append("--lease-reads")
    if "faults" in overrides:
        flags.append(f"--faults {','.join(overrides['faults'])}")
    return " ".join(flags)


def cmd_sim(args: argparse.Namespace, run_many: RunMany) -> int:
    overrides = sim_overrides(args)
    if args.seed is not None:
        r = run_seed(args.seed, trace=args.trace, **overrides)
        if args.trace:
            print("\n".join(r.trace))
        print(
            f"seed {r.seed}: steps {r.steps}, faults {r.faults}, "
            f"operations {r.ops} ({r.ops_ok} acknowledged)"
        )
        if args.sharded:
            one = Summary()
            one.add(r)
            print(one.events_line())
        if r.violation:
            print(f"VIOLATION: {r.violation}", file=sys.stderr)
            return 1
        print("no violations")
        return 0

    bar = tqdm(total=args.seeds, unit="seed", disable=args.quiet, file=sys.stderr)

    def progress(r: SimResult) -> None:
        bar.update(1)
        if r.violation:
            tqdm.write(f"seed {r.seed}: {r.violation.splitlines()[0]}", file=sys.stderr)

    summary = run_many(args.first_seed, args.seeds, args.workers, overrides, progress)
    bar.close()
    for r in summary.failures:
        print(f"seed {r.seed} failed: {r.violation}")
        print(f"  replay: {replay_command(r.seed, overrides)}")
    print(f"operations: {summary.ops} ({summary.ops_ok} acknowledged), {summary.election_line()}")
    if args.sharded:
        print(summary.events_line())
    print(summary.line())
    return 1 if summary.failures else 0


def register(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """Add ``sim`` to ``sub``, run by ``func``."""
    s = sub.add_parser(
        "sim",
        help="run the deterministic cluster simulator",
        description="Run whole simulated clusters under random faults, one seed each, "
        "checking Raft's safety properties and the linearizability of client histories.",
    )
    s.add_argument("--seeds", type=int, default=200, help="how many seeds (default 200)")
    s.add_argument("--first-seed", type=int, default=1, help="first seed (default 1)")
    s.add_argument("--seed", type=int, help="run this one seed only")
    s.add_argument("--trace", action="store_true", help="with --seed: print the event trace")
    s.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    s.add_argument("--sharded", action="store_true", help="many ranges: splits, moves, transfers")
    s.add_argument("--nodes", type=int, choices=(3, 4, 5), help="cluster size (default: by seed)")
    s.add_argument("--duration-ms", type=int, help="virtual time with faults (default 3000)")
    s.add_argument("--lease-reads", action="store_true", help="serve reads by leader lease")
    s.add_argument(
        "--faults",
        help=f"comma-separated subset of: {','.join(FAULT_KINDS)}; "
        f"with --sharded: {','.join(SHARDED_FAULT_KINDS)}",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=func)
