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
from quorumkv.kv import Command, MVCCStore, PutRequest, encode_command
from quorumkv.net import ERR_NOT_LEADER, OP_MEMBER_REMOVE, frame, pack
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
