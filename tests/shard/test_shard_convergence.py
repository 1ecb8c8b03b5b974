"""Placement convergence: whole model clusters driven by the planner until it plans nothing.

Each round (``shardsim.Sim.step``) plans, carries every operation out through its
directory command, and checks after each one that the directory still tiles the keyspace
and that no voter was removed from a range at its replication factor. Learners count as
caught up from the next heartbeat on. Bounds are stated from the configuration: with
tolerance ``t`` and a mean ``m`` per node, every node ends inside ``m +- max(t * m, 1)``,
so the spread (max - min) is at most ``band(m, t)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from shardsim import Data, GiB, Sim, band, key

from quorumkv.consensus import NodeId
from quorumkv.shard import (
    AddLearner,
    NodeState,
    PlacementConfig,
    RemoveReplica,
    Split,
    node_loads,
)

CFG = PlacementConfig()


def assert_balanced(sim: Sim, nodes: Sequence[int]) -> dict[str, object]:
    reps, leads, _ = sim.loads(NodeId(n) for n in nodes)
    spread = sim.spread(NodeId(n) for n in nodes)
    assert max(reps) - min(reps) <= band(sum(reps) / len(nodes), CFG.range_tolerance), spread
    assert max(leads) - min(leads) <= band(sum(leads) / len(nodes), CFG.leader_tolerance), spread
    return spread


def assert_still(sim: Sim, rounds: int = 5) -> None:
    """A balanced cluster stays still: time passes, heartbeats flow, nothing is planned."""
    for _ in range(rounds):
        sim.now += 10
        sim.heartbeat()
        assert sim.plan() == []


def assert_fully_replicated(sim: Sim) -> None:
    for d in sim.d.ranges():
        assert len(d.voters()) == sim.config.replication_factor, d.describe()
        assert not d.learners(), d.describe()
        assert all(v in sim.running for v in d.voters()), d.describe()


def test_three_nodes_grow_to_five_and_ranges_flow_to_the_new_ones() -> None:
    sim = Sim(nodes=3, data=Data(total_bytes=6 * GiB, total_keys=3_000_000), presplit=120)
    sim.run(40)  # splits of the ranges over 64 MiB, leaders spread from node 1
    assert len(sim.d) >= 120
    assert_balanced(sim, [1, 2, 3])
    sim.add_node(NodeId(4))
    sim.add_node(NodeId(5))
    sim.heartbeat()
    sim.history.clear()
    steps = sim.run(250)
    # 495 replicas, 99 a node at best: about 190 moves, 4 at a time, 3 steps each
    assert steps <= 170
    spread = assert_balanced(sim, [1, 2, 3, 4, 5])
    reps, _, byts = sim.loads(NodeId(n) for n in range(1, 6))
    assert min(reps[3:]) >= 94  # the new nodes got their share
    assert max(byts) / min(byts) < 1.1, spread
    assert sim.count(RemoveReplica) == sim.count(AddLearner)  # every move completed
    assert sim.count(AddLearner) <= 2 * 99  # no move undone or wasted: at most 99 a node
    assert sim.undone == 0  # no move removed the replica it had just added
    assert_fully_replicated(sim)
    assert_still(sim)


def _five_node_cluster() -> Sim:
    sim = Sim(nodes=5, data=Data(total_bytes=3 * GiB), presplit=60)
    sim.run(120)
    assert_balanced(sim, [1, 2, 3, 4, 5])
    sim.history.clear()
    return sim


def test_a_node_down_longer_than_down_after_is_re_replicated() -> None:
    sim = _five_node_cluster()
    lost = len(sim.d.replicas_on(NodeId(5)))
    sim.stop_node(NodeId(5))
    for _ in range(int(CFG.down_after)):  # silent for up to down_after: not yet down
        sim.now += 1
        sim.heartbeat()
        assert not any(isinstance(op, AddLearner) for op in sim.plan())
    sim.now += 1
    sim.heartbeat()
    sim.run(150)
    assert sim.d.replicas_on(NodeId(5)) == []
    adds = [op for ops in sim.history for op in ops if isinstance(op, AddLearner)]
    assert all("down node 5" in op.reason for op in adds[:lost])  # repairs come first
    assert len(adds) <= lost + lost // 4  # then a few moves to even out the survivors
    assert sim.undone == 0
    assert_fully_replicated(sim)
    assert_balanced(sim, [1, 2, 3, 4])
    assert_still(sim)


def test_a_drained_node_empties_and_can_then_be_removed() -> None:
    sim = _five_node_cluster()
    sim.set_state(NodeId(4), NodeState.DRAINING)
    sim.run(150)
    assert sim.d.replicas_on(NodeId(4)) == []
    assert node_loads(sim.d, sim.d.stats)[NodeId(4)].leaders == 0
    sim.set_state(NodeId(4), NodeState.REMOVED)
    sim.stop_node(NodeId(4))
    assert_fully_replicated(sim)
    assert_balanced(sim, [1, 2, 3, 5])
    assert_still(sim)


def test_a_single_node_cluster_grows_to_three_replicas_per_range() -> None:
    sim = Sim(nodes=1, data=Data(total_bytes=GiB), presplit=30)
    assert sim.run(10) <= 2  # only splits: nowhere to put replicas
    sim.add_node(NodeId(2))
    sim.add_node(NodeId(3))
    sim.heartbeat()
    sim.run(60)
    assert_fully_replicated(sim)
    assert_balanced(sim, [1, 2, 3])
    assert_still(sim)


def test_large_ranges_split_at_their_middle_keys_until_under_the_threshold() -> None:
    sim = Sim(nodes=3, data=Data(total_bytes=5 * GiB, power=2.0))
    sim.run(40)
    sizes = [s.size_bytes for s in sim.d.stats.values()]
    assert len(sizes) == len(sim.d) >= 5 * GiB // CFG.split_bytes
    assert max(sizes) < CFG.split_bytes
    for ops in sim.history:
        for op in ops:
            if isinstance(op, Split):
                assert "bytes" in op.reason
    assert_still(sim)


def test_a_hot_range_splits_until_no_piece_is_hot() -> None:
    hot = (1000, 2000)
    sim = Sim(nodes=3, data=Data(total_bytes=GiB // 64, hot=hot, hot_ops=20_000.0))
    sim.run(40)
    assert max(s.write_ops for s in sim.d.stats.values()) < CFG.hot_write_ops
    assert sim.d.lookup(key(1500)).start >= key(1000)
    assert_still(sim)


def test_five_replicas_per_range_on_seven_nodes() -> None:
    sim = Sim(
        nodes=7,
        data=Data(total_bytes=GiB),
        presplit=40,
        config=PlacementConfig(replication_factor=5),
    )
    sim.run(150)
    assert_fully_replicated(sim)
    assert_balanced(sim, list(range(1, 8)))
    assert_still(sim)


def test_a_move_alone_in_flight_removes_exactly_the_source_it_was_planned_from() -> None:
    # With several moves in flight, a move may end by removing another voter as loaded
    # as its source (the loads shift meanwhile); alone, it must end exactly as planned.
    sim = Sim(
        nodes=4,
        data=Data(total_bytes=GiB),
        presplit=30,
        config=PlacementConfig(max_moves_in_flight=1),
    )
    sim.run(150)
    assert sim.count(AddLearner) >= 20
    assert sim.detours == 0
    assert sim.undone == 0
    assert_balanced(sim, [1, 2, 3, 4])


def test_the_same_cluster_makes_the_same_decisions() -> None:
    a = Sim(nodes=4, data=Data(total_bytes=GiB), presplit=30)
    b = Sim(nodes=4, data=Data(total_bytes=GiB), presplit=30)
    a.run(80)
    b.run(80)
    assert a.history == b.history
    assert a.d.to_bytes() == b.d.to_bytes()


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    nodes=st.integers(3, 6),
    ranges=st.integers(4, 30),
    leader=st.integers(1, 3),
    grow=st.integers(0, 2),
    fail=st.booleans(),
)
def test_random_clusters_converge_and_never_drop_below_the_factor(
    nodes: int, ranges: int, leader: int, grow: int, fail: bool
) -> None:
    sim = Sim(
        nodes=nodes,
        data=Data(total_bytes=ranges * 40 << 20, power=1.5),
        presplit=ranges,
        first_leader=NodeId(leader),
    )
    sim.run(200)
    for n in range(nodes + 1, nodes + grow + 1):
        sim.add_node(NodeId(n))
    total = nodes + grow
    if fail and total > 3:
        sim.stop_node(NodeId(1))
        sim.now += CFG.down_after + 1
    sim.heartbeat()
    sim.run(250)
    live = sorted(sim.running)
    assert_fully_replicated(sim)
    assert_balanced(sim, live)
    assert sim.undone == 0
    assert_still(sim, rounds=2)
