"""RawNode: the driver's handle on one Raft group, and the Ready/advance cycle.

Theory of operation
-------------------
``RawNode`` wraps ``Raft`` with what a driver needs: restart from what it loaded from
disk, local requests with validation, and the batch cycle. ``ready()`` collects
everything the core queued since the last batch into one ``Ready``; the driver does the
work in the order the ``Ready`` docstring gives and calls ``advance(ready)``. Inputs
(``tick``, ``step``, proposals) may arrive between the two; a second ``ready()`` before
``advance`` is a usage error.

``advance`` is where the core learns that entries are durable (the leader counts itself
toward a quorum only then) and that committed entries are applied (configuration
changes take effect only then; a leader in an auto-leave joint configuration proposes
the leave then).

It owns no thread and does no I/O; one RawNode must be used from one thread at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from quorumkv.errors import RaftUsageError

from ._confchange import apply_conf_change, encode_conf_change
from ._log import RaftLog
from ._raft import Config, Raft, Rand
from ._types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Index,
    Message,
    NodeId,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    Term,
)

EARLY_RETRIES = 3
"""A driver's policy for a follower whose leader's node is gone (its connection closed):
``forget_leader``, ``campaign`` after a random 0-2 ticks, and while no leader is known
campaign again 2-4 ticks later, at most this many more times. Two followers that
campaign within a vote's round trip of each other split the vote; without a retry a
whole election timeout (10-20 ticks) would pass before the next try. Random delays make
a second split unlikely; after the last retry the election timeout takes over. The
server (``Replica._early_campaign``) and the simulator follow it."""


@dataclass(frozen=True, slots=True)
class RaftState:
    """What the driver loaded from disk to (re)start a node."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()
    applied: Index = Index(0)
    """The state machine's applied index; at least the snapshot's index."""


def bootstrap_state(
    voters: Iterable[int], data: bytes = b"", learners: Iterable[int] = ()
) -> RaftState:
    """The starting state of every founding member of a new group: a snapshot at index 1
    holding the initial configuration (and the empty state machine ``data``). A node
    joining later starts from ``RaftState()`` and receives that snapshot, or a newer
    one, from the leader, so it learns the configuration the same way."""
    ids = frozenset(NodeId(v) for v in voters)
    learner_ids = frozenset(NodeId(v) for v in learners)
    if not ids or any(v <= 0 for v in ids | learner_ids):
        raise ValueError("a group needs at least one voter with a positive id, and no id <= 0")
    if ids & learner_ids:
        raise ValueError(f"nodes {sorted(ids & learner_ids)} cannot be voter and learner")
    meta = SnapshotMeta(Index(1), Term(1), ConfState(voters=ids, learners=learner_ids))
    return RaftState(HardState(Term(1), NONE, Index(1)), Snapshot(meta, data), (), Index(1))


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    term: Term
    vote: NodeId
    lead: NodeId
    role: Role
    commit: Index
    applied: Index
    last_index: Index
    conf: ConfState
    progress: dict[NodeId, str]
    lead_transferee: NodeId


class RawNode:
    def __init__(
        self,
        cfg: Config,
        state: RaftState,
        rng: Rand,
        logger: logging.Logger | None = None,
    ) -> None:
        log = RaftLog(state.snapshot, state.entries)
        hs = state.hard_state
        if not log.offset <= hs.commit <= log.last_index():
            if hs.commit > log.last_index():
                raise ValueError(
                    f"hard state commit {hs.commit} is beyond the last log index "
                    f"{log.last_index()}: the log is truncated or corrupt"
                )
            hs = HardState(hs.term, hs.vote, log.offset)
        log.committed = hs.commit
        applied = max(state.applied, log.offset)
        if applied > log.committed:
            raise ValueError(f"applied index {applied} is beyond commit {log.committed}")
        conf = state.snapshot.meta.conf if state.snapshot else ConfState()
        self.raft = Raft(cfg, log, hs, conf, rng, logger)
        self._conf_history: list[tuple[Index, ConfState]] = [(log.offset, conf)]
        # Configuration changes take effect when applied: replay those already applied.
        for e in log.slice(log.offset + 1, applied + 1) or ():
            self._apply_entry(e)
        log.applied = log.applying = applied
        self._prev_hs = hs
        self._prev_soft = SoftState(self.raft.lead, self.raft.role)
        self._in_progress: Ready | None = None

    # -- inputs -----------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def step(self, m: Message) -> None:
        """Feed a message from a peer; raises MessageRejected for a bad one."""
        self.raft.step(m)

    def campaign(self) -> None:
        self.raft.campaign()

    def propose(self, data: bytes) -> Index:
        """Propose one entry; returns its index. Raises ProposalDropped if not leader."""
        return self.raft.propose((data,))

    def propose_many(self, datas: list[bytes]) -> Index:
        """Propose a batch; returns the index of the last. They commit in order."""
        return self.raft.propose(datas)

    def propose_conf_change(self, cc: ConfChange) -> Index:
        """Propose a membership change (ConfChangeError if it cannot apply now)."""
        apply_conf_change(self.raft.trk.conf, cc)  # validate against the current config
        return self.raft.propose_conf_change(encode_conf_change(cc))

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read; ``ctx`` comes back in a ReadState."""
        self.raft.read_index(ctx)

    def forget_leader(self) -> bool:
        """Drop a follower's leader when the driver knows it is gone (see
        ``Raft.forget_leader``); the next ``campaign`` then meets no stickiness."""
        return self.raft.forget_leader()

    def transfer_leader(self, to: NodeId) -> None:
        self.raft.transfer_leader(to)

    def report_unreachable(self, node: NodeId) -> None:
        self.raft.report_unreachable(node)

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        self.raft.report_snapshot(node, ok)

    def compact(self, index: Index, data: bytes) -> Snapshot:
        """The driver durably saved a snapshot of the state machine as of ``index``
        (``data``); drop the log up to it. Returns the snapshot with its metadata."""
        log = self.raft.log
        term = log.term(index)
        if term is None:
            raise ValueError(f"cannot compact to {index}: not in the log ({log.offset}..)")
        snap = Snapshot(SnapshotMeta(index, term, self.conf_at(index)), data)
        log.compact(snap)
        later = [c for c in self._conf_history if c[0] > index]
        self._conf_history = [(index, snap.meta.conf), *later]
        return snap

    def conf_at(self, index: int) -> ConfState:
        """The configuration in effect once ``index`` is applied (index <= applied)."""
        conf = self._conf_history[0][1]
        for at, cs in self._conf_history:
            if at > index:
                break
            conf = cs
        return conf

    # -- the batch cycle -----------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self.raft
        log = r.log
        return bool(
            r.msgs
            or r.read_states
            or log.pending_snapshot is not None
            or log.persisting < log.last_index()
            or log.applying < log.committed
            or r.hard_state() != self._prev_hs
            or SoftState(r.lead, r.role) != self._prev_soft
        )

    def ready(self) -> Ready:
        if self._in_progress is not None:
            raise RaftUsageError("ready() called again before advance()")
        r = self.raft
        log = r.log
        entries = tuple(log.entries[log.persisting - log.offset :])
        committed = tuple(log.slice(log.applying + 1, log.committed + 1) or ())
        hs = r.hard_state()
        soft = SoftState(r.lead, r.role)
        snap = log.pending_snapshot
        last = entries[-1] if entries else None
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hs if hs != self._prev_hs else None,
            snapshot=snap,
            entries=entries,
            committed=committed,
            messages=tuple(r.msgs),
            read_states=tuple(r.read_states),
            must_sync=bool(
                entries or snap or hs.term != self._prev_hs.term or hs.vote != self._prev_hs.vote
            ),
            _marks=(
                last.index if last else 0,
                last.term if last else 0,
                committed[-1].index if committed else 0,
            ),
        )
        r.msgs = []
        r.read_states = []
        log.pending_snapshot = None
        if last:
            log.persisting = last.index
        if committed:
            log.applying = committed[-1].index
        self._in_progress = rd
        return rd

    def advance(self, rd: Ready) -> None:
        if rd is not self._in_progress:
            raise RaftUsageError("advance() with a Ready that is not the one in progress")
        self._in_progress = None
        r = self.raft
        log = r.log
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.snapshot is not None:
            idx = rd.snapshot.meta.index
            log.applied = Index(max(log.applied, idx))
            self._conf_history = [(idx, rd.snapshot.meta.conf)]
        persisted, persisted_term, applied = rd._marks
        if persisted and log.term(persisted) == persisted_term:
            log.stable = Index(max(log.stable, persisted))
        if persisted or rd.snapshot is not None:
            r.on_persisted(log.stable)
        if log.pending_snapshot is not None:
            # A snapshot arrived after this Ready was taken and replaced the log: what
            # this Ready applied is covered by it, and its configuration already rules.
            return
        for e in rd.committed:
            self._apply_entry(e)
        if applied:
            log.applied = Index(applied)
        self._maybe_auto_leave()

    def _apply_entry(self, e: Entry) -> None:
        if e.type is EntryType.CONF_CHANGE:
            self.raft.apply_conf_entry(e)
            self._conf_history.append((e.index, self.raft.trk.conf))

    def _maybe_auto_leave(self) -> None:
        r = self.raft
        conf = r.trk.conf
        if (
            r.role is Role.LEADER
            and conf.joint
            and conf.auto_leave
            and r.log.applied >= r.pending_conf_index
            and r.lead_transferee == NONE
        ):
            r.propose_conf_change(encode_conf_change(ConfChange()))

    # -- inspection ----------------------------------------------------------------------

    def status(self) -> Status:
        r = self.raft
        return Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            lead=r.lead,
            role=r.role,
            commit=r.log.committed,
            applied=r.log.applied,
            last_index=r.log.last_index(),
            conf=r.trk.conf,
            progress={n: p.describe() for n, p in sorted(r.trk.progress.items())}
            if r.role is Role.LEADER
            else {},
            lead_transferee=r.lead_transferee,
        )
