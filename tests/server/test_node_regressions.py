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


class _PinnedHost:
    """Just what a stamped range's leader needs to hold pinned reads (``Replica._pin``):
    allocator answers the test gives, a log whose last index it moves, an applied
    index and revision it sets."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.allocs: list[asyncio.Future[int]] = []
        self.errors: list[tuple[Any, int, Any]] = []
        self.scheduled = 0
        self.loop = loop
        self.shards = self
        self.cfg = ServerConfig(node_id=1, data_dir=Path("unused"), listen=PEERS[1], peers=PEERS)

    def allocate_revisions(self, count: int) -> asyncio.Future[int]:
        assert count == 0
        fut: asyncio.Future[int] = self.loop.create_future()
        self.allocs.append(fut)
        return fut

    def schedule(self, _replica: Any) -> None:
        self.scheduled += 1

    def reply_error(self, conn: Any, req_id: Any, code: int, body: Any) -> None:
        self.errors.append((req_id, code, body))


def test_a_read_pinned_above_its_range_waits_for_the_stamp_batch_out_when_it_came() -> None:
    # A read at revision R above a stamped range's own: a write batch that asked for its
    # stamps before the read came may get stamps below R, so the read waits until that
    # batch is proposed and applied, not just for the allocator's answer.
    from types import SimpleNamespace

    from quorumkv.consensus import Role
    from quorumkv.server._replica import Replica

    async def body() -> None:
        host = _PinnedHost(asyncio.get_running_loop())
        log = SimpleNamespace(last=10)
        sm = SimpleNamespace(applied=10, rev=5)
        r = Replica.__new__(Replica)
        r.store = host  # type: ignore[assignment]
        r.raw = SimpleNamespace(  # type: ignore[assignment]
            raft=SimpleNamespace(role=Role.LEADER, log=SimpleNamespace(last_index=lambda: log.last))
        )
        r.sm = SimpleNamespace(  # type: ignore[assignment]
            applied_index=lambda: sm.applied, revision=lambda: sm.rev
        )
        r.stamped, r.stamping, r.pinned, r.read_queue = True, 3, [], []
        proposed: list[Any] = []

        def propose(writes: list[Any]) -> None:
            proposed.extend(writes)
            log.last += len(writes)

        r._propose = propose  # type: ignore[method-assign]
        conn = _Conn()
        r._pin(conn, 7, RangeRequest(b"k", revision=20))  # type: ignore[arg-type]
        (alloc,) = host.allocs
        alloc.set_result(21)  # R=20 was handed out
        await asyncio.sleep(0)
        assert r.pinned and not r.read_queue  # the batch of 3 is still out
        stamps: asyncio.Future[int] = host.loop.create_future()
        stamps.set_result(18)  # the batch got 18, 19, 20: at or below R
        r._stamped([(b"w", conn, i) for i in range(3)], stamps)  # type: ignore[misc]
        assert len(proposed) == 3 and r.pinned and not r.read_queue  # proposed, not applied
        sm.applied = 12
        r._release_pinned()
        assert r.pinned and not r.read_queue
        sm.applied = 13
        r._release_pinned()
        assert not r.pinned and [q[1] for q in r.read_queue] == [7]  # now the read index
        # A revision not handed out yet is refused as in the future.
        r._pin(conn, 8, RangeRequest(b"k", revision=40))  # type: ignore[arg-type]
        host.allocs[-1].set_result(21)
        await asyncio.sleep(0)
        (answer,) = conn.out
        assert answer[:2] == (8, OK) and "future revision" in str(decode_result(answer[2]))
        assert host.errors == []

    asyncio.run(body())


def _lead(node: Node) -> Any:
    """Make the in-process node 1 the leader of term 2 (votes handed in from node 2)."""
    replica = node.replicas[GROUP]
    replica.raw.campaign()
    node.peer_messages(2, [_msg(MessageType.PRE_VOTE_RESP, 2)], 0)
    node.peer_messages(2, [_msg(MessageType.VOTE_RESP, 2)], 0)
    return replica


def test_a_woken_leader_counts_only_members_heard_after_waking(tmp_path: Path) -> None:
    # Check-quorum's activity flags from before a quiet spell must not keep a leader
    # that lost its followers meanwhile: waking clears them, but for the leader itself.
    async def body() -> None:
        node = _node(tmp_path)
        replica = _lead(node)
        r = replica.raw.raft
        await _until("leadership", lambda: r.log.last_index() == 2)
        for pr in r.trk.progress.values():
            pr.recent_active = True
        replica.quiet = True
        replica.wake()
        assert not replica.quiet and r.election_elapsed == 0
        active = {int(n): pr.recent_active for n, pr in r.trk.progress.items()}
        assert active == {1: True, 2: False, 3: False}
        await node.stop()

    asyncio.run(body())


def test_a_late_ack_does_not_wake_a_quiet_leader_but_other_messages_do(tmp_path: Path) -> None:
    # The answers to a leader's last heartbeat before it went quiet arrive after it did;
    # they ask nothing of it and must not wake it (each wake costs a round of heartbeats
    # and an election timeout of ticking). A message of a newer term, or any other type,
    # wakes it.
    async def body() -> None:
        node = _node(tmp_path)
        replica = _lead(node)
        r = replica.raw.raft
        await _until("leadership", lambda: r.log.last_index() == 2)
        node.peer_messages(2, [_msg(MessageType.APP_RESP, 2, index=Index(2))], 0)
        await _until("the no-op applied", lambda: replica.sm.applied_index() == 2)
        replica.quiet = True
        node.peer_messages(2, [_msg(MessageType.HEARTBEAT_RESP, 2)], 0)
        node.peer_messages(3, [_msg3(MessageType.APP_RESP, 2, index=Index(2))], 0)
        assert replica.quiet
        node.peer_messages(2, [_msg(MessageType.HEARTBEAT_RESP, 3)], 0)  # a newer term
        assert not replica.quiet
        replica.quiet = True
        node.peer_messages(3, [_msg3(MessageType.READ_INDEX, 2, context=b"c")], 0)
        assert not replica.quiet
        await node.stop()

    asyncio.run(body())


def _msg3(t: MessageType, term: int, **kw: Any) -> list[Any]:
    return encode_message(Message(t, GroupId(1), NodeId(3), NodeId(1), term=Term(term), **kw))
