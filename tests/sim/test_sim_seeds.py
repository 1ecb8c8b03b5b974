"""The simulator over many seeds: no violations, and every seed replays exactly."""

from __future__ import annotations

import re

from quorumkv.sim import run_many, run_seed

CI_SEEDS = 250
"""Seeds 1-250 take about 75 s of each of CI's two cores; wider sweeps are a soak
(``qkv sim --seeds 20000``), run apart from the tests."""


def test_many_seeds_no_violations() -> None:
    summary = run_many(first_seed=1, count=CI_SEEDS, workers=2)
    print(summary.line())
    print(summary.election_line())
    details = "\n".join(f"seed {r.seed}: {r.violation}" for r in summary.failures)
    assert not summary.failures, f"replay with: qkv sim --seed N --trace\n{details}"
    assert summary.seeds == CI_SEEDS
    # The runs did real work: faults, and client operations that got acknowledged.
    assert summary.faults > 10 * CI_SEEDS
    assert summary.ops_ok > 100 * CI_SEEDS
    assert re.fullmatch(r"seeds: \d+, steps: \d+, faults: \d+, violations: 0", summary.line())


def test_a_seed_replays_exactly() -> None:
    a = run_seed(7, trace=True)
    b = run_seed(7, trace=True)
    assert a.trace == b.trace
    assert (a.steps, a.faults, a.ops, a.ops_ok) == (b.steps, b.faults, b.ops, b.ops_ok)
    assert a.steps > 1000


def test_different_seeds_differ() -> None:
    assert run_seed(8).steps != run_seed(9).steps
