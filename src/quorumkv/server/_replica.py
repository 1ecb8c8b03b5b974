"""One Raft group on a node: its core, its state machine, and the requests waiting on them.

Theory of operation
-------------------
A ``Replica`` is everything a node keeps for ONE group: the ``RawNode``; the MVCC store
its committed entries are applied to; the writes queued for the next proposal and those
proposed and waiting to be applied (keyed by index, with the term they were proposed
in); the linearizable reads queued for the next read index, waiting for it, and waiting
for it to be applied; the waiters of membership changes and leadership transfers; the
snapshots it streams to peers and the one it installs; its log compaction.

Everything shared by the groups on the node belongs to its store (``Store``, which the
``Node`` is): identity and configuration, the one WAL, the peer links, the client
connections and their flushing, the tick, the drive loop. The store runs the Ready
cycle (``quorumkv.consensus``'s duties) in phases, each phase for every replica that
has a Ready before the next phase starts, so that one fsync and one frame per peer
serve every group. A replica's part of one round, in order:

1. ``send_early``: note a role change; queue a leader's appends and heartbeats, which
   may leave before its own fsync (thesis 10.2.1), unless the Ready changes the term
   or the vote. (The store then flushes its links.)
2. ``persist``: buffer the Ready in the shared WAL. (The store then fsyncs once if any
   replica's Ready must be durable.)
3. ``send_late``: queue every other message, now that what they promise is durable.
   (The store then flushes its links: acknowledgements leave before anything applies.)
4. ``finish``: record a snapshot's addresses; apply the committed entries in one LMDB
   transaction, answering their writers before it commits; serve the reads whose read
   index is applied; ``advance``.

Before a round the store calls ``propose_queued`` (the queued writes become one
``propose_many``, the queued reads share one ``read_index``), and after the last one
``maybe_compact``.

A write is answered when its entry is applied: the entry at the index the proposal got,
with the term it was proposed in. A different term there means another leader replaced
it; the writer is told to retry, which is safe because every write carries the client's
session (client id, sequence number) and the state machine applies each once. When this
replica stops leading, its waiting writers are told at once that the outcome is unknown
(their entries may still commit), and retry the same way.

The MVCC store syncs its data pages but not its meta page per batch (LMDB's NOMETASYNC:
a power loss may undo its last transaction, never corrupt it): the WAL is the durable
record, the store is fully synced before the log under its applied index is dropped,
and a restart replays whatever the store lost. A leader snapshot carries only the
member addresses; a follower that needs one gets the whole store streamed on its own
connection and installed (one at a time per group) before the core sees the SNAP
message. Entries the store already holds are skipped by index when they are applied
again.

A linearizable read (thesis 6.4) waits for a read index from the core: the leader's
commit index once a heartbeat round confirmed it still leads, or, at a follower or a
learner, the same index asked of its leader (a forwarded READ_INDEX). Whatever this
replica's role, the read is served once it has applied up to that index, never before:
what it then holds includes every write acknowledged before the read arrived, so any
replica may serve linearizable reads (clients spread them with ``read_from``). A read
at a replica that knows no leader to ask, or whose read index does not come or is not
applied within two election timeouts, is answered ERR_UNAVAILABLE, saying which.

Membership changes are coroutines that propose, then wait for the change to apply (and
for a new node to catch up before promoting it); their addresses travel in the
change's context, so every node learns them from the log or a snapshot (into the
store's address book, ``Store.members``).

A range of a sharded node *quiesces* when idle (CockroachDB's idea): a leader with
nothing queued, waiting or in flight, whose every member holds its whole log, tells them
so after ``QUIESCE_TICKS`` idle ticks (a ``q`` control message: group, term, last
index) and stops ticking; a member that follows that leader in that term with that log
stops ticking too. No heartbeats flow, so a thousand quiet ranges cost next to nothing.
Any request or Raft message for the group wakes it (``wake``); so does silence from the
leader's node, which the store watches through keepalives on the peer links, so a range
whose leader died or stopped still elects. Quiescence only stops timers: it never
changes what Raft decides.

A replica must never fsync the WAL, flush a peer link or touch another group's state:
those are the store's, batched over every group. It must never acknowledge a write
before its entry is applied, nor answer a linearizable read before its read index is,
and never send a message that promises more than what the store made durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from quorumkv.consensus import (
    EARLY_RETRIES,
    NONE,
    Change,
    ChangeType,
    ConfChange,
    ConfChangeError,
    Config,
    EntryType,
    GroupId,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    ProposalDropped,
    RaftState,
    RawNode,
    Ready,
    Role,
    decode_conf_change,
)
from quorumkv.errors import FutureRevisionError, KVError, ServerError
from quorumkv.kv import (
    ADMIN_PREFIX,
    LIMITS,
    KVLimitError,
    RangeRequest,
    decode_command,
    encode_result,
    stamp_command,
)
from quorumkv.net import (
    ERR_BAD_REQUEST,
    ERR_NOT_LEADER,
    ERR_TIMEOUT,
    ERR_TOO_MANY,
    ERR_UNAVAILABLE,
    OK,
    pack,
    parse_address,
    unpack,
)
from quorumkv.storage import NodeStorage

from ._codec import EntryCache, encode_message
from ._config import ServerConfig
from ._conn import ClientConn, SnapConn, read_spool
from ._machines import KVMachine, Machine
from ._metrics import READ_ROLES, Metrics
from ._peers import PeerLink, send_snapshot, snap_hello

if TYPE_CHECKING:
    from ._sharding import Shards

log = logging.getLogger("quorumkv.server")

_EARLY = frozenset({MessageType.APP, MessageType.HEARTBEAT})
"""What a leader may send before its own fsync (``Replica.send_early``)."""
QUIESCE = "q"
"""The control message a leader sends its group's members when it goes quiet:
``[QUIESCE, group, term, last index]`` (Raft messages start with an int)."""
QUIESCE_TICKS = 10
"""Idle ticks after which a range's leader quiesces its group."""
META_GROUP = GroupId(1)
CONF_VER = "conf_ver"
"""The key of a sharded range's conf change context that carries the directory's replica
version the change moves toward (the other keys are node ids and their addresses)."""
_LOST_LEADERSHIP = "leadership was lost before the entry was applied; the outcome is unknown"


class Store(Protocol):
    """What a replica needs from the node that hosts it (shared by all its groups)."""

    cfg: ServerConfig
    node_id: int
    cluster: int
    loop: asyncio.AbstractEventLoop
    storage: NodeStorage
    metrics: Metrics
    members: dict[int, str]
    """The address of every node this node has heard of, from any group."""
    stopping: bool
    fatal: BaseException | None
    shards: Shards | None
    """The sharded node's range services (None on an unsharded node)."""

    def schedule(self, replica: Replica | None = None) -> None:
        """Run the drive loop at the end of this loop iteration, for ``replica`` (which
        has input or a Ready) among others."""

    def link(self, peer: int) -> PeerLink | None:
        """The link to ``peer``, made if its address is known; None if not."""

    def sync_links(self) -> None:
        """Open links to every member of every group; close the others."""

    def flush_clients(self) -> None:
        """Write every client connection's buffered answers now."""

    def reply_error(self, conn: ClientConn, req_id: Any, code: int, body: Any) -> None:
        """Answer ``req_id`` with an error ``code``, counted in the metrics."""

    def learn_address(self, node: int, addr: str) -> None:
        """Record ``node``'s address (and re-aim its link)."""


class Refused(Exception):
    """A membership or leadership request that cannot be done as asked."""


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


@dataclass(slots=True)
class _Pinned:
    """A linearizable read at a revision above its stamped range's own, held by the
    range's leader until no write stamped at or below that revision can still come
    (``_pin``)."""

    conn: ClientConn
    req_id: Any
    req: RangeRequest
    deadline: float
    fence: int | None
    """The log index whose application settles every stamped write proposed before the
    read came; None while a batch of writes waits for its stamps."""
    first: int | None = None
    """The allocator's next revision, asked after the read came."""
    error: str | None = None


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


@dataclass(slots=True)
class ReadyCycle:
    """One replica's Ready on its way through one round of the store's drive loop."""

    replica: Replica
    rd: Ready
    late: tuple[Message, ...]
    """The messages still to send once the round's fsync is done."""
    cache: EntryCache = field(default_factory=EntryCache)


class Replica:
    """One group's replica on this node. Built by its store once the WAL holds the
    group's state (or none, for a node joining the group)."""

    def __init__(self, store: Store, group: GroupId, sm: Machine) -> None:
        self.store = store
        self.group = group
        cfg = store.cfg
        self.sm = sm
        self.stamped = sm.stamped
        """Writes get revision stamps from the meta range before they are proposed."""
        self.conf_ver = 0
        """Sharded ranges: the highest directory replica version a conf change applied
        here (or in the WAL since the last snapshot) moved toward; 0 if none is known."""
        state = self._load_state()
        rcfg = Config(
            id=NodeId(store.node_id),
            group=group,
            election_tick=cfg.election_ticks,
            heartbeat_tick=cfg.heartbeat_ticks,
        )
        self.raw = RawNode(rcfg, state, random.Random(), logging.getLogger("quorumkv.raft"))
        self._durable_vote = (state.hard_state.term, state.hard_state.vote)
        """(term, vote) of the last hard state made durable."""
        self.writes: list[tuple[bytes, ClientConn, Any]] = []
        self.admin: list[tuple[bytes, ClientConn, Any]] = []
        """Admin entries (a split) to propose as they are: never stamped."""
        self.stamping = 0
        """Writes waiting for their revision stamps."""
        self.applied_writes = 0
        """Entries applied with data, since the start (a sharded range's write rate)."""
        self.waiting: dict[int, _Write] = {}
        self.read_queue: list[tuple[ClientConn, Any, RangeRequest]] = []
        self.pinned: list[_Pinned] = []
        """Reads at a revision above the range's, waiting for their fence (``_pin``)."""
        self.read_batches: dict[bytes, _ReadBatch] = {}
        self.ready_reads: deque[_ReadBatch] = deque()
        self.apply_waiters: list[_Waiter] = []
        self.role_waiters: list[asyncio.Future[None]] = []
        self.snaps = _Snapshots()
        self._read_seq = 0
        # Read contexts carry a per-boot nonce: a late answer to a read of a previous
        # incarnation of this replica must not match a read of this one.
        self._boot = random.getrandbits(64).to_bytes(8, "big")
        self.leader_seen: int = NONE
        self.quiet = False
        """Quiesced: not ticked until a request or a message wakes it (``wake``)."""
        self.quiescable = store.shards is not None and group != META_GROUP
        """Only the ranges of a sharded node quiesce; the meta range never does."""
        self._idle_ticks = 0
        self._idle_last = -1
        self.leaderless_since: float | None = None
        """When this replica last found itself without a known leader (None: it has one)."""
        self.snapshot_index = int(state.snapshot.meta.index) if state.snapshot else 0

    # -- start-up --------------------------------------------------------------------

    def _load_state(self) -> RaftState:
        storage = self.store.storage
        if self.group not in storage.groups():
            return RaftState()
        st = storage.load(self.group)
        if st.snapshot is not None:
            self._learn_members(st.snapshot.data)
        for e in st.entries:
            if e.type is EntryType.CONF_CHANGE:
                self._learn_conf(e.data)
        hs = st.hard_state
        if getattr(self.sm, "is_pending", False):
            # A group this node held before (moved away, its data dropped) and is to
            # receive again: keep the term and the vote, which must never go back; the
            # log and snapshot of that time are not ours any more (a reset, so the
            # leader's snapshot may have a lower index than the old one).
            if st.snapshot is not None or st.entries:
                storage.reset(self.group, hs)
            return RaftState(HardState(hs.term, hs.vote, Index(0)))
        applied = self.sm.applied_index()
        floor = st.snapshot.meta.index if st.snapshot else 0
        if applied < floor and floor > 1:  # index 1 is the bootstrap: an empty store
            raise ServerError(
                f"the state machine ({self.sm.describe()}) is at index {applied}, behind the "
                f"Raft snapshot at {floor}: it was damaged or replaced; rebuild this node"
            )
        # The store may be ahead of the durable commit index (commit-only hard states
        # are not fsynced; a streamed snapshot is installed before Raft records it).
        # Raft restarts from what it knows committed; entries the store already holds
        # are skipped by index when they are applied again. Never raise the commit
        # index from the store: the log's tail at those indices may be a deposed
        # leader's, never committed.
        return RaftState(hs, st.snapshot, st.entries, Index(max(floor, min(applied, hs.commit))))

    def _learn_members(self, data: bytes) -> None:
        if not data:
            return
        try:
            doc = unpack(data)
            for k, v in doc["members"].items():
                self.store.members[int(k)] = str(v)
            self.conf_ver = max(self.conf_ver, int(doc.get(CONF_VER, 0)))
        except Exception as e:  # a snapshot from an older format: addresses come later
            log.warning("snapshot data without member addresses: %r", e)

    def _learn_conf(self, data: bytes) -> None:
        """A conf change's context: the addresses of the nodes it names and, for a
        sharded range, the directory's replica version (``conf_ver``) it moved toward."""
        try:
            cc = decode_conf_change(data)
            if cc.context:
                for k, v in json.loads(cc.context).items():
                    if k == CONF_VER:
                        self.conf_ver = max(self.conf_ver, int(v))
                    else:
                        self.store.members[int(k)] = str(v)
        except (ConfChangeError, ValueError, AttributeError) as e:
            log.warning("conf change without readable addresses: %r", e)

    def caught_up(self, node: int) -> bool:
        """Whether this leader replicates to ``node`` with a short lag: a learner that
        may become a voter without holding up the quorum."""
        raft = self.raw.raft
        pr = raft.trk.progress.get(NodeId(node))
        return (
            raft.role is Role.LEADER
            and pr is not None
            and pr.state.value == "replicate"  # not probing, not awaiting a snapshot
            and pr.match + 1 >= raft.log.first_index()  # an idle log may be compacted
            and pr.match + 100 >= raft.log.last_index()
        )

    def peer_ids(self) -> set[int]:
        """Every other member of this group: voters, learners, outgoing and incoming."""
        conf = self.raw.raft.trk.conf
        ids = set(conf.voters) | set(conf.learners) | set(conf.voters_outgoing)
        ids |= set(conf.learners_next)
        ids.discard(NodeId(self.store.node_id))
        return {int(i) for i in ids}

    # -- input from peers --------------------------------------------------------------

    def peer_lost(self, frm: int) -> None:
        """A peer's connection to us closed. If it was this group's leader, its process
        is most likely gone (a partition does not close connections this fast): forget
        it and campaign after a short random delay, instead of waiting out an election
        timeout of silence. A live leader simply reconnects; its next heartbeat brings
        us back."""
        raw = self.raw
        if self.store.stopping or raw.raft.role is not Role.FOLLOWER or raw.raft.lead != frm:
            return
        self._leader_gone()

    def leader_silent(self) -> None:
        """This quiet replica's leader's node has sent nothing, not even a keepalive,
        for an election timeout: the timeout has passed already, so forget the leader
        and campaign soon, as ``peer_lost`` does (waking for a fresh timeout first
        would double the time a quiet range is without a leader)."""
        if self.store.stopping or self.raw.raft.role is not Role.FOLLOWER:
            self.wake()
            return
        self._leader_gone()

    def _leader_gone(self) -> None:
        raw = self.raw
        if self.quiet:
            self.wake()
        if raw.forget_leader():
            delay = random.uniform(0, 2 * self.store.cfg.tick_ms / 1000)
            self.store.loop.call_later(delay, self._early_campaign, EARLY_RETRIES)
            self.store.schedule(self)

    def _early_campaign(self, retries: int) -> None:
        """Campaign now that the leader is gone, while no leader is known; then, up to
        ``retries`` times, again 2-4 ticks later if still none is."""
        raw = self.raw
        if self.store.stopping or self.store.fatal is not None:
            return
        if raw.raft.lead == NONE and raw.raft.role is not Role.LEADER:
            raw.campaign()
            self.store.schedule(self)
            if retries:
                tick = self.store.cfg.tick_ms / 1000
                again = random.uniform(2 * tick, 4 * tick)
                self.store.loop.call_later(again, self._early_campaign, retries - 1)

    # -- client requests -----------------------------------------------------------------

    def not_leader(self, conn: ClientConn, req_id: Any) -> None:
        lead = int(self.raw.raft.lead)
        if lead == NONE:
            self.store.reply_error(
                conn, req_id, ERR_UNAVAILABLE, f"node {self.store.node_id} knows no leader"
            )
        else:
            self.store.reply_error(
                conn, req_id, ERR_NOT_LEADER, [lead, self.store.members.get(lead)]
            )

    def write(self, conn: ClientConn, req_id: Any, body: Any) -> None:
        if self.raw.raft.role is not Role.LEADER:
            self.not_leader(conn, req_id)
            return
        if len(self.waiting) + len(self.writes) + self.stamping >= self.store.cfg.max_pending:
            self.store.metrics.proposals_refused.inc()
            self.store.reply_error(
                conn, req_id, ERR_TOO_MANY, f"{len(self.waiting)} writes are pending"
            )
            return
        if not isinstance(body, bytes):
            self.store.reply_error(
                conn, req_id, ERR_BAD_REQUEST, "a write's body is an encoded command"
            )
            return
        if len(body) > LIMITS.max_request_bytes:
            err = KVLimitError("request size", LIMITS.max_request_bytes, len(body))
            conn.reply(req_id, OK, encode_result(err))
            return
        # The command is not decoded here: every replica decodes and validates it when
        # it applies the entry, and a bad one becomes the same error result on all of
        # them, which is what the writer gets. Decoding it twice cost the leader ~9%.
        self.writes.append((body, conn, req_id))
        self.store.schedule(self)

    def propose_admin(self, conn: ClientConn, req_id: Any, data: bytes) -> None:
        """Queue an admin entry (``ADMIN_PREFIX``...) the node itself proposes."""
        if self.raw.raft.role is not Role.LEADER:
            self.not_leader(conn, req_id)
            return
        self.admin.append((data, conn, req_id))
        self.store.schedule(self)

    def read(self, conn: ClientConn, req_id: Any, body: Any) -> None:
        if not isinstance(self.sm, KVMachine):
            self.store.reply_error(conn, req_id, ERR_BAD_REQUEST, "this group holds no keys")
            return
        try:
            data, serializable = body
            cmd = decode_command(data)
        except KVError as e:
            conn.reply(req_id, OK, encode_result(e))
            return
        except (TypeError, ValueError):
            self.store.reply_error(
                conn, req_id, ERR_BAD_REQUEST, "a read's body is [command, serializable]"
            )
            return
        req = cmd.request
        if not isinstance(req, RangeRequest):
            self.store.reply_error(conn, req_id, ERR_BAD_REQUEST, "OP_READ carries a range request")
            return
        if serializable:
            self._serve(conn, req_id, req)
            return
        if self.stamped and req.revision > self.sm.revision():
            self._pin(conn, req_id, req)
            return
        self.read_queue.append((conn, req_id, req))
        self.store.schedule(self)

    def _serve(
        self, conn: ClientConn, req_id: Any, req: RangeRequest, settled: bool = False
    ) -> None:
        """Answer ``req`` from the applied state. ``settled``: a linearizable read whose
        wait is over; a revision above the range's own then reads the range as it is
        (a pinned read, released by ``_release_pinned``)."""
        sm = self.sm
        assert isinstance(sm, KVMachine)
        try:
            through = req.revision if settled and self.stamped else 0
            conn.reply(req_id, OK, encode_result(sm.read(req, through)))
        except KVError as e:
            conn.reply(req_id, OK, encode_result(e))

    # -- reads pinned above the range's revision -------------------------------------------

    def _pin(self, conn: ClientConn, req_id: Any, req: RangeRequest) -> None:
        """A linearizable read at revision ``R`` above this stamped range's revision. The
        range holds every write stamped up to ``R`` once (a) every stamped write this
        leader proposed before the read came is applied: one whose stamp batch is still
        out is waited for, then the log index after it; writes stamped later get stamps
        above ``R``, which was handed out before the read was sent (allocations are meta
        log entries, in order); a former leader's writes are in the log the read index
        covers, or never commit; and (b) ``R`` was handed out at all: the allocator's next
        revision, asked now, is above it (else ``FutureRevisionError``, as etcd says of a
        revision not reached). Then the read takes the usual read index and reads the
        range at ``R``. Only the leader knows which stamps are out: elsewhere, not-leader."""
        shards = self.store.shards
        if self.raw.raft.role is not Role.LEADER or shards is None:
            self.not_leader(conn, req_id)
            return
        fence = None if self.stamping else int(self.raw.raft.log.last_index())
        deadline = time.monotonic() + 2 * self.store.cfg.election_timeout_s
        p = _Pinned(conn, req_id, req, deadline, fence)
        self.pinned.append(p)
        fut = shards.allocate_revisions(0)
        fut.add_done_callback(lambda f: self._allocated(p, f))

    def _allocated(self, p: _Pinned, f: asyncio.Future[int]) -> None:
        if f.cancelled() or f.exception() is not None:
            p.error = "cancelled" if f.cancelled() else str(f.exception())
        else:
            p.first = f.result()
        self._release_pinned()

    def _release_pinned(self) -> None:
        """Answer or queue every pinned read whose fence is applied and whose allocator
        answer came."""
        if not self.pinned:
            return
        applied = self.sm.applied_index()
        keep: list[_Pinned] = []
        queued = False
        for p in self.pinned:
            if p.error is not None:
                why = f"range {self.group}: no revision from the allocator: {p.error}"
                self.store.reply_error(p.conn, p.req_id, ERR_UNAVAILABLE, why)
            elif p.first is None or p.fence is None or p.fence > applied:
                keep.append(p)
            elif p.req.revision >= p.first:
                err = FutureRevisionError(p.req.revision, p.first - 1)
                p.conn.reply(p.req_id, OK, encode_result(err))
            else:
                self.read_queue.append((p.conn, p.req_id, p.req))
                queued = True
        self.pinned = keep
        if queued:
            self.store.schedule(self)

    def _fail_pinned(self, code: int, why: str) -> None:
        pinned, self.pinned = self.pinned, []
        for p in pinned:
            if code == ERR_NOT_LEADER:
                self.not_leader(p.conn, p.req_id)
            else:
                self.store.reply_error(p.conn, p.req_id, code, why)

    # -- the Ready cycle, phase by phase (the store runs each for every replica) ---------

    def propose_queued(self) -> None:
        """Before a round: the queued writes and reads go to the core, one batch each."""
        if self.quiet and (self.admin or self.writes or self.read_queue):
            self.wake()
        if self.admin:
            admin, self.admin = self.admin, []
            self._propose(admin)
        if self.writes:
            if self.stamped:
                self._stamp()
            else:
                writes, self.writes = self.writes, []
                self._propose(writes)
        if self.read_queue:
            self._issue_reads()

    def _stamp(self) -> None:
        """Ask the meta range for one revision per queued write; they are proposed once
        stamped. One batch waits for its stamps at a time: the writes arriving meanwhile
        form the next batch."""
        shards = self.store.shards
        if self.stamping or shards is None:
            return
        if self.raw.raft.role is not Role.LEADER:
            writes, self.writes = self.writes, []
            for _, conn, req_id in writes:
                self.not_leader(conn, req_id)
            return
        writes, self.writes = self.writes, []
        self.stamping = len(writes)
        fut = shards.allocate_revisions(len(writes))
        fut.add_done_callback(lambda f: self._stamped(writes, f))

    def _stamped(self, writes: list[tuple[bytes, ClientConn, Any]], f: asyncio.Future[int]) -> None:
        self.stamping = 0
        try:
            self._stamped_batch(writes, f)
        finally:
            if self.pinned:
                last = int(self.raw.raft.log.last_index())
                for p in self.pinned:
                    if p.fence is None:
                        p.fence = last  # the batch the read waited for is proposed
                self._release_pinned()

    def _stamped_batch(
        self, writes: list[tuple[bytes, ClientConn, Any]], f: asyncio.Future[int]
    ) -> None:
        store = self.store
        if f.cancelled() or f.exception() is not None:
            why = "cancelled" if f.cancelled() else str(f.exception())
            for _, conn, req_id in writes:
                store.reply_error(conn, req_id, ERR_UNAVAILABLE, f"no revision stamps: {why}")
            store.flush_clients()
        else:
            first = f.result()
            self._propose(
                [(stamp_command(first + i, w[0]), w[1], w[2]) for i, w in enumerate(writes)]
            )
        store.schedule(self)

    def _propose(self, writes: list[tuple[bytes, ClientConn, Any]]) -> None:
        raw = self.raw
        if raw.raft.role is not Role.LEADER:
            for _, conn, req_id in writes:
                self.not_leader(conn, req_id)
            return
        try:
            last = raw.propose_many([w[0] for w in writes])
        except ProposalDropped as e:
            for _, conn, req_id in writes:
                self.store.reply_error(
                    conn, req_id, ERR_NOT_LEADER, [e.leader, self.store.members.get(e.leader)]
                )
            return
        term = int(raw.raft.term)
        now = time.monotonic()
        first = last - len(writes) + 1
        for i, (_, conn, req_id) in enumerate(writes):
            self.waiting[first + i] = _Write(conn, req_id, term, now)
        self.store.metrics.proposals.inc(len(writes))

    def _issue_reads(self) -> None:
        reads, self.read_queue = self.read_queue, []
        self._read_seq += 1
        ctx = self._boot + self._read_seq.to_bytes(8, "big")
        try:
            self.raw.read_index(ctx)
        except ProposalDropped:
            # Not leading, and no leader known to ask for a read index (a candidate, or
            # a follower that lost its leader): nothing this replica holds may answer.
            error = self.store.reply_error
            why = (
                f"node {self.store.node_id} ({self._role_name()} of group {self.group}) "
                "knows no leader to ask for a read index"
            )
            for conn, req_id, _ in reads:
                error(conn, req_id, ERR_UNAVAILABLE, why)
            return
        deadline = time.monotonic() + 2 * self.store.cfg.election_timeout_s
        self.read_batches[ctx] = _ReadBatch(reads, deadline)

    def _role_name(self) -> str:
        """This replica's role as ``reads_by_role`` and the read errors name it."""
        raft = self.raw.raft
        if raft.role is Role.LEADER:
            return "leader"
        if raft.role is Role.FOLLOWER:
            if NodeId(self.store.node_id) in raft.trk.conf.learners:
                return "learner"
            return "follower"
        return str(raft.role.value).replace("-", "_")

    def has_ready(self) -> bool:
        """Whether a Ready is to be handled now. None is while a snapshot installs: no
        entry may be applied until the new store is swapped in."""
        return not self.snaps.restoring and self.raw.has_ready()

    def ready(self) -> ReadyCycle:
        rd = self.raw.ready()
        return ReadyCycle(self, rd, rd.messages)

    def send_early(self, c: ReadyCycle) -> bool:
        """Phase 1: a role change, and the messages that may leave before the fsync.
        Returns whether any was queued on a link."""
        rd = c.rd
        if rd.soft_state is not None:
            self._role_changed(rd)
        hs = rd.hard_state
        if not rd.messages or (hs is not None and (hs.term, hs.vote) != self._durable_vote):
            return False
        # A leader's appends and heartbeats go out before its own fsync (thesis
        # 10.2.1): the core counts the leader's own entries only once advance() says
        # they are durable, so the disk and the followers work in parallel. Everything
        # else (votes, acks) waits for the fsync, and nothing goes early if this Ready
        # changes the term or the vote.
        late = tuple(m for m in rd.messages if m.type not in _EARLY)
        if len(late) == len(rd.messages):
            return False
        for m in rd.messages:
            if m.type in _EARLY:
                self._send(m, c.cache)
        c.late = late
        return True

    def persist(self, c: ReadyCycle) -> None:
        """Phase 2: the snapshot, entries and hard state, buffered in the shared WAL."""
        self.store.storage.write_ready(self.group, c.rd)

    def send_late(self, c: ReadyCycle) -> None:
        """Phase 3, after the round's fsync: every message not sent early."""
        hs = c.rd.hard_state
        if hs is not None:
            self._durable_vote = (hs.term, hs.vote)
        for m in c.late:
            self._send(m, c.cache)

    def finish(self, c: ReadyCycle) -> None:
        """Phase 4, after the acks left: apply, serve reads, advance."""
        rd = c.rd
        if rd.snapshot is not None:
            self._learn_members(rd.snapshot.data)
            self.snapshot_index = int(rd.snapshot.meta.index)
            self.store.sync_links()
        if rd.committed:
            self._apply(rd)
        for rs in rd.read_states:
            batch = self.read_batches.pop(rs.context, None)
            if batch is not None:
                batch.index = int(rs.index)
                self.ready_reads.append(batch)
        if self.ready_reads:
            self._serve_reads()
        if self.pinned:
            self._release_pinned()
        self.raw.advance(rd)

    def _send(self, m: Message, cache: EntryCache) -> None:
        if m.type is MessageType.SNAP:
            self._start_snapshot(m)
            return
        link = self.store.link(int(m.to))
        if link is None:
            self.raw.report_unreachable(m.to)
            return
        link.send(encode_message(m, cache))

    def _apply(self, rd: Ready) -> None:
        """Apply the committed entries in one engine transaction; an admin entry (a
        split) is applied on its own between the entries before and after it."""
        batch: list[tuple[int, bytes]] = []
        entries: list[Any] = []
        conf_changed = False
        metrics = self.store.metrics
        t0 = time.perf_counter()
        for e in rd.committed:
            if e.type is EntryType.CONF_CHANGE:
                self._learn_conf(e.data)
                conf_changed = True
                batch.append((e.index, b""))
            elif e.data[:2] == ADMIN_PREFIX and self.store.shards is not None:
                if batch:
                    self._apply_batch(batch, entries)
                    batch, entries = [], []
                result = self.store.shards.apply_admin(self, int(e.index), e.data)
                w = self.waiting.pop(e.index, None)
                if w is not None:
                    if e.term != w.term:
                        self.not_leader(w.conn, w.req_id)
                    else:
                        w.conn.reply(w.req_id, OK, result)
                continue
            else:
                batch.append((e.index, e.data))
            entries.append(e)
        if batch:
            self._apply_batch(batch, entries)
        metrics.apply_seconds.observe(time.perf_counter() - t0)
        metrics.batch_entries.observe(len(rd.committed))
        metrics.applied_entries.inc(len(rd.committed))
        if conf_changed:
            self.store.loop.call_soon(self.store.sync_links)
        if self.apply_waiters:
            applied = self.sm.applied_index()
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

    def _apply_batch(self, batch: list[tuple[int, bytes]], entries: list[Any]) -> None:
        self.applied_writes += len(batch)
        self.sm.apply(batch, before_commit=lambda res: self._answer(entries, res))

    def _answer(self, entries: list[Any], results: list[Any]) -> None:
        """Answer the writers of ``entries`` and send the answers now, before the
        store commits the batch: the entries are committed in the log (on a majority's
        disks) and their results are what any replay computes, so a crash before the
        store's commit loses nothing; the writers just stop waiting for its fdatasync.
        The loop handles no other request before the commit, so no read can miss a
        write it was told about."""
        if not self.waiting:
            return
        waiting = self.waiting
        oldest = 0.0
        for e, res in zip(entries, results, strict=True):
            w = waiting.pop(e.index, None)
            if w is None:
                continue
            if e.term != w.term:
                self.not_leader(w.conn, w.req_id)
            elif res is None:
                self.store.reply_error(w.conn, w.req_id, ERR_BAD_REQUEST, "stale session sequence")
            else:
                w.conn.reply(w.req_id, OK, res)
                oldest = oldest or w.t0
        if oldest:
            # One sample a batch (its oldest write): a histogram observation per write
            # cost the leader 2.5% of its CPU.
            self.store.metrics.commit_seconds.observe(time.monotonic() - oldest)
        self.store.flush_clients()

    def _serve_reads(self) -> None:
        """Serve the reads whose read index is applied here, in order. A follower's read
        index came from the leader (thesis 6.4: forwarded ReadIndex): its state at or
        past that index holds every write acknowledged before the read was received."""
        applied = self.sm.applied_index()
        if not self.ready_reads or self.ready_reads[0].index > applied:
            return
        served = 0
        while self.ready_reads and self.ready_reads[0].index <= applied:
            batch = self.ready_reads.popleft()
            for conn, req_id, req in batch.reads:
                self._serve(conn, req_id, req, settled=True)
            served += len(batch.reads)
        metrics = self.store.metrics
        metrics.reads.inc(served)
        role = self._role_name()
        metrics.reads_by_role["follower" if role not in READ_ROLES else role].inc(served)

    def _role_changed(self, rd: Ready) -> None:
        assert rd.soft_state is not None
        lead, role = int(rd.soft_state.leader), rd.soft_state.role
        metrics = self.store.metrics
        if lead != self.leader_seen:
            self.leader_seen = lead
            metrics.leader_changes.inc()
            log.info("node %d: leader is now %s (term %d)",
                     self.store.node_id, lead or "unknown", self.raw.raft.term)  # fmt: skip
        if role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            metrics.elections.inc()
        if role is not Role.LEADER and self.pinned:
            self._fail_pinned(ERR_NOT_LEADER, "")
        if role is not Role.LEADER and self.waiting:
            # Our entries may still commit under the next leader: the outcome is
            # unknown. The clients retry with the same session, which the state
            # machine deduplicates, and say "unknown" if they give up.
            waiting, self.waiting = self.waiting, {}
            for w in waiting.values():
                self.store.reply_error(w.conn, w.req_id, ERR_TIMEOUT, _LOST_LEADERSHIP)
        for f in self.role_waiters:
            if not f.done():
                f.set_result(None)
        self.role_waiters = []

    def fail_everything(self, why: str) -> None:
        """Answer every queued and waiting request (the node is stopping or failed)."""
        error = self.store.reply_error
        for w in self.waiting.values():  # proposed: they may still commit
            error(w.conn, w.req_id, ERR_TIMEOUT, f"{why}; the outcome is unknown")
        self.waiting.clear()
        for _, conn, req_id in self.writes + self.admin:  # never proposed
            error(conn, req_id, ERR_UNAVAILABLE, why)
        self.writes.clear()
        self.admin.clear()
        for b in [*self.read_batches.values(), *self.ready_reads]:
            for conn, req_id, _ in b.reads:
                error(conn, req_id, ERR_UNAVAILABLE, why)
        self.read_batches.clear()
        self.ready_reads.clear()
        self._fail_pinned(ERR_UNAVAILABLE, why)

    # -- ticks and timeouts ----------------------------------------------------------

    def tick(self, now: float) -> None:
        """One tick of the core, and the requests that waited too long are answered. A
        quiet replica is not ticked: nothing waits in it, and its group sends nothing."""
        if self.quiet or (self.quiescable and self._maybe_quiesce()):
            return
        self.raw.tick()
        error = self.store.reply_error
        timeout = 2 * self.store.cfg.election_timeout_s
        if self.read_batches:
            for ctx, b in list(self.read_batches.items()):
                if b.deadline < now:
                    del self.read_batches[ctx]
                    why = (
                        f"node {self.store.node_id} ({self._role_name()} of group "
                        f"{self.group}) got no read index within {timeout:g}s; retry"
                    )
                    for conn, req_id, _ in b.reads:
                        error(conn, req_id, ERR_UNAVAILABLE, why)
        if self.ready_reads and self.ready_reads[0].deadline < now:
            # Reads with a read index that this node has not applied yet (cut off from
            # the leader since): answered unavailable instead of kept forever.
            keep: deque[_ReadBatch] = deque()
            applied = self.sm.applied_index()
            for b in self.ready_reads:
                if b.deadline < now:
                    why = (
                        f"node {self.store.node_id} ({self._role_name()} of group "
                        f"{self.group}) applied {applied}, short of the read index {b.index}, "
                        f"within {timeout:g}s; retry"
                    )
                    for conn, req_id, _ in b.reads:
                        error(conn, req_id, ERR_UNAVAILABLE, why)
                else:
                    keep.append(b)
            self.ready_reads = keep
        if self.pinned and any(p.deadline < now for p in self.pinned):
            late = [p for p in self.pinned if p.deadline < now]
            self.pinned = [p for p in self.pinned if p.deadline >= now]
            for p in late:
                why = (
                    f"range {self.group}: the writes stamped before a read at revision "
                    f"{p.req.revision} did not settle within {timeout:g}s; retry"
                )
                error(p.conn, p.req_id, ERR_UNAVAILABLE, why)
        if self.waiting:
            limit = now - self.store.cfg.request_timeout_s
            for index in [i for i, w in self.waiting.items() if w.t0 < limit]:
                w = self.waiting.pop(index)
                error(w.conn, w.req_id, ERR_TIMEOUT, f"entry {index} not applied in time")

    # -- quiescence --------------------------------------------------------------------

    def _maybe_quiesce(self) -> bool:
        """A leader whose group has had nothing to do for ``QUIESCE_TICKS`` ticks, with
        every member holding its whole log, goes quiet (True): it tells the members (a
        ``q`` control message) and stops ticking, so the group costs nothing until a
        request or a message wakes it (``wake``). Checked before the tick, whose
        heartbeats would otherwise always leave a Ready behind."""
        raft = self.raw.raft
        last = int(raft.log.last_index())
        if (
            raft.role is not Role.LEADER
            or self.waiting
            or self.writes
            or self.admin
            or self.stamping
            or self.pinned
            or self.read_queue
            or self.read_batches
            or self.ready_reads
            or self.raw.has_ready()
            or raft.lead_transferee != NONE
            or int(raft.log.committed) != last
            or self.sm.applied_index() < last
            or self.busy()
            or any(
                # A member probed since a link failure but holding the whole log counts:
                # an idle group never sends it an append to bring it back to replicate.
                int(pr.match) != last or pr.state.value == "snapshot"
                for nid, pr in raft.trk.progress.items()
                if nid != raft.id
            )
            or last != self._idle_last
        ):
            self._idle_ticks = 0
            self._idle_last = last
            return False
        self._idle_ticks += 1
        if self._idle_ticks < QUIESCE_TICKS:
            return False
        doc = [QUIESCE, int(self.group), int(raft.term), last]
        for peer in self.peer_ids():
            link = self.store.link(peer)
            if link is not None:
                link.send(doc)
        self.quiet = True
        return True

    def quiesce_from(self, frm: int, term: int, index: int) -> None:
        """The leader ``frm`` went quiet at ``term`` with ``index`` its last entry: so
        does this replica, if it follows that leader in that term and holds that log."""
        raft = self.raw.raft
        if (
            raft.role is Role.FOLLOWER
            and int(raft.lead) == frm
            and int(raft.term) == term
            and int(raft.log.last_index()) == index
            and int(raft.log.committed) == index
            and self.sm.applied_index() >= index
            and not (self.read_queue or self.read_batches or self.ready_reads)
            and not self.snaps.restoring
        ):
            # Else it stays awake: with no heartbeats coming it campaigns, which wakes
            # the leader, and the group settles before trying again.
            self.quiet = True

    def wake(self) -> None:
        """Tick again, from a fresh election timeout: a leader gets a whole window for
        its followers' answers before check-quorum counts them (and only those), and a
        follower waits a whole timeout for its leader before campaigning."""
        self.quiet = False
        self._idle_ticks = 0
        raft = self.raw.raft
        raft.election_elapsed = 0
        if raft.role is Role.LEADER:
            # Check-quorum's activity flags date from before the quiet spell: only the
            # members heard from in the window that starts now may count.
            for node, pr in raft.trk.progress.items():
                pr.recent_active = node == raft.id

    # -- compaction and snapshots ----------------------------------------------------

    def maybe_compact(self) -> None:
        cfg = self.store.cfg
        applied = int(self.raw.raft.log.applied)
        if applied - self.snapshot_index < cfg.snapshot_entries + cfg.catchup_entries:
            return
        index = applied - cfg.catchup_entries
        self.sm.sync()  # the store must hold what the dropped log held
        members = {str(k): v for k, v in self.store.members.items()}
        data = pack({"members": members, CONF_VER: self.conf_ver})
        snap = self.raw.compact(Index(index), data)
        self.store.storage.save_snapshot(self.group, snap)
        self.snapshot_index = index
        log.info("node %d compacted its log to %d", self.store.node_id, index)

    def _start_snapshot(self, m: Message) -> None:
        to = int(m.to)
        task = self.snaps.sending.get(to)
        if task is not None and not task.done():
            return
        self.snaps.sending[to] = self.store.loop.create_task(self._stream_snapshot(m))

    async def _stream_snapshot(self, m: Message) -> None:
        store = self.store
        to = NodeId(int(m.to))
        addr = store.members.get(int(to))
        ok, why = False, "no address"
        try:
            if addr is not None:
                hello = snap_hello(store.cluster, store.node_id, store.cfg.listen)
                ok, why, sent = await send_snapshot(
                    addr, hello, encode_message(m), self.sm.snapshot(), 5.0
                )
                store.metrics.peer_bytes_out.inc(sent)
        except asyncio.CancelledError:
            why = "cancelled"
            raise
        except Exception as e:  # any failure: the core must hear of it, or it waits
            why = f"{type(e).__name__}: {e}"
        finally:
            if ok:
                store.metrics.snapshots_sent.inc()
                log.info("node %d sent a snapshot to node %d", store.node_id, to)
            else:
                log.warning("node %d could not send a snapshot to node %d: %s",
                            store.node_id, to, why)  # fmt: skip
            if not store.stopping:
                self.raw.report_snapshot(to, ok)
                store.schedule(self)

    def snapshot_received(self, frm: int, m: Message, spool: Path, conn: SnapConn) -> None:
        """A snapshot stream for this group arrived whole (its SNAP message is ``m``)."""
        if self.snaps.restoring or self.store.stopping:
            # One install at a time: two overlapping ones (an old and a new leader each
            # sending one) could swap an older store in over a newer one.
            spool.unlink(missing_ok=True)
            conn.answer(False, "busy installing another snapshot; retry later")
            return
        self.snaps.restoring = True
        self.snaps.installing = self.store.loop.create_task(self._install(frm, m, spool, conn))

    async def _install(self, frm: int, m: Message, spool: Path, conn: SnapConn) -> None:
        node_id = self.store.node_id
        try:
            chunks = read_spool(spool)
            head = next(chunks)
            index = self.sm.snapshot_index(head)
            if index > self.sm.applied_index():
                # Installed in one engine transaction, on the loop: the node's one
                # engine has one writer, so a thread would only make the loop wait
                # for it anyway. A big snapshot stalls this node while it installs.
                self.sm.restore(itertools.chain((head,), chunks))
                self.sm.sync()
            self.raw.step(m)
            self.store.metrics.snapshots_received.inc()
            log.info("node %d installed a snapshot at %d from node %d", node_id, index, frm)
            conn.answer(True)
        except Exception as e:
            log.warning("node %d refused a snapshot from node %d: %r", node_id, frm, e)
            conn.answer(False, str(e))
        finally:
            self.snaps.restoring = False
            spool.unlink(missing_ok=True)
            self.store.schedule(self)

    # -- membership and leadership ----------------------------------------------------

    async def _until_applied(self, index: int, term: int, timeout: float) -> None:
        """Wait until the entry proposed at ``index`` in ``term`` is applied. Raises
        ``ProposalDropped`` if another leader's entry took its place (it never took
        effect) and ``TimeoutError`` when that cannot be known (outcome unknown)."""
        if self.sm.applied_index() >= index:
            seen = self.raw.raft.log.term(Index(index))
            ok: bool | None = None if seen is None else int(seen) == term
        else:
            fut: asyncio.Future[bool | None] = self.store.loop.create_future()
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
        tick_s = self.store.cfg.tick_ms / 1000
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
                await asyncio.sleep(tick_s)
        term = int(self.raw.raft.term)
        self.store.schedule(self)
        await self._until_applied(int(index), term, max(0.1, deadline - time.monotonic()))
        # Leaving the joint configuration is proposed by the core itself once applied.
        while self.raw.raft.trk.conf.joint:
            if time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(tick_s)

    async def change_replicas(self, kind: ChangeType, node: int, conf_ver: int) -> None:
        """One replica change of a sharded range: a step toward the directory's replica
        set at version ``conf_ver``, which the entry records (``_learn_conf``)."""
        ctx: dict[str, Any] = {CONF_VER: conf_ver}
        addr = self.store.members.get(node)
        if addr is not None:
            ctx[str(node)] = addr
        cc = ConfChange((Change(kind, NodeId(node)),), context=json.dumps(ctx))
        await self._conf_change(cc, max(30.0, self.store.cfg.request_timeout_s))

    def busy(self) -> bool:
        """A snapshot is being installed or sent, or a conf change is in flight."""
        raft = self.raw.raft
        return (
            self.snaps.restoring
            or any(not t.done() for t in self.snaps.sending.values())
            or raft.pending_conf_index > raft.log.applied
            or raft.trk.conf.joint
        )

    def destroy(self, why: str) -> None:
        """Stop being a replica of this group (it moved away): answer every waiting
        request, stop sending snapshots, and delete the range's data. The group's Raft
        state stays in the WAL: its term and vote must never go back, should the group
        come to this node again."""
        self.fail_everything(why)
        self.cancel_sends()
        for aw in self.apply_waiters:
            if not aw.future.done():
                aw.future.set_result(None)
        self.apply_waiters = []
        st = self.raw.raft
        self.store.storage.reset(self.group, HardState(st.term, st.vote, Index(0)))
        if isinstance(self.sm, KVMachine):
            self.sm.drop()

    def members_list(self) -> list[dict[str, Any]]:
        conf = self.raw.raft.trk.conf
        ids = set(conf.voters) | set(conf.learners) | set(conf.voters_outgoing)
        members = self.store.members
        return [
            {"id": int(i), "addr": members.get(int(i)), "voter": i in conf.voters}
            for i in sorted(ids)
        ]

    async def member_add(self, node: int, addr: str, learner_only: bool) -> list[dict[str, Any]]:
        parse_address(addr)
        cfg = self.store.cfg
        conf = self.raw.raft.trk.conf
        timeout = max(30.0, cfg.request_timeout_s)
        if node in conf.voters:
            raise Refused(f"node {node} is already a voter")
        ctx = json.dumps({str(node): addr})
        if node not in conf.learners:
            self.store.learn_address(node, addr)
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
            if self.caught_up(node):
                break
            if time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(cfg.tick_ms / 1000)
        cc = ConfChange((Change(ChangeType.ADD_VOTER, NodeId(node)),), context=ctx)
        await self._conf_change(cc, timeout)
        return self.members_list()

    async def member_remove(self, node: int) -> list[dict[str, Any]]:
        conf = self.raw.raft.trk.conf
        if node not in conf.voters and node not in conf.learners:
            raise Refused(f"node {node} is not a member")
        if node == self.store.node_id:
            others = [v for v in conf.voters if v != node]
            if not others:
                raise Refused("cannot remove the last voter")
            await self.transfer(0)
            raise ProposalDropped("leadership moved before removing this node",
                                  int(self.raw.raft.lead))  # fmt: skip
        cc = ConfChange((Change(ChangeType.REMOVE, NodeId(node)),))
        await self._conf_change(cc, max(30.0, self.store.cfg.request_timeout_s))
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
        store = self.store
        target = to or self._best_follower()
        if not target:
            raise Refused("no other voter to transfer leadership to")
        if target == store.node_id:
            return {"leader": store.node_id}
        self.raw.transfer_leader(NodeId(target))
        store.schedule(self)
        if wait_s is None:
            wait_s = 2 * store.cfg.election_timeout_s + 1
        deadline = time.monotonic() + wait_s
        # Wait until we have stepped down AND heard from the new leader.
        while self.raw.raft.lead in (NONE, store.node_id) and time.monotonic() < deadline:
            fut: asyncio.Future[None] = store.loop.create_future()
            self.role_waiters.append(fut)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, max(0.01, deadline - time.monotonic()))
        if self.raw.raft.role is Role.LEADER:
            raise TimeoutError
        return {"leader": int(self.raw.raft.lead) or target}

    # -- inspection ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This group's part of the node's ``/status``, in the order it is shown."""
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
            "role": r.role.value.replace("-", "_"),
            "term": int(r.term),
            "leader": lead,
            "leader_addr": self.store.members.get(lead),
            "commit": int(r.log.committed),
            "applied": self.sm.applied_index(),
            "last_index": int(r.log.last_index()),
            "snapshot_index": self.snapshot_index,
            "revision": self.sm.revision(),
            "compacted_revision": self.sm.compacted_revision(),
            "members": self.members_list(),
            "progress": progress,
            "pending_proposals": len(self.waiting) + len(self.writes) + self.stamping,
            "db_bytes": self.sm.db_bytes(),
        }

    def range_status(self) -> dict[str, Any]:
        """One line of a sharded node's ``ranges`` status: this range and its state."""
        r = self.raw.raft
        desc = self.sm.desc
        return {
            "id": int(self.group),
            "start": _show_key(desc.start) if desc else "",
            "end": _show_key(desc.end) if desc else "",
            "version": desc.epoch.version if desc else 0,
            "role": r.role.value.replace("-", "_"),
            "leader": int(r.lead),
            "term": int(r.term),
            "commit": int(r.log.committed),
            "applied": self.sm.applied_index(),
            "revision": self.sm.revision(),
            "keys": self.sm.keys(),
            "bytes": self.sm.size_bytes(),
            "voters": sorted(int(v) for v in r.trk.conf.voters),
            "learners": sorted(int(v) for v in r.trk.conf.learners),
            "quiet": self.quiet,
            "pending_proposals": len(self.waiting) + len(self.writes) + self.stamping,
        }

    def health(self) -> tuple[bool, str]:
        r = self.raw.raft
        if r.lead == NONE:
            return False, "no leader known"
        lag = int(r.log.committed) - self.sm.applied_index()
        if lag > 1000:
            return False, f"applying: {lag} committed entries not yet applied"
        return True, f"leader {int(r.lead)}, term {int(r.term)}"

    def gauges(self) -> dict[str, float]:
        r = self.raw.raft
        return {
            "term": float(r.term),
            "is_leader": float(r.role is Role.LEADER),
            "commit_index": float(r.log.committed),
            "applied_index": float(self.sm.applied_index()),
            "last_index": float(r.log.last_index()),
            "pending_proposals": float(len(self.waiting)),
            "members": float(len(r.trk.conf.voters)),
            "db_bytes": float(self.sm.db_bytes()),
        }

    # -- shutdown --------------------------------------------------------------------

    async def hand_over(self) -> None:
        """If this replica leads and has a voter to hand over to, transfer leadership
        (the node is stopping)."""
        if self.raw.raft.role is not Role.LEADER or not self._best_follower():
            return
        node_id = self.store.node_id
        try:
            # The core gives a transfer one election timeout; so do we, since the
            # whole cluster may be stopping at once.
            await self.transfer(0, self.store.cfg.election_timeout_s)
            log.info("node %d handed leadership over before stopping", node_id)
        except (TimeoutError, Refused, ProposalDropped) as e:
            log.warning("node %d stops without a leadership transfer: %s", node_id, e)

    async def wait_install(self) -> None:
        """Let a restore running in a thread finish its swap before the store closes."""
        if self.snaps.installing is not None and not self.snaps.installing.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.snaps.installing), 60)

    def cancel_sends(self) -> None:
        for task in self.snaps.sending.values():
            task.cancel()


def _show_key(key: bytes) -> str:
    """A key as text for ``/status`` (JSON): UTF-8, undecodable bytes escaped."""
    return key.decode("utf-8", "backslashreplace")
