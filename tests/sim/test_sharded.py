"""The sharded simulator: range splits, replica moves and range leader transfers under
faults, checked for Raft safety per group, linearizability and whole ranges.

The seeds are pinned and each one must actually split, move and transfer (and crash
nodes), so the test fails if a change to the simulator stops exercising them. A longer
sweep is ``qkv sim --sharded --seeds 2000 --workers 2``.
"""

from __future__ import annotations

import pytest

from quorumkv.sim import ShardedCluster, ShardedConfig, SimResult, run_seed
from quorumkv.sim._linearizability import check_history

# Two of each profile: calm (a fault every 50-300 ms) and stormy (every 20-100 ms).
SEEDS = (4, 20, 27, 1, 5)


def _explain(r: SimResult) -> str:
    return f"replay with: qkv sim --sharded --seed {r.seed} --trace\n{r.violation}"


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_splits_moves_and_transfers_under_faults(seed: int) -> None:
    r = run_seed(seed, sharded=True)
    assert r.violation is None, _explain(r)
    e = r.events
    assert e["splits"] >= 1, e
    assert e["moves"] >= 1, e
    assert e["transfers"] >= 1, e
    assert e["crashes"] >= 1, e
    # Moves went the whole way: a replica made on its new node, one deleted on the old.
    assert e["pending_replicas"] >= 1 and e["deleted_replicas"] >= 1, e
    assert e["splits"] == e["splits_started"] and e["moves"] == e["moves_started"], e
    assert e["ranges"] == 1 + e["splits"]
    assert r.ops_ok > 300


def test_a_replica_readded_after_deletion_does_not_vote_while_pending() -> None:
    # Regression, the first failure of the sharded simulator: range 1 moved off node 3
    # (which deleted its replica) and back onto it; node 2, back from a crash with an
    # old configuration that still counted node 3, won an election with the vote of
    # node 3's empty, pending replica and led without a committed entry. The real node
    # drops votes to a pending replica; the simulator now does too.
    r = run_seed(158, sharded=True)
    assert r.violation is None, _explain(r)
    assert r.events["moves"] == 3


def test_planted_bug_pending_replica_votes_is_caught() -> None:
    r = run_seed(158, sharded=True, pending_votes=True)
    assert "leader completeness violated" in (r.violation or ""), r.violation


def test_planted_bug_left_range_serving_split_away_keys_is_caught() -> None:
    # With the fence off a range applies and serves keys it split away: the range check
    # at the end sees keys outside the bounds...
    cluster = ShardedCluster(ShardedConfig.for_seed(1, fence_keys=False))
    r = cluster.run()
    assert "ranges whole violated" in (r.violation or ""), r.violation
    assert "outside its bounds" in (r.violation or "")
    # ...and the clients' history alone shows it too.
    for c in cluster.clients:
        cluster._give_up(c)
    assert not check_history(cluster.history).ok


def test_a_sharded_seed_replays_exactly() -> None:
    a = run_seed(20, trace=True, sharded=True)
    b = run_seed(20, trace=True, sharded=True)
    assert a.trace == b.trace
    assert a.events == b.events
    assert any("splits at" in line for line in a.trace)
