"""One quorumkv node: the asyncio driver around the Raft core, the WAL and the MVCC store.

Theory of operation
-------------------
Everything runs on one event loop thread. Input arrives in callbacks: peer messages are
stepped into the core at once, client writes and reads are queued. Any input schedules
ONE ``_drive`` call for the end of the loop iteration (``call_soon``), so all the input
of an iteration is handled as one batch:

1. queued writes become one ``propose_many``; queued linearizable reads share one
   ``read_index`` request;
2. while the core has a ``Ready``: write it to the WAL and fsync once if it must be
   durable (one fsync for the whole batch); then send its messages, one frame per peer;
   then apply its committed entries to the MVCC store in one LMDB transaction; answer
   the writers whose entries were applied; move read states to the waiting reads; serve
   the reads whose index is applied; ``advance``;
3. flush every client connection's answers with one write each; compact the log if due.

That is the core's contract (``quorumkv.consensus``), batched.

A write is answered when its entry is applied: the entry at the index the proposal got,
with the term it was proposed in. A different term there means another leader replaced
it; the writer is told to retry, which is safe because every write carries the client's
session (client id, sequence number) and the state machine applies each once. When this
node stops leading, its waiting writers are told at once that the outcome is unknown
(their entries may still commit), and retry the same way.

The MVCC store syncs its data pages but not its meta page per batch (LMDB's NOMETASYNC:
a power loss may undo its last transaction, never corrupt it): the WAL is the durable
record, the store is fully synced before the log under its applied index is dropped,
and a restart replays whatever the store lost. A leader snapshot carries only the
member addresses; a follower that needs one gets the whole store streamed on its own
connection and installed (one at a time) before the core sees the SNAP message
(``snapshot_received``). Entries the store already holds are skipped by index when
they are applied again.

Membership changes are coroutines that propose, then wait for the change to apply (and
for a new node to catch up before promoting it); their addresses travel in the
change's context, so every node learns them from the log or a snapshot.

This module must never block the loop on the network, and never acknowledge a write
before its entry is applied, nor answer a linearizable read before its read index is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from quorumkv.consensus import (
    NONE,
    Change,
    ChangeType,
    ConfChange,
    ConfChangeError,
    Config,
    EntryType,
    GroupId,
    Index,
    Message,
    MessageRejected,
    MessageType,
    NodeId,
    ProposalDropped,
    RaftState,
    RawNode,
    Ready,
    Role,
    bootstrap_state,
    decode_conf_change,
)
from quorumkv.errors import KVError, ServerError
from quorumkv.kv import (
    LIMITS,
    KVLimitError,
    MVCCStore,
    RangeRequest,
    decode_command,
    encode_result,
    snapshot_index,
)
from quorumkv.net import (
    ERR_BAD_REQUEST,
    ERR_MEMBERSHIP,
    ERR_NOT_LEADER,
    ERR_SHUTTING_DOWN,
    ERR_TIMEOUT,
    ERR_TOO_MANY,
    ERR_UNAVAILABLE,
    OK,
    OP_MEMBER_ADD,
    OP_MEMBER_REMOVE,
    OP_READ,
    OP_STATUS,
    OP_TRANSFER,
    OP_WRITE,
    pack,
    parse_address,
    unpack,
)
from quorumkv.storage import NodeStorage, OSFileSystem

from ._codec import EntryCache, decode_message, encode_message
from ._config import ServerConfig, check_identity, read_identity, write_identity
from ._conn import ClientConn, Inbound, SnapConn, read_spool
from ._metrics import Metrics
from ._peers import PeerLink, link_hello, send_snapshot, snap_hello

log = logging.getLogger("quorumkv.server")

GROUP = GroupId(1)
_EARLY = frozenset({MessageType.APP, MessageType.HEARTBEAT})
"""What a leader may send before its own fsync (``_handle_ready``)."""
_OP_NAMES = {
    OP_WRITE: "write",
    OP_READ: "read",
    OP_STATUS: "status",
    OP_MEMBER_ADD: "member",
    OP_MEMBER_REMOVE: "member",
    OP_TRANSFER: "transfer",
}
_CODE_NAMES = {
    ERR_NOT_LEADER: "not_leader",
    ERR_UNAVAILABLE: "unavailable",
    ERR_TIMEOUT: "timeout",
    ERR_TOO_MANY: "too_many",
    ERR_SHUTTING_DOWN: "shutting_down",
    ERR_BAD_REQUEST: "bad_request",
    ERR_MEMBERSHIP: "membership",
}


@dataclass(slots=True)
class _Write:
    conn: ClientConn
    req_id: Any
    term: int
    t0: float


@dataclass(slots=True)
class _ReadBatch:
    reads: list[tuple[ClientConn, Any, RangeRequest]]
    deadline: float
    index: int = -1


@dataclass
class _Waiter:
    """Someone waiting for the entry proposed at ``index`` in ``term`` to be applied;
    the future says whether that very entry was (False: another leader's entry took
    its place; None: applied out of sight, by a snapshot)."""

    index: int
    term: int
    future: asyncio.Future[bool | None]


@dataclass
class _Snapshots:
    sending: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    restoring: bool = False
    installing: asyncio.Task[None] | None = None


class Node:
    """A running node. Build with ``Node(cfg)``, then ``await node.start()``."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.loop = asyncio.get_running_loop()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = NodeStorage(OSFileSystem(), str(cfg.data_dir / "raft"))
        self.kv = MVCCStore(cfg.data_dir / "kv", metasync=False)
        self.cluster = self._identity()
        self.members: dict[int, str] = {}
        state = self._load_state()
        rcfg = Config(
            id=NodeId(cfg.node_id),
            group=GROUP,
            election_tick=cfg.election_ticks,
            heartbeat_tick=cfg.heartbeat_ticks,
        )
        self.raw = RawNode(rcfg, state, random.Random(), logging.getLogger("quorumkv.raft"))
        self._durable_vote = (state.hard_state.term, state.hard_state.vote)
        """(term, vote) of the last hard state made durable."""
        self.metrics = Metrics(self._gauges)
        self.links: dict[int, PeerLink] = {}
        self.dirty: list[ClientConn] = []
        self.clients: set[ClientConn] = set()
        self.writes: list[tuple[bytes, ClientConn, Any]] = []
        self.waiting: dict[int, _Write] = {}
        self.read_queue: list[tuple[ClientConn, Any, RangeRequest]] = []
        self.read_batches: dict[bytes, _ReadBatch] = {}
        self.ready_reads: deque[_ReadBatch] = deque()
        self.apply_waiters: list[_Waiter] = []
        self.role_waiters: list[asyncio.Future[None]] = []
        self.snaps = _Snapshots()
        self._read_seq = 0
        # Read contexts carry a per-boot nonce: a late answer to a read of a previous
        # incarnation of this node must not match a read of this one.
        self._boot = random.getrandbits(64).to_bytes(8, "big")
        self.op_counts: dict[str, int] = dict.fromkeys(_OP_NAMES.values(), 0)
        self._drive_scheduled = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self.stopping = False
        self.closed = False
        """Set once the storage is closed: nothing may touch it after that."""
        self.started = time.monotonic()
        self.leader_seen: int = NONE
        self.snapshot_index = int(state.snapshot.meta.index) if state.snapshot else 0
        self.server: asyncio.Server | None = None
        self.fatal: BaseException | None = None

    # -- start-up --------------------------------------------------------------------

    def _identity(self) -> int:
        cfg = self.cfg
        doc = read_identity(cfg.data_dir)
        has_state = bool(self.storage.groups())
        if doc is not None:
            return check_identity(cfg, doc)
        if cfg.join:
            if has_state:
                raise ServerError(f"data dir {cfg.data_dir} has Raft state but no node.json")
            return 0  # learned from the first peer that contacts us
        if not has_state:
            members = dict(cfg.peers)
            data = pack({"members": {str(k): v for k, v in members.items()}})
            self.storage.bootstrap(GROUP, bootstrap_state(list(members), data=data))
            log.info("node %d bootstrapped cluster %016x with %s",
                     cfg.node_id, cfg.cluster_id, members)  # fmt: skip
        write_identity(cfg.data_dir, cfg.node_id, cfg.cluster_id)
        return cfg.cluster_id

    def _load_state(self) -> RaftState:
        if GROUP not in self.storage.groups():
            self.members.update(self.cfg.peers)
            return RaftState()
        st = self.storage.load(GROUP)
        if st.snapshot is not None:
            self._learn_members(st.snapshot.data)
        for e in st.entries:
            if e.type is EntryType.CONF_CHANGE:
                self._learn_conf(e.data)
        for node, addr in self.cfg.peers.items():
            self.members.setdefault(node, addr)
        last = (
            st.entries[-1].index if st.entries else (st.snapshot.meta.index if st.snapshot else 0)
        )
        hs = st.hard_state
        applied = self.kv.applied_index()
        floor = st.snapshot.meta.index if st.snapshot else 0
        if applied < floor and floor > 1:  # index 1 is the bootstrap: an empty store
            raise ServerError(
                f"the state machine in {self.kv.path} is at index {applied}, behind the "
                f"Raft snapshot at {floor}: it was damaged or replaced; rebuild this node"
            )
        # The store may be ahead of the durable commit index (commit-only hard states
        # are not fsynced; a streamed snapshot is installed before Raft records it).
        # Raft restarts from what it knows committed; entries the store already holds
        # are skipped by index when they are applied again. Never raise the commit
        # index from the store: the log's tail at those indices may be a deposed
        # leader's, never committed.
        del last
        return RaftState(hs, st.snapshot, st.entries, Index(max(floor, min(applied, hs.commit))))

    def _learn_members(self, data: bytes) -> None:
        if not data:
            return
        try:
            doc = unpack(data)
            for k, v in doc["members"].items():
                self.members[int(k)] = str(v)
        except Exception as e:  # a snapshot from an older format: addresses come later
            log.warning("snapshot data without member addresses: %r", e)

    def _learn_conf(self, data: bytes) -> None:
        try:
            cc = decode_conf_change(data)
            if cc.context:
                for k, v in json.loads(cc.context).items():
                    self.members[int(k)] = str(v)
        except (ConfChangeError, ValueError, AttributeError) as e:
            log.warning("conf change without readable addresses: %r", e)

    async def start(self) -> None:
        host, port = parse_address(self.cfg.listen)
        try:
            self.server = await self.loop.create_server(
                lambda: Inbound(self), host, port, reuse_address=True
            )
        except OSError as e:
            raise ServerError(f"cannot listen on {self.cfg.listen}: {e.strerror or e}") from None
        self._tick_handle = self.loop.call_later(self.cfg.tick_ms / 1000, self._tick)
        for peer in self._peer_ids():
            self._link(peer)
        self._schedule()

    def _peer_ids(self) -> list[int]:
        conf = self.raw.raft.trk.conf
        ids = set(conf.voters) | set(conf.learners) | set(conf.voters_outgoing)
        ids |= set(conf.learners_next)
        ids.discard(NodeId(self.node_id))
        return sorted(ids)

    def _link(self, peer: int) -> PeerLink | None:
        link = self.links.get(peer)
        if link is not None:
            return link
        addr = self.members.get(peer)
        if addr is None:
            return None
        link = PeerLink(
            self.node_id,
            peer,
            addr,
            lambda: link_hello(self.cluster, self.node_id, self.cfg.listen),
            self._peer_connected,
        )
        self.links[peer] = link
        link.start()
        return link

    def _peer_connected(self, peer: int) -> None:
        self._schedule()

    # -- Host interface for connections --------------------------------------------------

    def current_cluster(self) -> int:
        return self.cluster

    def learn_cluster(self, cluster: int) -> None:
        if not self.cluster:
            self.cluster = cluster
            write_identity(self.cfg.data_dir, self.node_id, cluster)
            log.info("node %d joined cluster %016x", self.node_id, cluster)

    def learn_address(self, node: int, addr: str) -> None:
        if node == self.node_id:
            return
        if self.members.get(node) != addr:
            self.members[node] = addr
            link = self.links.get(node)
            if link is not None:
                link.set_address(addr)

    def spool_path(self) -> Path:
        self._read_seq += 1
        return self.cfg.data_dir / f"snap-recv-{self._read_seq}.tmp"

    def mark_dirty(self, conn: ClientConn) -> None:
        self.dirty.append(conn)
        self._schedule()

    def client_closed(self, conn: ClientConn) -> None:
        self.clients.discard(conn)

    def peer_messages(self, frm: int, docs: list[Any], nbytes: int) -> None:
        if self.closed:
            return  # stopped: late messages from peers are not ours to handle
        self.metrics.peer_bytes_in.inc(nbytes)
        raw = self.raw
        for doc in docs:
            try:
                m = decode_message(doc)
                if m.frm != frm:
                    raise MessageRejected(f"message from {m.frm} on node {frm}'s link")
                if m.type is MessageType.SNAP:
                    raise MessageRejected("a snapshot must come on a snapshot stream")
                raw.step(m)
            except MessageRejected as e:
                log.warning("dropped a message from node %d: %s", frm, e)
            except ProposalDropped:
                pass
        self._schedule()

    def peer_lost(self, frm: int) -> None:
        """A peer's connection to us closed. If it was our leader, its process is most
        likely gone (a partition does not close connections this fast): forget it and
        campaign after a short random delay, instead of waiting out an election timeout
        of silence. A live leader simply reconnects; its next heartbeat brings us back."""
        raw = self.raw
        if self.stopping or raw.raft.role is not Role.FOLLOWER or raw.raft.lead != frm:
            return
        if raw.forget_leader():
            delay = random.uniform(0, 2 * self.cfg.tick_ms / 1000)
            self.loop.call_later(delay, self._early_campaign)
            self._schedule()

    def _early_campaign(self) -> None:
        raw = self.raw
        if self.stopping or self.fatal is not None:
            return
        if raw.raft.lead == NONE and raw.raft.role is Role.FOLLOWER:
            raw.campaign()
            self._schedule()

    # -- client requests -----------------------------------------------------------------

    def client_request(self, conn: ClientConn, req_id: Any, op: Any, body: Any) -> None:
        try:
            self._client_request(conn, req_id, op, body)
        except Exception as e:  # a request must never take the connection down with it
            log.warning("bad request from %s: %r", conn.transport.get_extra_info("peername"), e)
            self._error(conn, req_id, ERR_BAD_REQUEST, f"cannot handle the request: {e!r}")

    def _client_request(self, conn: ClientConn, req_id: Any, op: Any, body: Any) -> None:
        self.clients.add(conn)
        name = _OP_NAMES.get(op) if type(op) is int else None
        if name is None:
            self._error(conn, req_id, ERR_BAD_REQUEST, f"unknown operation {op!r}")
            return
        self.op_counts[name] += 1
        if self.stopping:
            self._error(conn, req_id, ERR_SHUTTING_DOWN, f"node {self.node_id} is stopping")
            return
        if op == OP_WRITE:
            self._write(conn, req_id, body)
        elif op == OP_READ:
            self._read(conn, req_id, body)
        elif op == OP_STATUS:
            conn.reply(req_id, OK, self.status())
        else:
            self.loop.create_task(self._admin(conn, req_id, op, body))

    def _error(self, conn: ClientConn, req_id: Any, code: int, body: Any) -> None:
        self.metrics.client_errors[_CODE_NAMES[code]].inc()
        conn.reply(req_id, code, body)

    def _not_leader(self, conn: ClientConn, req_id: Any) -> None:
        lead = int(self.raw.raft.lead)
        if lead == NONE:
            self._error(conn, req_id, ERR_UNAVAILABLE, f"node {self.node_id} knows no leader")
        else:
            self._error(conn, req_id, ERR_NOT_LEADER, [lead, self.members.get(lead)])

    def _write(self, conn: ClientConn, req_id: Any, body: Any) -> None:
        if self.raw.raft.role is not Role.LEADER:
            self._not_leader(conn, req_id)
            return
        if len(self.waiting) + len(self.writes) >= self.cfg.max_pending:
            self.metrics.proposals_refused.inc()
            self._error(conn, req_id, ERR_TOO_MANY, f"{len(self.waiting)} writes are pending")
            return
        if not isinstance(body, bytes):
            self._error(conn, req_id, ERR_BAD_REQUEST, "a write's body is an encoded command")
            return
        if len(body) > LIMITS.max_request_bytes:
            err = KVLimitError("request size", LIMITS.max_request_bytes, len(body))
            conn.reply(req_id, OK, encode_result(err))
            return
        # The command is not decoded here: every replica decodes and validates it when
        # it applies the entry, and a bad one becomes the same error result on all of
        # them, which is what the writer gets. Decoding it twice cost the leader ~9%.
        self.writes.append((body, conn, req_id))
        self._schedule()

    def _read(self, conn: ClientConn, req_id: Any, body: Any) -> None:
        try:
            data, serializable = body
            cmd = decode_command(data)
        except KVError as e:
            conn.reply(req_id, OK, encode_result(e))
            return
        except (TypeError, ValueError):
            self._error(conn, req_id, ERR_BAD_REQUEST, "a read's body is [command, serializable]")
            return
        req = cmd.request
        if not isinstance(req, RangeRequest):
            self._error(conn, req_id, ERR_BAD_REQUEST, "OP_READ carries a range request")
            return
        if serializable:
            self._serve(conn, req_id, req)
            return
        self.read_queue.append((conn, req_id, req))
        self._schedule()

    def _serve(self, conn: ClientConn, req_id: Any, req: RangeRequest) -> None:
        try:
            conn.reply(req_id, OK, encode_result(self.kv.range(req)))
        except KVError as e:
            conn.reply(req_id, OK, encode_result(e))

    # -- the drive cycle -----------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._drive_scheduled:
            self._drive_scheduled = True
            self.loop.call_soon(self._drive)

    def _drive(self) -> None:
        self._drive_scheduled = False
        if self.fatal is not None or self.closed:
            return
        try:
            self._drive_once()
        except Exception as e:
            # The disk failed under us (or a bug broke the cycle between ready() and
            # advance()): what reached the disk is unknown, so stop serving rather than
            # acknowledge anything more. The process exits; a restart recovers.
            self.fatal = e
            log.exception("node %d stops: %s", self.node_id, e)
            self.loop.call_soon(self._fail_everything, f"node {self.node_id} storage failed: {e}")

    def _drive_once(self) -> None:
        for name, n in self.op_counts.items():
            if n:
                self.metrics.client_requests[name].inc(n)  # once per batch, not per request
                self.op_counts[name] = 0
        if self.writes:
            self._propose()
        if self.read_queue:
            self._issue_reads()
        raw = self.raw
        while not self.snaps.restoring and raw.has_ready():
            t0 = time.perf_counter()
            rd = raw.ready()
            self._handle_ready(rd)
            raw.advance(rd)
            self.metrics.ready_seconds.observe(time.perf_counter() - t0)
        self._flush_links()
        self._flush_clients()
        self._maybe_compact()
        if raw.has_ready() and not self.snaps.restoring:
            self._schedule()

    def _propose(self) -> None:
        writes, self.writes = self.writes, []
        raw = self.raw
        if raw.raft.role is not Role.LEADER:
            for _, conn, req_id in writes:
                self._not_leader(conn, req_id)
            return
        try:
            last = raw.propose_many([w[0] for w in writes])
        except ProposalDropped as e:
            for _, conn, req_id in writes:
                self._error(conn, req_id, ERR_NOT_LEADER, [e.leader, self.members.get(e.leader)])
            return
        term = int(raw.raft.term)
        now = time.monotonic()
        first = last - len(writes) + 1
        for i, (_, conn, req_id) in enumerate(writes):
            self.waiting[first + i] = _Write(conn, req_id, term, now)
        self.metrics.proposals.inc(len(writes))

    def _issue_reads(self) -> None:
        reads, self.read_queue = self.read_queue, []
        self._read_seq += 1
        ctx = self._boot + self._read_seq.to_bytes(8, "big")
        try:
            self.raw.read_index(ctx)
        except ProposalDropped:
            for conn, req_id, _ in reads:
                self._not_leader(conn, req_id)
            return
        deadline = time.monotonic() + 2 * self.cfg.election_timeout_s
        self.read_batches[ctx] = _ReadBatch(reads, deadline)

    def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._role_changed(rd)
        cache = EntryCache()
        late = rd.messages
        hs = rd.hard_state
        if rd.messages and (hs is None or (hs.term, hs.vote) == self._durable_vote):
            # A leader's appends and heartbeats go out before its own fsync (thesis
            # 10.2.1): the core counts the leader's own entries only once advance()
            # says they are durable, so the disk and the followers work in parallel.
            # Everything else (votes, acks) waits for the fsync, and nothing goes
            # early if this Ready changes the term or the vote.
            late = tuple(m for m in rd.messages if m.type not in _EARLY)
            if len(late) < len(rd.messages):
                for m in rd.messages:
                    if m.type in _EARLY:
                        self._send(m, cache)
                self._flush_links()
        self.storage.write_ready(GROUP, rd)
        if rd.must_sync:
            t0 = time.perf_counter()
            self.storage.sync()
            self.metrics.fsync_seconds.observe(time.perf_counter() - t0)
        if hs is not None:
            self._durable_vote = (hs.term, hs.vote)
        for m in late:
            self._send(m, cache)
        # Acks leave before this node applies: applying is off the commit path.
        self._flush_links()
        if rd.snapshot is not None:
            self._learn_members(rd.snapshot.data)
            self.snapshot_index = int(rd.snapshot.meta.index)
            self._sync_links()
        if rd.committed:
            self._apply(rd)
        for rs in rd.read_states:
            batch = self.read_batches.pop(rs.context, None)
            if batch is not None:
                batch.index = int(rs.index)
                self.ready_reads.append(batch)
        if self.ready_reads:
            self._serve_reads()

    def _flush_links(self) -> None:
        for link in self.links.values():
            if not link.flush():
                self.raw.report_unreachable(NodeId(link.peer_id))

    def _send(self, m: Message, cache: EntryCache) -> None:
        to = int(m.to)
        if m.type is MessageType.SNAP:
            self._start_snapshot(m)
            return
        link = self._link(to)
        if link is None:
            self.raw.report_unreachable(m.to)
            return
        link.send(encode_message(m, cache))

    def _apply(self, rd: Ready) -> None:
        batch: list[tuple[int, bytes]] = []
        conf_changed = False
        for e in rd.committed:
            if e.type is EntryType.CONF_CHANGE:
                self._learn_conf(e.data)
                conf_changed = True
                batch.append((e.index, b""))
            else:
                batch.append((e.index, e.data))
        t0 = time.perf_counter()
        self.kv.apply(batch, encoded=True, before_commit=lambda res: self._answer(rd, res))
        self.metrics.apply_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_entries.observe(len(batch))
        self.metrics.applied_entries.inc(len(batch))
        if conf_changed:
            self.loop.call_soon(self._sync_links)
        if self.apply_waiters:
            applied = self.kv.applied_index()
            terms = {int(e.index): int(e.term) for e in rd.committed}
            keep = []
            for aw in self.apply_waiters:
                if aw.index <= applied:
                    seen = terms.get(aw.index)
                    if not aw.future.done():
                        aw.future.set_result(None if seen is None else seen == aw.term)
                else:
                    keep.append(aw)
            self.apply_waiters = keep

    def _answer(self, rd: Ready, results: list[Any]) -> None:
        """Answer the writers of ``rd.committed`` and send the answers now, before the
        store commits the batch: the entries are committed in the log (on a majority's
        disks) and their results are what any replay computes, so a crash before the
        store's commit loses nothing; the writers just stop waiting for its fdatasync.
        The loop handles no other request before the commit, so no read can miss a
        write it was told about."""
        if not self.waiting:
            return
        waiting = self.waiting
        oldest = 0.0
        for e, res in zip(rd.committed, results, strict=True):
            w = waiting.pop(e.index, None)
            if w is None:
                continue
            if e.term != w.term:
                self._not_leader(w.conn, w.req_id)
            elif res is None:
                self._error(w.conn, w.req_id, ERR_BAD_REQUEST, "stale session sequence")
            else:
                w.conn.reply(w.req_id, OK, res)
                oldest = oldest or w.t0
        if oldest:
            # One sample a batch (its oldest write): a histogram observation per write
            # cost the leader 2.5% of its CPU.
            self.metrics.commit_seconds.observe(time.monotonic() - oldest)
        self._flush_clients()

    def _flush_clients(self) -> None:
        if self.dirty:
            out = 0
            for conn in self.dirty:
                out += conn.flush()
            self.dirty.clear()
            self.metrics.client_bytes_out.inc(out)

    def _serve_reads(self) -> None:
        applied = self.kv.applied_index()
        while self.ready_reads and self.ready_reads[0].index <= applied:
            batch = self.ready_reads.popleft()
            for conn, req_id, req in batch.reads:
                self._serve(conn, req_id, req)
            self.metrics.reads.inc(len(batch.reads))

    def _role_changed(self, rd: Ready) -> None:
        assert rd.soft_state is not None
        lead, role = int(rd.soft_state.leader), rd.soft_state.role
        if lead != self.leader_seen:
            self.leader_seen = lead
            self.metrics.leader_changes.inc()
            log.info("node %d: leader is now %s (term %d)",
                     self.node_id, lead or "unknown", self.raw.raft.term)  # fmt: skip
        if role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self.metrics.elections.inc()
        if role is not Role.LEADER and self.waiting:
            # Our entries may still commit under the next leader: the outcome is
            # unknown. The clients retry with the same session, which the state
            # machine deduplicates, and say "unknown" if they give up.
            waiting, self.waiting = self.waiting, {}
            for w in waiting.values():
                self._error(w.conn, w.req_id, ERR_TIMEOUT, _LOST_LEADERSHIP)
        for f in self.role_waiters:
            if not f.done():
                f.set_result(None)
        self.role_waiters = []

    def _sync_links(self) -> None:
        wanted = set(self._peer_ids())
        for peer in wanted:
            self._link(peer)
        for peer in list(self.links):
            if peer not in wanted:
                self.links.pop(peer).close()

    def _fail_everything(self, why: str) -> None:
        for w in self.waiting.values():  # proposed: they may still commit
            self._error(w.conn, w.req_id, ERR_TIMEOUT, f"{why}; the outcome is unknown")
        self.waiting.clear()
        for _, conn, req_id in self.writes:  # never proposed
            self._error(conn, req_id, ERR_UNAVAILABLE, why)
        self.writes.clear()
        for b in [*self.read_batches.values(), *self.ready_reads]:
            for conn, req_id, _ in b.reads:
                self._error(conn, req_id, ERR_UNAVAILABLE, why)
        self.read_batches.clear()
        self.ready_reads.clear()
        for conn in self.dirty:
            conn.flush()
        self.dirty.clear()

    # -- ticks and timeouts ----------------------------------------------------------

    def _tick(self) -> None:
        self._tick_handle = self.loop.call_later(self.cfg.tick_ms / 1000, self._tick)
        if self.fatal is not None or self.closed:
            return
        self.raw.tick()
        now = time.monotonic()
        if self.read_batches:
            for ctx, b in list(self.read_batches.items()):
                if b.deadline < now:
                    del self.read_batches[ctx]
                    for conn, req_id, _ in b.reads:
                        self._error(conn, req_id, ERR_UNAVAILABLE, "read index lost; retry")
        if self.ready_reads and self.ready_reads[0].deadline < now:
            # Reads with a read index that this node has not applied yet (cut off from
            # the leader since): answered unavailable instead of kept forever.
            keep: deque[_ReadBatch] = deque()
            for b in self.ready_reads:
                if b.deadline < now:
                    for conn, req_id, _ in b.reads:
                        self._error(conn, req_id, ERR_UNAVAILABLE, "not caught up in time; retry")
                else:
                    keep.append(b)
            self.ready_reads = keep
        if self.waiting:
            limit = now - self.cfg.request_timeout_s
            for index in [i for i, w in self.waiting.items() if w.t0 < limit]:
                w = self.waiting.pop(index)
                self._error(w.conn, w.req_id, ERR_TIMEOUT, f"entry {index} not applied in time")
        self._schedule()

    # -- compaction and snapshots ----------------------------------------------------

    def _maybe_compact(self) -> None:
        applied = int(self.raw.raft.log.applied)
        if applied - self.snapshot_index < self.cfg.snapshot_entries + self.cfg.catchup_entries:
            return
        index = applied - self.cfg.catchup_entries
        self.kv.sync()  # the store must hold what the dropped log held
        data = pack({"members": {str(k): v for k, v in self.members.items()}})
        snap = self.raw.compact(Index(index), data)
        self.storage.save_snapshot(GROUP, snap)
        self.snapshot_index = index
        log.info("node %d compacted its log to %d", self.node_id, index)

    def _start_snapshot(self, m: Message) -> None:
        to = int(m.to)
        task = self.snaps.sending.get(to)
        if task is not None and not task.done():
            return
        self.snaps.sending[to] = self.loop.create_task(self._stream_snapshot(m))

    async def _stream_snapshot(self, m: Message) -> None:
        to = NodeId(int(m.to))
        addr = self.members.get(int(to))
        ok, why = False, "no address"
        try:
            if addr is not None:
                hello = snap_hello(self.cluster, self.node_id, self.cfg.listen)
                ok, why, sent = await send_snapshot(
                    addr, hello, encode_message(m), self.kv.snapshot(), 5.0
                )
                self.metrics.peer_bytes_out.inc(sent)
        except asyncio.CancelledError:
            why = "cancelled"
            raise
        except Exception as e:  # any failure: the core must hear of it, or it waits
            why = f"{type(e).__name__}: {e}"
        finally:
            if ok:
                self.metrics.snapshots_sent.inc()
                log.info("node %d sent a snapshot to node %d", self.node_id, to)
            else:
                log.warning("node %d could not send a snapshot to node %d: %s",
                            self.node_id, to, why)  # fmt: skip
            if not self.stopping:
                self.raw.report_snapshot(to, ok)
                self._schedule()

    def snapshot_received(self, frm: int, first: bytes, spool: Path, conn: SnapConn) -> None:
        if self.snaps.restoring or self.stopping:
            # One install at a time: two overlapping ones (an old and a new leader each
            # sending one) could swap an older store in over a newer one.
            spool.unlink(missing_ok=True)
            conn.answer(False, "busy installing another snapshot; retry later")
            return
        self.snaps.restoring = True
        self.snaps.installing = self.loop.create_task(self._install(frm, first, spool, conn))

    async def _install(self, frm: int, first: bytes, spool: Path, conn: SnapConn) -> None:
        try:
            m = decode_message(unpack(first))
            chunks = read_spool(spool)
            head = next(chunks)
            index = snapshot_index(head)
            if index > self.kv.applied_index():
                # Restore beside the open store, off the loop; no Ready is handled (so
                # nothing is applied) until the new store is swapped in.
                path = self.kv.path

                def restore() -> MVCCStore:
                    new = MVCCStore.restore(path, [head, *chunks], sync=True)
                    new.close()
                    return MVCCStore(path, metasync=False)

                new = await self.loop.run_in_executor(None, restore)
                old, self.kv = self.kv, new
                old.close()
            self.raw.step(m)
            self.metrics.snapshots_received.inc()
            log.info("node %d installed a snapshot at %d from node %d", self.node_id, index, frm)
            conn.answer(True)
        except Exception as e:
            log.warning("node %d refused a snapshot from node %d: %r", self.node_id, frm, e)
            conn.answer(False, str(e))
        finally:
            self.snaps.restoring = False
            spool.unlink(missing_ok=True)
            self._schedule()

    # -- membership and leadership ----------------------------------------------------

    async def _admin(self, conn: ClientConn, req_id: Any, op: int, body: Any) -> None:
        try:
            if self.raw.raft.role is not Role.LEADER:
                self._not_leader(conn, req_id)
                return
            if op == OP_TRANSFER:
                result: Any = await self.transfer(int(body or 0))
            elif op == OP_MEMBER_ADD:
                node, addr, learner_only = body
                result = await self.member_add(int(node), str(addr), bool(learner_only))
            else:
                result = await self.member_remove(int(body))
            conn.reply(req_id, OK, result)
        except ProposalDropped as e:
            self._error(conn, req_id, ERR_NOT_LEADER, [e.leader, self.members.get(e.leader)])
        except (ConfChangeError, _Refused) as e:
            self._error(conn, req_id, ERR_MEMBERSHIP, str(e))
        except TimeoutError:
            self._error(conn, req_id, ERR_TIMEOUT, "the change did not finish in time")
        except (TypeError, ValueError) as e:
            self._error(conn, req_id, ERR_BAD_REQUEST, f"bad arguments: {e}")
        finally:
            if conn in self.dirty or conn.out:
                self._schedule()

    async def _until_applied(self, index: int, term: int, timeout: float) -> None:
        """Wait until the entry proposed at ``index`` in ``term`` is applied. Raises
        ``ProposalDropped`` if another leader's entry took its place (it never took
        effect) and ``TimeoutError`` when that cannot be known (outcome unknown)."""
        if self.kv.applied_index() >= index:
            seen = self.raw.raft.log.term(Index(index))
            ok: bool | None = None if seen is None else int(seen) == term
        else:
            fut: asyncio.Future[bool | None] = self.loop.create_future()
            self.apply_waiters.append(_Waiter(index, term, fut))
            ok = await asyncio.wait_for(fut, timeout)
        if ok is None:
            raise TimeoutError
        if not ok:
            raise ProposalDropped(
                "leadership was lost and the change was replaced; it did not happen",
                int(self.raw.raft.lead),
            )

    async def _conf_change(self, cc: ConfChange, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.raw.raft.role is not Role.LEADER:
                raise ProposalDropped("lost leadership", int(self.raw.raft.lead))
            try:
                index = self.raw.propose_conf_change(cc)
                break
            except ProposalDropped as e:
                if "not applied yet" not in str(e) and "transfer" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise TimeoutError from None
                await asyncio.sleep(self.cfg.tick_ms / 1000)
        term = int(self.raw.raft.term)
        self._schedule()
        await self._until_applied(int(index), term, max(0.1, deadline - time.monotonic()))
        # Leaving the joint configuration is proposed by the core itself once applied.
        while self.raw.raft.trk.conf.joint:
            if time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(self.cfg.tick_ms / 1000)

    def members_list(self) -> list[dict[str, Any]]:
        conf = self.raw.raft.trk.conf
        ids = set(conf.voters) | set(conf.learners) | set(conf.voters_outgoing)
        return [
            {"id": int(i), "addr": self.members.get(int(i)), "voter": i in conf.voters}
            for i in sorted(ids)
        ]

    async def member_add(self, node: int, addr: str, learner_only: bool) -> list[dict[str, Any]]:
        parse_address(addr)
        conf = self.raw.raft.trk.conf
        timeout = max(30.0, self.cfg.request_timeout_s)
        if node in conf.voters:
            raise _Refused(f"node {node} is already a voter")
        ctx = json.dumps({str(node): addr})
        if node not in conf.learners:
            self.learn_address(node, addr)
            cc = ConfChange((Change(ChangeType.ADD_LEARNER, NodeId(node)),), context=ctx)
            await self._conf_change(cc, timeout)
        if learner_only:
            return self.members_list()
        # Promote once it has caught up: a voter that cannot vote yet would only make
        # the quorum harder to reach.
        deadline = time.monotonic() + 10 * timeout
        while True:
            if self.raw.raft.role is not Role.LEADER:
                raise ProposalDropped("lost leadership", int(self.raw.raft.lead))
            pr = self.raw.raft.trk.progress.get(NodeId(node))
            if pr is not None and pr.match + 100 >= self.raw.raft.log.last_index():
                break
            if time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(self.cfg.tick_ms / 1000)
        cc = ConfChange((Change(ChangeType.ADD_VOTER, NodeId(node)),), context=ctx)
        await self._conf_change(cc, timeout)
        return self.members_list()

    async def member_remove(self, node: int) -> list[dict[str, Any]]:
        conf = self.raw.raft.trk.conf
        if node not in conf.voters and node not in conf.learners:
            raise _Refused(f"node {node} is not a member")
        if node == self.node_id:
            others = [v for v in conf.voters if v != node]
            if not others:
                raise _Refused("cannot remove the last voter")
            await self.transfer(0)
            raise ProposalDropped("leadership moved before removing this node",
                                  int(self.raw.raft.lead))  # fmt: skip
        cc = ConfChange((Change(ChangeType.REMOVE, NodeId(node)),))
        await self._conf_change(cc, max(30.0, self.cfg.request_timeout_s))
        return self.members_list()

    def _best_follower(self) -> int:
        """The voter to hand leadership to: the most caught-up one, preferring those
        heard from lately (check-quorum's activity flags)."""
        r = self.raw.raft
        best, best_key = 0, (False, -1)
        for nid, pr in r.trk.progress.items():
            if nid == r.id or pr.is_learner or nid not in r.trk.conf.voters:
                continue
            key = (bool(pr.recent_active), int(pr.match))
            if key > best_key:
                best, best_key = int(nid), key
        return best

    async def transfer(self, to: int, wait_s: float | None = None) -> dict[str, Any]:
        target = to or self._best_follower()
        if not target:
            raise _Refused("no other voter to transfer leadership to")
        if target == self.node_id:
            return {"leader": self.node_id}
        self.raw.transfer_leader(NodeId(target))
        self._schedule()
        if wait_s is None:
            wait_s = 2 * self.cfg.election_timeout_s + 1
        deadline = time.monotonic() + wait_s
        # Wait until we have stepped down AND heard from the new leader.
        while self.raw.raft.lead in (NONE, self.node_id) and time.monotonic() < deadline:
            fut: asyncio.Future[None] = self.loop.create_future()
            self.role_waiters.append(fut)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, max(0.01, deadline - time.monotonic()))
        if self.raw.raft.role is Role.LEADER:
            raise TimeoutError
        return {"leader": int(self.raw.raft.lead) or target}

    # -- inspection ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        r = self.raw.raft
        lead = int(r.lead)
        progress = {}
        if r.role is Role.LEADER:
            for nid, pr in sorted(r.trk.progress.items()):
                progress[str(int(nid))] = {
                    "match": int(pr.match),
                    "next": int(pr.next),
                    "state": pr.state.name.lower(),
                    "learner": pr.is_learner,
                    "active": bool(pr.recent_active) or nid == r.id,
                }
        return {
            "id": self.node_id,
            "cluster_id": f"{self.cluster:016x}",
            "version": _version(),
            "role": r.role.value.replace("-", "_"),
            "term": int(r.term),
            "leader": lead,
            "leader_addr": self.members.get(lead),
            "commit": int(r.log.committed),
            "applied": self.kv.applied_index(),
            "last_index": int(r.log.last_index()),
            "snapshot_index": self.snapshot_index,
            "revision": self.kv.revision(),
            "compacted_revision": self.kv.compacted_revision(),
            "members": self.members_list(),
            "progress": progress,
            "pending_proposals": len(self.waiting) + len(self.writes),
            "db_bytes": _db_bytes(self.kv),
            "http": self.cfg.http or None,
            "listen": self.cfg.listen,
            "addr": self.cfg.listen,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "stopping": self.stopping,
        }

    def health(self) -> tuple[bool, str]:
        if self.fatal is not None:
            return False, f"storage failed: {self.fatal}"
        if self.stopping:
            return False, "stopping"
        r = self.raw.raft
        if r.lead == NONE:
            return False, "no leader known"
        lag = int(r.log.committed) - self.kv.applied_index()
        if lag > 1000:
            return False, f"applying: {lag} committed entries not yet applied"
        return True, f"leader {int(r.lead)}, term {int(r.term)}"

    def _gauges(self) -> dict[str, float]:
        r = self.raw.raft
        return {
            "term": float(r.term),
            "is_leader": float(r.role is Role.LEADER),
            "commit_index": float(r.log.committed),
            "applied_index": float(self.kv.applied_index()),
            "last_index": float(r.log.last_index()),
            "pending_proposals": float(len(self.waiting)),
            "members": float(len(r.trk.conf.voters)),
            "db_bytes": float(_db_bytes(self.kv)),
        }

    # -- shutdown --------------------------------------------------------------------

    async def stop(self) -> None:
        """Graceful stop: hand leadership over, answer everyone, make everything durable."""
        if self.stopping:
            return
        self.stopping = True
        if self.raw.raft.role is Role.LEADER and self._best_follower() and self.fatal is None:
            try:
                # The core gives a transfer one election timeout; so do we, since the
                # whole cluster may be stopping at once.
                await self.transfer(0, self.cfg.election_timeout_s)
                log.info("node %d handed leadership over before stopping", self.node_id)
            except (TimeoutError, _Refused, ProposalDropped) as e:
                log.warning("node %d stops without a leadership transfer: %s", self.node_id, e)
        if self.server is not None:
            self.server.close()
        if self.snaps.installing is not None and not self.snaps.installing.done():
            # Let a restore running in a thread finish its swap before the store closes.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.snaps.installing), 60)
        self._fail_everything(f"node {self.node_id} is stopping")
        for task in self.snaps.sending.values():
            task.cancel()
        for link in self.links.values():
            link.flush()
            link.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self.fatal is None:
            self.storage.sync()
            self.kv.sync()
        self.closed = True
        self.storage.close()
        self.kv.close()


_LOST_LEADERSHIP = "leadership was lost before the entry was applied; the outcome is unknown"


class _Refused(Exception):
    """A membership or leadership request that cannot be done as asked."""


def _version() -> str:
    try:
        return version("quorumkv")
    except PackageNotFoundError:
        return "unknown"


def _db_bytes(kv: MVCCStore) -> int:
    try:
        return int(kv.stats()["used_bytes"])
    except Exception:
        return 0
