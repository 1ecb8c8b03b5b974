"""Quorum arithmetic checked against a brute-force reference over random inputs.

Like etcd-io/raft's ``quorum/quick_test.go``: the implementation sorts match indexes and
counts votes; the references below instead try every candidate index, and every way the
voters not yet heard from could still answer. Voter sets include the empty set (which
agrees to everything) and joint configurations with overlapping or empty halves; match
and vote maps include nodes that are not voters (which must not count).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.consensus import Index, NodeId
from quorumkv.consensus._quorum import (
    INFINITE_INDEX,
    JointConfig,
    VoteResult,
    majority_committed,
    majority_vote,
)

SETTINGS = settings(max_examples=200, deadline=None)
MAX_NODE = 9


def _from_mask(mask: int) -> frozenset[NodeId]:
    return frozenset(NodeId(n) for n in range(1, MAX_NODE + 1) if mask >> (n - 1) & 1)


def _to_map(values: list[int]) -> dict[NodeId, int]:
    """Node n+1 gets values[n]; a negative value leaves the node out of the map."""
    return {NodeId(n + 1): v for n, v in enumerate(values) if v >= 0}


# Voter sets over nodes 1..9, the empty set and single voters made common; maps over the
# same nodes, so they name voters and non-voters alike and leave some voters out.
voter_sets = st.one_of(
    st.just(frozenset[NodeId]()),
    st.integers(1, MAX_NODE).map(lambda n: frozenset({NodeId(n)})),
    st.integers(0, 2**MAX_NODE - 1).map(_from_mask),
)
# A small index range makes ties (several voters at the same index) common.
match_maps = st.lists(st.integers(-1, 8), min_size=MAX_NODE, max_size=MAX_NODE).map(
    lambda vs: {n: Index(i) for n, i in _to_map(vs).items()}
)
vote_maps = st.lists(st.integers(-1, 1), min_size=MAX_NODE, max_size=MAX_NODE).map(
    lambda vs: {n: bool(v) for n, v in _to_map(vs).items()}
)


# -- the references --------------------------------------------------------------------


def _has_majority(voters: frozenset[NodeId], agreeing: set[NodeId]) -> bool:
    """More than half of ``voters`` are in ``agreeing``; vacuously true when empty."""
    return not voters or 2 * len(voters & agreeing) > len(voters)


def naive_committed(halves: list[frozenset[NodeId]], match: Mapping[NodeId, Index]) -> Index:
    """The largest index every non-empty half has a majority at or above."""
    if not any(halves):
        return INFINITE_INDEX
    candidates = {0, *match.values()}
    best = 0
    for i in candidates:
        at_least = {v for h in halves for v in h if match.get(v, 0) >= i}
        if all(_has_majority(h, at_least) for h in halves):
            best = max(best, i)
    return Index(best)


def naive_vote(halves: list[frozenset[NodeId]], votes: Mapping[NodeId, bool]) -> VoteResult:
    """Enumerate every way the voters not yet heard from could answer."""
    everyone = frozenset().union(*halves)
    unknown = sorted(v for v in everyone if v not in votes)
    outcomes = set()
    for answers in itertools.product((True, False), repeat=len(unknown)):
        full = {**votes, **dict(zip(unknown, answers, strict=True))}
        yes = {v for v in everyone if full[v]}
        outcomes.add(all(_has_majority(h, yes) for h in halves))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


# -- properties ------------------------------------------------------------------------


@SETTINGS
@given(incoming=voter_sets, outgoing=voter_sets, match=match_maps)
def test_committed_matches_reference(
    incoming: frozenset[NodeId], outgoing: frozenset[NodeId], match: dict[NodeId, Index]
) -> None:
    for half in (incoming, outgoing):
        assert majority_committed(half, match) == naive_committed([half], match)
    cfg = JointConfig(incoming, outgoing)
    committed = cfg.committed(match)
    assert committed == naive_committed([incoming, outgoing], match)
    # The halves are symmetric, and an empty outgoing half changes nothing.
    assert JointConfig(outgoing, incoming).committed(match) == committed
    if not outgoing:
        assert committed == majority_committed(incoming, match)
    # Raising any voter's match never lowers the committed index.
    for node in incoming | outgoing:
        raised = {**match, node: Index(match.get(node, 0) + 1)}
        assert cfg.committed(raised) >= committed


@SETTINGS
@given(incoming=voter_sets, outgoing=voter_sets, votes=vote_maps)
def test_vote_and_has_quorum_match_reference(
    incoming: frozenset[NodeId], outgoing: frozenset[NodeId], votes: dict[NodeId, bool]
) -> None:
    for half in (incoming, outgoing):
        assert majority_vote(half, votes) is naive_vote([half], votes)
    cfg = JointConfig(incoming, outgoing)
    result = cfg.vote(votes)
    assert result is naive_vote([incoming, outgoing], votes)
    assert JointConfig(outgoing, incoming).vote(votes) is result
    if not outgoing:
        assert result is majority_vote(incoming, votes)
    # has_quorum: the nodes that said yes, with everyone else counted as no.
    active = frozenset(n for n, yes in votes.items() if yes)
    expected = _has_majority(incoming, set(active)) and _has_majority(outgoing, set(active))
    assert cfg.has_quorum(active) is expected
    assert cfg.has_quorum(set(active)) is expected


def test_empty_majority_agrees_to_everything() -> None:
    assert majority_committed(frozenset(), {}) == INFINITE_INDEX
    assert majority_vote(frozenset(), {NodeId(1): False}) is VoteResult.WON


def test_majority_examples() -> None:
    v = frozenset(NodeId(n) for n in (1, 2, 3))
    m = {NodeId(1): Index(5), NodeId(2): Index(3), NodeId(9): Index(100)}
    assert majority_committed(v, m) == 3  # voter 3 is missing (0); 9 is no voter
    assert majority_vote(v, {NodeId(1): True}) is VoteResult.PENDING
    assert majority_vote(v, {NodeId(1): True, NodeId(2): True}) is VoteResult.WON
    assert majority_vote(v, {NodeId(1): False, NodeId(2): False}) is VoteResult.LOST
    v4 = v | {NodeId(4)}
    # With four voters a 2-2 split loses: three are needed.
    two_two = {NodeId(1): True, NodeId(2): True, NodeId(3): False, NodeId(4): False}
    assert majority_vote(v4, two_two) is VoteResult.LOST


def test_joint_examples() -> None:
    old = frozenset(NodeId(n) for n in (1, 2, 3))
    new = frozenset(NodeId(n) for n in (3, 4, 5))
    cfg = JointConfig(new, old)
    assert cfg.voters() == old | new
    # A majority of the old half alone commits nothing while the new half lags.
    m = {NodeId(1): Index(9), NodeId(2): Index(9), NodeId(3): Index(1)}
    assert cfg.committed(m) == 0
    m |= {NodeId(4): Index(7)}
    assert cfg.committed(m) == 1  # the new half is at (7, 1, 0)
    m |= {NodeId(3): Index(7)}
    assert cfg.committed(m) == 7
    # Winning one half and losing the other loses.
    votes = {NodeId(1): True, NodeId(2): True, NodeId(4): False, NodeId(5): False}
    assert cfg.vote(votes) is VoteResult.LOST
    assert cfg.has_quorum({NodeId(1), NodeId(2), NodeId(3)}) is False
    assert cfg.has_quorum({NodeId(1), NodeId(3), NodeId(4)}) is True
    assert JointConfig(frozenset()).committed({}) == INFINITE_INDEX
    assert JointConfig(frozenset()).vote({}) is VoteResult.WON
