"""The range model: epochs, descriptors (bounds, splits, replica changes), stats, wire.

Key predicates are checked against a reference over small integer keyspaces: keys are
single bytes, an empty end is 256, so every answer can be computed by enumeration.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.consensus import NONE, NodeId
from quorumkv.shard import (
    Epoch,
    MalformedShardDataError,
    RangeDescriptor,
    RangeId,
    RangeStats,
    Replica,
    ShardCommandError,
)

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True)


def rng(start: bytes, end: bytes, *voters: int, rid: int = 1) -> RangeDescriptor:
    return RangeDescriptor(
        RangeId(rid), start, end, Epoch(), tuple(Replica(NodeId(v)) for v in voters or (1,))
    )


# -- epochs ------------------------------------------------------------------------------


def test_epoch_counts_changes_separately_and_orders_by_version_first() -> None:
    e = Epoch(3, 5)
    assert e.with_conf_change() == Epoch(4, 5)
    assert e.with_bounds_change() == Epoch(3, 6)
    assert Epoch(1, 6).newer_than(Epoch(9, 5))  # bounds beat replica changes
    assert Epoch(4, 5).newer_than(Epoch(3, 5))
    assert not Epoch(3, 5).newer_than(Epoch(3, 5))
    with pytest.raises(ShardCommandError):
        Epoch(-1, 0)
    with pytest.raises(ShardCommandError):
        Epoch(True, 0)


# -- descriptors: validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": b"b", "end": b"a"}, "not below end"),
        ({"start": b"a", "end": b"a"}, "not below end"),
        ({"replicas": (Replica(NodeId(1)), Replica(NodeId(1), True))}, "two replicas"),
        ({"replicas": (Replica(NodeId(1), True),)}, "at least one voter"),
        ({"replicas": ()}, "at least one voter"),
        ({"leader": NodeId(7)}, "not a voter"),
        ({"range_id": RangeId(0)}, "positive"),
    ],
)
def test_descriptor_refuses_invalid_shapes(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "range_id": RangeId(1),
        "start": b"",
        "end": b"",
        "epoch": Epoch(),
        "replicas": (Replica(NodeId(1)),),
    }
    fields.update(kwargs)
    with pytest.raises(ShardCommandError, match=message):
        RangeDescriptor(**fields)


def test_learner_cannot_be_leader_and_replicas_keep_their_joining_order() -> None:
    reps = (Replica(NodeId(3)), Replica(NodeId(2)), Replica(NodeId(1), True))
    d = RangeDescriptor(RangeId(1), b"", b"", Epoch(), reps, NodeId(3))
    assert d.nodes() == (3, 2, 1)  # the newest last
    assert d.voters() == (3, 2)
    assert d.learners() == (1,)
    assert d.replica(NodeId(1)) == Replica(NodeId(1), True)
    assert d.replica(NodeId(4)) is None
    with pytest.raises(ShardCommandError, match="not a voter"):
        d.with_leader(NodeId(1))
    assert d.describe() == "r1 [-inf, +inf) c1v1 replicas 3,2,1L leader 3"


# -- descriptors: key predicates against enumeration ---------------------------------------


def _int_range(start: int, end: int) -> RangeDescriptor:
    return rng(bytes([start]) if start else b"", b"" if end == 256 else bytes([end]))


def _keyset(start: int, end: int) -> set[int]:
    return set(range(start, end))


bounds = st.tuples(st.integers(0, 255), st.integers(1, 256)).filter(lambda t: t[0] < t[1])


@SETTINGS
@given(bounds, bounds)
def test_contains_overlaps_covers_clip_match_enumeration(
    r: tuple[int, int], span: tuple[int, int]
) -> None:
    d = _int_range(*r)
    keys = _keyset(*r)
    for k in range(256):
        assert d.contains(bytes([k])) == (k in keys)
    s_start = bytes([span[0]]) if span[0] else b""
    s_end = b"" if span[1] == 256 else bytes([span[1]])
    inside = _keyset(*span)
    assert d.overlaps(s_start, s_end) == bool(keys & inside)
    assert d.covers(s_start, s_end) == (inside <= keys)
    if keys & inside:
        lo, hi = d.clip(s_start, s_end)
        clipped = {k for k in range(256) if lo <= bytes([k]) and (hi == b"" or bytes([k]) < hi)}
        assert clipped == keys & inside


def test_empty_span_overlaps_nothing() -> None:
    d = rng(b"", b"")
    assert not d.overlaps(b"m", b"m")
    assert not d.overlaps(b"z", b"a")
    assert d.overlaps(b"m", b"")


# -- descriptors: split and replica changes ------------------------------------------------


def test_split_keeps_left_id_bumps_version_on_both_and_keeps_replicas() -> None:
    d = rng(b"a", b"z", 1, 2, 3).with_leader(NodeId(2))
    left, right = d.split_at(b"m", RangeId(9))
    assert (left.range_id, left.start, left.end) == (1, b"a", b"m")
    assert (right.range_id, right.start, right.end) == (9, b"m", b"z")
    assert left.epoch == right.epoch == Epoch(1, 2)
    assert left.replicas == right.replicas == d.replicas
    assert left.leader == right.leader == 2
    # the halves tile the parent
    for k in (b"a", b"b", b"l", b"m", b"n", b"y"):
        assert left.contains(k) != right.contains(k)
        assert d.contains(k)


@pytest.mark.parametrize("key", [b"a", b"", b"0", b"z", b"zz"])
def test_split_outside_the_range_or_at_its_start_is_refused(key: bytes) -> None:
    with pytest.raises(ShardCommandError, match="cannot split"):
        rng(b"a", b"z").split_at(key, RangeId(2))


def test_split_of_the_last_range_and_reused_id() -> None:
    left, right = rng(b"", b"").split_at(b"\x00", RangeId(2))
    assert (left.start, left.end, right.start, right.end) == (b"", b"\x00", b"\x00", b"")
    with pytest.raises(ShardCommandError, match="new range id"):
        rng(b"", b"").split_at(b"k", RangeId(1))


def test_with_replicas_bumps_conf_ver_and_drops_a_leader_that_left() -> None:
    d = rng(b"", b"", 1, 2, 3).with_leader(NodeId(3))
    assert d.epoch == Epoch(1, 1)  # a leader hint is not a change of the range
    added = d.with_replicas((*d.replicas, Replica(NodeId(4), True)))
    assert added.epoch == Epoch(2, 1)
    assert added.leader == 3
    dropped = added.with_replicas(tuple(r for r in added.replicas if r.node_id != 3))
    assert dropped.epoch == Epoch(3, 1)
    assert dropped.leader == NONE
    demoted = d.with_replicas((Replica(NodeId(1)), Replica(NodeId(3), True)))
    assert demoted.leader == NONE


# -- wire ---------------------------------------------------------------------------------

keys = st.binary(max_size=6)


@st.composite
def descriptors(draw: st.DrawFn) -> RangeDescriptor:
    start = draw(keys)
    end = draw(st.one_of(st.just(b""), keys.filter(lambda k: k > start)))
    nodes = draw(st.lists(st.integers(1, 9), min_size=1, max_size=5, unique=True))
    learners = draw(st.lists(st.booleans(), min_size=len(nodes), max_size=len(nodes)))
    learners[0] = False
    reps = tuple(Replica(NodeId(n), lrn) for n, lrn in zip(nodes, learners, strict=True))
    voters = [n for n, lrn in zip(nodes, learners, strict=True) if not lrn]
    leader = draw(st.sampled_from([0, *voters]))
    epoch = Epoch(draw(st.integers(0, 2**40)), draw(st.integers(0, 2**40)))
    return RangeDescriptor(
        RangeId(draw(st.integers(1, 2**40))), start, end, epoch, reps, NodeId(leader)
    )


@SETTINGS
@given(descriptors())
def test_descriptor_wire_round_trip(d: RangeDescriptor) -> None:
    from quorumkv.shard._wire import dumps, loads

    assert RangeDescriptor.from_wire(loads(dumps(d.to_wire()))) == d


@SETTINGS
@given(
    descriptors(),
    st.integers(0, 2**40),
    st.floats(0, 1e9),
    st.one_of(st.none(), keys),
    st.lists(st.integers(1, 9), max_size=3),
)
def test_stats_wire_round_trip(
    d: RangeDescriptor, size: int, ops: float, middle: bytes | None, pending: list[int]
) -> None:
    from quorumkv.shard._wire import dumps, loads

    s = RangeStats(
        d.range_id,
        d.epoch,
        d.voters()[0],
        size,
        size // 3,
        ops,
        middle,
        tuple(NodeId(n) for n in pending),
    )
    assert RangeStats.from_wire(loads(dumps(s.to_wire()))) == s


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        [1, b"", b"", [1, 1], [[1, False]]],  # a field short
        [0, b"", b"", [1, 1], [[1, False]], 0],  # range id 0
        [1, "a", b"", [1, 1], [[1, False]], 0],  # start not bytes
        [1, b"b", b"a", [1, 1], [[1, False]], 0],  # start above end
        [1, b"", b"", [1], [[1, False]], 0],  # epoch short
        [1, b"", b"", [1, -1], [[1, False]], 0],  # negative version
        [1, b"", b"", [1, 1], [[1, True]], 0],  # no voter
        [1, b"", b"", [1, 1], [[1, 0]], 0],  # learner flag not a bool
        [1, b"", b"", [1, 1], [[1, False], [1, False]], 0],  # node twice
        [1, b"", b"", [1, 1], [[1, False]], 2],  # leader not a voter
        [True, b"", b"", [1, 1], [[1, False]], 0],  # a bool is not an id
    ],
)
def test_malformed_descriptor_documents_are_refused(doc: object) -> None:
    with pytest.raises(MalformedShardDataError):
        RangeDescriptor.from_wire(doc)


@pytest.mark.parametrize(
    "doc",
    [
        [1, [1, 1], 1, 10, 1, 0.5, None],  # short
        [1, [1, 1], 0, 10, 1, 0.5, None, []],  # no leader
        [1, [1, 1], 1, -10, 1, 0.5, None, []],  # negative size
        [1, [1, 1], 1, 10, 1, float("nan"), None, []],  # NaN load
        [1, [1, 1], 1, 10, 1, 0.5, "m", []],  # middle key not bytes
        [1, [1, 1], 1, 10, 1, 0.5, None, [0]],  # pending node 0
    ],
)
def test_malformed_stats_documents_are_refused(doc: object) -> None:
    with pytest.raises(MalformedShardDataError):
        RangeStats.from_wire(doc)
