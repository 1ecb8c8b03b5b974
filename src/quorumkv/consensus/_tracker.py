"""What a leader knows about each member's log: the progress tracker.

Theory of operation
-------------------
For every member the leader keeps a ``Progress``: ``match`` (highest index known to be
on that member's disk) and ``next`` (next index to send), and one of three states:

* PROBE: the leader does not know where the logs match. It sends one AppendEntries at a
  time and waits (``probe_sent``) for the answer or the next heartbeat response.
* REPLICATE: the logs match up to ``match``. The leader streams entries optimistically,
  advancing ``next`` as it sends, with at most ``max_inflight`` messages unacknowledged
  (the ``Inflights`` window); a full window pauses sending, which is the backpressure.
* SNAPSHOT: the member needs entries the leader has compacted; a snapshot is on its way
  and nothing else is sent until it is reported done.

Invariant: ``match < next``. The leader's own progress tracks its *persisted* log, so the
leader counts toward a quorum only for entries on its own disk.

The tracker also holds the configuration (who votes, who learns) and the votes of the
current election. It never sends messages; the core reads it and decides.
"""

from __future__ import annotations

import enum
from collections import deque

from ._quorum import JointConfig, VoteResult
from ._types import ConfState, Index, NodeId


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The last indexes of appends sent and not yet acknowledged, oldest first."""

    __slots__ = ("_q", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        if self.full():
            raise AssertionError("inflights window overflow")
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        q = self._q
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def reset(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "lease_tick",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool) -> None:
        self.match = Index(0)
        self.next = Index(next_index)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = Index(0)
        self.recent_active = False
        self.lease_tick = 0
        """Leader tick at which the newest heartbeat this member acknowledged was sent."""
        self.is_learner = is_learner
        self.inflights = Inflights(max_inflight)

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = Index(0)
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = Index(max(self.match + 1, pending + 1))
        else:
            self._reset(ProgressState.PROBE)
            self.next = Index(self.match + 1)

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = Index(self.match + 1)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = Index(snapshot_index)

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index`` arrived; False if it told us nothing new."""
        updated = False
        if self.match < index:
            self.match = Index(index)
            updated = True
            self.probe_sent = False
        self.next = Index(max(self.next, index + 1))
        return updated

    def sent_entries(self, last_index: int) -> None:
        """Entries up to ``last_index`` were just sent."""
        if self.state is ProgressState.REPLICATE:
            self.next = Index(last_index + 1)
            self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the append at ``rejected``; False if it is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = Index(self.match + 1)
            return True
        if self.next - 1 != rejected:
            return False
        self.next = Index(max(min(rejected, match_hint + 1), self.match + 1))
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def describe(self) -> str:
        flags = []
        if self.is_learner:
            flags.append("learner")
        if self.is_paused():
            flags.append("paused")
        if self.state is ProgressState.SNAPSHOT:
            flags.append(f"pending-snap={self.pending_snapshot}")
        extra = (" " + " ".join(flags)) if flags else ""
        return f"{self.state.value} match={self.match} next={self.next}{extra}"


class ProgressTracker:
    """The configuration, each member's progress, and the votes of this election."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.conf = ConfState()
        self.config = JointConfig(frozenset())
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}

    def apply_conf(self, conf: ConfState, next_index: int) -> None:
        """Switch to ``conf``: keep progress of members that stay, add fresh progress
        for new ones, drop the rest."""
        self.conf = conf
        self.config = JointConfig(conf.voters, conf.voters_outgoing)
        learners = conf.learners | conf.learners_next
        members = conf.all_nodes()
        for node in list(self.progress):
            if node not in members:
                del self.progress[node]
        for node in members:
            pr = self.progress.get(node)
            if pr is None:
                pr = Progress(next_index, self.max_inflight, node in learners)
                # A new member counts as active until the next check-quorum round, so
                # adding one cannot make the leader step down for not hearing it yet.
                pr.recent_active = True
                self.progress[node] = pr
            pr.is_learner = node in learners and node not in self.config.voters()

    def voters(self) -> frozenset[NodeId]:
        return self.config.voters()

    def committed(self) -> Index:
        return self.config.committed({n: p.match for n, p in self.progress.items()})

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: NodeId, granted: bool) -> None:
        self.votes.setdefault(node, granted)

    def tally_votes(self) -> VoteResult:
        return self.config.vote(self.votes)

    def quorum_active(self) -> bool:
        active = {n for n, p in self.progress.items() if p.recent_active}
        return self.config.has_quorum(active)
