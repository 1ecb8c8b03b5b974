"""Joint-consensus membership changes (thesis 4.3) and their log-entry codec.

Every change enters a joint configuration (the old voters become ``voters_outgoing``)
and an empty change leaves it. A voter demoted to learner keeps voting in the outgoing
half from ``learners_next`` until the group leaves the joint configuration.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.consensus import (
    Change,
    ChangeType,
    ConfChange,
    ConfChangeError,
    ConfState,
    NodeId,
    apply_conf_change,
    describe_conf_state,
)
from quorumkv.consensus._confchange import decode_conf_change, encode_conf_change

V, L, R = ChangeType.ADD_VOTER, ChangeType.ADD_LEARNER, ChangeType.REMOVE


def ids(*ns: int) -> frozenset[NodeId]:
    return frozenset(NodeId(n) for n in ns)


def cc(*changes: tuple[ChangeType, int], auto_leave: bool = True) -> ConfChange:
    return ConfChange(tuple(Change(t, NodeId(n)) for t, n in changes), auto_leave)


BASE = ConfState(voters=ids(1, 2, 3), learners=ids(4))


def enter_and_leave(cs: ConfState, change: ConfChange) -> tuple[ConfState, ConfState]:
    joint = apply_conf_change(cs, change)
    assert joint.joint
    assert joint.voters_outgoing == cs.voters
    final = apply_conf_change(joint, ConfChange())
    assert not final.joint
    assert final.voters_outgoing == final.learners_next == frozenset()
    assert not final.auto_leave
    return joint, final


# -- entering and leaving -----------------------------------------------------------------


def test_add_voter() -> None:
    joint, final = enter_and_leave(BASE, cc((V, 5)))
    assert joint == ConfState(
        voters=ids(1, 2, 3, 5), learners=ids(4), voters_outgoing=ids(1, 2, 3), auto_leave=True
    )
    assert final == ConfState(voters=ids(1, 2, 3, 5), learners=ids(4))
    assert describe_conf_state(joint) == "voters=(1 2 3 5)&&(1 2 3) learners=(4) autoleave"


def test_add_learner() -> None:
    joint, final = enter_and_leave(BASE, cc((L, 5), auto_leave=False))
    assert (joint.voters, joint.learners, joint.learners_next) == (ids(1, 2, 3), ids(4, 5), ids())
    assert not joint.auto_leave
    assert final == ConfState(voters=ids(1, 2, 3), learners=ids(4, 5))


def test_remove_voter_and_learner() -> None:
    joint, final = enter_and_leave(BASE, cc((R, 3), (R, 4)))
    assert (joint.voters, joint.voters_outgoing, joint.learners) == (ids(1, 2), ids(1, 2, 3), ids())
    assert final == ConfState(voters=ids(1, 2))
    # Removing a node that is not a member changes nothing but the joint state.
    _, final = enter_and_leave(BASE, cc((R, 9)))
    assert final == BASE


def test_demote_voter_to_learner_goes_through_learners_next() -> None:
    joint, final = enter_and_leave(BASE, cc((L, 3)))
    assert joint.voters == ids(1, 2)
    assert joint.voters_outgoing == ids(1, 2, 3)  # 3 still votes in the outgoing half
    assert joint.learners == ids(4)
    assert joint.learners_next == ids(3)
    assert 3 in joint.all_nodes()
    assert describe_conf_state(joint) == (
        "voters=(1 2)&&(1 2 3) learners=(4) learners_next=(3) autoleave"
    )
    assert final == ConfState(voters=ids(1, 2), learners=ids(3, 4))


def test_promote_learner_to_voter() -> None:
    joint, final = enter_and_leave(BASE, cc((V, 4)))
    assert (joint.voters, joint.learners) == (ids(1, 2, 3, 4), ids())
    assert final == ConfState(voters=ids(1, 2, 3, 4))


def test_several_changes_apply_in_order() -> None:
    # Demote 3, then change our mind and remove it; add 5 as learner, then promote it.
    joint, final = enter_and_leave(BASE, cc((L, 3), (R, 3), (L, 5), (V, 5)))
    assert joint.learners_next == ids()
    assert final == ConfState(voters=ids(1, 2, 5), learners=ids(4))
    # Replace every voter at once: legal, since the joint configuration overlaps both.
    joint, final = enter_and_leave(BASE, cc((R, 1), (R, 2), (R, 3), (V, 7)))
    assert (joint.voters, joint.voters_outgoing) == (ids(7), ids(1, 2, 3))
    assert final == ConfState(voters=ids(7), learners=ids(4))


def test_demoted_voter_added_back_as_voter_leaves_learners_next() -> None:
    joint = apply_conf_change(BASE, cc((L, 2), (V, 2)))
    assert (joint.voters, joint.learners_next) == (ids(1, 2, 3), ids())


# -- invalid changes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cs", "change", "match"),
    [
        (apply_conf_change(BASE, cc((V, 5))), cc((V, 6)), "already in a joint"),
        (BASE, ConfChange(), "not in a joint"),
        (ConfState(), ConfChange(), "not in a joint"),
        (BASE, cc((R, 1), (R, 2), (R, 3)), "every voter"),
        (BASE, cc((L, 1), (L, 2), (L, 3)), "every voter"),
        (BASE, cc((V, 0)), "invalid node id 0"),
        (BASE, cc((L, -1)), "invalid node id -1"),
        (BASE, cc((R, 0)), "invalid node id 0"),
        (ConfState(), cc((V, 1)), "empty configuration"),
        (ConfState(learners=ids(2)), cc((V, 2)), "empty configuration"),
    ],
)
def test_invalid_changes_raise(cs: ConfState, change: ConfChange, match: str) -> None:
    with pytest.raises(ConfChangeError, match=match):
        apply_conf_change(cs, change)


# -- the codec ------------------------------------------------------------------------------

changes = st.builds(Change, st.sampled_from(ChangeType), st.integers(-(2**70), 2**70).map(NodeId))
conf_changes = st.builds(
    ConfChange, st.lists(changes, max_size=6).map(tuple), st.booleans(), st.text(max_size=20)
)


@settings(max_examples=200, deadline=None)
@given(change=conf_changes)
def test_encode_decode_round_trip(change: ConfChange) -> None:
    data = encode_conf_change(change)
    assert decode_conf_change(data) == change
    assert encode_conf_change(decode_conf_change(data)) == data


def test_encoding_is_readable() -> None:
    assert encode_conf_change(cc((V, 4), (L, 3))) == (
        b'{"changes":[["add-voter",4],["add-learner",3]],"auto_leave":true}'
    )
    with_context = ConfChange((Change(V, NodeId(4)),), context='{"4":"127.0.0.1:7004"}')
    assert encode_conf_change(with_context) == (
        b'{"changes":[["add-voter",4]],"auto_leave":true,"context":"{\\"4\\":\\"127.0.0.1:7004\\"}"}'
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"null",
        b"[]",
        b"{}",
        b"7",
        b'{"changes":[]}',  # no auto_leave
        b'{"auto_leave":true}',  # no changes
        b'{"changes":5,"auto_leave":true}',
        b'{"changes":"ab","auto_leave":true}',
        b'{"changes":[["add-voter"]],"auto_leave":true}',
        b'{"changes":[["add-voter",1,2]],"auto_leave":true}',
        b'{"changes":[["promote",1]],"auto_leave":true}',
        b'{"changes":[[null,1]],"auto_leave":true}',
        b'{"changes":[[["add-voter"],1]],"auto_leave":true}',
        b'{"changes":[["add-voter","x"]],"auto_leave":true}',
        b'{"changes":[["add-voter",null]],"auto_leave":true}',
        b'{"changes":[["add-voter",[1]]],"auto_leave":true}',
        b'{"changes":[["add-voter",NaN]],"auto_leave":true}',
        b'{"changes":[5],"auto_leave":true}',
        b'{"changes":[["add-voter",1]],"auto_leave":[]',
        b'{"changes":[],"auto_leave":true,"context":5}',
    ],
)
def test_decode_rejects_malformed_data(data: bytes) -> None:
    with pytest.raises(ConfChangeError, match="malformed conf change"):
        decode_conf_change(data)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False),
    st.sampled_from(["add-voter", "add-learner", "remove", "x", ""]),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=8)
_documents = st.one_of(
    _values,
    st.fixed_dictionaries({"changes": _values, "auto_leave": _values}),
    st.fixed_dictionaries(
        {"changes": st.lists(st.lists(_scalars, max_size=3), max_size=3), "auto_leave": _scalars}
    ),
)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40) | _documents.map(lambda doc: json.dumps(doc).encode()))
def test_decode_returns_a_change_or_raises_conf_change_error(data: bytes) -> None:
    """Whatever the bytes, a ConfChange or ConfChangeError, never another exception."""
    try:
        decoded = decode_conf_change(data)
    except ConfChangeError:
        return
    assert isinstance(decoded, ConfChange)
