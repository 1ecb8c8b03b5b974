"""A follower whose leader's node is gone campaigns at once, and again while no leader
is known, at most ``EARLY_RETRIES`` times (two followers that campaign within a vote's
round trip split the vote; a retry settles it long before an election timeout would).
Driven on an in-process ``Node`` that is never started; the loop's ``call_later`` is
captured, so the test fires each scheduled campaign itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from quorumkv.consensus import (
    EARLY_RETRIES,
    NONE,
    GroupId,
    Message,
    MessageType,
    NodeId,
    Role,
    Term,
)
from quorumkv.server._codec import encode_message
from quorumkv.server._config import ServerConfig
from quorumkv.server._node import GROUP, Node

PEERS = {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}


def _heartbeat(frm: int, term: int) -> list[Any]:
    m = Message(MessageType.HEARTBEAT, GroupId(1), NodeId(frm), NodeId(1), term=Term(term))
    return encode_message(m)


def test_an_early_campaign_is_retried_while_no_leader_is_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        node = Node(ServerConfig(node_id=1, data_dir=tmp_path / "n1", listen=PEERS[1], peers=PEERS))
        raft = node.replicas[GROUP].raw.raft

        def state() -> tuple[Role, int]:  # read afresh each time (no narrowing by mypy)
            return raft.role, int(raft.lead)

        later: list[tuple[float, Any, tuple[Any, ...]]] = []
        monkeypatch.setattr(node.loop, "call_later", lambda d, f, *a: later.append((d, f, a)))
        node.peer_messages(2, [_heartbeat(2, 5)], 0)
        assert state() == (Role.FOLLOWER, 2)

        node.peer_lost(2)  # the leader's node is gone
        assert state() == (Role.FOLLOWER, NONE)
        campaigns = 0
        for _ in range(EARLY_RETRIES + 1):
            ((delay, fire, args),) = later
            later.clear()
            assert delay <= 4 * node.cfg.tick_ms / 1000
            fire(*args)  # nobody answers the vote requests: no leader yet
            campaigns += 1
            assert state() == (Role.PRE_CANDIDATE, NONE)
        assert campaigns == EARLY_RETRIES + 1
        assert later == []  # the retries are spent: the election timeout takes over

        # A retry that finds a leader elected does nothing, and schedules nothing more.
        node.peer_messages(3, [_heartbeat(3, 6)], 0)
        node.peer_lost(3)
        ((_, fire, args),) = later
        later.clear()
        fire(*args)
        assert state() == (Role.PRE_CANDIDATE, NONE) and len(later) == 1
        node.peer_messages(2, [_heartbeat(2, 7)], 0)  # node 2 won meanwhile
        ((_, fire, args),) = later
        later.clear()
        fire(*args)
        assert state() == (Role.FOLLOWER, 2) and later == []
        await node.stop()

    asyncio.run(body())
