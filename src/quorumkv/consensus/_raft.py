"""The Raft protocol for one group on one node: elections, replication, reads, transfer.

Theory of operation
-------------------
``Raft`` is a deterministic state machine. Its inputs are ``tick`` (one unit of logical
time), ``step`` (a message from a peer) and the local requests (``propose``,
``read_index``, ``transfer_leader``, ``campaign``); its outputs are only *queued*: the
messages in ``msgs``, the reads in ``read_states``, and the changes to the log, which
``RawNode`` turns into a ``Ready`` batch. It never sends, sleeps, reads a clock or draws
a random number except from the ``rng`` it is given.

Role behaviour is bound at role changes: ``become_follower`` and friends set ``_step``
and ``_tick``, so no handler asks "am I the leader?".

The features and where they come from (Ongaro's thesis, 2014):

* elections with randomized timeouts in [election_tick, 2 * election_tick) (3.4);
* pre-vote (9.6): a node first asks whether it *could* win, without raising its term,
  so a partitioned node that rejoins does not depose a healthy leader;
* check-quorum (6.2): a leader that has not heard from a quorum within an election
  timeout steps down; with it, followers that heard from a leader recently ignore vote
  requests (leader stickiness, 4.2.3) unless the request comes from a leader transfer;
* log replication with the consistency check and a conflict hint for fast back-off
  (3.5), per-follower progress (``_tracker``), pipelining within an in-flight window,
  several proposals per AppendEntries up to ``max_size_per_msg`` bytes;
* commit only of current-term entries by counting (3.6.2, figure 3.7);
* snapshots: the leader sends one to a follower whose next entry was compacted (5.1);
* leader transfer (3.10) by TIMEOUT_NOW;
* ReadIndex reads on the leader and forwarded from followers (6.4), and lease reads
  (6.4.1) when configured;
* learners and joint-consensus membership changes (4.3), applied when committed entries
  are applied (``apply_conf_change``).

Invariants that must hold after every input: at most one vote per term; ``commit`` never
decreases; a leader's own progress counts only entries the driver has persisted.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from quorumkv.errors import ConfChangeError, MessageRejected, ProposalDropped

from ._confchange import apply_conf_change, decode_conf_change, describe_conf_state
from ._log import RaftLog
from ._quorum import VoteResult
from ._readonly import ReadOnly, ReadRequest
from ._tracker import ProgressState, ProgressTracker
from ._types import (
    NONE,
    RESPONSE_TYPES,
    ConfState,
    Entry,
    EntryType,
    GroupId,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    Term,
)

CAMPAIGN_TRANSFER = b"transfer"
"""Context of a VOTE sent because of a leader transfer: it overrides leader stickiness."""


class Rand(Protocol):
    """The random source the core is given (``random.Random`` fits)."""

    def randrange(self, start: int, stop: int, /) -> int: ...


class ReadOnlyOption(enum.Enum):
    SAFE = "safe"
    """Confirm leadership by a heartbeat round for every batch of reads."""
    LEASE_BASED = "lease"
    """Serve reads without a heartbeat round while the leader holds a lease (thesis
    6.4.1). Every heartbeat carries the leader's tick count when it was sent; a follower
    that receives it will not vote for anyone else for an election timeout, so once a
    quorum has acknowledged a heartbeat sent at tick T no other leader can be elected
    before T + election_tick. The lease lasts ``election_tick - 2`` ticks from T, the two
    ticks absorbing tick granularity. Outside a lease, reads fall back to ReadIndex.

    The assumption: every node's ticks run at the same rate, to within those two ticks
    per election timeout. A leader process that is paused, or whose ticks are delayed,
    while its followers' clocks run on can serve a stale read; use SAFE where that
    cannot be ruled out. A leader that has started a leadership transfer never trusts
    its lease again in that term, since the transfer's election ignores stickiness. A
    follower that restarts keeps the promise too: it refuses votes for an election
    timeout after its start."""


@dataclass(frozen=True, slots=True)
class Config:
    id: NodeId
    group: GroupId = GroupId(1)
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    read_only: ReadOnlyOption = ReadOnlyOption.SAFE

    def validate(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be positive")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be positive")
        if self.read_only is ReadOnlyOption.LEASE_BASED and not self.check_quorum:
            raise ValueError("lease-based reads need check_quorum")


class Raft:
    def __init__(
        self,
        cfg: Config,
        log: RaftLog,
        hard_state: HardState,
        conf: ConfState,
        rng: Rand,
        logger: logging.Logger | None = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.id = cfg.id
        self.group = cfg.group
        self.rng = rng
        self.logger = logger or logging.getLogger("quorumkv.consensus")
        self.log = log
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.trk = ProgressTracker(cfg.max_inflight_msgs)
        self.trk.apply_conf(conf, log.last_index() + 1)
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.pending_reads: list[tuple[NodeId, bytes]] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = cfg.election_tick
        self.lead_transferee = NONE
        self.pending_conf_index = Index(0)
        self.leader_ticks = 0
        """Ticks since this node became leader: the clock of its lease."""
        self.lease_broken = False
        self.restart_quiet = 0
        """Ticks left during which a restarted node refuses votes as if it had just heard
        from a leader: before the restart it may have acknowledged a heartbeat that a
        leader's lease counts on, and forgot it. No leader exists in term 1 (the
        bootstrap term) or 0, so a node that never left them promised nothing."""
        if cfg.read_only is ReadOnlyOption.LEASE_BASED and hard_state.term > 1:
            self.restart_quiet = cfg.election_tick
        self._step: Callable[[Message], None] = self._step_follower
        self._tick: Callable[[], None] = self._tick_election
        self.become_follower(self.term, NONE)

    # -- roles --------------------------------------------------------------------

    def _reset(self, term: Term) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        et = self.cfg.election_tick
        self.randomized_election_timeout = et + self.rng.randrange(0, et)
        self.lead_transferee = NONE
        self.trk.reset_votes()
        last = self.log.last_index()
        for node, pr in self.trk.progress.items():
            pr.become_probe()
            pr.match = Index(0)
            pr.next = Index(last + 1)
            pr.recent_active = False
            pr.lease_tick = 0
            if node == self.id:
                pr.match = self.log.stable
                pr.recent_active = True
        self.pending_conf_index = Index(0)
        self.read_only.reset()
        self.pending_reads.clear()

    def become_follower(self, term: Term, lead: NodeId) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self._step = self._step_follower
        self._tick = self._tick_election

    def become_pre_candidate(self) -> None:
        # Neither the term nor the vote change: a pre-vote is only a question.
        self.role = Role.PRE_CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election
        self.trk.reset_votes()
        self.lead = NONE

    def become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise AssertionError("leader cannot become candidate")
        self._reset(Term(self.term + 1))
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election

    def become_leader(self) -> None:
        if self.role is Role.FOLLOWER:
            raise AssertionError("follower cannot become leader without an election")
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._step = self._step_leader
        self._tick = self._tick_heartbeat
        self.leader_ticks = 1  # 0 stands for "no heartbeat acknowledged"
        self.lease_broken = False
        self_pr = self.trk.progress[self.id]
        self_pr.become_replicate()
        self_pr.match = self.log.stable
        self_pr.next = Index(self.log.last_index() + 1)
        # Entries of earlier terms may hold a conf change we have not applied; refuse
        # new changes until everything up to here is applied.
        self.pending_conf_index = self.log.last_index()
        # An empty entry of our term lets us commit, and learn the commit index (3.6.2).
        self._append(EntryType.NORMAL, (b"",))

    def promotable(self) -> bool:
        pr = self.trk.progress.get(self.id)
        return pr is not None and not pr.is_learner and self.id in self.trk.voters()

    # -- ticks ----------------------------------------------------------------------

    def tick(self) -> None:
        if self.restart_quiet > 0:
            self.restart_quiet -= 1
        self._tick()

    def _past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self._past_election_timeout():
            self.election_elapsed = 0
            self.campaign()

    def _tick_heartbeat(self) -> None:
        self.leader_ticks += 1
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                if not self.trk.quorum_active():
                    self.logger.info(
                        "%d steps down: no quorum heard in term %d", self.id, self.term
                    )
                    self.become_follower(self.term, NONE)
                    return
                for node, pr in self.trk.progress.items():
                    pr.recent_active = node == self.id
            if self.lead_transferee != NONE:
                self.lead_transferee = NONE  # it did not finish in one election timeout
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    # -- elections ------------------------------------------------------------------

    def campaign(self, transfer: bool = False) -> None:
        """Start an election: a pre-vote first unless configured off or transferring.

        A leader ignores it. So does a node with a committed but unapplied conf change:
        configurations take effect when applied, so it would count votes by an outdated
        configuration (after a restart, the one in its snapshot) and could win with a
        minority of the real one, next to another leader of the same term."""
        if self.role is Role.LEADER or not self.promotable():
            return
        if self._has_unapplied_conf_change():
            self.logger.warning(
                "%d cannot campaign in term %d: a committed conf change is not applied yet",
                self.id,
                self.term,
            )
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(MessageType.PRE_VOTE, b"")
        else:
            self._campaign(MessageType.VOTE, CAMPAIGN_TRANSFER if transfer else b"")

    def _campaign(self, vote_type: MessageType, ctx: bytes) -> None:
        if vote_type is MessageType.PRE_VOTE:
            self.become_pre_candidate()
            term = Term(self.term + 1)  # the term we would campaign in
        else:
            self.become_candidate()
            term = self.term
        if self._poll(self.id, True) is VoteResult.WON:
            self._won(vote_type)
            return
        for node in sorted(self.trk.voters()):
            if node != self.id:
                self._send(
                    Message(
                        vote_type,
                        self.group,
                        self.id,
                        node,
                        term=term,
                        index=self.log.last_index(),
                        log_term=self.log.last_term(),
                        context=ctx,
                    )
                )

    def _has_unapplied_conf_change(self) -> bool:
        log = self.log
        # After a snapshot is restored and before its Ready is advanced, applied lags
        # the offset; the snapshot's configuration already rules up to the offset.
        pending = log.slice(max(log.applied, log.offset) + 1, log.committed + 1) or ()
        return any(e.type is EntryType.CONF_CHANGE for e in pending)

    def _poll(self, node: NodeId, granted: bool) -> VoteResult:
        self.trk.record_vote(node, granted)
        return self.trk.tally_votes()

    def _won(self, vote_type: MessageType) -> None:
        if vote_type is MessageType.PRE_VOTE:
            self._campaign(MessageType.VOTE, b"")
        else:
            self.become_leader()
            self._bcast_append()

    # -- the entry point for messages ------------------------------------------------

    def step(self, m: Message) -> None:
        validate_message(m, self.group, self.id)
        if m.term > self.term:
            if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = self.restart_quiet > 0 or (
                    self.cfg.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.cfg.election_tick
                )
                if not force and in_lease:
                    return  # leader stickiness (4.2.3): we heard a leader recently
            if m.type is MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type is MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # we will raise our term ourselves if we win the pre-vote
            elif m.type in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in (MessageType.APP, MessageType.HEARTBEAT) and (
                self.cfg.check_quorum or self.cfg.pre_vote
            ):
                # A stale leader, perhaps cut off and still sure of itself: tell it our
                # term so it steps down, rather than ignoring it forever.
                self._send(self._reply(m, MessageType.APP_RESP))
            elif m.type is MessageType.PRE_VOTE:
                self._send(self._reply(m, MessageType.PRE_VOTE_RESP, reject=True))
            return

        if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote_request(m)
        else:
            self._step(m)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type is MessageType.PRE_VOTE and m.term > self.term)
        )
        resp = MessageType.VOTE_RESP if m.type is MessageType.VOTE else MessageType.PRE_VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted pre-vote answers in the term asked about, so the candidate
            # counts it; a real vote is recorded (and persisted before it is sent).
            self._send(Message(resp, self.group, self.id, m.frm, term=m.term))
            if m.type is MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, self.group, self.id, m.frm, term=self.term, reject=True))

    def _reply(self, m: Message, type_: MessageType, reject: bool = False) -> Message:
        return Message(type_, self.group, self.id, m.frm, term=self.term, reject=reject)

    def _send(self, m: Message) -> None:
        self.msgs.append(m)

    # -- follower and candidate ------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
            self.election_elapsed = 0
            self.lead = m.frm
            if t is MessageType.APP:
                self._handle_append(m)
            elif t is MessageType.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif t is MessageType.TIMEOUT_NOW:
            self.logger.info("%d campaigns at once: leadership transferred to it", self.id)
            self.campaign(transfer=True)
        elif t is MessageType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
        elif t is MessageType.TRANSFER_LEADER and self.lead != NONE:
            self._send(Message(t, self.group, self.id, self.lead, term=self.term, index=m.index))
        # Other types (a stray response from an earlier leadership) are ignored.

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = (
            MessageType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MessageType.VOTE_RESP
        )
        if t in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
            # A leader of our term exists (or, pre-candidate, of a term we may not know).
            self.become_follower(m.term, m.frm)
            self._step_follower(m)
        elif t is my_resp:
            vote_type = MessageType.PRE_VOTE if t is MessageType.PRE_VOTE_RESP else MessageType.VOTE
            result = self._poll(m.frm, not m.reject)
            if result is VoteResult.WON:
                self._won(vote_type)
            elif result is VoteResult.LOST:
                self.become_follower(self.term, NONE)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(self._resp(m.frm, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(self._resp(m.frm, index=last_new))
            return
        hint, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            Message(
                MessageType.APP_RESP,
                self.group,
                self.id,
                m.frm,
                term=self.term,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=hint_term,
            )
        )

    def _resp(self, to: NodeId, index: Index) -> Message:
        return Message(MessageType.APP_RESP, self.group, self.id, to, term=self.term, index=index)

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(its commit, our match), so this never passes our log.
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(
            Message(
                MessageType.HEARTBEAT_RESP,
                self.group,
                self.id,
                m.frm,
                term=self.term,
                index=m.index,
                context=m.context,
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None  # validate_message checked it
        if self._restore(snap):
            self.logger.info(
                "%d installs snapshot at %d/%d", self.id, snap.meta.index, snap.meta.term
            )
            self._send(self._resp(m.frm, index=self.log.last_index()))
        else:
            self._send(self._resp(m.frm, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            # We already hold the snapshot's last entry, so everything before it too.
            self.log.commit_to(meta.index)
            return False
        # The snapshot's configuration need not name us: a node added after it was taken
        # (say, to a group whose leader still holds its bootstrap snapshot) installs it
        # like any other and joins when it applies the change that adds it, which is in
        # the log after the snapshot. Until then it is not promotable.
        self.log.restore(snap)
        self.trk.apply_conf(meta.conf, self.log.last_index() + 1)
        return True

    # -- leader ----------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is MessageType.READ_INDEX:
            self._handle_read_request(m.frm, m.context)
            return
        if t is MessageType.TRANSFER_LEADER:
            self.transfer_leader(NodeId(m.index))
            return
        pr = self.trk.progress.get(m.frm)
        if pr is None:
            return  # not (or no longer) a member
        if t is MessageType.APP_RESP:
            pr.recent_active = True
            if m.reject:
                self._handle_append_reject(m)
            else:
                self._handle_append_ack(m)
        elif t is MessageType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            # Honest followers echo our tick; never let a reply extend the lease past now.
            pr.lease_tick = max(pr.lease_tick, min(m.index, self.leader_ticks))
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                # Appends that filled the window may all have been lost: make room for
                # one, so replication can recover without waiting for a reset.
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            seq = ReadOnly.decode_seq(m.context)
            if seq is not None:
                self._handle_read_ack(m.frm, seq)

    def _handle_append_reject(self, m: Message) -> None:
        pr = self.trk.progress[m.frm]
        next_probe = m.reject_hint
        if m.log_term > 0:
            # Skip every entry of ours in terms the follower's hint term cannot match.
            next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
        if pr.maybe_decr_to(m.index, next_probe):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            self._send_append(m.frm)

    def _handle_append_ack(self, m: Message) -> None:
        pr = self.trk.progress[m.frm]
        if m.index > self.log.last_index():
            self.logger.warning(
                "%d ignores ack of %d beyond its log from %d", self.id, m.index, m.frm
            )
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            if pr.state is ProgressState.PROBE and pr.match == m.index:
                # The probe found the logs already match where we thought: stream now.
                pr.become_replicate()
                self._send_append(m.frm, send_if_empty=False)
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_append()
        elif was_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.frm)

    def _maybe_commit(self) -> bool:
        """Commit the quorum's index if it is of our term (thesis 3.6.2). Counting
        replicas never commits an entry of an earlier term directly (figure 3.7)."""
        index = self.trk.committed()
        if index <= self.log.committed or self.log.term(index) != self.term:
            return False
        self.log.commit_to(index)
        self._release_pending_reads()
        return True

    def _send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        pr = self.trk.progress[to]
        if pr.is_paused() or to == self.id:
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        ents = self.log.slice(pr.next, self.log.last_index() + 1, self.cfg.max_size_per_msg)
        if prev_term is None or ents is None:
            return self._send_snapshot(to)
        if not ents and not send_if_empty:
            return False
        self._send(
            Message(
                MessageType.APP,
                self.group,
                self.id,
                to,
                term=self.term,
                index=Index(prev),
                log_term=prev_term,
                entries=tuple(ents),
                commit=self.log.committed,
            )
        )
        if ents:
            pr.sent_entries(ents[-1].index)
        return True

    def _send_snapshot(self, to: NodeId) -> bool:
        pr = self.trk.progress[to]
        snap = self.log.snapshot
        if snap is None:
            raise AssertionError(f"{self.id}: log compacted without a snapshot")
        if not pr.recent_active:
            return False  # it may be down; do not ship a snapshot into the void
        self.logger.info("%d sends snapshot %d to %d", self.id, snap.meta.index, to)
        pr.become_snapshot(snap.meta.index)
        self._send(
            Message(MessageType.SNAP, self.group, self.id, to, term=self.term, snapshot=snap)
        )
        return True

    def _bcast_append(self) -> None:
        for node in self.trk.progress:
            if node != self.id:
                self._send_append(node)

    def _bcast_heartbeat(self, ctx: bytes = b"") -> None:
        if not ctx:
            seq = self.read_only.last_seq()
            ctx = ReadOnly.encode_seq(seq) if seq is not None else b""
        for node, pr in self.trk.progress.items():
            if node != self.id:
                self._send(
                    Message(
                        MessageType.HEARTBEAT,
                        self.group,
                        self.id,
                        node,
                        term=self.term,
                        commit=Index(min(pr.match, self.log.committed)),
                        index=Index(self.leader_ticks),  # when sent, for the lease
                        context=ctx,
                    )
                )

    def _send_timeout_now(self, to: NodeId) -> None:
        self.lease_broken = True  # its election may ignore our followers' stickiness
        self._send(Message(MessageType.TIMEOUT_NOW, self.group, self.id, to, term=self.term))

    def _append(self, etype: EntryType, datas: Iterable[bytes]) -> None:
        """Append an entry of ``etype`` in this term for each of ``datas``."""
        term, first = self.term, self.log.last_index() + 1
        self.log.append([Entry(term, Index(first + n), etype, d) for n, d in enumerate(datas)])
        self.trk.progress[self.id].next = Index(self.log.last_index() + 1)

    # -- local requests --------------------------------------------------------------

    def _not_leader(self, what: str) -> ProposalDropped:
        return ProposalDropped(f"{what}: node {self.id} is not the leader", self.lead)

    def propose(self, datas: Iterable[bytes]) -> Index:
        """Append normal entries; returns the index of the last one."""
        if self.role is not Role.LEADER:
            raise self._not_leader("proposal dropped")
        if self.lead_transferee != NONE:
            raise ProposalDropped("proposal dropped: leadership transfer in progress")
        self._append(EntryType.NORMAL, datas)
        self._bcast_append()
        return self.log.last_index()

    def propose_conf_change(self, data: bytes) -> Index:
        if self.role is not Role.LEADER:
            raise self._not_leader("conf change dropped")
        if self.lead_transferee != NONE:
            raise ProposalDropped("conf change dropped: leadership transfer in progress")
        if self.pending_conf_index > self.log.applied:
            raise ProposalDropped(
                f"conf change dropped: the change at {self.pending_conf_index} is not applied yet"
            )
        self._append(EntryType.CONF_CHANGE, (data,))
        self.pending_conf_index = self.log.last_index()
        self._bcast_append()
        return self.log.last_index()

    def read_index(self, ctx: bytes) -> None:
        if self.role is Role.LEADER:
            self._handle_read_request(self.id, ctx)
        elif self.role is Role.FOLLOWER and self.lead != NONE:
            self._send(
                Message(
                    MessageType.READ_INDEX,
                    self.group,
                    self.id,
                    self.lead,
                    term=self.term,
                    context=ctx,
                )
            )
        else:
            raise self._not_leader("read dropped: no leader known")

    def _handle_read_request(self, requester: NodeId, ctx: bytes) -> None:
        if self.log.term(self.log.committed) != self.term:
            # We do not know the commit index of our term yet (6.4, step 1): hold it.
            self.pending_reads.append((requester, ctx))
            return
        if self.trk.config.has_quorum({self.id}) or self._holds_lease():
            self._answer_read(ReadRequest(0, self.log.committed, requester, ctx))
        else:
            req = self.read_only.add(self.log.committed, requester, ctx)
            self._bcast_heartbeat(ReadOnly.encode_seq(req.seq))

    def _holds_lease(self) -> bool:
        if self.cfg.read_only is not ReadOnlyOption.LEASE_BASED or self.lease_broken:
            return False
        sent = {n: Index(p.lease_tick) for n, p in self.trk.progress.items()}
        sent[self.id] = Index(self.leader_ticks)
        start = self.trk.config.committed(sent)  # a quorum heard us at or after this tick
        return start > 0 and self.leader_ticks - start < self.cfg.election_tick - 2

    def _handle_read_ack(self, node: NodeId, seq: int) -> None:
        acks = self.read_only.recv_ack(node, seq)
        if acks is None or not self.trk.config.has_quorum(acks | {self.id}):
            return
        for req in self.read_only.advance(seq):
            self._answer_read(req)

    def _release_confirmed_reads(self) -> None:
        confirmed = None
        for seq in self.read_only.queue:
            if self.trk.config.has_quorum(self.read_only.pending[seq].acks | {self.id}):
                confirmed = seq
        if confirmed is not None:
            for req in self.read_only.advance(confirmed):
                self._answer_read(req)

    def _answer_read(self, req: ReadRequest) -> None:
        if req.requester == self.id:
            self.read_states.append(ReadState(req.index, req.context))
        else:
            self._send(
                Message(
                    MessageType.READ_INDEX_RESP,
                    self.group,
                    self.id,
                    req.requester,
                    term=self.term,
                    index=req.index,
                    context=req.context,
                )
            )

    def _release_pending_reads(self) -> None:
        if self.pending_reads and self.log.term(self.log.committed) == self.term:
            pending, self.pending_reads = self.pending_reads, []
            for requester, ctx in pending:
                self._handle_read_request(requester, ctx)

    def transfer_leader(self, to: NodeId) -> None:
        if self.role is not Role.LEADER:
            if self.lead == NONE:
                raise self._not_leader("transfer dropped: no leader known")
            self._send(
                Message(
                    MessageType.TRANSFER_LEADER,
                    self.group,
                    self.id,
                    self.lead,
                    term=self.term,
                    index=Index(to),
                )
            )
            return
        pr = self.trk.progress.get(to)
        if pr is None or pr.is_learner or to in (self.id, self.lead_transferee):
            return
        self.logger.info("%d transfers leadership to %d in term %d", self.id, to, self.term)
        self.lead_transferee = to
        self.election_elapsed = 0  # it must finish within one election timeout
        if pr.match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    # -- reports from the driver -----------------------------------------------------

    def forget_leader(self) -> bool:
        """The driver knows this follower's leader is gone (its process closed our
        connections): drop it, so that this node grants pre-votes and votes at once
        instead of honouring stickiness for the rest of an election timeout. Only a
        liveness hint: safety never rests on stickiness, except for lease reads, where
        a follower must not vote while the old leader may still serve from its lease,
        so it does nothing with ``LEASE_BASED`` reads. Returns whether it forgot."""
        if self.role is not Role.FOLLOWER or self.lead == NONE:
            return False
        if self.cfg.read_only is ReadOnlyOption.LEASE_BASED:
            return False
        self.logger.info("%d forgets leader %d in term %d", self.id, self.lead, self.term)
        self.lead = NONE
        return True

    def report_unreachable(self, node: NodeId) -> None:
        pr = self.trk.progress.get(node)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        pr = self.trk.progress.get(node)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = Index(0)
        pr.become_probe()
        # Wait for the follower's answer (or the next heartbeat) before probing.
        pr.probe_sent = True

    # -- driven by RawNode.advance ----------------------------------------------------

    def on_persisted(self, index: Index) -> None:
        """The driver has made the log durable up to ``index``."""
        pr = self.trk.progress.get(self.id)
        updated = pr is not None and pr.maybe_update(index)
        if updated and self.role is Role.LEADER and self._maybe_commit():
            self._bcast_append()

    def apply_conf_entry(self, entry: Entry) -> None:
        """A committed conf change entry has been applied: switch configurations."""
        try:
            cc = decode_conf_change(entry.data)
            cs = apply_conf_change(self.trk.conf, cc)
        except ConfChangeError as exc:
            # Every member applies the same entries in the same order and rejects the
            # same ones, so skipping it keeps everyone's configuration in step.
            self.logger.warning("%d skips conf change at %d: %s", self.id, entry.index, exc)
            return
        self.switch_to_conf(cs)

    def switch_to_conf(self, cs: ConfState) -> None:
        self.logger.info("%d applies configuration %s", self.id, describe_conf_state(cs))
        self.trk.apply_conf(cs, self.log.last_index() + 1)
        if self.role is not Role.LEADER:
            return
        if self.id not in self.trk.voters():
            # Removed or demoted: step down so the others elect a leader among themselves.
            self.become_follower(self.term, NONE)
            return
        if self.lead_transferee != NONE and self.lead_transferee not in self.trk.voters():
            self.lead_transferee = NONE
        # Acks already received may be a quorum of the new configuration; shrunk to the
        # leader alone, no ack will ever come again.
        self._release_confirmed_reads()
        # The new quorum may commit more; new members need their first append.
        if self._maybe_commit():
            self._bcast_append()
        else:
            for node in self.trk.progress:
                if node != self.id:
                    self._send_append(node, send_if_empty=False)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)


_REQUIRED_SNAPSHOT = frozenset({MessageType.SNAP})


def validate_message(m: Message, group: GroupId, me: NodeId) -> None:
    """Raise MessageRejected unless ``m`` is a well-formed message for this node."""
    if not isinstance(m, Message) or not isinstance(m.type, MessageType):
        raise MessageRejected(f"not a raft message: {m!r:.200}")
    ints = (m.group, m.frm, m.to, m.term, m.log_term, m.index, m.commit, m.reject_hint)
    if any(type(v) is not int for v in ints) or type(m.reject) is not bool:
        raise MessageRejected(f"{m.type.name}: a numeric field has the wrong type")
    if not isinstance(m.entries, tuple) or not isinstance(m.context, bytes):
        raise MessageRejected(f"{m.type.name}: entries or context has the wrong type")
    if m.group != group:
        raise MessageRejected(f"message for group {m.group} reached group {group}")
    if m.to != me:
        raise MessageRejected(f"message for node {m.to} reached node {me}")
    if m.frm <= 0 or m.frm == me:
        raise MessageRejected(f"message from invalid sender {m.frm}")
    if m.term < 0 or m.index < 0 or m.log_term < 0 or m.commit < 0 or m.reject_hint < 0:
        raise MessageRejected(f"negative field in {m.type.name} from {m.frm}")
    if (m.snapshot is not None) != (m.type in _REQUIRED_SNAPSHOT):
        raise MessageRejected(f"{m.type.name} from {m.frm}: snapshot present iff SNAP")
    if m.snapshot is not None:
        if not _well_typed_snapshot(m.snapshot):
            raise MessageRejected(f"SNAP from {m.frm}: snapshot has the wrong type")
        meta = m.snapshot.meta
        if meta.index <= 0 or not 0 < meta.term <= m.term or not meta.conf.voters:
            raise MessageRejected(f"SNAP from {m.frm}: malformed snapshot metadata")
    if m.entries and m.type is not MessageType.APP:
        raise MessageRejected(f"{m.type.name} from {m.frm} carries entries")
    expect = m.index + 1
    for e in m.entries:
        if (
            not isinstance(e, Entry)
            or type(e.index) is not int
            or type(e.term) is not int
            or not isinstance(e.type, EntryType)
            or not isinstance(e.data, bytes)
            or e.index != expect
            or e.term > m.term
            or e.term <= 0
        ):
            raise MessageRejected(f"APP from {m.frm}: bad entry at position {expect - m.index}")
        expect += 1
    if m.entries and m.entries[0].term < m.log_term:
        raise MessageRejected(f"APP from {m.frm}: entry term below previous term")
    if m.type in RESPONSE_TYPES and m.entries:
        raise MessageRejected(f"{m.type.name} from {m.frm} carries entries")


def _well_typed_snapshot(snap: object) -> bool:
    if not isinstance(snap, Snapshot) or not isinstance(snap.data, bytes):
        return False
    meta = snap.meta
    if not isinstance(meta, SnapshotMeta) or type(meta.index) is not int:
        return False
    cs = meta.conf
    if type(meta.term) is not int or not isinstance(cs, ConfState):
        return False
    sets = (cs.voters, cs.learners, cs.voters_outgoing, cs.learners_next)
    return type(cs.auto_leave) is bool and all(
        isinstance(ids, frozenset) and all(type(n) is int and n > 0 for n in ids) for ids in sets
    )
