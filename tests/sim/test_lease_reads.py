"""Lease reads, and the assumption they rest on (see ReadOnlyOption.LEASE_BASED).

Lease reads are linearizable as long as every node's ticks run at the same rate. A
paused leader process breaks that: its ticks stop while its followers' run on, so it
can answer from a lease that has in truth expired. These tests hold both halves: no
violation without pauses, and a stale read found once pauses are in the mix.
"""

from __future__ import annotations

from quorumkv.sim import FAULT_KINDS, run_many
from quorumkv.sim._runner import iter_results


def test_lease_reads_are_linearizable_when_clocks_keep_pace() -> None:
    no_pause = tuple(k for k in FAULT_KINDS if k != "pause")
    summary = run_many(1, 120, 2, {"lease_reads": True, "faults": no_pause})
    assert not summary.failures, [f"seed {r.seed}: {r.violation}" for r in summary.failures]


def test_a_paused_leader_serves_a_stale_lease_read() -> None:
    for r in iter_results(1, 400, 2, {"lease_reads": True}):
        if r.violation is not None:
            assert "linearizability violated" in r.violation
            return
    raise AssertionError("400 seeds with pauses found no stale lease read")
