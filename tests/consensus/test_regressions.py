"""Regression tests for bugs found in the Raft core; each names what went wrong."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest

from quorumkv.consensus import (
    Change,
    ChangeType,
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    GroupId,
    Index,
    Message,
    MessageType,
    NodeId,
    RawNode,
    Role,
    Snapshot,
    SnapshotMeta,
    Term,
    bootstrap_state,
)
from quorumkv.consensus._confchange import decode_conf_change, encode_conf_change
from quorumkv.consensus._log import RaftLog
from quorumkv.errors import ConfChangeError, MessageRejected


def test_snapshot_between_ready_and_advance_wins_over_stale_conf_change() -> None:
    # A conf change handed out for applying, then a snapshot installed before advance:
    # the stale change must not be applied on top of the snapshot's configuration.
    node = RawNode(Config(id=NodeId(2)), bootstrap_state({1, 2, 3}), random.Random(2))
    cc = encode_conf_change(
        ConfChange((Change(ChangeType.ADD_LEARNER, NodeId(4)),), auto_leave=False)
    )
    entry = Entry(Term(2), Index(2), EntryType.CONF_CHANGE, cc)
    node.step(
        Message(
            MessageType.APP,
            GroupId(1),
            NodeId(1),
            NodeId(2),
            Term(2),
            Term(1),
            Index(1),
            (entry,),
            commit=Index(2),
        )
    )
    rd1 = node.ready()
    assert [e.index for e in rd1.committed] == [2]
    voters = frozenset({NodeId(1), NodeId(2), NodeId(3)})
    snap = Snapshot(SnapshotMeta(Index(5), Term(2), ConfState(voters=voters)), b"sm")
    node.step(Message(MessageType.SNAP, GroupId(1), NodeId(1), NodeId(2), Term(2), snapshot=snap))
    node.advance(rd1)
    node.advance(node.ready())
    st = node.status()
    assert st.conf == ConfState(voters=voters)
    assert st.applied == 5


@pytest.mark.parametrize(
    "data",
    [
        b'{"changes":[["add-voter",Infinity]],"auto_leave":true}',
        b'{"changes":[["add-voter",1e999]],"auto_leave":true}',
        b"[" * 100_000,
    ],
)
def test_decode_conf_change_raises_only_conf_change_error(data: bytes) -> None:
    with pytest.raises(ConfChangeError):
        decode_conf_change(data)


@pytest.mark.parametrize(
    "field,value",
    [
        ("frm", None),
        ("frm", "2"),
        ("term", None),
        ("index", "3"),
        ("reject_hint", None),
        ("entries", None),
        ("reject", 1),
        ("context", "x"),
    ],
)
def test_wrongly_typed_fields_are_rejected_not_crashing(field: str, value: object) -> None:
    node = RawNode(Config(id=NodeId(1)), bootstrap_state({1, 2, 3}), random.Random(1))
    fields: dict[str, object] = {
        "type": MessageType.HEARTBEAT,
        "group": GroupId(1),
        "frm": NodeId(2),
        "to": NodeId(1),
        "term": Term(1),
    }
    fields[field] = value
    with pytest.raises(MessageRejected):
        node.step(Message(**fields))  # type: ignore[arg-type]


def test_find_conflict_below_compaction_claims_nothing() -> None:
    meta = SnapshotMeta(Index(3), Term(2), ConfState(voters=frozenset({NodeId(1)})))
    log = RaftLog(Snapshot(meta), (Entry(Term(3), Index(4)),))
    assert log.find_conflict_by_term(1, 5) == (1, 0)


def test_no_campaign_with_committed_conf_change_behind_a_pending_snapshot() -> None:
    # A snapshot is installed (and its Ready not yet advanced, so applied < offset) when
    # entries after it arrive, committing a conf change. The node must not campaign by
    # the snapshot's configuration: the change that follows it is committed, not applied.
    node = RawNode(Config(id=NodeId(2)), bootstrap_state({1, 2, 3}), random.Random(2))
    voters = frozenset({NodeId(1), NodeId(2), NodeId(3)})
    snap = Snapshot(SnapshotMeta(Index(5), Term(2), ConfState(voters=voters)), b"sm")
    node.step(Message(MessageType.SNAP, GroupId(1), NodeId(1), NodeId(2), Term(2), snapshot=snap))
    rd = node.ready()
    assert rd.snapshot == snap
    cc = encode_conf_change(ConfChange((Change(ChangeType.ADD_VOTER, NodeId(4)),)))
    entry = Entry(Term(2), Index(6), EntryType.CONF_CHANGE, cc)
    node.step(
        Message(
            MessageType.APP,
            GroupId(1),
            NodeId(1),
            NodeId(2),
            Term(2),
            Term(2),
            Index(5),
            (entry,),
            commit=Index(6),
        )
    )
    node.campaign()
    votes = [m for m in node.raft.msgs if m.type in (MessageType.PRE_VOTE, MessageType.VOTE)]
    assert votes == []
    assert node.status().role is not Role.PRE_CANDIDATE
    node.advance(rd)
    rd = node.ready()
    assert [e.index for e in rd.committed] == [6]
    node.advance(rd)
    assert NodeId(4) in node.status().conf.voters


_VOTERS = frozenset({NodeId(1), NodeId(2), NodeId(3)})


def _snap(meta: object, data: object = b"") -> Snapshot:
    return Snapshot(cast(SnapshotMeta, meta), cast(bytes, data))


@pytest.mark.parametrize(
    "kind,payload",
    [
        ("snap", "not a snapshot"),
        ("snap", _snap("not meta")),
        ("snap", _snap(SnapshotMeta(cast(Index, "3"), Term(1), ConfState(voters=_VOTERS)))),
        ("snap", _snap(SnapshotMeta(Index(3), Term(1), cast(ConfState, None)))),
        ("snap", _snap(SnapshotMeta(Index(3), Term(1), ConfState(voters=cast(Any, [1, 2]))))),
        ("snap", _snap(SnapshotMeta(Index(3), Term(1), ConfState(voters=cast(Any, {-1, 2}))))),
        ("snap", _snap(SnapshotMeta(Index(3), Term(1), ConfState(voters=_VOTERS)), 5)),
        ("entry", Entry(cast(Term, "2"), Index(2))),
        ("entry", Entry(Term(2), cast(Index, 2.0))),
        ("entry", Entry(Term(2), Index(2), cast(EntryType, None))),
        ("entry", Entry(Term(2), Index(2), EntryType.NORMAL, cast(bytes, 5))),
    ],
)
def test_wrongly_typed_snapshot_or_entry_is_rejected_not_crashing(
    kind: str, payload: object
) -> None:
    node = RawNode(Config(id=NodeId(2)), bootstrap_state({1, 2, 3}), random.Random(2))
    if kind == "snap":
        m = Message(
            MessageType.SNAP,
            GroupId(1),
            NodeId(1),
            NodeId(2),
            Term(2),
            snapshot=cast(Snapshot, payload),
        )
    else:
        m = Message(
            MessageType.APP,
            GroupId(1),
            NodeId(1),
            NodeId(2),
            Term(2),
            Term(1),
            Index(1),
            (cast(Entry, payload),),
        )
    with pytest.raises(MessageRejected):
        node.step(m)
    assert not node.has_ready()
