"""One quorumkv node: a store hosting one replica per Raft group, and the asyncio driver.

Theory of operation
-------------------
A ``Node`` is a store (docs/sharding.md): it owns what every group on the node shares,
and holds one ``Replica`` (``_replica``) per group, in ``replicas``. Today that is
exactly one, group 1 (``GROUP``), holding the whole keyspace. Shared, and owned here:
the configuration and identity (``node.json``, the cluster id); the one WAL and snapshot
store (``NodeStorage`` in ``<data-dir>/raft``) for every group; the address book of the
nodes heard of (``members``); the peer links (one per peer node, one frame per flush
carrying every group's messages) and the listener; client connections and the dispatch
of their requests; the tick; the drive loop; metrics; ``/status`` and ``/health``; the
lifecycle (start, stop, a fatal failure).

Everything runs on one event loop thread. Input arrives in callbacks: peer messages are
stepped at once into the core of the replica their ``group`` names (a message for a
group this node does not host is dropped, with a rate-limited log line); client
requests are queued on the replica that serves them (group 1, for now); a snapshot
stream goes to the replica its SNAP message names. Any input schedules ONE ``_drive``
call for the end of the loop iteration (``call_soon``), so all the input of an
iteration is handled as one batch. A drive looks only at the replicas that had input
since the last one (``schedule(replica)``, and every replica a peer message reached),
so a node with a thousand ranges does not poll a thousand cores per message; the drive
after each tick looks at every replica that is not quiet, which also catches any input
that did not mark its replica:

1. each replica turns its queued writes into one ``propose_many`` and its queued
   linearizable reads into one ``read_index`` request;
2. while any replica has a ``Ready``, one round takes the Ready of every replica that
   has one and runs it through the core's contract (``quorumkv.consensus``) phase by
   phase, each phase for all of them before the next:

   a. role changes are noted and a leader's appends and heartbeats are queued (they
      may leave before its own fsync: thesis 10.2.1); the links are flushed;
   b. each Ready is buffered in the shared WAL; then ONE fsync, if any Ready must be
      durable, covers every group;
   c. every other message is queued; the links are flushed, one frame per peer:
      acknowledgements leave before anything is applied;
   d. each replica applies its committed entries, answering their writers, serves the
      reads whose index is applied, and calls ``advance``; every replica's applies
      join ONE engine transaction (``Engine.begin_round``), which stays open across
      rounds and drives;

3. flush every client connection's answers with one write each; commit the engine's
   transaction if a tick has passed since it opened (or it holds ``COMMIT_ENTRIES``):
   one commit and one fdatasync a tick at most, however many groups and rounds
   applied, as etcd batches its backend's commits (what is applied but not committed
   is in the WAL, and a restart replays it); compact any log due (which commits first).

Peer links also carry node-level control messages (a list starting with a string, where
a Raft message starts with its type's number): a range's leader going quiet
(``Replica`` explains quiescence). A link with nothing to carry for two ticks sends an
empty frame, and every frame records when its peer was last heard (``heard``): each
tick, a quiet follower whose leader's node has been silent for an election timeout is
woken, forgets that leader and campaigns after a short random delay (as when the
leader's connection closes). A late answer to a quiet leader's last heartbeat does not
wake it; any other message to a quiet replica does.

A failure anywhere in the drive (the disk, or a bug between ``ready()`` and
``advance()``) is fatal: what reached the disk is unknown, so the node answers
everyone, stops serving and exits; a restart recovers from the WAL. A stopped node
ignores late peer messages and ticks: its storage is closed.

This module must never block the loop on the network or the disk beyond the WAL's
fsync, never let a message leave before the WAL holds what it promises, and never hold
per-group Raft or request state: that is the replicas'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from quorumkv.consensus import (
    ConfChangeError,
    GroupId,
    MessageRejected,
    MessageType,
    NodeId,
    ProposalDropped,
    Role,
    bootstrap_state,
)
from quorumkv.errors import ServerError
from quorumkv.kv import Engine
from quorumkv.net import (
    ERR_BAD_REQUEST,
    ERR_MEMBERSHIP,
    ERR_NOT_LEADER,
    ERR_SHUTTING_DOWN,
    ERR_TIMEOUT,
    ERR_TOO_MANY,
    ERR_UNAVAILABLE,
    ERR_WRONG_RANGE,
    OK,
    OP_MEMBER_ADD,
    OP_MEMBER_REMOVE,
    OP_META,
    OP_NODE_STATE,
    OP_RANGE_READ,
    OP_RANGE_WRITE,
    OP_RANGES,
    OP_READ,
    OP_SPLIT,
    OP_STATUS,
    OP_TRANSFER,
    OP_WRITE,
    pack,
    parse_address,
    unpack,
)
from quorumkv.storage import NodeStorage, OSFileSystem

from ._codec import decode_message
from ._config import ServerConfig, check_identity, read_identity, write_identity
from ._conn import ClientConn, Inbound, SnapConn
from ._machines import KVMachine, Machine, MetaMachine
from ._metrics import Metrics
from ._peers import PeerLink, link_hello
from ._replica import QUIESCE, ReadyCycle, Refused, Replica
from ._sharding import META, Shards, machine_for
from ._sharding import bootstrap as bootstrap_sharded

log = logging.getLogger("quorumkv.server")

GROUP = GroupId(1)
"""The one group every node hosts today; it serves every client request."""
_UNHOSTED_LOG_S = 10.0
_VOTES = (MessageType.VOTE, MessageType.PRE_VOTE)
_ACKS = (MessageType.HEARTBEAT_RESP, MessageType.APP_RESP)
_KEEPALIVE_TICKS = 2
"""A peer link with nothing else to carry sends an empty frame this often (ticks)."""
COMMIT_ENTRIES = 20_000
"""Entries applied after which the engine's open round commits before the next tick."""
"""At most one log line this often about input for groups this node does not host."""
_OP_NAMES = {
    OP_WRITE: "write",
    OP_READ: "read",
    OP_STATUS: "status",
    OP_MEMBER_ADD: "member",
    OP_MEMBER_REMOVE: "member",
    OP_TRANSFER: "transfer",
    OP_RANGE_WRITE: "write",
    OP_RANGE_READ: "read",
    OP_RANGES: "ranges",
    OP_SPLIT: "split",
    OP_META: "meta",
    OP_NODE_STATE: "member",
}
_CODE_NAMES = {
    ERR_NOT_LEADER: "not_leader",
    ERR_UNAVAILABLE: "unavailable",
    ERR_TIMEOUT: "timeout",
    ERR_TOO_MANY: "too_many",
    ERR_SHUTTING_DOWN: "shutting_down",
    ERR_BAD_REQUEST: "bad_request",
    ERR_MEMBERSHIP: "membership",
    ERR_WRONG_RANGE: "wrong_range",
}


class Node:
    """A running node. Build with ``Node(cfg)``, then ``await node.start()``."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.loop = asyncio.get_running_loop()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = NodeStorage(OSFileSystem(), str(cfg.data_dir / "raft"))
        self.engine = Engine(cfg.data_dir / "kv", metasync=False)
        self.sharded = False
        self.cluster = self._identity()
        self.members: dict[int, str] = {}
        self.metrics = Metrics(self._gauges)
        self.links: dict[int, PeerLink] = {}
        self.dirty: list[ClientConn] = []
        self.clients: set[ClientConn] = set()
        self.replicas: dict[GroupId, Replica] = {}
        self.shards: Shards | None = Shards(self) if self.sharded else None
        if self.sharded:
            groups = self.storage.groups()
            if META not in groups:  # joining: the meta range's snapshot comes later
                self.replicas[META] = Replica(self, META, MetaMachine(self.engine, int(META)))
            for group in groups:
                sm = machine_for(self.engine, group)
                if sm is None:
                    log.warning("node %d: group %d has Raft state but no data yet; its "
                                "parent range creates it again", cfg.node_id, group)  # fmt: skip
                    continue
                self.replicas[group] = Replica(self, group, sm)
        else:
            if int(GROUP) not in self.engine.ranges():
                self.engine.create_range(int(GROUP), b"", b"")  # the whole keyspace
            self.replicas[GROUP] = Replica(
                self, GROUP, KVMachine(self.engine, self.engine.range(1))
            )
        for node, addr in cfg.peers.items():  # what the groups' logs taught wins
            self.members.setdefault(node, addr)
        self._spool_seq = 0
        self.op_counts: dict[str, int] = dict.fromkeys(_OP_NAMES.values(), 0)
        self._drive_scheduled = False
        self._active: set[Replica] = set()
        """Replicas with input since the last drive: the ones it looks at."""
        self._full_pass = True
        """The next drive looks at every replica (set by each tick)."""
        self._commit_due = False
        self.heard: dict[int, float] = {}
        """When each peer's last frame arrived (monotonic): what keeps quiet groups safe."""
        self._tick_handle: asyncio.TimerHandle | None = None
        self._unhosted = 0
        """Messages and snapshots dropped since the last log line about them."""
        self._unhosted_logged = -_UNHOSTED_LOG_S
        self.stopping = False
        self.closed = False
        """Set once the storage is closed: nothing may touch it after that."""
        self.started = time.monotonic()
        self.server: asyncio.Server | None = None
        self.fatal: BaseException | None = None
        self.retired: str | None = None
        """Why this node stops by itself although nothing failed (it was removed)."""

    # -- start-up --------------------------------------------------------------------

    def _identity(self) -> int:
        cfg = self.cfg
        doc = read_identity(cfg.data_dir)
        has_state = bool(self.storage.groups())
        if doc is not None:
            self.sharded = bool(doc.get("sharded"))
            return check_identity(cfg, doc)
        if cfg.join:
            if has_state:
                raise ServerError(f"data dir {cfg.data_dir} has Raft state but no node.json")
            # A sharded node registers itself with the cluster (``Shards``) and receives
            # a meta replica, then ranges; an unsharded one waits for ``member add``.
            self.sharded = cfg.sharded
            return 0  # learned from the first peer that contacts us
        self.sharded = cfg.sharded
        if not has_state:
            members = dict(cfg.peers)
            if cfg.sharded:
                bootstrap_sharded(self.storage, self.engine, members)
            else:
                data = pack({"members": {str(k): v for k, v in members.items()}})
                self.storage.bootstrap(GROUP, bootstrap_state(list(members), data=data))
            log.info("node %d bootstrapped %scluster %016x with %s", cfg.node_id,
                     "sharded " if cfg.sharded else "", cfg.cluster_id, members)  # fmt: skip
        write_identity(cfg.data_dir, cfg.node_id, cfg.cluster_id, self.sharded)
        return cfg.cluster_id

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
            self.link(peer)
        if self.shards is not None:
            self.shards.start()
        self.schedule()

    def _peer_ids(self) -> list[int]:
        """Every node that is a member of a group hosted here, but this one."""
        ids: set[int] = set()
        for r in self.replicas.values():
            ids |= r.peer_ids()
        return sorted(ids)

    def link(self, peer: int) -> PeerLink | None:
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
        self._full_pass = True
        self.schedule()

    def sync_links(self) -> None:
        wanted = set(self._peer_ids())
        for peer in wanted:
            self.link(peer)
        for peer in list(self.links):
            if peer not in wanted:
                self.links.pop(peer).close()

    # -- Host interface for connections --------------------------------------------------

    def current_cluster(self) -> int:
        return self.cluster

    def add_replica(self, group: GroupId, sm: Machine) -> Replica:
        """Host a new group (a split's right half), whose Raft state the WAL holds."""
        replica = Replica(self, group, sm)
        self.replicas[group] = replica
        self.sync_links()
        self.schedule(replica)
        return replica

    def remove_replica(self, group: GroupId, why: str) -> None:
        """Stop hosting ``group`` (its replica moved away) and delete its data."""
        replica = self.replicas.pop(group, None)
        if replica is None:
            return
        replica.destroy(why)
        self.sync_links()
        log.info("node %d no longer hosts group %d: %s", self.node_id, group, why)

    def learn_cluster(self, cluster: int) -> None:
        if not self.cluster:
            self.cluster = cluster
            write_identity(self.cfg.data_dir, self.node_id, cluster, self.sharded)
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
        self._spool_seq += 1
        return self.cfg.data_dir / f"snap-recv-{self._spool_seq}.tmp"

    def mark_dirty(self, conn: ClientConn) -> None:
        self.dirty.append(conn)
        self.schedule()

    def client_closed(self, conn: ClientConn) -> None:
        self.clients.discard(conn)

    def peer_messages(self, frm: int, docs: list[Any], nbytes: int) -> None:
        if self.closed:
            return  # stopped: late messages from peers are not ours to handle
        self.metrics.peer_bytes_in.inc(nbytes)
        self.heard[frm] = time.monotonic()  # an empty frame is a keepalive
        replicas = self.replicas
        for doc in docs:
            try:
                if doc and type(doc[0]) is str:
                    self._control(frm, doc)
                    continue
                m = decode_message(doc)
                if m.frm != frm:
                    raise MessageRejected(f"message from {m.frm} on node {frm}'s link")
                if m.type is MessageType.SNAP:
                    raise MessageRejected("a snapshot must come on a snapshot stream")
                replica = replicas.get(m.group)
                if replica is None:
                    self._unhosted_input(int(m.group), frm, "a message")
                    continue
                if m.type in _VOTES and getattr(replica.sm, "is_pending", False):
                    continue  # a replica without its snapshot holds nothing to vote on
                if replica.quiet and not (
                    m.type in _ACKS
                    and m.term == replica.raw.raft.term
                    and replica.raw.raft.role is Role.LEADER
                ):
                    # A late answer to the last heartbeat before a leader went quiet
                    # does not wake it; should it call for work (a rejection), the
                    # drive wakes the leader when it sees the Ready.
                    self._wake(replica)
                replica.raw.step(m)
                self._active.add(replica)
            except MessageRejected as e:
                log.warning("dropped a message from node %d: %s", frm, e)
            except ProposalDropped:
                pass
        self.schedule()

    def _control(self, frm: int, doc: list[Any]) -> None:
        """A node-level message that is not Raft's: a leader going quiet."""
        if doc[0] != QUIESCE or len(doc) != 4:
            raise MessageRejected(f"unknown control message {doc[0]!r}")
        try:
            group, term, index = (int(x) for x in doc[1:])
        except (TypeError, ValueError) as e:
            raise MessageRejected(f"malformed control message: {e}") from None
        replica = self.replicas.get(GroupId(group))
        if replica is not None and replica.quiescable:
            replica.quiesce_from(frm, term, index)

    def _unhosted_input(self, group: int, frm: int, what: str) -> None:
        """Input for a group this node does not host is dropped (once groups split and
        move, it will create the replica). Logged at most once per ``_UNHOSTED_LOG_S``:
        a peer that believes we host a group says so with every heartbeat."""
        self._unhosted += 1
        now = time.monotonic()
        if now - self._unhosted_logged >= _UNHOSTED_LOG_S:
            log.warning("node %d does not host group %d: dropped %s from node %d "
                        "(%d input(s) for unhosted groups dropped since the last such line)",
                        self.node_id, group, what, frm, self._unhosted)  # fmt: skip
            self._unhosted = 0
            self._unhosted_logged = now

    def peer_lost(self, frm: int) -> None:
        """A peer's connection to us closed: every replica whose leader it was may
        campaign at once (``Replica.peer_lost``)."""
        for r in self.replicas.values():
            r.peer_lost(frm)

    def snapshot_received(self, frm: int, first: bytes, spool: Path, conn: SnapConn) -> None:
        try:
            m = decode_message(unpack(first))
        except Exception as e:
            log.warning("node %d refused a snapshot from node %d: %r", self.node_id, frm, e)
            spool.unlink(missing_ok=True)
            conn.answer(False, str(e))
            return
        replica = self.replicas.get(m.group)
        if replica is None:
            self._unhosted_input(int(m.group), frm, "a snapshot")
            spool.unlink(missing_ok=True)
            conn.answer(False, f"node {self.node_id} does not host group {int(m.group)}")
            return
        replica.snapshot_received(frm, m, spool, conn)

    # -- client requests -----------------------------------------------------------------

    def client_request(self, conn: ClientConn, req_id: Any, op: Any, body: Any) -> None:
        try:
            self._client_request(conn, req_id, op, body)
        except Exception as e:  # a request must never take the connection down with it
            log.warning("bad request from %s: %r", conn.transport.get_extra_info("peername"), e)
            self.reply_error(conn, req_id, ERR_BAD_REQUEST, f"cannot handle the request: {e!r}")

    def _client_request(self, conn: ClientConn, req_id: Any, op: Any, body: Any) -> None:
        self.clients.add(conn)
        name = _OP_NAMES.get(op) if type(op) is int else None
        if name is None:
            self.reply_error(conn, req_id, ERR_BAD_REQUEST, f"unknown operation {op!r}")
            return
        self.op_counts[name] += 1
        if self.stopping:
            self.reply_error(conn, req_id, ERR_SHUTTING_DOWN, f"node {self.node_id} is stopping")
            return
        if op in (OP_WRITE, OP_READ):
            if self.shards is not None:
                why = "a sharded cluster takes requests routed by range (OP_RANGE_*)"
                self.reply_error(conn, req_id, ERR_BAD_REQUEST, why)
            elif op == OP_WRITE:
                self.replicas[GROUP].write(conn, req_id, body)
            else:
                self.replicas[GROUP].read(conn, req_id, body)
        elif op in (OP_RANGE_WRITE, OP_RANGE_READ, OP_RANGES, OP_SPLIT, OP_META, OP_NODE_STATE):
            if self.shards is None:
                self.reply_error(conn, req_id, ERR_BAD_REQUEST,
                                 f"{name} by range: this cluster is not sharded")  # fmt: skip
            else:
                self.shards.request(conn, req_id, op, body)
        elif op == OP_STATUS:
            conn.reply(req_id, OK, self.status())
        elif self.shards is not None and op in (OP_MEMBER_ADD, OP_MEMBER_REMOVE):
            # Membership is the directory's: a node joins with --join and leaves by a
            # drain, never by a change to the meta range's Raft group from outside.
            why = ("a sharded cluster's nodes join with --join and leave with a drain "
                   "(OP_NODE_STATE: 'qkv node remove --drain')")  # fmt: skip
            self.reply_error(conn, req_id, ERR_BAD_REQUEST, why)
        else:
            self.loop.create_task(self._admin(conn, req_id, op, body))

    def reply_error(self, conn: ClientConn, req_id: Any, code: int, body: Any) -> None:
        self.metrics.client_errors[_CODE_NAMES[code]].inc()
        conn.reply(req_id, code, body)

    async def _admin(self, conn: ClientConn, req_id: Any, op: int, body: Any) -> None:
        replica = self.replicas[GROUP]
        try:
            if replica.raw.raft.role is not Role.LEADER:
                replica.not_leader(conn, req_id)
                return
            if op == OP_TRANSFER:
                result: Any = await replica.transfer(int(body or 0))
            elif op == OP_MEMBER_ADD:
                node, addr, learner_only = body
                result = await replica.member_add(int(node), str(addr), bool(learner_only))
            else:
                result = await replica.member_remove(int(body))
            conn.reply(req_id, OK, result)
        except ProposalDropped as e:
            self.reply_error(conn, req_id, ERR_NOT_LEADER, [e.leader, self.members.get(e.leader)])
        except (ConfChangeError, Refused) as e:
            self.reply_error(conn, req_id, ERR_MEMBERSHIP, str(e))
        except TimeoutError:
            self.reply_error(conn, req_id, ERR_TIMEOUT, "the change did not finish in time")
        except (TypeError, ValueError) as e:
            self.reply_error(conn, req_id, ERR_BAD_REQUEST, f"bad arguments: {e}")
        finally:
            if conn in self.dirty or conn.out:
                self.schedule()

    # -- the drive cycle -----------------------------------------------------------------

    def schedule(self, replica: Replica | None = None) -> None:
        """Drive at the end of this loop iteration: the replicas that had input since
        the last drive (``replica``, the ones a peer message reached), or all of them
        after a tick (``_full_pass``)."""
        if replica is not None:
            self._active.add(replica)
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
        if self._full_pass:
            # After a tick: every replica that is not quiet (a quiet one has input only
            # through a message or a request, which mark it active). This pass is also
            # the safety net for input that did not mark its replica.
            self._full_pass = False
            replicas = [r for r in self.replicas.values() if not r.quiet or r in self._active]
        else:
            hosted = self.replicas
            active = [r for r in self._active if hosted.get(r.group) is r]
            replicas = sorted(active, key=_by_group) if len(active) > 1 else active
        self._active.clear()
        for r in replicas:
            r.propose_queued()
            if r.quiet and r.raw.raft.role is Role.LEADER and r.has_ready():
                r.wake()  # a conf change, a transfer, a read index on a quiet leader
        while self._round(replicas):
            pass
        self._flush_links()
        self.flush_clients()
        if self._commit_due or self.engine.round_entries >= COMMIT_ENTRIES:
            self._commit_due = False
            self.engine.end_round()
        for r in replicas:
            r.maybe_compact()
            if r.has_ready():
                self.schedule(r)

    def _round(self, replicas: list[Replica]) -> bool:
        """One Ready from every replica that has one, phase by phase (the module
        docstring's step 2); False if none had one."""
        cycles: list[ReadyCycle] = [r.ready() for r in replicas if r.has_ready()]
        if not cycles:
            return False
        t0 = time.perf_counter()
        early = False
        for c in cycles:
            early = c.replica.send_early(c) or early
        if early:
            self._flush_links()
        must_sync = False
        for c in cycles:
            c.replica.persist(c)
            must_sync = must_sync or c.rd.must_sync
        if must_sync:
            t1 = time.perf_counter()
            self.storage.sync()
            self.metrics.fsync_seconds.observe(time.perf_counter() - t1)
        for c in cycles:
            c.replica.send_late(c)
        # Acks leave before this node applies: applying is off the commit path.
        self._flush_links()
        # Every group's applies share one engine transaction, which stays open across
        # rounds until a tick commits it (or it grows large): one commit and one
        # fdatasync a tick at most, as etcd batches its backend's commits.
        self.engine.begin_round()
        for c in cycles:
            c.replica.finish(c)
        self.metrics.ready_seconds.observe(time.perf_counter() - t0)
        return True

    def _flush_links(self) -> None:
        for link in self.links.values():
            if not link.flush():
                peer = NodeId(link.peer_id)
                for r in self.replicas.values():
                    r.raw.report_unreachable(peer)

    def flush_clients(self) -> None:
        if self.dirty:
            out = 0
            for conn in self.dirty:
                out += conn.flush()
            self.dirty.clear()
            self.metrics.client_bytes_out.inc(out)

    def _fail_everything(self, why: str) -> None:
        for r in self.replicas.values():
            r.fail_everything(why)
        for conn in self.dirty:
            conn.flush()
        self.dirty.clear()

    # -- ticks -----------------------------------------------------------------------

    def _wake(self, r: Replica) -> None:
        """Wake a quiet replica for a message; a follower whose leader's node has been
        silent past an election timeout is told so (``leader_silent``), as the tick
        would: woken plainly, it would keep that leader and refuse the very pre-vote
        that woke it."""
        lead = int(r.raw.raft.lead)
        if (
            r.raw.raft.role is not Role.LEADER
            and lead
            and time.monotonic() - self.heard.get(lead, 0.0) > self.cfg.election_timeout_s
        ):
            r.leader_silent()
        else:
            r.wake()

    def _tick(self) -> None:
        self._tick_handle = self.loop.call_later(self.cfg.tick_ms / 1000, self._tick)
        if self.fatal is not None or self.closed:
            return
        now = time.monotonic()
        timeout = self.cfg.election_timeout_s
        for r in self.replicas.values():
            # A quiet follower's leader must still be alive: its node sends at least a
            # keepalive every few ticks. Silence wakes the group, which then elects.
            if (
                r.quiet
                and r.raw.raft.role is not Role.LEADER
                and now - self.heard.get(int(r.raw.raft.lead), 0.0) > timeout
            ):
                r.leader_silent()
            r.tick(now)
        for link in self.links.values():
            link.keepalive(now, _KEEPALIVE_TICKS * self.cfg.tick_ms / 1000)
        self._commit_due = self.engine.round is not None
        self._full_pass = True
        self.schedule()

    # -- inspection ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out = {
            "id": self.node_id,
            "cluster_id": f"{self.cluster:016x}",
            "version": _version(),
            **self.replicas[GROUP].status(),
            "http": self.cfg.http or None,
            "listen": self.cfg.listen,
            "addr": self.cfg.listen,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "stopping": self.stopping,
            "sharded": self.sharded,
        }
        if self.shards is not None:
            out["ranges"] = [
                r.range_status() for g, r in sorted(self.replicas.items()) if g != GROUP
            ]
            out["splits"] = self.shards.splits
        return out

    def health(self) -> tuple[bool, str]:
        if self.fatal is not None:
            return False, f"storage failed: {self.fatal}"
        if self.stopping:
            return False, "stopping"
        return self.replicas[GROUP].health()

    def _gauges(self) -> dict[str, float]:
        out = self.replicas[GROUP].gauges()
        if self.shards is not None:
            ranges = [r for g, r in self.replicas.items() if g != GROUP]
            out["ranges"] = float(len(ranges))
            out["ranges_led"] = float(sum(r.raw.raft.role is Role.LEADER for r in ranges))
            out["ranges_quiet"] = float(sum(r.quiet for r in ranges))
        return out

    # -- shutdown --------------------------------------------------------------------

    async def stop(self) -> None:
        """Graceful stop: hand leadership over, answer everyone, make everything durable."""
        if self.stopping:
            return
        self.stopping = True
        if self.shards is not None:
            self.shards.stop()
        replicas = list(self.replicas.values())
        if self.fatal is None:
            await asyncio.gather(*(r.hand_over() for r in replicas))
        if self.server is not None:
            self.server.close()
        for r in replicas:
            await r.wait_install()
        self._fail_everything(f"node {self.node_id} is stopping")
        for r in replicas:
            r.cancel_sends()
        for link in self.links.values():
            link.flush()
            link.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self.fatal is None:
            self.storage.sync()
            for r in replicas:
                r.sm.sync()  # the meta range writes its state to the engine here
            self.engine.sync()
        self.closed = True
        self.storage.close()
        self.engine.close()


def _by_group(r: Replica) -> int:
    return int(r.group)


def _version() -> str:
    try:
        return version("quorumkv")
    except PackageNotFoundError:
        return "unknown"
