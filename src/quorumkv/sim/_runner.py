"""Running many simulation seeds, in parallel, and summing up what they found.

``overrides`` may hold ``sharded=True`` to run the sharded cluster (``_sharded``).
Each seed is independent and deterministic, so seeds are spread over worker processes
and their results gathered in any order; the summary is the same whatever the number of
workers.
The summary line has a fixed form that tests and CI read::

    seeds: N, steps: N, faults: N, violations: N
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._cluster import Cluster, SimConfig, SimResult
from ._sharded import ShardedCluster, ShardedConfig


def run_seed(
    seed: int, trace: bool = False, *, sharded: bool = False, **overrides: Any
) -> SimResult:
    """One seed: the single-group cluster, or with ``sharded`` the sharded one."""
    if sharded:
        return ShardedCluster(ShardedConfig.for_seed(seed, **overrides), trace=trace).run()
    return Cluster(SimConfig.for_seed(seed, **overrides), trace=trace).run()


@dataclass
class Summary:
    seeds: int = 0
    steps: int = 0
    faults: int = 0
    ops: int = 0
    ops_ok: int = 0
    failures: list[SimResult] = field(default_factory=list)
    election_samples: list[float] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)

    def add(self, r: SimResult) -> None:
        self.seeds += 1
        self.steps += r.steps
        self.faults += r.faults
        self.ops += r.ops
        self.ops_ok += r.ops_ok
        self.election_samples.extend(r.election_samples)
        for k, v in r.events.items():
            self.events[k] = self.events.get(k, 0) + v
        if r.violation is not None:
            self.failures.append(r)

    def line(self) -> str:
        return (
            f"seeds: {self.seeds}, steps: {self.steps}, faults: {self.faults}, "
            f"violations: {len(self.failures)}"
        )

    def events_line(self) -> str:
        """Sharded runs: the range operations that took effect, of those started."""
        e = self.events
        return (
            f"splits: {e.get('splits', 0)}/{e.get('splits_started', 0)}, "
            f"moves: {e.get('moves', 0)}/{e.get('moves_started', 0)}, "
            f"leader transfers: {e.get('transfers', 0)}/{e.get('transfers_started', 0)}, "
            f"wrong-range answers: {e.get('wrong_range', 0)}"
        )

    def election_line(self) -> str:
        s = sorted(self.election_samples)
        if not s:
            return "time to new leader after a leader crash: no samples"

        def pct(p: float) -> float:
            return s[min(len(s) - 1, int(p * len(s)))]

        return (
            f"time to new leader after a leader crash, in election timeouts "
            f"(n={len(s)}): p50 {pct(0.5):.2f}, p90 {pct(0.9):.2f}, p99 {pct(0.99):.2f}, "
            f"max {s[-1]:.2f}"
        )


def _work(args: tuple[int, dict[str, Any]]) -> SimResult:
    seed, overrides = args
    r = run_seed(seed, **overrides)
    r.trace = []
    return r


def iter_results(
    first_seed: int, count: int, workers: int, overrides: dict[str, Any]
) -> Iterator[SimResult]:
    jobs = [(s, overrides) for s in range(first_seed, first_seed + count)]
    if workers <= 1:
        yield from map(_work, jobs)
        return
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap_unordered(_work, jobs, chunksize=4)


def run_many(
    first_seed: int,
    count: int,
    workers: int = 0,
    overrides: dict[str, Any] | None = None,
    on_result: Callable[[SimResult], None] | None = None,
) -> Summary:
    overrides = overrides or {}
    workers = workers or (os.cpu_count() or 1)
    summary = Summary()
    for r in iter_results(first_seed, count, workers, overrides):
        summary.add(r)
        if on_result is not None:
            on_result(r)
    summary.failures.sort(key=lambda r: r.seed)
    return summary
