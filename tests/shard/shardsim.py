"""A model cluster for placement tests: a directory, a data distribution, and a loop.

The keyspace is the 4-byte big-endian integers (``b""`` as an end is 2**32). Data follows
a fixed distribution: the bytes (and keys) below integer ``x`` are ``total * (x / 2**32)
** power``, so with ``power > 1`` the top of the keyspace is denser and ranges differ in
size. A range's stats are computed from it, with the middle key at half its bytes.

``step()`` is one round of the placement driver: plan, carry every operation out through
its directory command (checked: each must apply), let learners count as caught up from
the next heartbeat on, move leadership off nodes that stopped (as Raft's election would),
and send every running node's heartbeat. Safety checks run after every operation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from quorumkv.consensus import NONE, NodeId
from quorumkv.shard import (
    AddLearner,
    Bootstrap,
    Directory,
    Heartbeat,
    NodeState,
    Operation,
    PlacementConfig,
    Promote,
    RangeDescriptor,
    RangeId,
    RangeStats,
    RegisterNode,
    RemoveReplica,
    SetNodeState,
    SplitRange,
    TransferLeader,
    node_loads,
    plan,
)

SPACE = 2**32
MiB = 1 << 20
GiB = 1 << 30


def key(i: int) -> bytes:
    return i.to_bytes(4, "big")


def start_int(k: bytes) -> int:
    return int.from_bytes(k, "big") if k else 0


def end_int(k: bytes) -> int:
    return int.from_bytes(k, "big") if k else SPACE


@dataclass
class Data:
    """The cluster's data: ``total_bytes`` and ``total_keys`` spread with ``power``."""

    total_bytes: int
    total_keys: int = 0
    power: float = 2.0
    hot: tuple[int, int] | None = None  # [lo, hi) of integer keys taking ``hot_ops``
    hot_ops: float = 0.0

    def _cdf(self, x: int, total: int) -> int:
        return int(total * (x / SPACE) ** self.power)

    def stats(self, d: RangeDescriptor, leader: NodeId) -> RangeStats:
        lo, hi = start_int(d.start), end_int(d.end)
        size = self._cdf(hi, self.total_bytes) - self._cdf(lo, self.total_bytes)
        keys = self._cdf(hi, self.total_keys) - self._cdf(lo, self.total_keys)
        half = (self._cdf(lo, self.total_bytes) + self._cdf(hi, self.total_bytes)) / 2
        mid = int(SPACE * (half / self.total_bytes) ** (1 / self.power)) if self.total_bytes else 0
        mid = min(max(mid, lo + 1), hi - 1)
        middle = key(mid) if hi - lo >= 2 else None
        ops = 0.0
        if self.hot is not None and lo < self.hot[1] and self.hot[0] < hi:
            overlap = min(hi, self.hot[1]) - max(lo, self.hot[0])
            ops = self.hot_ops * overlap / (self.hot[1] - self.hot[0])
            if hi - lo >= 2:  # a load-based split key: the middle of the hot part
                middle = key(
                    min(max((max(lo, self.hot[0]) + min(hi, self.hot[1])) // 2, lo + 1), hi - 1)
                )
        return RangeStats(d.range_id, d.epoch, leader, size, keys, ops, middle)


@dataclass
class Sim:
    nodes: int
    data: Data
    config: PlacementConfig = field(default_factory=PlacementConfig)
    presplit: int = 1  # ranges at start, cut at equal integer intervals
    first_leader: NodeId = NodeId(1)
    now: float = 0.0
    running: set[NodeId] = field(default_factory=set)
    steps: int = 0
    history: list[list[Operation]] = field(default_factory=list)
    # replicas added and not yet settled (range -> node), and how many of them were
    # removed again (a wasted move: the planner undid its own step)
    adding: dict[RangeId, NodeId] = field(default_factory=dict)
    undone: int = 0
    # balancing moves in flight (range -> the source the plan names), and how many ended
    # by removing another voter than that source
    moving: dict[RangeId, NodeId] = field(default_factory=dict)
    detours: int = 0

    def __post_init__(self) -> None:
        self.d = Directory()
        for n in range(1, self.nodes + 1):
            self.add_node(NodeId(n))
        voters = tuple(
            NodeId(n) for n in range(1, min(self.nodes, self.config.replication_factor) + 1)
        )
        first = self.d.apply(Bootstrap(RangeId(1), voters))
        for i in range(1, self.presplit):
            desc = self.d.lookup(key(i * SPACE // self.presplit))
            self.d.apply(SplitRange(desc.range_id, desc.epoch, key(i * SPACE // self.presplit)))
        assert first.range_id == 1
        self.heartbeat(
            leader_of=lambda d: (
                self.first_leader if self.first_leader in d.voters() else d.voters()[0]
            )
        )
        self.d.check()

    def _first_leader(self, d: RangeDescriptor) -> NodeId:
        return self.first_leader if self.first_leader in d.voters() else d.voters()[0]

    # -- the cluster --------------------------------------------------------------

    def add_node(self, n: NodeId, capacity: int = 0) -> None:
        self.d.apply(RegisterNode(n, f"10.0.0.{n}:7001", capacity, self.now))
        self.running.add(n)

    def stop_node(self, n: NodeId) -> None:
        self.running.discard(n)

    def set_state(self, n: NodeId, state: NodeState) -> None:
        self.d.apply(SetNodeState(n, state))

    def heartbeat(self, leader_of: Callable[[RangeDescriptor], NodeId] | None = None) -> None:
        reports: dict[NodeId, list[RangeStats]] = {n: [] for n in self.running}
        for d in self.d.ranges():
            lead = d.leader if leader_of is None else leader_of(d)
            if lead == NONE or lead not in self.running:
                live = [v for v in d.voters() if v in self.running]
                if 2 * len(live) <= len(d.voters()):
                    continue  # no quorum: no leader, no report
                lead = live[0]  # an election among the running voters
            reports[lead].append(self.data.stats(d, lead))
        for n in sorted(reports):
            res = self.d.apply(Heartbeat(n, self.now, tuple(reports[n])))
            assert res.ignored == (), res

    # -- one round ------------------------------------------------------------------

    def plan(self) -> list[Operation]:
        return plan(self.d, self.d.stats, self.now, self.config)

    def execute(self, ops: Iterable[Operation]) -> None:
        rf = self.config.replication_factor
        seen: set[RangeId] = set()
        for op in ops:
            assert op.range_id not in seen, f"two operations for r{op.range_id}"
            seen.add(op.range_id)
            before = self.d.range(op.range_id)
            assert op.epoch == before.epoch, f"{op.describe()} planned at a stale epoch"
            if isinstance(op, RemoveReplica) and op.node in before.voters():
                assert len(before.voters()) > rf, (
                    f"{op.describe()} drops below RF: {before.describe()}"
                )
            if isinstance(op, TransferLeader):
                assert op.to in self.running and op.to in before.voters(), op.describe()
            if isinstance(op, AddLearner | Promote):
                assert op.node in self.running, op.describe()
            if isinstance(op, AddLearner):
                self.adding[op.range_id] = op.node
                if op.reason.startswith(("replicas:", "bytes:")):
                    self.moving[op.range_id] = NodeId(int(op.reason.split()[2]))
            if isinstance(op, RemoveReplica):
                if op.range_id in self.adding:
                    self.undone += op.node == self.adding.pop(op.range_id)
                if op.range_id in self.moving:
                    self.detours += op.node != self.moving.pop(op.range_id)
            self.d.apply(op.command())
            self.d.check()
            self.check_replication()

    def check_replication(self) -> None:
        rf = self.config.replication_factor
        for d in self.d.ranges():
            assert len(d.voters()) >= min(rf, self._initial_voters), f"below RF: {d.describe()}"

    @property
    def _initial_voters(self) -> int:
        return min(self.nodes, self.config.replication_factor)

    def step(self) -> list[Operation]:
        ops = self.plan()
        self.execute(ops)
        self.history.append(ops)
        self.steps += 1
        self.now += 1.0
        self.heartbeat()
        return ops

    def run(self, max_steps: int) -> int:
        """Steps until a round plans nothing; fails past ``max_steps``."""
        for i in range(max_steps):
            if not self.step():
                return i
        raise AssertionError(f"no convergence in {max_steps} steps; last: {self.history[-1]}")

    # -- measures -------------------------------------------------------------------

    def loads(self, nodes: Iterable[NodeId]) -> tuple[list[int], list[int], list[int]]:
        ld = node_loads(self.d, self.d.stats)
        ns = sorted(nodes)
        return (
            [ld[n].replicas for n in ns],
            [ld[n].leaders for n in ns],
            [ld[n].bytes for n in ns],
        )

    def spread(self, nodes: Iterable[NodeId]) -> dict[str, object]:
        reps, leads, byts = self.loads(nodes)
        return {
            "replicas": reps,
            "leaders": leads,
            "bytes_MiB": [b // MiB for b in byts],
            "replica_spread": max(reps) - min(reps),
            "leader_spread": max(leads) - min(leads),
            "byte_ratio": max(byts) / max(min(byts), 1),
        }

    def count(self, kind: type) -> int:
        return sum(1 for ops in self.history for op in ops if isinstance(op, kind))


def band(mean: float, fraction: float) -> int:
    """The widest spread the hysteresis band allows: both ends inside mean +- tol."""
    tol = max(mean * fraction, 1.0)
    return math.floor(mean + tol) - math.ceil(mean - tol)
