"""What the torture harness makes of a sharded cluster, on fabricated node statuses:
the leader a fault means, where a forced split goes, and when the ranges are whole.
Pure: no processes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from quorumkv.consensus import NodeId
from quorumkv.shard import Epoch, RangeDescriptor, RangeId, Replica
from quorumkv.torture._sharded import (
    META_RANGE,
    ReplicaView,
    check_ranges,
    describe_ranges,
    initial_splits,
    key_ranges,
    leader_targets,
    pick_other_voter,
    pick_target,
    split_point,
)

KEYS = [b"k0", b"k1", b"k2", b"k3", b"k4"]
BOUNDS = {2: (b"", b"k2"), 3: (b"k2", b"k4"), 4: (b"k4", b""), 5: (b"k4/7", b"")}


def _desc(rid: int, voters: tuple[int, ...] = (1, 2, 3), learners: tuple[int, ...] = ()) -> Any:
    start, end = BOUNDS[rid]
    reps = tuple(Replica(NodeId(n)) for n in voters) + tuple(
        Replica(NodeId(n), learner=True) for n in learners
    )
    return RangeDescriptor(RangeId(rid), start, end, Epoch(1, 2), reps)


def _range(rid: int, node: int, leader: int, **over: Any) -> dict[str, Any]:
    start, end = BOUNDS[rid]
    doc = {
        "id": rid,
        "start": start.decode(),
        "end": end.decode(),
        "version": 2,
        "role": "leader" if node == leader else "follower",
        "leader": leader,
        "term": 4,
        "commit": 40 + rid,
        "applied": 40 + rid,
        "voters": [1, 2, 3],
        "learners": [],
        "keys": 2,
        "quiet": False,
    }
    doc.update(over)
    return doc


def _statuses(leaders: dict[int, int], meta: int = 1) -> dict[int, dict[str, Any]]:
    """Nodes 1-3, each with a replica of every range of ``leaders`` (range -> leader)."""
    members = [{"id": n, "addr": f"127.0.0.1:{7000 + n}", "voter": True} for n in (1, 2, 3)]
    return {
        n: {
            "id": n,
            "role": "leader" if n == meta else "follower",
            "term": 3,
            "leader": meta,
            "commit": 100,
            "applied": 100,
            "members": members,
            "sharded": True,
            "ranges": [_range(rid, n, lead) for rid, lead in sorted(leaders.items())],
        }
        for n in (1, 2, 3)
    }


def test_a_replica_view_reads_a_status_entry_and_refuses_a_malformed_one() -> None:
    v = ReplicaView.from_status(2, _range(3, 2, 2))
    assert (v.node, v.range_id, v.start, v.end, v.role) == (2, 3, b"k2", b"k4", "leader")
    assert v.holds(b"k2") and v.holds(b"k3") and not v.holds(b"k4") and not v.holds(b"k1")
    last = ReplicaView.from_status(1, _range(4, 1, 2))
    assert last.holds(b"k4") and last.holds(b"zzz")  # an empty end: to the end
    broken = _range(3, 2, 2)
    del broken["commit"]
    with pytest.raises(ValueError, match="node 2 reports a malformed range"):
        ReplicaView.from_status(2, broken)


def test_leader_targets_are_the_meta_range_then_the_ranges_holding_torture_keys() -> None:
    st = _statuses({2: 1, 3: 2, 4: 3}, meta=2)
    assert key_ranges(KEYS, st) == {2: [b"k0", b"k1"], 3: [b"k2", b"k3"], 4: [b"k4"]}
    targets = leader_targets(st, KEYS)
    assert [(t.range_id, t.node) for t in targets] == [(META_RANGE, 2), (2, 1), (3, 2), (4, 3)]
    assert targets[0].describe() == "leader of the meta range"
    assert targets[2].describe() == "leader of range 3 (keys k2,k3)"
    assert targets[1].voters == (1, 2, 3)
    # pick chooses each equally: every target for some pick, the same one for the same
    assert {pick_target(p, targets) for p in range(8)} == set(targets)
    assert pick_target(6, targets) == pick_target(6, targets) == targets[2]
    assert pick_target(0, []) is None
    # another voter than the leader, by pick
    for p in range(20):
        to = pick_other_voter(p, targets[2], [1, 2, 3])
        assert to in (1, 3)
    assert {pick_other_voter(p, targets[2], [1, 2, 3]) for p in range(20)} == {1, 3}
    # only running nodes: node 3 is down
    assert {pick_other_voter(p, targets[2], [1, 2]) for p in range(20)} == {1}
    assert pick_other_voter(1, targets[2], [2]) is None


def test_a_range_without_a_known_leader_and_a_stale_leader_are_not_targets() -> None:
    st = _statuses({2: 1, 3: 2, 4: 3})
    for n in (1, 2, 3):  # range 4 has no leader anywhere (an election is going on)
        st[n]["ranges"][2].update(role="candidate" if n == 3 else "follower", leader=0)
    # node 1 still thinks it leads range 2 in an old term; node 3 leads it in term 5
    st[3]["ranges"][0].update(role="leader", leader=3, term=5)
    st[1]["role"] = st[2]["role"] = "follower"  # nor is the meta leader known
    st[3]["role"] = "follower"
    targets = leader_targets(st, KEYS)
    assert [(t.range_id, t.node) for t in targets] == [(2, 3), (3, 2)]


def test_split_points_are_free_torture_keys_then_points_next_to_them() -> None:
    starts = [b"", b"k2", b"k4"]
    free = {b"k0", b"k1", b"k3"}
    assert {split_point(p, KEYS, starts) for p in range(40)} == free
    assert split_point(9, KEYS, starts) == split_point(9, KEYS, starts)
    every = [b"", *KEYS]
    for p in range(40):
        point = split_point(p, KEYS, every)
        base, _, n = point.partition(b"/")
        assert base in KEYS and n.isdigit() and point not in every
    with pytest.raises(ValueError):
        split_point(1, [], starts)


def test_the_first_split_puts_the_keys_in_two_ranges() -> None:
    assert initial_splits(KEYS) == [b"k2"]
    assert initial_splits([b"b", b"a"]) == [b"b"]
    with pytest.raises(ValueError, match="at least 2 keys"):
        initial_splits([b"a"])


def test_whole_ranges_pass_and_say_where_the_keys_are() -> None:
    st = _statuses({2: 1, 3: 2, 4: 3})
    directory = [_desc(2), _desc(3), _desc(4)]
    assert check_ranges(directory, st, 3) == []
    line = describe_ranges(directory, KEYS)
    assert line.startswith("3 ranges tile the keyspace; the 5 torture keys lie in 3 of them")
    assert "range 3: k2,k3" in line


def _problems(change: Any, directory: list[Any] | None = None) -> list[str]:
    st = _statuses({2: 1, 3: 2, 4: 3})
    change(st)
    return check_ranges(directory or [_desc(2), _desc(3), _desc(4)], st, 3)


@pytest.mark.parametrize(
    ("what", "change", "expected"),
    [
        (
            "a follower behind",
            lambda st: st[3]["ranges"][1].update(applied=44),
            "range 3 applied/commit differ: node 1 43/43, node 2 43/43, node 3 44/43",
        ),
        (
            "a replica that applied less than it committed",
            lambda st: st[1]["ranges"][0].update(commit=50),
            "range 2 applied/commit differ",
        ),
        (
            "two leaders' views",
            lambda st: st[3]["ranges"][2].update(term=5, leader=1),
            "range 4's replicas disagree on (term, leader): [(4, 3), (5, 1)]",
        ),
        (
            "a leader that does not lead",
            lambda st: st[3]["ranges"][2].update(role="follower"),
            "range 4's replicas name node 3 as leader in term 4, and it does not lead",
        ),
        (
            "a Raft group other than the directory's",
            lambda st: st[2]["ranges"][1].update(learners=[4]),
            "node 2's replica of range 3 has voters [1, 2, 3] and learners [4]",
        ),
        (
            "a replica missing",
            lambda st: st[2]["ranges"].pop(1),
            "range 3 is listed on nodes [2], which do not host it",
        ),
        (
            "bounds behind the directory",
            lambda st: st[1]["ranges"][1].update(end="", version=1),
            "node 1 has range 3 as ['k2', '') version 1",
        ),
        (
            "a replica the directory no longer lists",
            lambda st: st[1]["ranges"].append(_range(5, 1, 1)),
            "node 1 still hosts range 5, which the directory does not list there",
        ),
    ],
)
def test_each_way_of_not_being_whole_is_named(what: str, change: Any, expected: str) -> None:
    problems = _problems(change)
    assert any(expected in p for p in problems), (what, problems)


def test_the_directory_itself_must_tile_the_keyspace_with_enough_voters() -> None:
    def nothing(st: dict[int, dict[str, Any]]) -> None:
        pass

    gap = _problems(nothing, [_desc(2), _desc(4)])
    assert "range 2 ends at b'k2' but the next, 4, starts at b'k4'" in gap
    assert any("node 1 still hosts range 3" in p for p in gap)
    head = _problems(nothing, [_desc(3), _desc(4)])
    assert "the first range (3) starts at b'k2', not at -inf" in head
    tail = check_ranges([_desc(2), _desc(3)], _statuses({2: 1, 3: 2}), 3)
    assert "the last range (3) ends at b'k4', not at +inf" in tail
    assert check_ranges([], {}, 3) == ["the directory lists no range"]

    st = _statuses({2: 1, 3: 2, 4: 3})
    for n in (1, 2, 3):
        st[n]["ranges"][0]["voters"] = [1, 2]
    st[3]["ranges"].pop(0)
    short = check_ranges([_desc(2, voters=(1, 2)), _desc(3), _desc(4)], st, 3)
    assert short == ["range 2 has voters [1, 2] in the directory, not 3"]
    # a replica on a node that does not run (not in the statuses)
    gone = copy.deepcopy(_statuses({2: 1, 3: 2, 4: 3}))
    del gone[3]
    away = check_ranges([_desc(2), _desc(3), _desc(4)], gone, 3)
    assert "range 2 has replicas on nodes [3], which do not run" in away
