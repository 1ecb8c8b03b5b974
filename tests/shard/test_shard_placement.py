"""The placement planner, rule by rule, on small hand-built clusters."""

from __future__ import annotations

import pytest

from quorumkv.consensus import NONE, NodeId
from quorumkv.shard import (
    AddLearner,
    Bootstrap,
    ChangeReplicas,
    Directory,
    Epoch,
    Heartbeat,
    NodeLoad,
    NodeState,
    Operation,
    PlacementConfig,
    Promote,
    RangeId,
    RangeStats,
    RegisterNode,
    RemoveReplica,
    SetLeaderHint,
    SetNodeState,
    ShardCommandError,
    Split,
    SplitRange,
    TransferLeader,
    node_loads,
    plan,
)

MiB = 1 << 20
CFG = PlacementConfig()


def cluster(
    nodes: int,
    voters: tuple[int, ...] = (1, 2, 3),
    ranges: int = 1,
    capacity: int = 0,
) -> Directory:
    """``nodes`` registered at time 0, ``ranges`` ranges on ``voters``, split at b"k01"..."""
    d = Directory()
    for n in range(1, nodes + 1):
        d.apply(RegisterNode(NodeId(n), f"h{n}:1", capacity, 0.0))
    d.apply(Bootstrap(RangeId(1), tuple(NodeId(v) for v in voters)))
    for i in range(1, ranges):
        last = list(d.ranges())[-1]
        d.apply(SplitRange(last.range_id, last.epoch, b"k%02d" % i))
    return d


def report(
    d: Directory,
    now: float,
    *,
    size: int = MiB,
    down: tuple[int, ...] = (),
    pending: tuple[int, ...] = (),
    **extra: object,
) -> None:
    """Every range's leader (its hint, else its first voter) reports; ``down`` nodes stay
    silent, every other node heartbeats at ``now``."""
    by_node: dict[NodeId, list[RangeStats]] = {n: [] for n in d.nodes}
    for r in d.ranges():
        lead = r.leader if r.leader != NONE else r.voters()[0]
        if lead in down:
            continue
        by_node[lead].append(
            RangeStats(
                r.range_id,
                r.epoch,
                lead,
                size,
                pending=tuple(NodeId(p) for p in pending),
                **extra,  # type: ignore[arg-type]
            )
        )
    for n, stats in sorted(by_node.items()):
        if n not in down and d.nodes[n].state is not NodeState.REMOVED:
            d.apply(Heartbeat(n, now, tuple(stats)))


def carry_out(d: Directory, ops: list[Operation]) -> None:
    for op in ops:
        d.apply(op.command())
    d.check()


def kinds(ops: list[Operation]) -> list[tuple[str, int, int]]:
    out = []
    for op in ops:
        node = op.to if isinstance(op, TransferLeader) else getattr(op, "node", 0)
        out.append((type(op).__name__, int(op.range_id), int(node)))
    return out


# -- configuration and stillness -----------------------------------------------------------


def test_config_is_validated() -> None:
    with pytest.raises(ShardCommandError, match="replication_factor"):
        PlacementConfig(replication_factor=0)
    with pytest.raises(ShardCommandError, match="max_disk_fill"):
        PlacementConfig(max_disk_fill=0)
    with pytest.raises(ShardCommandError, match="down_after"):
        PlacementConfig(down_after=-1)


def test_a_balanced_cluster_plans_nothing() -> None:
    d = cluster(3)
    report(d, 1.0)
    assert plan(d, d.stats, 1.0) == []
    before = d.to_bytes()
    assert plan(d, d.stats, 1.0) == []
    assert d.to_bytes() == before  # planning never changes the directory


def test_loads_inside_the_hysteresis_band_plan_nothing() -> None:
    # 30 ranges on 3 nodes: leaders 11/10/9 differ by two but stay in 10 +- 1
    d = cluster(3, ranges=30)
    leaders = [1] * 11 + [2] * 10 + [3] * 9
    for r, lead in zip(list(d.ranges()), leaders, strict=True):
        d.apply(SetLeaderHint(r.range_id, NodeId(lead)))
    report(d, 1.0)
    assert plan(d, d.stats, 1.0) == []
    # one more leader on node 1 (12/9/9) leaves the band: one transfer evens it out
    r = next(r for r in d.ranges() if r.leader == 2)
    d.apply(SetLeaderHint(r.range_id, NodeId(1)))
    report(d, 2.0)
    assert kinds(plan(d, d.stats, 2.0)) == [("TransferLeader", 1, 2)]


# -- splits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stats", "reason"),
    [
        ({"size": 64 * MiB}, "bytes"),
        ({"keys": 1_000_000}, "keys"),
        ({"write_ops": 2500.0}, "writes/s"),
    ],
)
def test_split_at_the_reported_middle_key(stats: dict[str, int], reason: str) -> None:
    d = cluster(3)
    report(d, 1.0, middle_key=b"m", **stats)  # type: ignore[arg-type]
    (op,) = plan(d, d.stats, 1.0)
    assert isinstance(op, Split)
    assert (op.range_id, op.epoch, op.key) == (1, Epoch(1, 1), b"m")
    assert reason in op.reason
    assert op.command() == SplitRange(RangeId(1), Epoch(1, 1), b"m")


@pytest.mark.parametrize("middle", [None, b""])
def test_no_split_without_a_key_inside_the_range(middle: bytes | None) -> None:
    d = cluster(3)
    report(d, 1.0, size=100 * MiB, middle_key=middle)
    assert plan(d, d.stats, 1.0) == []


def test_no_split_below_thresholds_or_from_stats_of_other_bounds() -> None:
    d = cluster(3, ranges=2)
    report(d, 1.0, size=64 * MiB - 1, keys=999_999, write_ops=2499.0, middle_key=b"a")
    assert not any(isinstance(op, Split) for op in plan(d, d.stats, 1.0))
    # stats measured before a split describe other bounds: ignored
    d = cluster(3)
    r = d.range(RangeId(1))
    lead = r.voters()[0]
    old = RangeStats(r.range_id, Epoch(1, 0), lead, 100 * MiB, middle_key=b"a")
    assert plan(d, {r.range_id: old}, 1.0) == []
    current = RangeStats(r.range_id, r.epoch, lead, 100 * MiB, middle_key=b"a")
    assert plan(d, {r.range_id: current}, 1.0) == [
        Split(r.range_id, r.epoch, b"a", f"{100 * MiB} bytes >= {64 * MiB}")
    ]


# -- replication: add, promote, remove ----------------------------------------------------


def test_under_replicated_range_gets_learners_promoted_only_once_caught_up() -> None:
    d = cluster(3, voters=(1,))
    report(d, 1.0)
    (op,) = plan(d, d.stats, 1.0)
    assert isinstance(op, AddLearner)
    assert (op.node, "under-replicated (1 of 3 voters)") == (2, op.reason)
    assert op.command() == ChangeReplicas(RangeId(1), Epoch(1, 1), add=(NodeId(2),))
    carry_out(d, [op])
    # the last report predates the learner: nothing to do until the leader tells
    assert plan(d, d.stats, 1.5) == []
    report(d, 2.0, pending=(2,))
    assert plan(d, d.stats, 2.0) == []
    report(d, 3.0)
    (op,) = plan(d, d.stats, 3.0)
    assert isinstance(op, Promote)
    assert op.node == 2
    carry_out(d, [op])
    report(d, 4.0)
    assert kinds(plan(d, d.stats, 4.0)) == [("AddLearner", 1, 3)]


def test_extra_voter_is_removed_from_the_most_loaded_node_after_moving_its_leadership() -> None:
    # r1 on 1,2,3,4 (one too many); node 1 also holds r2 (on 1,5,6): node 1 is the most
    # loaded voter of r1, and it leads r1.
    d = cluster(6, voters=(1, 5, 6), ranges=2)
    r1 = d.range(RangeId(1))
    r1 = d.apply(ChangeReplicas(r1.range_id, r1.epoch, add=(NodeId(2), NodeId(3))))
    r1 = d.apply(ChangeReplicas(r1.range_id, r1.epoch, promote=(NodeId(2), NodeId(3))))
    r1 = d.apply(ChangeReplicas(r1.range_id, r1.epoch, remove=(NodeId(5), NodeId(6))))
    r1 = d.apply(ChangeReplicas(r1.range_id, r1.epoch, add=(NodeId(4),)))
    r1 = d.apply(ChangeReplicas(r1.range_id, r1.epoch, promote=(NodeId(4),)))
    d.apply(SetLeaderHint(r1.range_id, NodeId(1)))
    report(d, 1.0)
    ops = [op for op in plan(d, d.stats, 1.0) if op.range_id == 1]
    assert kinds(ops) == [("TransferLeader", 1, 2)]
    assert ops[0].command() == SetLeaderHint(RangeId(1), NodeId(2))
    carry_out(d, ops)
    report(d, 2.0)
    ops = [op for op in plan(d, d.stats, 2.0) if op.range_id == 1]
    assert kinds(ops) == [("RemoveReplica", 1, 1)]
    assert "most loaded" in ops[0].reason


def test_voter_on_a_down_node_is_replaced_add_first_then_remove() -> None:
    d = cluster(4)
    report(d, 0.0)
    report(d, 30.0, down=(3,))
    assert plan(d, d.stats, 30.0) == []  # silent for exactly down_after: not down yet
    ops = plan(d, d.stats, 30.5)
    assert kinds(ops) == [("AddLearner", 1, 4)]
    assert "down node 3" in ops[0].reason
    now = 31.0
    for expected in (("Promote", 1, 4), ("RemoveReplica", 1, 3)):
        carry_out(d, ops)
        assert len(d.range(RangeId(1)).voters()) >= 3
        report(d, now, down=(3,))
        ops = plan(d, d.stats, now)
        assert kinds(ops) == [expected]
        now += 1
    carry_out(d, ops)
    assert d.range(RangeId(1)).voters() == (1, 2, 4)
    report(d, now, down=(3,))
    assert plan(d, d.stats, now) == []


def test_a_dead_leader_hint_does_not_delay_the_removal() -> None:
    d = cluster(4)
    r = d.apply(SetLeaderHint(RangeId(1), NodeId(3)))
    r = d.apply(ChangeReplicas(r.range_id, r.epoch, add=(NodeId(4),)))
    r = d.apply(ChangeReplicas(r.range_id, r.epoch, promote=(NodeId(4),)))
    assert r.nodes() == (1, 2, 3, 4)
    report(d, 0.0)
    report(d, 40.0, down=(3,))
    # node 3 is down: no transfer from it can happen, and none is needed
    assert kinds(plan(d, d.stats, 40.0)) == [("RemoveReplica", 1, 3)]


def test_learner_on_a_down_node_is_dropped() -> None:
    d = cluster(4)
    r = d.range(RangeId(1))
    d.apply(ChangeReplicas(r.range_id, r.epoch, add=(NodeId(4),)))
    report(d, 0.0)
    report(d, 40.0, down=(4,), pending=(4,))
    (op,) = plan(d, d.stats, 40.0)
    assert isinstance(op, RemoveReplica)
    assert (op.node, op.reason) == (4, "learner on a down node")


def test_a_range_that_lost_its_quorum_gets_nothing() -> None:
    d = cluster(4)
    report(d, 0.0)
    report(d, 100.0, down=(2, 3))
    assert plan(d, d.stats, 100.0) == []


def test_without_a_target_the_range_keeps_its_dead_voter() -> None:
    d = cluster(3)
    report(d, 0.0)
    report(d, 100.0, down=(3,))
    assert plan(d, d.stats, 100.0) == []


# -- draining, capacity, limits ------------------------------------------------------------


def test_draining_node_loses_leaders_at_once_and_replicas_when_there_is_room() -> None:
    d = cluster(3)
    d.apply(SetLeaderHint(RangeId(1), NodeId(1)))
    d.apply(SetNodeState(NodeId(1), NodeState.DRAINING))
    report(d, 1.0)
    ops = plan(d, d.stats, 1.0)
    assert kinds(ops) == [("TransferLeader", 1, 2)]
    assert "draining" in ops[0].reason
    d.apply(RegisterNode(NodeId(4), "h4:1", 0, 1.0))
    ops = plan(d, d.stats, 1.0)
    assert kinds(ops) == [("AddLearner", 1, 4)]
    assert ops[0].reason == "move off a draining node"


def test_a_full_node_receives_nothing() -> None:
    d = cluster(5, capacity=200 * MiB)
    d.apply(RegisterNode(NodeId(4), "h4:1", 100 * MiB, 0.0))  # 100 MiB would fill it past 95 %
    report(d, 1.0, size=100 * MiB)
    report(d, 39.0, down=(3,), size=100 * MiB)
    ops = plan(d, d.stats, 39.0)
    assert kinds(ops) == [("AddLearner", 1, 5)]
    d.apply(RegisterNode(NodeId(4), "h4:1", 300 * MiB, 39.0))
    assert kinds(plan(d, d.stats, 39.0)) == [("AddLearner", 1, 4)]


def test_moves_in_flight_are_capped_and_busy_ranges_count() -> None:
    d = cluster(5, ranges=20)
    report(d, 1.0)
    adds = [op for op in plan(d, d.stats, 1.0) if isinstance(op, AddLearner)]
    assert len(adds) == CFG.max_moves_in_flight == 4
    assert {op.node for op in adds} == {4, 5}
    two = PlacementConfig(max_moves_in_flight=2)
    assert sum(isinstance(op, AddLearner) for op in plan(d, d.stats, 1.0, two)) == 2
    busy = [RangeId(1), RangeId(2)]
    ops = plan(d, d.stats, 1.0, two, busy=busy)
    assert not any(isinstance(op, AddLearner) for op in ops)
    assert all(op.range_id not in busy for op in ops)


def test_a_busy_range_gets_nothing_even_when_it_needs_repair() -> None:
    d = cluster(4, ranges=2)
    report(d, 0.0)
    report(d, 40.0, down=(3,))
    assert {op.range_id for op in plan(d, d.stats, 40.0)} == {1, 2}
    assert {op.range_id for op in plan(d, d.stats, 40.0, busy={RangeId(1)})} == {2}


# -- balance --------------------------------------------------------------------------------


def test_bytes_are_evened_out_when_counts_are_balanced() -> None:
    one = PlacementConfig(replication_factor=1)
    d = cluster(2, voters=(1,), ranges=4)
    rs = list(d.ranges())
    for r in rs[2:]:  # two ranges to node 2
        r = d.apply(ChangeReplicas(r.range_id, r.epoch, add=(NodeId(2),)))
        r = d.apply(ChangeReplicas(r.range_id, r.epoch, promote=(NodeId(2),)))
        d.apply(ChangeReplicas(r.range_id, r.epoch, remove=(NodeId(1),)))
    sizes = {1: 100 * MiB, 2: 100 * MiB, 3: 10 * MiB, 4: 10 * MiB}
    stats = {
        r.range_id: RangeStats(r.range_id, r.epoch, r.voters()[0], sizes[r.range_id])
        for r in d.ranges()
    }
    assert {n: ld.replicas for n, ld in node_loads(d, stats).items()} == {1: 2, 2: 2}
    ops = plan(d, stats, 0.0, one)
    assert kinds(ops) == [("AddLearner", 1, 2)]
    assert ops[0].reason.startswith("bytes:")
    # within the band (one split_bytes of slack) nothing moves
    stats[RangeId(1)] = RangeStats(RangeId(1), d.range(RangeId(1)).epoch, NodeId(1), 40 * MiB)
    assert plan(d, stats, 0.0, one) == []


def test_leaders_spread_by_transfers_capped_per_round() -> None:
    d = cluster(3, ranges=30)
    for r in d.ranges():
        d.apply(SetLeaderHint(r.range_id, NodeId(1)))
    report(d, 1.0)
    ops = plan(d, d.stats, 1.0)
    assert len(ops) == CFG.max_leader_transfers
    assert all(isinstance(op, TransferLeader) for op in ops)
    assert {op.to for op in ops if isinstance(op, TransferLeader)} == {2, 3}
    assert node_loads(d, d.stats)[NodeId(1)] == NodeLoad(replicas=30, bytes=30 * MiB, leaders=30)


def test_plans_are_deterministic_and_ordered_by_priority_then_key() -> None:
    d = cluster(5, ranges=12)
    for r in list(d.ranges())[:6]:
        d.apply(SetLeaderHint(r.range_id, NodeId(1)))
    report(d, 0.0)
    report(d, 40.0, down=(3,), size=100 * MiB, middle_key=b"k055")
    ops = plan(d, d.stats, 40.0)
    assert ops == plan(d, d.stats, 40.0)
    names = [type(op).__name__ for op in ops]
    assert names == sorted(names, key=["AddLearner", "Split", "TransferLeader"].index)
    adds = [op for op in ops if isinstance(op, AddLearner)]
    assert all("down node 3" in op.reason for op in adds)
    assert [op.range_id for op in adds] == sorted(
        (op.range_id for op in adds), key=lambda rid: d.range(rid).start
    )
    hot = d.lookup(b"k055")
    assert [op for op in ops if isinstance(op, Split)] == [
        Split(hot.range_id, hot.epoch, b"k055", f"{100 * MiB} bytes >= {64 * MiB}")
    ]
    for op in ops:
        assert f"r{op.range_id}" in op.describe()
