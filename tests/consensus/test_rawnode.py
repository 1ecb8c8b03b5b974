"""The RawNode contract: the ready/advance cycle, restart, bootstrap and compaction.

The driver takes one ``Ready``, persists and applies it, and hands that same object back
to ``advance``. Only then does the core count the entries it held as durable, so a
leader counts itself toward a quorum only for entries on its own disk, and a proposal
commits only after the Ready holding it was advanced.
"""

from __future__ import annotations

import random

import pytest

from quorumkv.consensus import (
    NONE,
    Change,
    ChangeType,
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    GroupId,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    RaftState,
    RaftUsageError,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    Term,
    bootstrap_state,
)
from quorumkv.consensus._confchange import encode_conf_change

N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)


def new_node(state: RaftState, id_: NodeId = N1) -> RawNode:
    return RawNode(Config(id=id_), state, random.Random(int(id_)))


def cycle(node: RawNode) -> Ready:
    rd = node.ready()
    node.advance(rd)
    return rd


def indexes(entries: tuple[Entry, ...]) -> list[int]:
    return [e.index for e in entries]


def single_leader() -> RawNode:
    """A one-node group whose leader has committed and applied its empty entry (2)."""
    node = new_node(bootstrap_state({N1}))
    node.campaign()
    assert node.status().role is Role.LEADER
    cycle(node)
    assert indexes(cycle(node).committed) == [2]
    assert not node.has_ready()
    return node


# -- the ready/advance contract -------------------------------------------------------------


def test_ready_twice_is_a_usage_error() -> None:
    node = new_node(bootstrap_state({N1}))
    node.campaign()
    rd = node.ready()
    with pytest.raises(RaftUsageError, match="before advance"):
        node.ready()
    node.advance(rd)
    node.advance(node.ready())  # fine again once advanced, even when empty


def test_advance_with_a_foreign_ready_is_a_usage_error() -> None:
    node = new_node(bootstrap_state({N1}))
    other = new_node(bootstrap_state({N1}))
    node.campaign()
    other.campaign()
    with pytest.raises(RaftUsageError):
        node.advance(Ready())  # nothing in progress
    rd = node.ready()
    other_rd = other.ready()
    assert other_rd == rd  # equal, but not the same batch
    with pytest.raises(RaftUsageError, match="not the one in progress"):
        node.advance(other_rd)
    with pytest.raises(RaftUsageError):
        node.advance(Ready())
    node.advance(rd)  # the failed calls left the batch in progress
    with pytest.raises(RaftUsageError):
        node.advance(rd)  # twice


def test_single_node_commits_only_what_an_advanced_ready_held() -> None:
    node = new_node(bootstrap_state({N1}))
    node.campaign()
    rd = node.ready()
    assert rd.soft_state is not None
    assert (rd.soft_state.role, rd.soft_state.leader) == (Role.LEADER, N1)
    assert rd.hard_state == HardState(Term(2), N1, Index(1))
    assert indexes(rd.entries) == [2]
    assert rd.committed == ()
    assert rd.must_sync
    assert node.status().commit == 1  # the leader's own entry is not on disk yet
    node.advance(rd)
    assert node.status().commit == 2

    rd = node.ready()
    assert rd.hard_state == HardState(Term(2), N1, Index(2))
    assert indexes(rd.committed) == [2]
    assert (rd.entries, rd.must_sync) == ((), False)
    node.advance(rd)
    assert node.status().applied == 2

    assert node.propose(b"a") == 3
    rd = node.ready()
    assert indexes(rd.entries) == [3]
    assert (rd.committed, rd.hard_state) == ((), None)
    # A proposal arriving between ready() and advance() is in no Ready yet.
    assert node.propose(b"b") == 4
    node.advance(rd)
    assert node.status().commit == 3  # 4 is not on disk: not committed

    rd = node.ready()
    assert indexes(rd.entries) == [4]
    assert [e.data for e in rd.committed] == [b"a"]
    assert rd.hard_state == HardState(Term(2), N1, Index(3))
    node.advance(rd)
    assert node.status().commit == 4
    rd = cycle(node)
    assert [e.data for e in rd.committed] == [b"b"]
    assert node.status().applied == 4
    assert not node.has_ready()


def test_propose_many_commits_together() -> None:
    node = single_leader()
    assert node.propose_many([b"x", b"y", b"z"]) == 5
    assert indexes(cycle(node).entries) == [3, 4, 5]
    assert [e.data for e in cycle(node).committed] == [b"x", b"y", b"z"]


def test_entries_overwritten_before_advance_are_handed_out_again() -> None:
    """A follower hands out entries, then a new leader overwrites them before the
    Ready is advanced: advancing must not mark the overwritten index as durable."""
    node = new_node(bootstrap_state({N1, N2, N3}), N2)
    g = GroupId(1)
    first = (Entry(Term(2), Index(2)), Entry(Term(2), Index(3), data=b"old"))
    node.step(Message(MessageType.APP, g, N1, N2, Term(2), Term(1), Index(1), first))
    rd = node.ready()
    assert indexes(rd.entries) == [2, 3]
    second = (Entry(Term(3), Index(2), data=b"new"),)
    node.step(Message(MessageType.APP, g, N3, N2, Term(3), Term(1), Index(1), second))
    node.advance(rd)
    assert node.raft.log.stable == 1
    rd = node.ready()
    assert rd.entries == second
    node.advance(rd)
    assert node.raft.log.stable == 2


# -- restart -----------------------------------------------------------------------------------


def _cc_entry(index: int, cc: ConfChange) -> Entry:
    return Entry(Term(2), Index(index), EntryType.CONF_CHANGE, encode_conf_change(cc))


ADD_LEARNER_2 = ConfChange((Change(ChangeType.ADD_LEARNER, N2),), auto_leave=False)
BASE_CONF = ConfState(voters=frozenset({N1}))
JOINT_CONF = ConfState(
    voters=frozenset({N1}), voters_outgoing=frozenset({N1}), learners=frozenset({N2})
)
FINAL_CONF = ConfState(voters=frozenset({N1}), learners=frozenset({N2}))


def restart_state(applied: int, commit: int = 6) -> RaftState:
    """Node 1 of a one-node group that logged: 2 empty, 3 enter joint (add learner 2),
    4 leave joint, 5 and 6 data."""
    boot = bootstrap_state({N1})
    entries = (
        Entry(Term(2), Index(2)),
        _cc_entry(3, ADD_LEARNER_2),
        _cc_entry(4, ConfChange()),
        Entry(Term(2), Index(5), data=b"a"),
        Entry(Term(2), Index(6), data=b"b"),
    )
    return RaftState(HardState(Term(2), N1, Index(commit)), boot.snapshot, entries, Index(applied))


@pytest.mark.parametrize(
    ("applied", "conf", "handed_out"),
    [
        (1, BASE_CONF, [2, 3, 4, 5, 6]),
        (2, BASE_CONF, [3, 4, 5, 6]),
        (3, JOINT_CONF, [4, 5, 6]),
        (4, FINAL_CONF, [5, 6]),
        (5, FINAL_CONF, [6]),
        (6, FINAL_CONF, []),
    ],
)
def test_restart_replays_applied_conf_changes(
    applied: int, conf: ConfState, handed_out: list[int]
) -> None:
    node = new_node(restart_state(applied))
    st = node.status()
    assert (st.term, st.vote, st.lead, st.role) == (2, N1, NONE, Role.FOLLOWER)
    assert (st.commit, st.applied, st.last_index) == (6, applied, 6)
    assert st.conf == conf
    if handed_out:
        rd = node.ready()
        assert indexes(rd.committed) == handed_out
        assert rd.entries == ()  # they are on disk already
        assert rd.hard_state is None
        assert not rd.must_sync
        node.advance(rd)
    assert not node.has_ready()
    assert node.status().conf == FINAL_CONF  # applying the rest finishes the changes
    assert node.status().applied == 6
    assert node.conf_at(2) == BASE_CONF
    assert node.conf_at(3) == JOINT_CONF
    assert node.conf_at(6) == FINAL_CONF


def test_restart_hands_out_committed_entries_up_to_commit_only() -> None:
    node = new_node(restart_state(applied=2, commit=4))
    rd = node.ready()
    assert indexes(rd.committed) == [3, 4]
    node.advance(rd)
    # After a restart the node campaigns again and commits the rest in a new term.
    node.campaign()
    cycle(node)
    rd = cycle(node)
    assert indexes(rd.committed) == [5, 6, 7]
    assert rd.committed[-1].term == 3


def test_restart_validation() -> None:
    good = restart_state(applied=4)
    with pytest.raises(ValueError, match="beyond the last log index"):
        new_node(RaftState(HardState(Term(2), N1, Index(7)), good.snapshot, good.entries))
    with pytest.raises(ValueError, match="applied index 6 is beyond commit 5"):
        new_node(RaftState(HardState(Term(2), N1, Index(5)), good.snapshot, good.entries, Index(6)))
    with pytest.raises(ValueError, match="not contiguous"):
        new_node(RaftState(good.hard_state, good.snapshot, good.entries[:2] + good.entries[3:]))
    # A commit below the snapshot is raised to it; an applied index below it too.
    node = new_node(RaftState(HardState(Term(1)), good.snapshot, (), Index(0)))
    assert (node.status().commit, node.status().applied) == (1, 1)


def test_restart_from_a_later_snapshot() -> None:
    meta = SnapshotMeta(Index(10), Term(3), FINAL_CONF)
    entries = (Entry(Term(3), Index(11)), Entry(Term(4), Index(12)))
    state = RaftState(HardState(Term(4), NONE, Index(12)), Snapshot(meta, b"sm"), entries, Index(0))
    node = new_node(state)
    st = node.status()
    assert (st.commit, st.applied, st.last_index, st.conf) == (12, 10, 12, FINAL_CONF)
    assert indexes(node.ready().committed) == [11, 12]


def test_joining_node_starts_empty() -> None:
    node = new_node(RaftState(), N3)
    st = node.status()
    assert (st.term, st.commit, st.applied, st.last_index) == (0, 0, 0, 0)
    assert st.conf == ConfState()
    node.campaign()  # not a voter of anything: nothing happens
    assert node.status().role is Role.FOLLOWER


# -- bootstrap_state -----------------------------------------------------------------------------


def test_bootstrap_state() -> None:
    state = bootstrap_state({N1, N2, N3}, b"empty-sm")
    assert state.hard_state == HardState(Term(1), NONE, Index(1))
    assert state.snapshot == Snapshot(
        SnapshotMeta(Index(1), Term(1), ConfState(voters=frozenset({N1, N2, N3}))), b"empty-sm"
    )
    assert (state.entries, state.applied) == ((), 1)
    st = new_node(state).status()
    assert (st.term, st.commit, st.applied, st.last_index) == (1, 1, 1, 1)


@pytest.mark.parametrize("voters", [set(), {NodeId(0)}, {N1, NodeId(-2)}, frozenset({NodeId(0)})])
def test_bootstrap_state_validation(voters: set[NodeId] | frozenset[NodeId]) -> None:
    with pytest.raises(ValueError, match="at least one voter with a positive id"):
        bootstrap_state(voters)


# -- compact -------------------------------------------------------------------------------------


def test_compact_refuses_an_index_beyond_applied() -> None:
    node = single_leader()
    node.propose(b"a")
    node.propose(b"b")
    cycle(node)  # 3 and 4 persisted and committed
    rd = node.ready()  # 3 and 4 handed out for applying, not yet applied
    assert indexes(rd.committed) == [3, 4]
    with pytest.raises(ValueError, match="only 2 is applied"):
        node.compact(Index(3), b"sm@3")
    node.advance(rd)
    with pytest.raises(ValueError, match="not in the log"):
        node.compact(Index(5), b"")
    snap = node.compact(Index(3), b"sm@3")
    assert snap == Snapshot(SnapshotMeta(Index(3), Term(2), BASE_CONF), b"sm@3")
    assert node.raft.log.first_index() == 4
    with pytest.raises(ValueError, match="not in the log"):
        node.compact(Index(2), b"")
    st = node.status()
    assert (st.commit, st.applied, st.last_index) == (4, 4, 4)
    # Compaction hands nothing to the driver: it made the snapshot itself.
    assert not node.has_ready()


def test_compact_records_the_configuration_at_its_index() -> None:
    node = new_node(restart_state(applied=6))
    assert node.compact(Index(3), b"").meta.conf == JOINT_CONF
    assert node.conf_at(3) == JOINT_CONF
    assert node.conf_at(5) == FINAL_CONF
    assert node.compact(Index(5), b"").meta.conf == FINAL_CONF
