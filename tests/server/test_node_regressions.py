"""Regressions found by review, driven on an in-process ``Node`` (its peers are never
started: messages from them are handed in directly)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quorumkv.consensus import (
    ConfState,
    Entry,
    EntryType,
    GroupId,
    Index,
    Message,
    MessageType,
    NodeId,
    Snapshot,
    SnapshotMeta,
    Term,
)
from quorumkv.kv import (
    Command,
    MVCCStore,
    PutRequest,
    RangeRequest,
    RangeResponse,
    decode_result,
    encode_command,
)
from quorumkv.net import ERR_NOT_LEADER, ERR_UNAVAILABLE, OK, OP_MEMBER_REMOVE, frame, pack
from quorumkv.server._codec import encode_message
from quorumkv.server._config import ServerConfig
from quorumkv.server._node import GROUP, Node

PEERS = {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}


class _Conn:
    def __init__(self) -> None:
        self.out: list[Any] = []

    def reply(self, req_id: Any, code: int, body: Any) -> None:
        self.out.append((req_id, code, body))

    def answer(self, ok: bool, why: str = "") -> None:
        self.out.append((ok, why))


async def _until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def _msg(t: MessageType, term: int, **kw: Any) -> list[Any]:
    m = Message(t, GroupId(1), NodeId(2), NodeId(1), term=Term(term), **kw)
    return encode_message(m)


def _node(tmp: Path) -> Node:
    return Node(ServerConfig(node_id=1, data_dir=tmp / "n1", listen=PEERS[1], peers=PEERS))


def test_a_second_snapshot_stream_is_refused_while_one_installs(tmp_path: Path) -> None:
    # Two overlapping installs (an old and a new leader each sending one) could swap an
    # older store in over a newer one and lose applied writes.
    async def body() -> None:
        node = _node(tmp_path)
        src = MVCCStore(tmp_path / "src")
        src.apply([(i, encode_command(Command(0, 0, PutRequest(b"k%d" % i, b"v")))) for i in
                   range(2, 51)])  # fmt: skip
        spools = []
        for name in ("a", "b"):
            p = tmp_path / f"{name}.spool"
            p.write_bytes(b"".join(frame(c) for c in src.snapshot()))
            spools.append(p)
        src.close()
        meta = SnapshotMeta(
            Index(40), Term(5), ConfState(voters=frozenset(NodeId(i) for i in (1, 2, 3)))
        )
        snap = Snapshot(meta, pack({"members": {str(k): v for k, v in PEERS.items()}}))
        first = pack(_msg(MessageType.SNAP, 5, snapshot=snap))
        a, b = _Conn(), _Conn()
        node.snapshot_received(2, first, spools[0], a)  # type: ignore[arg-type]
        node.snapshot_received(2, first, spools[1], b)  # type: ignore[arg-type]
        assert b.out == [(False, "busy installing another snapshot; retry later")]
        await _until("the first install", lambda: bool(a.out))
        assert a.out == [(True, "")]
        assert node.replicas[GROUP].sm.applied_index() == 50
        await node.stop()

    asyncio.run(body())


def test_a_membership_change_replaced_by_another_leader_is_not_reported_done(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        node = _node(tmp_path)
        replica = node.replicas[GROUP]
        r = replica.raw.raft
        replica.raw.campaign()
        node.peer_messages(2, [_msg(MessageType.PRE_VOTE_RESP, 2)], 0)
        node.peer_messages(2, [_msg(MessageType.VOTE_RESP, 2)], 0)
        await _until("leadership", lambda: r.log.last_index() == 2)
        node.peer_messages(2, [_msg(MessageType.APP_RESP, 2, index=Index(2))], 0)
        await _until("the no-op applied", lambda: replica.sm.applied_index() == 2)
        conn = _Conn()
        task = asyncio.ensure_future(node._admin(conn, 7, OP_MEMBER_REMOVE, 3))  # type: ignore[arg-type]
        await _until("the change proposed", lambda: r.log.last_index() == 3)
        # Node 2 wins term 3, overwrites index 3 with its own entry and commits it.
        ent = Entry(Term(3), Index(3), EntryType.NORMAL, b"")
        app = _msg(MessageType.APP, 3, log_term=Term(2), index=Index(2), entries=(ent,),
                   commit=Index(3))  # fmt: skip
        node.peer_messages(2, [app], 0)
        await asyncio.wait_for(task, 10)
        assert sorted(r.trk.conf.voters) == [1, 2, 3]
        assert conn.out[0][1] == ERR_NOT_LEADER, conn.out  # not OK: it did not happen
        await node.stop()

    asyncio.run(body())


def test_a_follower_answers_a_linearizable_read_only_once_it_applied_the_read_index(
    tmp_path: Path,
) -> None:
    # A follower read (thesis 6.4, ``read_from``): the leader's read index may be ahead
    # of what the follower applied; the answer must wait for it, and then see the write.
    async def body() -> None:
        node = _node(tmp_path)
        replica = node.replicas[GROUP]
        put = encode_command(Command(0, 0, PutRequest(b"k", b"v1")))
        ent = Entry(Term(2), Index(2), EntryType.NORMAL, put)
        # Node 2 leads term 2: the put is in our log, not yet known committed.
        app = _msg(MessageType.APP, 2, log_term=Term(1), index=Index(1), entries=(ent,),
                   commit=Index(1))  # fmt: skip
        node.peer_messages(2, [app], 0)
        await _until("the entry appended", lambda: replica.raw.raft.log.last_index() == 2)
        assert replica.sm.applied_index() < 2
        conn = _Conn()
        get = encode_command(Command(0, 0, RangeRequest(b"k")))
        replica.read(conn, 9, [get, False])  # type: ignore[arg-type]
        await _until("the read index asked of node 2", lambda: bool(replica.read_batches))
        (ctx,) = replica.read_batches
        resp = _msg(MessageType.READ_INDEX_RESP, 2, index=Index(2), context=ctx)
        node.peer_messages(2, [resp], 0)
        await _until("the read index received", lambda: bool(replica.ready_reads))
        assert conn.out == []  # index 2 is not applied here: no answer from older state
        node.peer_messages(2, [_msg(MessageType.HEARTBEAT, 2, commit=Index(2))], 0)
        await _until("the read answered", lambda: bool(conn.out))
        ((req_id, code, data),) = conn.out
        result = decode_result(data)
        assert (req_id, code) == (9, OK) and isinstance(result, RangeResponse)
        assert [kv.value for kv in result.kvs] == [b"v1"]
        assert replica.sm.applied_index() == 2
        served = node.metrics.reads_by_role
        assert (served["follower"]._value.get(), served["leader"]._value.get()) == (1, 0)
        await node.stop()

    asyncio.run(body())


def test_a_read_at_a_follower_with_no_leader_says_so(tmp_path: Path) -> None:
    async def body() -> None:
        node = _node(tmp_path)
        replica = node.replicas[GROUP]
        conn = _Conn()
        get = encode_command(Command(0, 0, RangeRequest(b"k")))
        replica.read(conn, 3, [get, False])  # type: ignore[arg-type]
        await _until("the read refused", lambda: bool(conn.out))
        ((req_id, code, why),) = conn.out
        assert (req_id, code) == (3, ERR_UNAVAILABLE)
        assert why == "node 1 (follower of group 1) knows no leader to ask for a read index"
        await node.stop()

    asyncio.run(body())
