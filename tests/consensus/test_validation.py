"""``step`` either accepts a message or raises ``MessageRejected`` and changes nothing.

Node 1 of a three-node group is put into each role by driving a small election by hand
(ready/advance, then delivering the messages), and is then fed random, often malformed
messages: any type, wrong groups and addressees, negative numbers, entries with wrong
indexes and terms, snapshots on the wrong types. Whatever it accepts, it must still get
through a ready/advance cycle without breaking the invariants the core promises (term
and commit never go back, one vote per term).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    MessageRejected,
    MessageType,
    NodeId,
    RawNode,
    Role,
    Snapshot,
    SnapshotMeta,
    Term,
    bootstrap_state,
)
from quorumkv.consensus._confchange import encode_conf_change

GROUP = GroupId(7)
ME = NodeId(1)
VOTERS = frozenset({NodeId(1), NodeId(2), NodeId(3)})


class Cluster:
    """Three nodes joined by a mailbox; nothing moves unless a method says so."""

    def __init__(self) -> None:
        self.nodes = {
            n: RawNode(Config(id=n, group=GROUP), bootstrap_state(VOTERS), random.Random(n))
            for n in sorted(VOTERS)
        }
        self.mailbox: list[Message] = []

    def process(self, *ids: int) -> None:
        for n in ids or self.nodes:
            node = self.nodes[NodeId(n)]
            if node.has_ready():
                rd = node.ready()
                self.mailbox.extend(rd.messages)
                node.advance(rd)

    def deliver(self, *to: int) -> None:
        wanted = set(to or self.nodes)
        msgs = [m for m in self.mailbox if m.to in wanted]
        self.mailbox = [m for m in self.mailbox if m.to not in wanted]
        for m in msgs:
            self.nodes[m.to].step(m)

    def stabilize(self) -> None:
        for _ in range(50):
            self.process()
            if not self.mailbox:
                return
            self.deliver()
        raise AssertionError("cluster did not settle")


# -- scenarios: node 1 in each role ------------------------------------------------------------


def fresh_follower() -> Cluster:
    return Cluster()


def pre_candidate() -> Cluster:
    c = Cluster()
    c.nodes[ME].campaign()
    c.process(1)
    return c


def candidate() -> Cluster:
    c = pre_candidate()
    c.deliver(2, 3)
    c.process(2, 3)
    c.deliver(1)  # the first grant wins the pre-vote; node 1 now asks for real votes
    c.process(1)
    return c


def leader() -> Cluster:
    c = Cluster()
    c.nodes[ME].campaign()
    c.stabilize()
    c.nodes[ME].propose(b"a")
    c.stabilize()
    return c


def leader_with_entries_in_flight() -> Cluster:
    c = leader()
    c.nodes[ME].propose(b"b")
    c.nodes[ME].propose(b"c")
    c.process(1)
    c.mailbox.clear()  # lost on the way
    return c


def leader_after_compaction() -> Cluster:
    c = leader()
    c.nodes[ME].compact(Index(3), b"sm@3")
    c.nodes[ME].propose(b"d")
    c.process(1)
    c.mailbox.clear()
    return c


def follower_of_2() -> Cluster:
    c = Cluster()
    c.nodes[NodeId(2)].campaign()
    c.stabilize()
    c.nodes[NodeId(2)].propose(b"x")
    c.stabilize()
    return c


def lagging_follower_of_2() -> Cluster:
    c = follower_of_2()
    for data in (b"y", b"z"):
        c.nodes[NodeId(2)].propose(data)
        c.process(2)
        c.deliver(3)
        c.process(3)
        c.deliver(2)
        c.mailbox = [m for m in c.mailbox if m.to != ME]  # node 1 misses it all
    return c


SCENARIOS: dict[str, tuple[Callable[[], Cluster], Role]] = {
    "fresh-follower": (fresh_follower, Role.FOLLOWER),
    "pre-candidate": (pre_candidate, Role.PRE_CANDIDATE),
    "candidate": (candidate, Role.CANDIDATE),
    "leader": (leader, Role.LEADER),
    "leader-in-flight": (leader_with_entries_in_flight, Role.LEADER),
    "leader-compacted": (leader_after_compaction, Role.LEADER),
    "follower": (follower_of_2, Role.FOLLOWER),
    "lagging-follower": (lagging_follower_of_2, Role.FOLLOWER),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios_put_node_1_in_its_role(name: str) -> None:
    build, role = SCENARIOS[name]
    node = build().nodes[ME]
    assert node.status().role is role
    assert not node.has_ready()


# -- random messages -------------------------------------------------------------------------

peers = st.sampled_from([2, 3, 4]).map(NodeId)
CONF_DATA = [
    b"",
    b"junk",
    encode_conf_change(ConfChange((Change(ChangeType.ADD_LEARNER, NodeId(4)),))),
    encode_conf_change(ConfChange((Change(ChangeType.REMOVE, NodeId(1)),))),
    encode_conf_change(ConfChange()),
]
confs = st.builds(
    ConfState,
    voters=st.frozensets(st.integers(0, 4).map(NodeId), max_size=4),
    learners=st.frozensets(st.integers(1, 4).map(NodeId), max_size=2),
    voters_outgoing=st.frozensets(st.integers(1, 4).map(NodeId), max_size=3),
)
snapshots = st.builds(
    Snapshot,
    st.builds(SnapshotMeta, st.integers(-1, 12).map(Index), st.integers(-1, 5).map(Term), confs),
    st.sampled_from([b"", b"sm"]),
)


@st.composite
def entry_lists(
    draw: st.DrawFn, index: int, log_term: int, term: int, well_formed: bool
) -> tuple[Entry, ...]:
    """A chain that follows ``index`` in terms log_term..term, or a random list."""
    out: list[Entry] = []
    t = max(log_term, 1)
    for k in range(draw(st.integers(1, 4))):
        if well_formed:
            t = draw(st.integers(t, max(t, term)))
            idx = index + 1 + k
        else:
            t, idx = draw(st.integers(-1, 6)), draw(st.integers(-1, 12))
        if draw(st.integers(0, 3)) == 0:
            etype, data = EntryType.CONF_CHANGE, draw(st.sampled_from(CONF_DATA))
        else:
            etype, data = EntryType.NORMAL, draw(st.sampled_from([b"", b"v"]))
        out.append(Entry(Term(t), Index(idx), etype, data))
    return tuple(out)


MUTATIONS = [
    "group",
    "to",
    "frm",
    "negative",
    "snapshot",
    "entries",
    "random-entries",
    "entry-term",
]


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """A well-formed message for node 1 with values near its state, then broken in
    zero to two ways (about a third of them end up malformed)."""
    type_ = draw(st.sampled_from(MessageType))
    term = draw(st.integers(0, 4))
    index = draw(st.integers(0, 8))
    log_term = draw(st.integers(0, term))
    fields: dict[str, Any] = {
        "type": type_,
        "group": GROUP,
        "frm": draw(peers),
        "to": ME,
        "term": Term(term),
        "log_term": Term(log_term),
        "index": Index(index),
        "commit": Index(draw(st.integers(0, 9))),
        "reject": draw(st.booleans()),
        "reject_hint": Index(draw(st.integers(0, 8))),
        "context": draw(st.sampled_from([b"", b"ctx", (1).to_bytes(8, "big"), b"transfer"])),
    }
    if type_ is MessageType.APP and term > 0 and draw(st.booleans()):
        fields["entries"] = draw(entry_lists(index, log_term, term, well_formed=True))
    if type_ is MessageType.SNAP:
        fields["snapshot"] = draw(snapshots)
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
        if mutation == "group":
            fields["group"] = GroupId(draw(st.sampled_from([0, 6, 8])))
        elif mutation == "to":
            fields["to"] = NodeId(draw(st.sampled_from([-1, 0, 2, 5])))
        elif mutation == "frm":
            fields["frm"] = NodeId(draw(st.sampled_from([-3, 0, 1])))
        elif mutation == "negative":
            name = draw(st.sampled_from(["term", "log_term", "index", "commit", "reject_hint"]))
            fields[name] = draw(st.integers(-5, -1))
        elif mutation == "snapshot":
            fields["snapshot"] = None if fields.get("snapshot") else draw(snapshots)
        elif mutation == "entries":
            fields["entries"] = draw(entry_lists(index, log_term, term, well_formed=True))
        elif mutation == "random-entries":
            fields["entries"] = draw(entry_lists(index, log_term, term, well_formed=False))
        else:  # an entry of a later term than the message, or of term 0
            bad = Entry(Term(draw(st.sampled_from([0, term + 1]))), Index(index + 1))
            fields["entries"] = (bad, *fields.get("entries", ())[1:])
    return Message(**fields)


def fingerprint(node: RawNode) -> tuple[object, ...]:
    r = node.raft
    log = r.log
    return (
        r.hard_state(),
        r.role,
        r.lead,
        r.lead_transferee,
        tuple(log.entries),
        (log.offset, log.offset_term, log.snapshot, log.pending_snapshot),
        (log.committed, log.applying, log.applied, log.stable, log.persisting),
        tuple(r.msgs),
        tuple(r.read_states),
        dict(r.trk.votes),
        node.status(),
        (r.election_elapsed, r.heartbeat_elapsed, node.has_ready()),
    )


def check_invariants(node: RawNode, before: HardState) -> None:
    """What must hold after any accepted input and a full batch cycle."""
    st_ = node.status()
    assert st_.term >= before.term
    assert st_.commit >= before.commit
    if st_.term == before.term and before.vote != NONE:
        assert st_.vote == before.vote  # at most one vote per term
    assert node.raft.log.offset <= st_.applied <= st_.commit <= st_.last_index


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(SCENARIOS)), msgs=st.lists(messages(), min_size=1, max_size=6))
def test_step_accepts_or_rejects_cleanly(name: str, msgs: list[Message]) -> None:
    node = SCENARIOS[name][0]().nodes[ME]
    for m in msgs:
        before = fingerprint(node)
        hs_before = node.raft.hard_state()
        try:
            node.step(m)
        except MessageRejected:
            assert fingerprint(node) == before
            continue
        # Accepted: the node must still get through a batch cycle, invariants intact.
        if node.has_ready():
            node.advance(node.ready())
        check_invariants(node, hs_before)


# -- specific malformed messages -----------------------------------------------------------------


def _app(**kw: Any) -> Message:
    fields: dict[str, Any] = {
        "type": MessageType.APP,
        "group": GROUP,
        "frm": NodeId(2),
        "to": ME,
        "term": Term(3),
        "log_term": Term(1),
        "index": Index(1),
        "entries": (Entry(Term(3), Index(2)),),
    }
    fields.update(kw)
    return Message(**fields)


SNAP = Snapshot(SnapshotMeta(Index(5), Term(2), ConfState(voters=VOTERS)))
BAD = {
    "wrong group": _app(group=GroupId(8)),
    "another node's": _app(to=NodeId(2)),
    "to nobody": _app(to=NONE),
    "from nobody": _app(frm=NONE),
    "from itself": _app(frm=ME),
    "from a negative id": _app(frm=NodeId(-2)),
    "negative term": _app(term=Term(-1), entries=()),
    "negative index": _app(index=Index(-1), entries=()),
    "negative log term": _app(log_term=Term(-1)),
    "negative commit": _app(commit=Index(-1)),
    "negative hint": _app(reject_hint=Index(-1)),
    "snapshot on APP": _app(snapshot=SNAP),
    "snapshot on HEARTBEAT": _app(type=MessageType.HEARTBEAT, entries=(), snapshot=SNAP),
    "SNAP without snapshot": _app(type=MessageType.SNAP, entries=()),
    "entries on HEARTBEAT": _app(type=MessageType.HEARTBEAT),
    "entries on APP_RESP": _app(type=MessageType.APP_RESP),
    "entries on SNAP": _app(type=MessageType.SNAP, snapshot=SNAP),
    "entry index gap": _app(entries=(Entry(Term(3), Index(3)),)),
    "entry index repeated": _app(entries=(Entry(Term(3), Index(2)), Entry(Term(3), Index(2)))),
    "entry term above message": _app(entries=(Entry(Term(4), Index(2)),)),
    "entry term zero": _app(log_term=Term(0), entries=(Entry(Term(0), Index(2)),)),
    "entry term below prev": _app(log_term=Term(2), entries=(Entry(Term(1), Index(2)),)),
    "non-entry in entries": _app(entries=(cast(Entry, "entry"),)),
    "non-enum type": _app(type=cast(MessageType, 1)),
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("scenario", ["follower", "leader", "candidate"])
def test_malformed_message_is_rejected(name: str, scenario: str) -> None:
    node = SCENARIOS[scenario][0]().nodes[ME]
    before = fingerprint(node)
    with pytest.raises(MessageRejected):
        node.step(BAD[name])
    assert fingerprint(node) == before


def test_non_message_is_rejected() -> None:
    node = fresh_follower().nodes[ME]
    with pytest.raises(MessageRejected, match="not a raft message"):
        node.step(cast(Message, "hello"))


def test_well_formed_append_is_accepted() -> None:
    node = follower_of_2().nodes[ME]
    st_ = node.status()
    m = _app(
        frm=NodeId(2),
        term=st_.term,
        index=st_.last_index,
        log_term=st_.term,
        entries=(Entry(st_.term, Index(st_.last_index + 1), data=b"v"),),
        commit=st_.commit,
    )
    node.step(m)
    assert node.status().last_index == st_.last_index + 1
