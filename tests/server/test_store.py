"""The node as a store of replicas: input is routed by group, and one drive round takes
every group's Ready through one fsync and one frame per peer. Driven on an in-process
``Node`` that is never started (no tick; its peers never answer, their messages are
handed in directly); the second group is added by hand, with a meta range's machine
(an empty directory: its entries here are only no-ops)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quorumkv.consensus import (
    GroupId,
    Index,
    Message,
    MessageType,
    NodeId,
    Ready,
    Term,
    bootstrap_state,
)
from quorumkv.net import pack
from quorumkv.server._codec import encode_message
from quorumkv.server._config import ServerConfig
from quorumkv.server._machines import MetaMachine
from quorumkv.server._node import GROUP, Node
from quorumkv.server._replica import Replica
from quorumkv.shard import Directory
from quorumkv.storage import SyncStats

PEERS = {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}
G2 = GroupId(2)


class _Conn:
    def __init__(self) -> None:
        self.out: list[Any] = []

    def answer(self, ok: bool, why: str = "") -> None:
        self.out.append((ok, why))


async def _until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def _msg(t: MessageType, group: int, term: int, **kw: Any) -> list[Any]:
    return encode_message(Message(t, GroupId(group), NodeId(2), NodeId(1), term=Term(term), **kw))


def _node(tmp: Path) -> Node:
    return Node(ServerConfig(node_id=1, data_dir=tmp / "n1", listen=PEERS[1], peers=PEERS))


def test_input_for_a_group_not_hosted_here_is_dropped_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        node = _node(tmp_path)
        raft = node.replicas[GROUP].raw.raft
        with caplog.at_level(logging.WARNING, logger="quorumkv.server"):
            for _ in range(3):
                node.peer_messages(2, [_msg(MessageType.HEARTBEAT, 7, 5)], 0)
            spool = tmp_path / "snap.spool"
            spool.write_bytes(b"")
            conn = _Conn()
            node.snapshot_received(2, pack(_msg(MessageType.SNAP, 7, 5)), spool, conn)  # type: ignore[arg-type]
        assert conn.out == [(False, "node 1 does not host group 7")]
        assert not spool.exists()
        lines = [r.getMessage() for r in caplog.records if "does not host group" in r.getMessage()]
        assert len(lines) == 1, lines  # rate-limited: a peer repeats itself every heartbeat
        assert "does not host group 7: dropped a message from node 2" in lines[0]
        assert int(raft.term) == 1  # group 1 never saw the term-5 heartbeat
        # A message for the hosted group still reaches it.
        node.peer_messages(2, [_msg(MessageType.HEARTBEAT, 1, 5)], 0)
        assert int(raft.term) == 5 and int(raft.lead) == 2
        await node.stop()

    asyncio.run(body())


def test_one_round_takes_every_group_through_one_fsync_and_one_frame_per_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        node = _node(tmp_path)
        node.storage.bootstrap(G2, bootstrap_state(list(PEERS)))
        node.engine.put_state(int(G2), 0, MetaMachine.initial_state(Directory()))
        node.replicas[G2] = Replica(node, G2, MetaMachine(node.engine, int(G2)))
        one, two = node.replicas[GROUP], node.replicas[G2]
        node.sync_links()
        assert sorted(node.links) == [2, 3]

        events: list[str] = []
        write_ready, sync = node.storage.write_ready, node.storage.sync

        def record_write(group: GroupId, rd: Ready) -> None:
            events.append(f"write {group}")
            write_ready(group, rd)

        def record_sync() -> SyncStats:
            events.append("sync")
            return sync()

        monkeypatch.setattr(node.storage, "write_ready", record_write)
        monkeypatch.setattr(node.storage, "sync", record_sync)
        for link in node.links.values():

            def flush(link: Any = link, orig: Callable[[], bool] = link.flush) -> bool:
                if link.queue:
                    events.append(f"frame to {link.peer_id}: {sorted({d[1] for d in link.queue})}")
                return bool(orig())

            monkeypatch.setattr(link, "flush", flush)

        async def step(*docs: list[Any]) -> list[str]:
            events.clear()
            node.peer_messages(2, list(docs), 0)
            await _until("the round", lambda: not one.raw.has_ready() and not two.raw.has_ready())
            await asyncio.sleep(0)
            return list(events)

        frames = ["frame to 2: [1, 2]", "frame to 3: [1, 2]"]
        one.raw.campaign()
        two.raw.campaign()
        # Pre-votes change neither term nor vote: written, no fsync, sent after.
        assert await step() == ["write 1", "write 2", *frames]
        # Both become candidates: a new term and vote each, made durable by ONE fsync
        # before either group's vote requests leave, together.
        votes = [_msg(MessageType.PRE_VOTE_RESP, g, 2) for g in (1, 2)]
        assert await step(*votes) == ["write 1", "write 2", "sync", *frames]
        # Both win: each leader's appends leave before its fsync, in one frame per peer.
        votes = [_msg(MessageType.VOTE_RESP, g, 2) for g in (1, 2)]
        assert await step(*votes) == [*frames, "write 1", "write 2", "sync"]
        assert one.raw.raft.log.last_index() == two.raw.raft.log.last_index() == 2
        # One ack each commits both no-ops; both groups apply in the same round.
        acks = [_msg(MessageType.APP_RESP, g, 2, index=Index(2)) for g in (1, 2)]
        await step(*acks)
        assert one.sm.applied_index() == two.sm.applied_index() == 2
        await node.stop()

    asyncio.run(body())
