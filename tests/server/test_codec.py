"""Raft messages on the peer wire: round trips, and malformed input rejected cleanly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.consensus import (
    ConfState,
    Entry,
    EntryType,
    GroupId,
    Index,
    Message,
    MessageRejected,
    MessageType,
    NodeId,
    Snapshot,
    SnapshotMeta,
    Term,
)
from quorumkv.net import pack, unpack
from quorumkv.server._codec import EntryCache, decode_message, encode_message

u = st.integers(0, 2**40)
entries = st.builds(
    Entry, u.map(Term), u.map(Index), st.sampled_from(EntryType), st.binary(max_size=40)
)
snapshots = st.builds(
    Snapshot,
    st.builds(
        SnapshotMeta,
        u.map(Index),
        u.map(Term),
        st.builds(ConfState, st.frozensets(st.integers(1, 9).map(NodeId), max_size=3)),
    ),
    st.binary(max_size=20),
)
messages = st.builds(
    Message,
    st.sampled_from(MessageType),
    u.map(GroupId),
    u.map(NodeId),
    u.map(NodeId),
    term=u.map(Term),
    log_term=u.map(Term),
    index=u.map(Index),
    entries=st.lists(entries, max_size=3).map(tuple),
    commit=u.map(Index),
    reject=st.booleans(),
    reject_hint=u.map(Index),
    snapshot=st.none() | snapshots,
    context=st.binary(max_size=10),
)


@settings(max_examples=200, deadline=None)
@given(m=messages)
def test_round_trip_through_msgpack(m: Message) -> None:
    assert decode_message(unpack(pack(encode_message(m)))) == m


def _good() -> list[Any]:
    return encode_message(Message(MessageType.APP, GroupId(1), NodeId(1), NodeId(2)))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: "hello",
        lambda d: d[:5],
        lambda d: [*d, 1],
        lambda d: [99, *d[1:]],
        lambda d: [d[0], -1, *d[2:]],
        lambda d: [d[0], "1", *d[2:]],
        lambda d: [*d[:8], 1, *d[9:]],  # reject must be a bool
        lambda d: [*d[:10], "ctx", *d[11:]],
        lambda d: [*d[:11], pack([[1, 2, 3]]), d[12]],
        lambda d: [*d[:11], pack([[1, 2, 99, b""]]), d[12]],
        lambda d: [*d[:11], 5, d[12]],
        lambda d: [*d[:11], [[1, 2, 0, b""]], d[12]],  # entries must come packed
        lambda d: [*d[:11], b"\xc1", d[12]],  # not msgpack
        lambda d: [*d[:12], [[1, 2, [1, 2, 3]], b""]],
        lambda d: [*d[:12], [[1, 2, [[], [], [], [], True]], "data"]],
    ],
)
def test_malformed_messages_are_rejected(mutate: Any) -> None:
    with pytest.raises(MessageRejected, match="malformed peer message"):
        decode_message(mutate(_good()))


def test_entries_are_packed_once_per_batch() -> None:
    ents = tuple(Entry(Term(2), Index(i), EntryType.NORMAL, b"x" * 10) for i in range(5, 9))
    cache = EntryCache()
    to2 = Message(MessageType.APP, GroupId(1), NodeId(1), NodeId(2), entries=ents)
    to3 = Message(MessageType.APP, GroupId(1), NodeId(1), NodeId(3), entries=ents[:2])
    a, b = encode_message(to2, cache), encode_message(to3, cache)
    assert encode_message(to2, cache)[11] is a[11]  # the same bytes object, packed once
    assert a[11] != b[11]  # a shorter slice is packed on its own
    assert decode_message(a) == to2 and decode_message(b) == to3
