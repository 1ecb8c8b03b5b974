"""The fault plan from a seed, and the partition shapes: pure, no processes."""

from __future__ import annotations

import itertools
import random

import pytest

from quorumkv.torture import FaultKind, choose, default_kinds, make_plan, parse_kinds
from quorumkv.torture._partition import bridge, isolate, one_way, partition_for, split
from quorumkv.torture._schedule import GAP, HOLD, PARTITION_KINDS

ALL = tuple(FaultKind)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    a = make_plan(7, 120.0, ALL)
    assert a == make_plan(7, 120.0, ALL)
    assert a != make_plan(8, 120.0, ALL)
    assert [f.index for f in a] == list(range(len(a)))


def test_main_faults_take_turns_within_their_holds_and_end_in_time() -> None:
    for seed in range(50):
        plan = make_plan(seed, 60.0, ALL)
        main = [f for f in plan if not f.kind.is_side]
        assert main, seed
        for f in main:
            low, high = HOLD[f.kind]
            assert low <= f.hold <= high
            assert f.at + f.hold <= 60.0
        for a, b in itertools.pairwise(main):
            assert b.at >= a.at + a.hold + GAP[0]  # one at a time, a calm gap between
        assert all(f.hold == 0 for f in plan if f.kind.is_side)
        assert [f.at for f in plan] == sorted(f.at for f in plan)


def test_only_the_kinds_asked_for_appear_and_side_events_alone_work() -> None:
    kinds = (FaultKind.KILL, FaultKind.PAUSE_LEADER)
    seen = {f.kind for seed in range(20) for f in make_plan(seed, 60.0, kinds)}
    assert seen == set(kinds)
    side = make_plan(3, 20.0, (FaultKind.TRANSFER,))
    assert side and {f.kind for f in side} == {FaultKind.TRANSFER}
    assert make_plan(3, 0.5, ALL) == ()  # shorter than the warm-up: nothing


def test_every_kind_is_drawn_over_a_long_run() -> None:
    assert {f.kind for f in make_plan(11, 600.0, ALL)} == set(ALL)


def test_choose_is_a_function_of_pick_and_the_set() -> None:
    assert choose(5, {3, 1, 2}) == choose(5, [2, 3, 1]) == 3
    with pytest.raises(ValueError):
        choose(1, [])


def test_parse_and_default_kinds() -> None:
    assert parse_kinds("kill, pause,kill") == (FaultKind.KILL, FaultKind.PAUSE)
    with pytest.raises(ValueError, match="unknown fault kinds slow"):
        parse_kinds("kill,slow")
    with pytest.raises(ValueError):
        parse_kinds(" , ")
    loopback = default_kinds(netns=False, root=False)
    assert not PARTITION_KINDS & set(loopback) and FaultKind.DISK_FULL not in loopback
    assert set(default_kinds(netns=True, root=True)) == set(ALL) - {FaultKind.RANGE_SPLIT}
    assert set(default_kinds(netns=True, root=True, sharded=True)) == set(ALL)
    sharded = default_kinds(netns=False, root=False, sharded=True)
    assert set(sharded) == set(loopback) | {FaultKind.RANGE_SPLIT}
    assert parse_kinds("range-split,member") == (FaultKind.RANGE_SPLIT, FaultKind.MEMBER)


def test_partition_shapes() -> None:
    nodes = [1, 2, 3, 4, 5]
    iso = isolate(2, nodes)
    assert iso.blocked == {(2, n) for n in (1, 3, 4, 5)} | {(n, 2) for n in (1, 3, 4, 5)}
    sp = split(nodes, random.Random(1))
    assert sorted(len(s) for s in _components(nodes, sp.blocked)) == [2, 3]
    br = bridge(nodes, random.Random(2))
    touched = {n for pair in br.blocked for n in pair}
    assert len(touched) == 4  # the bridge node is cut from nobody
    (middle,) = set(nodes) - touched
    assert all(middle not in pair for pair in br.blocked)
    out = one_way(3, nodes, outgoing=True)
    assert out.blocked == {(3, n) for n in (1, 2, 4, 5)}
    inc = one_way(3, nodes, outgoing=False)
    assert inc.blocked == {(n, 3) for n in (1, 2, 4, 5)}
    with pytest.raises(ValueError):
        bridge([1, 2], random.Random(0))


def test_partition_for_is_deterministic_and_keeps_a_majority_together() -> None:
    for kind in PARTITION_KINDS:
        for pick in range(30):
            p = partition_for(kind, [1, 2, 3], pick, leader=2)
            assert p == partition_for(kind, [1, 2, 3], pick, leader=2)
            assert p.blocked
            if kind is not FaultKind.BRIDGE:  # a bridge's majority needs its middle node
                largest = max(_components([1, 2, 3], p.blocked), key=len)
                assert len(largest) >= 2, (kind, p)
    with pytest.raises(ValueError):
        partition_for(FaultKind.KILL, [1, 2, 3], 0, None)


def _components(nodes: list[int], blocked: frozenset[tuple[int, int]]) -> list[set[int]]:
    """Groups of nodes linked (transitively) by links open both ways."""
    left = set(nodes)
    out = []
    while left:
        start = left.pop()
        group, todo = {start}, [start]
        while todo:
            a = todo.pop()
            for b in list(left):
                if (a, b) not in blocked and (b, a) not in blocked:
                    left.discard(b)
                    group.add(b)
                    todo.append(b)
        out.append(group)
    return out
