"""What every simulated cluster shares: the event queue, a replica's Ready cycle, the
network faults, pauses and the clients.

Theory of operation
-------------------
A simulation is a set of *hosts* (``SimHost``: a process with one disk, which can crash,
restart and pause) hosting *replicas* (``SimReplica``: one Raft group's ``RawNode``,
state machine and waiting requests). The single-group ``Cluster`` uses one object as
both; the sharded cluster (``_sharded``) hosts many replicas per host, one per range,
every one of them in the host's one WAL. ``SimBase`` runs everything that does not
depend on that:

* the event queue under the virtual clock, and the main loop (``run``);
* a replica's Ready cycle, the template for the real server: take the Ready, write it
  to the host's disk, and only when the simulated fsync completes send its messages,
  apply its committed entries (``_apply``, which subclasses extend), hand out its
  reads, ``advance``; then compact the log now and then;
* message delivery by group: a message for a group its host does not hold is dropped,
  as a real node drops input for a group it does not host;
* the faults that are about hosts and the network (crash, pause, partitions of several
  shapes, a lossy and duplicating network) and the end of the faults;
* the clients: one operation at a time each, retried with the same session number
  across attempts until a deadline, the outcome recorded for the linearizability check.
  Where a request goes and what a refusal means are the subclass's (``_target``,
  ``_retarget``, ``_serving_replica``).

Events carry the replica object they are for; an event whose replica is no longer the
one its host holds (the host restarted, or the replica was deleted) does nothing.

This module never reads the wall clock or the global random generator: every choice
comes from the cluster's one ``random.Random``. It never decides what a host hosts or
which Raft membership a group has; subclasses do.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quorumkv.consensus import (
    NONE,
    Config,
    Entry,
    GroupId,
    Message,
    MessageType,
    NodeId,
    RawNode,
    ReadOnlyOption,
    Ready,
    Role,
    Snapshot,
    describe_message,
)
from quorumkv.errors import ProposalDropped, SimulationError

from ._checks import SafetyChecker
from ._disk import StorageDisk
from ._kv import Command, KVStateMachine
from ._linearizability import CheckResult, Operation, OpKind, check_history
from ._network import Network, NetworkProfile

WRONG_RANGE = -1
"""The hint of a refusal that means "this replica does not serve that key": the client
refreshes its view of the ranges before it retries."""


@dataclass
class Request:
    client: int
    seq: int
    attempt: int
    kind: OpKind
    key: str
    value: str | None
    expected: str | None
    group: int = 1
    """The Raft group (range) the client routed this attempt to."""


@dataclass
class ClientState:
    id: int
    seq: int = 0
    target: int = 1
    attempt: int = 0
    op: Request | None = None
    invoke: int = 0


@dataclass(kw_only=True)
class SimReplica:
    """One Raft group's replica: its core, state machine and waiting requests."""

    group: GroupId
    raw: RawNode
    sm: KVStateMachine
    io_busy: bool = False
    ready_scheduled: bool = False
    pending_writes: dict[tuple[int, int], Request] = field(default_factory=dict)
    pending_reads: dict[bytes, Request] = field(default_factory=dict)
    waiting_reads: list[tuple[int, Request]] = field(default_factory=list)
    last_role: Role = Role.FOLLOWER


@dataclass(kw_only=True)
class SimHost:
    """One process with one disk: what crashes, restarts and pauses."""

    id: int
    disk: StorageDisk
    incarnation: int = 0
    alive: bool = True
    paused: bool = False
    deferred: list[tuple[Callable[..., None], tuple[Any, ...]]] = field(default_factory=list)


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
    events: dict[str, int] = field(default_factory=dict)
    """Sharded runs: how many splits, moves and range leader transfers took effect."""


def _enc(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


class SimBase:
    """The shared machinery; see the module docstring. Subclasses set ``nodes`` and
    ``clients`` and fill in the hooks."""

    nodes: dict[int, SimHost]
    clients: list[ClientState]

    def __init__(self, cfg: Any, trace: bool) -> None:
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
        self.history: list[Operation] = []
        self.election_samples: list[float] = []
        self._leader_crash: tuple[int, int] | None = None  # (time, term)
        self.faults_on = True

    # -- hooks -------------------------------------------------------------------------

    def _replica(self, node: SimHost, group: int) -> SimReplica | None:
        raise NotImplementedError

    def _checker(self, group: int) -> SafetyChecker:
        raise NotImplementedError

    def _start_nodes(self) -> None:
        raise NotImplementedError

    def _final_checks(self) -> None:
        raise NotImplementedError

    def _some_leader(self) -> int | None:
        """A host that leads a group now (for faults that like to hit leaders)."""
        raise NotImplementedError

    def _crash(self, node: SimHost) -> None:
        raise NotImplementedError

    def _restart(self, nid: int) -> None:
        raise NotImplementedError

    def _serving_replica(self, node: SimHost, req: Request) -> SimReplica | None:
        """The replica that takes ``req`` here; None if refused (and answered)."""
        raise NotImplementedError

    def _target(self, c: ClientState, req: Request) -> int:
        """The host a client sends this attempt to (may set ``req.group``)."""
        raise NotImplementedError

    def _retarget(self, c: ClientState, hint: int | None) -> None:
        """Where the client goes next after a refusal with ``hint`` or a timeout."""
        raise NotImplementedError

    def _became_leader(self, node: SimHost, rep: SimReplica) -> None:
        pass

    def _drops(self, rep: SimReplica, m: Message) -> bool:
        """Whether the host drops ``m`` before its replica sees it."""
        return False

    def _events(self) -> dict[str, int]:
        return {}

    def _name(self, node: SimHost, rep: SimReplica) -> str:
        return f"n{node.id}"

    # -- the event queue -------------------------------------------------------------

    def at(self, delay: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, fn, args))

    def log(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.now / 1000:10.3f}ms  {text}")

    def run(self) -> SimResult:
        cfg = self.cfg
        self._start_nodes()
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
            events=self._events(),
        )

    # -- a replica's Ready cycle -----------------------------------------------------

    def _raft_config(self, nid: int, group: int) -> Config:
        """A replica's core configuration; the seed picks its flow control."""
        cfg = self.cfg
        return Config(
            id=NodeId(nid),
            group=GroupId(group),
            election_tick=cfg.election_tick,
            heartbeat_tick=cfg.heartbeat_tick,
            max_inflight_msgs=self.rng.choice((2, 16, 256)),
            max_size_per_msg=cfg.max_size_per_msg or self.rng.choice((1, 200, 4096, 1 << 20)),
            read_only=ReadOnlyOption.LEASE_BASED if cfg.lease_reads else ReadOnlyOption.SAFE,
        )

    @staticmethod
    def _live(node: SimHost, incarnation: int) -> bool:
        return node.alive and node.incarnation == incarnation

    def _current(self, node: SimHost, rep: SimReplica) -> bool:
        """``rep`` is still what its live host holds for its group."""
        return node.alive and self._replica(node, rep.group) is rep

    def _defer_if_paused(self, node: SimHost, fn: Callable[..., None], *args: Any) -> bool:
        """A paused node keeps its inputs for when it resumes; True if this one waits."""
        if node.paused:
            node.deferred.append((fn, args))
            return True
        return False

    def _deliver(self, m: Message) -> None:
        node = self.nodes[m.to]
        rep = self._replica(node, m.group) if node.alive else None
        if rep is None or not self.net.link_up(m.frm, m.to):
            if m.type is MessageType.SNAP:
                self._report_snapshot(m.frm, m.to, m.group, False)
            return
        if self._defer_if_paused(node, self._deliver, m):
            return
        if self._drops(rep, m):
            return
        if self.tracing:
            self.log(f"recv {describe_message(m)}")
        rep.raw.step(m)
        if m.type is MessageType.SNAP:
            self._report_snapshot(m.frm, m.to, m.group, True)
        self._after_input(node, rep)

    def _report_snapshot(self, leader: int, to: int, group: int, ok: bool) -> None:
        node = self.nodes[leader]
        rep = self._replica(node, group) if node.alive and not node.paused else None
        if rep is not None:
            rep.raw.report_snapshot(NodeId(to), ok)
            self._after_input(node, rep)

    def _after_input(self, node: SimHost, rep: SimReplica) -> None:
        raw = rep.raw
        role = raw.raft.role
        if role is not rep.last_role:
            rep.last_role = role
            self.log(f"{self._name(node, rep)} becomes {role.value} in term {raw.raft.term}")
            if role is Role.LEADER:
                self._checker(rep.group).observe_leader(node.id, raw.raft.term, raw.raft.log)
                self._became_leader(node, rep)
        if not rep.io_busy and not rep.ready_scheduled and raw.has_ready():
            rep.ready_scheduled = True
            self.at(0, self._take_ready, node.id, rep)

    def _take_ready(self, nid: int, rep: SimReplica) -> None:
        node = self.nodes[nid]
        rep.ready_scheduled = False
        if not self._current(node, rep) or rep.io_busy:
            return
        if self._defer_if_paused(node, self._take_ready, nid, rep):
            return
        rd = rep.raw.ready()
        self._checker(rep.group).observe_ready(nid, rd, rep.raw.raft.log, rep.raw.raft.term)
        node.disk.write_ready(rd, rep.group)
        rep.io_busy = True
        delay = self.rng.randint(*self.cfg.fsync_us) if rd.must_sync else 0
        self.at(delay, self._io_done, nid, rep, rd)

    def _io_done(self, nid: int, rep: SimReplica, rd: Ready) -> None:
        node = self.nodes[nid]
        if not self._current(node, rep):
            return
        if self._defer_if_paused(node, self._io_done, nid, rep, rd):
            return
        node.disk.sync()
        if self._at_crash_point(node, rep, rd, before_send=True):
            self._crash(node)  # its entries are on its disk and nowhere else
            return
        for m in rd.messages:
            delays = self.net.route(m.frm, m.to)
            for delay in delays:
                self.at(delay, self._deliver, m)
            if not delays and m.type is MessageType.SNAP:
                # The snapshot stream broke; a real transport would notice too.
                self.at(self.cfg.tick_us, self._report_snapshot, m.frm, m.to, m.group, False)
        if rd.snapshot is not None:
            self._install(node, rep, rd.snapshot)
        for e in rd.committed:
            self._apply(node, rep, e)
        for rs in rd.read_states:
            req = rep.pending_reads.pop(rs.context, None)
            if req is not None:
                rep.waiting_reads.append((rs.index, req))
        rep.raw.advance(rd)
        rep.io_busy = False
        if self._at_crash_point(node, rep, rd, before_send=False):
            self._crash(node)
            return
        self._serve_reads(rep)
        self._maybe_compact(node, rep)
        self._after_input(node, rep)

    def _install(self, node: SimHost, rep: SimReplica, snap: Snapshot) -> None:
        rep.sm = KVStateMachine.restore(snap.data, snap.meta.index)

    def _apply(self, node: SimHost, rep: SimReplica, e: Entry) -> None:
        out = rep.sm.apply(e)
        if out is not None:
            cmd, result = out
            req = rep.pending_writes.pop((cmd.client, cmd.seq), None)
            if req is not None:
                self._respond(req, True, result)

    def _at_crash_point(self, node: SimHost, rep: SimReplica, rd: Ready, before_send: bool) -> bool:
        p: float = self.cfg.crash_points
        if not p or not self.faults_on:
            return False
        if before_send:
            if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
                return self.rng.random() < p
            if rd.hard_state is not None and rep.raw.raft.role is Role.LEADER:
                return self.rng.random() < p / 5  # commit advanced: on disk, not told
            return False
        if rd.hard_state is not None and rd.hard_state.vote not in (NONE, node.id):
            return self.rng.random() < p
        if rd.committed and rep.raw.raft.role is Role.LEADER:
            return self.rng.random() < p / 10
        return False

    def _read_result(self, rep: SimReplica, req: Request) -> tuple[bool, Any, int]:
        """The answer to a read whose read index is applied: (ok, value, hint)."""
        return True, rep.sm.get(req.key), 0

    def _serve_reads(self, rep: SimReplica) -> None:
        if not rep.waiting_reads:
            return
        still: list[tuple[int, Request]] = []
        for index, req in rep.waiting_reads:
            if index <= rep.sm.applied:
                self._respond(req, *self._read_result(rep, req))
            else:
                still.append((index, req))
        rep.waiting_reads = still

    def _maybe_compact(self, node: SimHost, rep: SimReplica) -> None:
        log = rep.raw.raft.log
        if rep.sm.applied - log.offset >= self.cfg.compact_every:
            snap = rep.raw.compact(rep.sm.applied, rep.sm.snapshot())
            node.disk.save_snapshot(snap, rep.group)
            self.log(f"{self._name(node, rep)} compacts its log to {snap.meta.index}")

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
        target = self._target(c, req)
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
        self._retarget(c, hint)
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
        rep = self._serving_replica(node, req)
        if rep is None:
            return
        raw = rep.raw
        try:
            if req.kind is OpKind.GET:
                ctx = f"{req.client}:{req.seq}:{req.attempt}".encode()
                raw.read_index(ctx)
                rep.pending_reads[ctx] = req
            else:
                op = {OpKind.PUT: "put", OpKind.DELETE: "delete", OpKind.CAS: "cas"}[req.kind]
                cmd = Command(req.client, req.seq, op, req.key, req.value, req.expected)
                raw.propose(cmd.encode())
                rep.pending_writes[(req.client, req.seq)] = req
        except ProposalDropped as exc:
            self._respond(req, False, None, exc.leader)
        self._after_input(node, rep)

    # -- faults about hosts and the network ------------------------------------------

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

    def _crash_host(self, node: SimHost) -> None:
        """The host stops, losing what its disk did not sync; it restarts later."""
        lost = node.disk.crash()
        node.alive = False
        node.paused = False
        node.deferred.clear()
        node.incarnation += 1
        length = self.rng.randint(*self.cfg.restart_us)
        self.log(f"FAULT crash n{node.id} (lost {lost} unsynced writes) for {length // 1000}ms")
        self.at(length, self._restart, node.id)

    def _fault_crash(self, length: int) -> None:
        self._crash(self.nodes[self.rng.choice(self._members())])

    def _fault_crash_leader(self, length: int) -> None:
        leader = self._some_leader()
        if leader is not None:
            self._crash(self.nodes[leader])

    def _fault_pause(self, length: int) -> None:
        lead = self._some_leader() if self.rng.random() < 0.5 else None
        node = self.nodes[lead] if lead else self.nodes[self.rng.choice(self._members())]
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
        lead = self._some_leader()
        if lead is None or self.rng.random() >= 0.5:
            lead = self.rng.choice(self._members())
        victim = lead
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

    def _end_faults(self) -> None:
        self.faults_on = False
        self._heal()
        self.log("faults end; every node restarts and the network heals")
        for node in list(self.nodes.values()):
            if node.paused:
                self._resume(node.id, node.incarnation)
            if not node.alive:
                self._restart(node.id)
