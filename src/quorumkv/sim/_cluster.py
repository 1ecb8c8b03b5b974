"""A whole Raft cluster in one process, under a virtual clock, decided by one seed.

Theory of operation
-------------------
Everything that happens is an event in one priority queue ordered by virtual time (in
microseconds) and then by insertion order, and every random choice comes from one
``random.Random(seed)``, so a seed replays exactly. Events are plain callbacks:

* a node's clock ticks every ``tick_us``, each node with its own phase;
* a message from the network arrives;
* a node's disk finishes a write: the node's Ready was written to its disk (the real
  WAL over an in-memory file system, ``StorageDisk``) when
  taken, and only when the simulated fsync completes are its messages sent, its
  committed entries applied and ``advance`` called (the contract in ``quorumkv.consensus``).
  A crash before then loses those writes;
* a client request or response arrives, or a client's attempt times out;
* a fault starts or ends: crash and restart, pause and resume (a SIGSTOP: the node's
  events wait), partitions of several shapes, a lossy and duplicating network,
  membership changes and leader transfers.

The driver code (in ``_base``, shared with the sharded cluster) is the template for
the real server: persist, then send, then apply, then advance, batched per Ready. This
module owns what is about one group: its nodes, their restarts, membership changes and
leader transfers of that group, and the end-of-run liveness check.

After ``duration_us`` the faults stop, the network heals, crashed nodes restart, and the
cluster gets ``settle_us`` to recover: it must elect a leader and finish the clients'
operations. Then the clients' history is checked for linearizability. The safety
properties in ``_checks`` are checked at every Ready along the way.

Nothing here reads the wall clock or the global random generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from quorumkv.consensus import (
    EARLY_RETRIES,
    NONE,
    Change,
    ChangeType,
    ConfChange,
    Config,
    GroupId,
    NodeId,
    RaftState,
    RawNode,
    Role,
    bootstrap_state,
)
from quorumkv.errors import ProposalDropped, SimulationError

from ._base import ClientState, Request, SimBase, SimHost, SimReplica, SimResult
from ._checks import SafetyChecker
from ._disk import StorageDisk
from ._kv import KVStateMachine
from ._linearizability import OpKind

__all__ = ["FAULT_KINDS", "Cluster", "SimConfig", "SimNode", "SimResult"]

GROUP = GroupId(1)

FAULT_KINDS = (
    "crash",
    "crash-leader",
    "pause",
    "isolate",
    "split",
    "bridge",
    "one-way",
    "lossy",
    "conf-change",
    "transfer",
)


@dataclass(frozen=True)
class SimConfig:
    seed: int
    nodes: int = 3
    spares: int = 1
    duration_us: int = 3_000_000
    settle_us: int = 3_000_000
    clients: int = 4
    keys: int = 3
    tick_us: int = 10_000
    election_tick: int = 10
    heartbeat_tick: int = 2
    fsync_us: tuple[int, int] = (100, 1_000)
    fault_gap_us: tuple[int, int] = (50_000, 400_000)
    fault_len_us: tuple[int, int] = (50_000, 800_000)
    restart_us: tuple[int, int] = (50_000, 800_000)
    """How long a crashed node stays down; short ones model a supervisor restart."""
    crash_points: float = 0.0
    """Chance to crash a node at an interesting point: right after it persisted and
    sent a vote; right after it became leader and persisted its first entry, before
    sending it (leaving a tail no one else has); a fifth as often, a leader that
    persisted a new commit index before telling anyone; a tenth as often, a leader
    right after it applied new commits."""
    faults: tuple[str, ...] = FAULT_KINDS
    compact_every: int = 40
    lease_reads: bool = False
    attempt_timeout_us: int = 300_000
    op_deadline_us: int = 2_000_000
    max_size_per_msg: int = 0
    """Bytes of entries per append; 0 lets each node draw one (1 means one entry)."""
    forget_vote: bool = False
    """Planted bug: nodes persist their hard state without the vote."""
    forget_leader: bool = False
    """As the real driver does when a leader's connections close: followers of a
    crashed leader forget it soon after, then campaign after a short random delay."""

    @staticmethod
    def for_seed(seed: int, **overrides: Any) -> SimConfig:
        """The seed decides the cluster's shape as well as its events."""
        rng = random.Random(seed ^ 0x5EED)
        nodes = 3 if rng.random() < 0.6 else 5
        base: dict[str, Any] = {
            "seed": seed,
            "nodes": nodes,
            "spares": rng.choice((1, 2)),
            "clients": rng.randint(3, 6),
            "keys": rng.randint(1, 4),
            "compact_every": rng.choice((10, 25, 60, 1_000_000)),
            # Some seeds are storms of faults, some restart crashed nodes at once: the
            # rare interleavings (a vote lost in a crash mid-election, an old-term entry
            # acknowledged alone) need both.
            "fault_gap_us": rng.choice(((50_000, 400_000), (10_000, 80_000))),
            "restart_us": rng.choice(((50_000, 800_000), (1_000, 30_000))),
            "crash_points": rng.choice((0.0, 0.0, 0.1, 0.3)),
            "forget_leader": rng.random() < 0.5,
        }
        base.update(overrides)
        return SimConfig(**base)


@dataclass(kw_only=True)
class SimNode(SimHost, SimReplica):
    """A node of the one group: host and replica in one."""

    cfg: Config


class Cluster(SimBase):
    nodes: dict[int, SimNode]  # type: ignore[assignment]

    def __init__(self, cfg: SimConfig, trace: bool = False) -> None:
        super().__init__(cfg, trace)
        self.cfg: SimConfig = cfg
        self.checker = SafetyChecker()
        voters = {NodeId(i) for i in range(1, cfg.nodes + 1)}
        self.nodes = {}
        for nid in range(1, cfg.nodes + cfg.spares + 1):
            state = bootstrap_state(voters) if nid in voters else RaftState()
            disk = StorageDisk(
                state, random.Random(self.rng.getrandbits(64)), forget_vote=cfg.forget_vote
            )
            self.nodes[nid] = self._make_node(nid, disk)
        self.clients = [
            ClientState(c, target=self.rng.randint(1, cfg.nodes)) for c in range(1, cfg.clients + 1)
        ]

    # -- hooks of SimBase ------------------------------------------------------------

    def _replica(self, node: SimHost, group: int) -> SimReplica | None:
        return self.nodes[node.id] if group == GROUP else None

    def _checker(self, group: int) -> SafetyChecker:
        return self.checker

    def _start_nodes(self) -> None:
        for node in self.nodes.values():
            self.at(self.rng.randint(0, self.cfg.tick_us), self._tick, node.id, node.incarnation)

    def _some_leader(self) -> int | None:
        leader = self._leader()
        return leader.id if leader is not None else None

    def _became_leader(self, node: SimHost, rep: SimReplica) -> None:
        self._sample_election(rep.raw.raft.term)

    def _serving_replica(self, node: SimHost, req: Request) -> SimReplica | None:
        return self.nodes[node.id]

    def _target(self, c: ClientState, req: Request) -> int:
        if req.kind is OpKind.GET and c.attempt == 1 and self.rng.random() < 0.5:
            # Spread reads over every node, as a load-balancing client would: followers
            # serve them through ReadIndex, and a deposed leader is asked too.
            return self.rng.randint(1, len(self.nodes))
        return c.target

    def _retarget(self, c: ClientState, hint: int | None) -> None:
        c.target = hint if hint else self.rng.randint(1, len(self.nodes))

    # -- nodes -----------------------------------------------------------------------

    def _make_node(self, nid: int, disk: StorageDisk) -> SimNode:
        rcfg = self._raft_config(nid, GROUP)
        state = disk.load()
        raw = RawNode(rcfg, state, random.Random(self.rng.getrandbits(64)))
        snap = state.snapshot
        sm = KVStateMachine.restore(snap.data, snap.meta.index) if snap else KVStateMachine()
        return SimNode(id=nid, cfg=rcfg, disk=disk, raw=raw, sm=sm, group=GROUP)

    def _tick(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        if not self._live(node, incarnation):
            return
        self.at(self.cfg.tick_us, self._tick, nid, incarnation)
        if node.paused:
            return  # a stopped process does not notice time passing
        node.raw.tick()
        self._after_input(node, node)

    def _sample_election(self, term: int) -> None:
        if self._leader_crash is not None and term > self._leader_crash[1]:
            elapsed = self.now - self._leader_crash[0]
            self.election_samples.append(elapsed / (self.cfg.election_tick * self.cfg.tick_us))
            self._leader_crash = None

    # -- faults ----------------------------------------------------------------------

    def _leader(self) -> SimNode | None:
        leaders = [
            n
            for n in self.nodes.values()
            if n.alive and not n.paused and n.raw.raft.role is Role.LEADER
        ]
        return max(leaders, key=lambda n: n.raw.raft.term) if leaders else None

    def _crash(self, node: SimHost) -> None:
        assert isinstance(node, SimNode)
        if not node.alive:
            return
        # Time-to-new-leader is sampled only for a leader crash alone: a healthy network
        # and every other node up. Any other crash during the wait spoils the sample.
        others_up = all(n.alive and not n.paused for n in self.nodes.values() if n is not node)
        if node.raw.raft.role is Role.LEADER and self.net.healthy() and others_up:
            self._leader_crash = (self.now, node.raw.raft.term)
        else:
            self._leader_crash = None
        self._crash_host(node)
        if self.cfg.forget_leader:
            for n in self.nodes.values():
                if n.alive and n is not node and n.raw.raft.lead == node.id:
                    notice = self.rng.randint(1_000, 20_000)  # the connection's close
                    self.at(notice, self._leader_gone, n.id, n.incarnation, node.id)

    def _leader_gone(self, nid: int, incarnation: int, dead: int) -> None:
        node = self.nodes[nid]
        if not self._live(node, incarnation):
            return
        if self._defer_if_paused(node, self._leader_gone, nid, incarnation, dead):
            return
        if node.raw.raft.lead == dead and node.raw.forget_leader():
            self.log(f"n{nid} forgets its dead leader n{dead}")
            delay = self.rng.randint(0, 2 * self.cfg.tick_us)
            self.at(delay, self._early_campaign, nid, incarnation, EARLY_RETRIES)
            self._after_input(node, node)

    def _early_campaign(self, nid: int, incarnation: int, retries: int) -> None:
        """The server's ``Replica._early_campaign``: campaign while no leader is known,
        again 2-4 ticks later up to ``retries`` times."""
        node = self.nodes[nid]
        if not self._live(node, incarnation):
            return
        if self._defer_if_paused(node, self._early_campaign, nid, incarnation, retries):
            return
        if node.raw.raft.lead == NONE and node.raw.raft.role is not Role.LEADER:
            node.raw.campaign()
            self._after_input(node, node)
            if retries:
                again = self.rng.randint(2 * self.cfg.tick_us, 4 * self.cfg.tick_us)
                self.at(again, self._early_campaign, nid, incarnation, retries - 1)

    def _restart(self, nid: int) -> None:
        old = self.nodes[nid]
        if old.alive:
            return
        node = self._make_node(nid, old.disk)
        node.incarnation = old.incarnation + 1
        self.checker.forget_node_commit(nid)
        self.nodes[nid] = node
        self.log(f"restart n{nid} at term {node.raw.raft.term}, applied {node.sm.applied}")
        self.at(self.rng.randint(0, self.cfg.tick_us), self._tick, nid, node.incarnation)

    def _fault_transfer(self, length: int) -> None:
        leader = self._leader()
        if leader is None:
            return
        voters = sorted(leader.raw.raft.trk.voters() - {leader.id})
        if voters:
            to = self.rng.choice(voters)
            self.log(f"FAULT transfer leadership n{leader.id} -> n{to}")
            leader.raw.transfer_leader(NodeId(to))
            self._after_input(leader, leader)

    def _fault_conf_change(self, length: int) -> None:
        leader = self._leader()
        if leader is None:
            return
        conf = leader.raw.raft.trk.conf
        if conf.joint:
            return
        members = conf.voters | conf.learners
        outside = [n for n in self._members() if n not in members]
        options: list[Change] = []
        options += [Change(ChangeType.ADD_LEARNER, NodeId(n)) for n in outside]
        options += [Change(ChangeType.ADD_VOTER, NodeId(n)) for n in outside]
        options += [Change(ChangeType.ADD_VOTER, n) for n in conf.learners]
        if len(conf.voters) > 3:
            options += [Change(ChangeType.REMOVE, n) for n in conf.voters]
            options += [Change(ChangeType.ADD_LEARNER, n) for n in conf.voters]
        options += [Change(ChangeType.REMOVE, n) for n in conf.learners]
        if not options:
            return
        change = self.rng.choice(options)
        try:
            leader.raw.propose_conf_change(ConfChange((change,)))
        except (ProposalDropped, ValueError) as exc:
            self.log(f"conf change {change.type.value} n{change.node} refused: {exc}")
            return
        self.log(f"FAULT conf change {change.type.value} n{change.node} via n{leader.id}")
        self._after_input(leader, leader)

    # -- the end ---------------------------------------------------------------------

    def _final_checks(self) -> None:
        """After the faults end the cluster must recover by itself: a leader, and every
        voter caught up with its commit index."""
        leader = self._leader()
        if leader is None:
            raise SimulationError(
                f"liveness violated: no leader {self.cfg.settle_us // 1000}ms after faults ended"
            )
        commit = leader.raw.raft.log.committed
        for nid in sorted(leader.raw.raft.trk.voters()):
            behind = commit - self.nodes[nid].raw.raft.log.committed
            if behind > 0:
                raise SimulationError(
                    f"liveness violated: voter n{nid} is {behind} entries behind leader "
                    f"n{leader.id}'s commit {commit} after the cluster settled"
                )
