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

The driver code here is the template for the real server: persist, then send, then
apply, then advance, batched per Ready.

After ``duration_us`` the faults stop, the network heals, crashed nodes restart, and the
cluster gets ``settle_us`` to recover: it must elect a leader and finish the clients'
operations. Then the clients' history is checked for linearizability. The safety
properties in ``_checks`` are checked at every Ready along the way.

Nothing here reads the wall clock or the global random generator.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quorumkv.consensus import (
    NONE,
    Change,
    ChangeType,
    ConfChange,
    Config,
    Message,
    MessageType,
    NodeId,
    RaftState,
    RawNode,
    ReadOnlyOption,
    Ready,
    Role,
    bootstrap_state,
    describe_message,
)
from quorumkv.errors import ProposalDropped, SimulationError

from ._checks import SafetyChecker
from ._disk import StorageDisk
from ._kv import Command, KVStateMachine
from ._linearizability import CheckResult, Operation, OpKind, check_history
from ._network import Network, NetworkProfile

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


@dataclass
class Request:
    client: int
    seq: int
    attempt: int
    kind: OpKind
    key: str
    value: str | None
    expected: str | None


@dataclass
class SimNode:
    id: int
    cfg: Config
    disk: StorageDisk
    raw: RawNode
    sm: KVStateMachine
    incarnation: int = 0
    alive: bool = True
    paused: bool = False
    io_busy: bool = False
    ready_scheduled: bool = False
    deferred: list[tuple[Callable[..., None], tuple[Any, ...]]] = field(default_factory=list)
    pending_writes: dict[tuple[int, int], Request] = field(default_factory=dict)
    pending_reads: dict[bytes, Request] = field(default_factory=dict)
    waiting_reads: list[tuple[int, Request]] = field(default_factory=list)
    last_role: Role = Role.FOLLOWER


@dataclass
class ClientState:
    id: int
    seq: int = 0
    target: int = 1
    attempt: int = 0
    op: Request | None = None
    invoke: int = 0


@dataclass
class SimResult:
    seed: int
    steps: int
    faults: int
    ops: int
    ops_ok: int
    violation: str | None
    election_samples: list[float]
    trace: list[str]
    linearizability: CheckResult | None = None


def _enc(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


class Cluster:
    def __init__(self, cfg: SimConfig, trace: bool = False) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.now = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.steps = 0
        self.faults = 0
        self.tracing = trace
        self.trace: list[str] = []
        self.net = Network(random.Random(self.rng.getrandbits(64)))
        self.checker = SafetyChecker()
        self.history: list[Operation] = []
        self.election_samples: list[float] = []
        self._leader_crash: tuple[int, int] | None = None  # (time, term)
        self.faults_on = True
        voters = {NodeId(i) for i in range(1, cfg.nodes + 1)}
        self.nodes: dict[int, SimNode] = {}
        for nid in range(1, cfg.nodes + cfg.spares + 1):
            state = bootstrap_state(voters) if nid in voters else RaftState()
            disk = StorageDisk(
                state, random.Random(self.rng.getrandbits(64)), forget_vote=cfg.forget_vote
            )
            self.nodes[nid] = self._make_node(nid, disk)
        self.clients = [
            ClientState(c, target=self.rng.randint(1, cfg.nodes)) for c in range(1, cfg.clients + 1)
        ]

    # -- the event queue -------------------------------------------------------------

    def at(self, delay: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, fn, args))

    def log(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.now / 1000:10.3f}ms  {text}")

    def run(self) -> SimResult:
        cfg = self.cfg
        for node in self.nodes.values():
            self.at(self.rng.randint(0, cfg.tick_us), self._tick, node.id, node.incarnation)
        for c in self.clients:
            self.at(self.rng.randint(0, 20_000), self._client_next, c)
        self.at(self.rng.randint(*cfg.fault_gap_us), self._next_fault)
        self.at(cfg.duration_us, self._end_faults)
        end = cfg.duration_us + cfg.settle_us
        violation: str | None = None
        try:
            while self._queue:
                t, _, fn, args = heapq.heappop(self._queue)
                if t > end:
                    break
                self.now = t
                self.steps += 1
                fn(*args)
            self._final_checks()
        except SimulationError as exc:
            violation = str(exc)
            self.log(f"VIOLATION: {violation}")
        except AssertionError as exc:
            violation = f"internal invariant broken: {exc}"
            self.log(f"VIOLATION: {violation}")
        lin = None
        if violation is None:
            for c in self.clients:
                self._give_up(c)
            lin = check_history(self.history)
            if not lin.ok:
                violation = "linearizability violated: " + lin.explanation
        return SimResult(
            seed=cfg.seed,
            steps=self.steps,
            faults=self.faults,
            ops=len(self.history),
            ops_ok=sum(1 for op in self.history if op.complete is not None),
            violation=violation,
            election_samples=self.election_samples,
            trace=self.trace,
            linearizability=lin,
        )

    # -- nodes -----------------------------------------------------------------------

    def _make_node(self, nid: int, disk: StorageDisk) -> SimNode:
        cfg = self.cfg
        rcfg = Config(
            id=NodeId(nid),
            election_tick=cfg.election_tick,
            heartbeat_tick=cfg.heartbeat_tick,
            max_inflight_msgs=self.rng.choice((2, 16, 256)),
            max_size_per_msg=cfg.max_size_per_msg or self.rng.choice((1, 200, 4096, 1 << 20)),
            read_only=ReadOnlyOption.LEASE_BASED if cfg.lease_reads else ReadOnlyOption.SAFE,
        )
        state = disk.load()
        raw = RawNode(rcfg, state, random.Random(self.rng.getrandbits(64)))
        snap = state.snapshot
        sm = KVStateMachine.restore(snap.data, snap.meta.index) if snap else KVStateMachine()
        return SimNode(nid, rcfg, disk, raw, sm)

    def _live(self, node: SimNode, incarnation: int) -> bool:
        return node.alive and node.incarnation == incarnation

    def _defer_if_paused(self, node: SimNode, fn: Callable[..., None], *args: Any) -> bool:
        """A paused node keeps its inputs for when it resumes; True if this one waits."""
        if node.paused:
            node.deferred.append((fn, args))
            return True
        return False

    def _tick(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        if not self._live(node, incarnation):
            return
        self.at(self.cfg.tick_us, self._tick, nid, incarnation)
        if node.paused:
            return  # a stopped process does not notice time passing
        node.raw.tick()
        self._after_input(node)

    def _deliver(self, m: Message) -> None:
        node = self.nodes[m.to]
        if not node.alive or not self.net.link_up(m.frm, m.to):
            if m.type is MessageType.SNAP:
                self._report_snapshot(m.frm, m.to, False)
            return
        if self._defer_if_paused(node, self._deliver, m):
            return
        if self.tracing:
            self.log(f"recv {describe_message(m)}")
        node.raw.step(m)
        if m.type is MessageType.SNAP:
            self._report_snapshot(m.frm, m.to, True)
        self._after_input(node)

    def _report_snapshot(self, leader: int, to: int, ok: bool) -> None:
        node = self.nodes[leader]
        if node.alive and not node.paused:
            node.raw.report_snapshot(NodeId(to), ok)
            self._after_input(node)

    def _after_input(self, node: SimNode) -> None:
        raw = node.raw
        role = raw.raft.role
        if role is not node.last_role:
            node.last_role = role
            self.log(f"n{node.id} becomes {role.value} in term {raw.raft.term}")
            if role is Role.LEADER:
                self.checker.observe_leader(node.id, raw.raft.term, raw.raft.log)
                self._sample_election(raw.raft.term)
        if not node.io_busy and not node.ready_scheduled and raw.has_ready():
            node.ready_scheduled = True
            self.at(0, self._take_ready, node.id, node.incarnation)

    def _take_ready(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        node.ready_scheduled = False
        if not self._live(node, incarnation) or node.io_busy:
            return
        if self._defer_if_paused(node, self._take_ready, nid, incarnation):
            return
        rd = node.raw.ready()
        self.checker.observe_ready(nid, rd, node.raw.raft.log, node.raw.raft.term)
        node.disk.write_ready(rd)
        node.io_busy = True
        delay = self.rng.randint(*self.cfg.fsync_us) if rd.must_sync else 0
        self.at(delay, self._io_done, nid, incarnation, rd)

    def _io_done(self, nid: int, incarnation: int, rd: Ready) -> None:
        node = self.nodes[nid]
        if not self._live(node, incarnation):
            return
        if self._defer_if_paused(node, self._io_done, nid, incarnation, rd):
            return
        node.disk.sync()
        if self._at_crash_point(node, rd, before_send=True):
            self._crash(node)  # its entries are on its disk and nowhere else
            return
        for m in rd.messages:
            delays = self.net.route(m.frm, m.to)
            for delay in delays:
                self.at(delay, self._deliver, m)
            if not delays and m.type is MessageType.SNAP:
                # The snapshot stream broke; a real transport would notice too.
                self.at(self.cfg.tick_us, self._report_snapshot, m.frm, m.to, False)
        if rd.snapshot is not None:
            node.sm = KVStateMachine.restore(rd.snapshot.data, rd.snapshot.meta.index)
        for e in rd.committed:
            out = node.sm.apply(e)
            if out is not None:
                cmd, result = out
                req = node.pending_writes.pop((cmd.client, cmd.seq), None)
                if req is not None:
                    self._respond(req, True, result)
        for rs in rd.read_states:
            req = node.pending_reads.pop(rs.context, None)
            if req is not None:
                node.waiting_reads.append((rs.index, req))
        node.raw.advance(rd)
        node.io_busy = False
        if self._at_crash_point(node, rd, before_send=False):
            self._crash(node)
            return
        self._serve_reads(node)
        self._maybe_compact(node)
        self._after_input(node)

    def _at_crash_point(self, node: SimNode, rd: Ready, before_send: bool) -> bool:
        p = self.cfg.crash_points
        if not p or not self.faults_on:
            return False
        if before_send:
            if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
                return self.rng.random() < p
            if rd.hard_state is not None and node.raw.raft.role is Role.LEADER:
                return self.rng.random() < p / 5  # commit advanced: on disk, not told
            return False
        if rd.hard_state is not None and rd.hard_state.vote not in (NONE, node.id):
            return self.rng.random() < p
        if rd.committed and node.raw.raft.role is Role.LEADER:
            return self.rng.random() < p / 10
        return False

    def _serve_reads(self, node: SimNode) -> None:
        if not node.waiting_reads:
            return
        still: list[tuple[int, Request]] = []
        for index, req in node.waiting_reads:
            if index <= node.sm.applied:
                self._respond(req, True, node.sm.get(req.key))
            else:
                still.append((index, req))
        node.waiting_reads = still

    def _maybe_compact(self, node: SimNode) -> None:
        log = node.raw.raft.log
        if node.sm.applied - log.offset >= self.cfg.compact_every:
            snap = node.raw.compact(node.sm.applied, node.sm.snapshot())
            node.disk.save_snapshot(snap)
            self.log(f"n{node.id} compacts its log to {snap.meta.index}")

    def _sample_election(self, term: int) -> None:
        if self._leader_crash is not None and term > self._leader_crash[1]:
            elapsed = self.now - self._leader_crash[0]
            self.election_samples.append(elapsed / (self.cfg.election_tick * self.cfg.tick_us))
            self._leader_crash = None

    # -- clients ---------------------------------------------------------------------

    def _client_next(self, c: ClientState) -> None:
        if self.now > self.cfg.duration_us + self.cfg.settle_us // 2:
            return  # leave the rest of the settling time for outstanding operations
        c.seq += 1
        c.attempt = 0
        c.invoke = self.now
        key = f"k{self.rng.randrange(self.cfg.keys)}"
        r = self.rng.random()
        value = f"c{c.id}.{c.seq}"
        if r < 0.35:
            op = Request(c.id, c.seq, 0, OpKind.PUT, key, value, None)
        elif r < 0.7:
            op = Request(c.id, c.seq, 0, OpKind.GET, key, None, None)
        elif r < 0.9:
            expected = self._recent_value(key)
            op = Request(c.id, c.seq, 0, OpKind.CAS, key, value, expected)
        else:
            op = Request(c.id, c.seq, 0, OpKind.DELETE, key, None, None)
        c.op = op
        self.log(f"client {c.id} invokes {op.kind.name} {key} {value if op.value else ''}")
        self._client_send(c)

    def _recent_value(self, key: str) -> str | None:
        for op in reversed(self.history[-20:]):
            if op.key == key.encode():
                out = op.output if op.kind is OpKind.GET else op.value
                return out.decode() if isinstance(out, bytes) else None
        return None

    def _client_send(self, c: ClientState) -> None:
        assert c.op is not None
        c.attempt += 1
        req = Request(
            c.op.client, c.op.seq, c.attempt, c.op.kind, c.op.key, c.op.value, c.op.expected
        )
        target = c.target
        if req.kind is OpKind.GET and c.attempt == 1 and self.rng.random() < 0.5:
            # Spread reads over every node, as a load-balancing client would: followers
            # serve them through ReadIndex, and a deposed leader is asked too.
            target = self.rng.randint(1, len(self.nodes))
        self.at(self.rng.randint(100, 1_000), self._node_request, target, req)
        self.at(self.cfg.attempt_timeout_us, self._client_timeout, c, c.seq, c.attempt)

    def _client_timeout(self, c: ClientState, seq: int, attempt: int) -> None:
        if c.op is None or c.seq != seq or c.attempt != attempt:
            return
        self._client_retry(c, None)

    def _client_retry(self, c: ClientState, hint: int | None) -> None:
        if self.now - c.invoke >= self.cfg.op_deadline_us:
            self._give_up(c)
            self.at(self.rng.randint(0, 10_000), self._client_next, c)
            return
        c.target = hint if hint else self.rng.randint(1, len(self.nodes))
        self.at(self.rng.randint(1_000, 10_000), self._client_resend, c, c.seq)

    def _client_resend(self, c: ClientState, seq: int) -> None:
        if c.op is not None and c.seq == seq:
            self._client_send(c)

    def _give_up(self, c: ClientState) -> None:
        op = c.op
        if op is None:
            return
        c.op = None
        if op.kind is not OpKind.GET:  # a lost read tells nothing; a write may have happened
            self.history.append(self._operation(op, c.invoke, None, None))
            self.log(f"client {c.id} gives up on {op.kind.name} {op.key}: outcome unknown")

    def _operation(self, op: Request, invoke: int, complete: int | None, output: Any) -> Operation:
        return Operation(
            client=op.client,
            key=op.key.encode(),
            kind=op.kind,
            value=_enc(op.value),
            expected=_enc(op.expected),
            output=_enc(output) if op.kind is OpKind.GET else output,
            invoke=float(invoke),
            complete=float(complete) if complete is not None else None,
        )

    def _respond(self, req: Request, ok: bool, result: Any, hint: int = 0) -> None:
        self.at(self.rng.randint(100, 1_000), self._client_response, req, ok, result, hint)

    def _client_response(self, req: Request, ok: bool, result: Any, hint: int) -> None:
        c = self.clients[req.client - 1]
        if c.op is None or c.seq != req.seq or c.attempt != req.attempt:
            return
        if not ok:
            self._client_retry(c, hint or None)
            return
        op = c.op
        c.op = None
        self.history.append(self._operation(op, c.invoke, self.now, result))
        self.log(f"client {c.id} completes {op.kind.name} {op.key} -> {result!r}")
        self.at(self.rng.randint(0, 10_000), self._client_next, c)

    def _node_request(self, nid: int, req: Request) -> None:
        node = self.nodes[nid]
        if not node.alive:
            return  # the client times out
        if self._defer_if_paused(node, self._node_request, nid, req):
            return
        raw = node.raw
        try:
            if req.kind is OpKind.GET:
                ctx = f"{req.client}:{req.seq}:{req.attempt}".encode()
                raw.read_index(ctx)
                node.pending_reads[ctx] = req
            else:
                op = {OpKind.PUT: "put", OpKind.DELETE: "delete", OpKind.CAS: "cas"}[req.kind]
                cmd = Command(req.client, req.seq, op, req.key, req.value, req.expected)
                raw.propose(cmd.encode())
                node.pending_writes[(req.client, req.seq)] = req
        except ProposalDropped as exc:
            self._respond(req, False, None, exc.leader)
        self._after_input(node)

    # -- faults ----------------------------------------------------------------------

    def _leader(self) -> SimNode | None:
        leaders = [
            n
            for n in self.nodes.values()
            if n.alive and not n.paused and n.raw.raft.role is Role.LEADER
        ]
        return max(leaders, key=lambda n: n.raw.raft.term) if leaders else None

    def _members(self) -> list[int]:
        return list(self.nodes)

    def _next_fault(self) -> None:
        if not self.faults_on:
            return
        cfg = self.cfg
        kind = self.rng.choice(cfg.faults)
        length = self.rng.randint(*cfg.fault_len_us)
        self.faults += 1
        self._leader_crash = None  # an election-time sample needs one fault alone
        getattr(self, "_fault_" + kind.replace("-", "_"))(length)
        self.at(self.rng.randint(*cfg.fault_gap_us), self._next_fault)

    def _crash(self, node: SimNode) -> None:
        if not node.alive:
            return
        # Time-to-new-leader is sampled only for a leader crash alone: a healthy network
        # and every other node up. Any other crash during the wait spoils the sample.
        others_up = all(n.alive and not n.paused for n in self.nodes.values() if n is not node)
        if node.raw.raft.role is Role.LEADER and self.net.healthy() and others_up:
            self._leader_crash = (self.now, node.raw.raft.term)
        else:
            self._leader_crash = None
        lost = node.disk.crash()
        node.alive = False
        node.paused = False
        node.deferred.clear()
        node.incarnation += 1
        length = self.rng.randint(*self.cfg.restart_us)
        self.log(f"FAULT crash n{node.id} (lost {lost} unsynced writes) for {length // 1000}ms")
        self.at(length, self._restart, node.id)
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
            self.at(delay, self._early_campaign, nid, incarnation)
            self._after_input(node)

    def _early_campaign(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        if not self._live(node, incarnation):
            return
        if self._defer_if_paused(node, self._early_campaign, nid, incarnation):
            return
        if node.raw.raft.lead == NONE and node.raw.raft.role is Role.FOLLOWER:
            node.raw.campaign()
            self._after_input(node)

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

    def _fault_crash(self, length: int) -> None:
        self._crash(self.nodes[self.rng.choice(self._members())])

    def _fault_crash_leader(self, length: int) -> None:
        leader = self._leader()
        if leader is not None:
            self._crash(leader)

    def _fault_pause(self, length: int) -> None:
        node = self._leader() if self.rng.random() < 0.5 else None
        node = node or self.nodes[self.rng.choice(self._members())]
        if node.alive and not node.paused:
            self._leader_crash = None
            node.paused = True
            self.log(f"FAULT pause n{node.id} for {length // 1000}ms")
            self.at(length, self._resume, node.id, node.incarnation)

    def _resume(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        if node.incarnation != incarnation or not node.paused:
            return
        node.paused = False
        self.log(f"resume n{nid}")
        deferred, node.deferred = node.deferred, []
        for fn, args in deferred:
            self.at(0, fn, *args)

    def _partition_for(self, length: int, what: str) -> None:
        self._leader_crash = None
        self.log(f"FAULT {what} for {length // 1000}ms")
        self.at(length, self._heal)

    def _heal(self) -> None:
        if self.net.cut or self.net.profile.drop:
            self.log("heal the network")
        self.net.heal()
        self.net.profile = NetworkProfile()

    def _fault_isolate(self, length: int) -> None:
        leader = self._leader()
        victim = (
            leader.id if leader and self.rng.random() < 0.5 else self.rng.choice(self._members())
        )
        others = set(self._members()) - {victim}
        self.net.isolate([{victim}, others])
        self._partition_for(length, f"isolate n{victim}")

    def _fault_split(self, length: int) -> None:
        ids = self._members()
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        left, right = set(ids[:cut]), set(ids[cut:])
        self.net.isolate([left, right])
        self._partition_for(length, f"split {sorted(left)} | {sorted(right)}")

    def _fault_bridge(self, length: int) -> None:
        ids = self._members()
        if len(ids) < 3:
            return
        self.rng.shuffle(ids)
        bridge, rest = ids[0], ids[1:]
        half = len(rest) // 2
        left, right = set(rest[:half]), set(rest[half:])
        self.net.bridge(left, bridge, right)
        self._partition_for(length, f"bridge {sorted(left)} <-n{bridge}-> {sorted(right)}")

    def _fault_one_way(self, length: int) -> None:
        ids = self._members()
        victim = self.rng.choice(ids)
        others = set(ids) - {victim}
        if self.rng.random() < 0.5:
            self.net.cut_one_way({victim}, others)
            what = f"one-way: n{victim} cannot send"
        else:
            self.net.cut_one_way(others, {victim})
            what = f"one-way: n{victim} cannot receive"
        self._partition_for(length, what)

    def _fault_lossy(self, length: int) -> None:
        self.net.profile = NetworkProfile(
            min_delay_us=200,
            max_delay_us=self.rng.choice((3_000, 20_000, 60_000)),
            drop=self.rng.choice((0.02, 0.1, 0.3)),
            duplicate=self.rng.choice((0.0, 0.05, 0.2)),
        )
        p = self.net.profile
        self._partition_for(
            length, f"lossy network drop={p.drop} dup={p.duplicate} delay<={p.max_delay_us}us"
        )

    def _fault_transfer(self, length: int) -> None:
        leader = self._leader()
        if leader is None:
            return
        voters = sorted(leader.raw.raft.trk.voters() - {leader.id})
        if voters:
            to = self.rng.choice(voters)
            self.log(f"FAULT transfer leadership n{leader.id} -> n{to}")
            leader.raw.transfer_leader(NodeId(to))
            self._after_input(leader)

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
        self._after_input(leader)

    def _end_faults(self) -> None:
        self.faults_on = False
        self._heal()
        self.log("faults end; every node restarts and the network heals")
        for node in list(self.nodes.values()):
            if node.paused:
                self._resume(node.id, node.incarnation)
            if not node.alive:
                self._restart(node.id)

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
