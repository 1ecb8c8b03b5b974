"""A sharded cluster in one process: many Raft groups (ranges) per node, split, moved
and led elsewhere under faults, decided by one seed.

Theory of operation
-------------------
Each node (``ShardNode``) hosts one replica per range it holds, every one of them in
the node's one WAL (``StorageDisk``, the real storage); messages name their group, and a
message for a group the node does not host is dropped, as the real node drops it. The
Ready cycle, the network, host faults and clients are ``_base``'s, shared with the
single-group ``Cluster``. The real ``quorumkv.consensus`` core runs unchanged.

The simulator holds the authoritative directory (what the meta range holds in a real
cluster): a ``quorumkv.shard.RangeDescriptor`` per range. Every change is recorded there
first and carried out by the groups, the protocol of ``quorumkv.server._sharding`` and
``_moves``:

* **Split** (``range-split``): the directory records the split (the range must be idle
  and its leader at the directory's version), then the range's leader proposes an admin
  entry in the range's own log. Every replica that applies it cuts its state machine at
  the key (no data copied; the right half gets a copy of the sessions) and, unless it
  holds that group already, bootstraps the new group at index 1 with the same voters,
  the right half's state as the bootstrap snapshot. The parent's leader campaigns for
  the child at once. A leader that sees the directory one split ahead of its range (its
  predecessor failed between the two steps) proposes the recorded split again; a second
  copy of a split is a no-op.
* **Move** (``move``): the directory adds a learner on a node outside the range; once
  the range's leader replicates to it with a short lag, the directory makes it a voter;
  once it votes, the directory drops an old voter. At every range's leader, a
  level-triggered step (each ``housekeeping_us``) proposes one conf change at a time
  toward the directory: add a learner, promote a caught-up learner, remove a replica the
  directory dropped, but only once every voter the directory lists votes, and handing
  leadership over first if the leader is the one to go. The range never has fewer
  voters than its replication factor.
* **Hosting**: a node hosts a *pending* replica (no state, no log; it gets a snapshot
  from the leader) for a range the directory lists on it and that no replica of its own
  covers the first key of (that one's split will create it). A replica the directory
  does not list here is deleted (log and snapshots reset, term and vote kept) once it is
  pending, or applied its own removal, or the range's leader has applied it.
* **Leader transfer** (``transfer``): a range's leader hands over to another voter.

A pending replica drops vote requests, as the real node does: it holds nothing to vote
on, and a replica re-added after its data was deleted would otherwise vote with an empty
log for a stale candidate whose old configuration still counts it (the simulator's first
run without this rule found exactly that: a leader missing a committed entry). The
planted-bug switch ``pending_votes`` turns the rule off.

A replica refuses a request for a group it does not hold or still waits for (pending),
and, when it applies a write or serves a read, a key outside its bounds (``fence_keys``;
the planted bug turns it off). A refusal says "wrong range"; the client refreshes its
``RangeCache`` from the directory and routes again. Clients also refresh now and then
(``refresh_chance``), so some route by a stale view while others are current.

Checks: Raft's safety per group at every Ready (``_checks``, one checker per group);
linearizability of the clients' history per key at the end; and at the end, after the
faults stopped and the cluster settled, that every range is whole: the directory's
ranges tile the keyspace, no split or move is left half done, every listed replica
holds the range with the directory's bounds, version and configuration, caught up with
its leader and with the same applied state, no key outside its bounds, and no node
still hosts a range the directory does not list on it.

A seed costs about 0.5 to 2 s of one core. A longer sweep than the tests run::

    qkv sim --sharded --seeds 2000 --workers 2

Nothing here reads the wall clock or the global random generator, and it never changes
the consensus core's decisions: it only proposes, campaigns and transfers leadership,
as the real server does.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from typing import Any, NoReturn

from quorumkv.consensus import (
    Change,
    ChangeType,
    ConfChange,
    Entry,
    EntryType,
    GroupId,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    RaftState,
    RawNode,
    Role,
    Snapshot,
    Term,
    bootstrap_state,
)
from quorumkv.errors import ProposalDropped, SimulationError
from quorumkv.shard import (
    KEYSPACE_END,
    Epoch,
    RangeCache,
    RangeDescriptor,
    RangeId,
    Replica,
)

from ._base import (
    WRONG_RANGE,
    ClientState,
    Request,
    SimBase,
    SimHost,
    SimReplica,
)
from ._checks import SafetyChecker
from ._cluster import FAULT_KINDS, SimConfig
from ._disk import StorageDisk
from ._kv import Command, RangeKV
from ._linearizability import OpKind

SHARDED_FAULT_KINDS = (
    *(k for k in FAULT_KINDS if k != "conf-change"),  # a move is the sharded conf change
    "range-split",
    "move",
)
"""``split`` is a network partition, as in the single-group simulator; ``range-split``
splits a range. ``transfer`` moves the leadership of one range."""

_VOTES = (MessageType.VOTE, MessageType.PRE_VOTE)

_SPLIT = b"!"
"""The first byte of a split's admin entry (a client command is a JSON list)."""


@dataclass(frozen=True)
class ShardedConfig(SimConfig):
    nodes: int = 5
    replication: int = 3
    keys: int = 10
    clients: int = 6
    faults: tuple[str, ...] = (*SHARDED_FAULT_KINDS, "range-split", "move", "transfer", "move")
    """Drawn uniformly; the range operations are listed more than once to come often."""
    max_ranges: int = 8
    housekeeping_us: int = 50_000
    refresh_chance: float = 0.1
    """Chance that a client refreshes its range cache before a new operation."""
    fence_keys: bool = True
    """Planted bug when False: a range keeps serving the keys it split away."""
    pending_votes: bool = False
    """Planted bug: a pending replica (no snapshot yet) answers vote requests."""

    @staticmethod
    def for_seed(seed: int, **overrides: Any) -> ShardedConfig:
        """The seed decides the cluster's shape as well as its events."""
        rng = random.Random(seed ^ 0x5AD5)
        base: dict[str, Any] = {
            "seed": seed,
            "nodes": rng.choice((4, 5)),
            "clients": rng.randint(3, 6),
            "keys": rng.randint(6, 12),
            "compact_every": rng.choice((10, 25, 60, 1_000_000)),
            "fault_gap_us": rng.choice(((50_000, 300_000), (20_000, 100_000))),
            "restart_us": rng.choice(((50_000, 800_000), (1_000, 30_000))),
            "crash_points": rng.choice((0.0, 0.0, 0.1)),
        }
        base.update(overrides)
        return ShardedConfig(**base)


@dataclass(kw_only=True)
class ShardReplica(SimReplica):
    """One range's replica on a node; ``sm`` is a ``RangeKV``."""

    def kv(self) -> RangeKV:
        assert isinstance(self.sm, RangeKV)
        return self.sm


@dataclass(kw_only=True)
class ShardNode(SimHost):
    replicas: dict[int, ShardReplica] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)
    """Groups whose replica this node deleted: not loaded again at a restart (the
    deletion of their data is durable, as the real node's is)."""


@dataclass
class ShardClient(ClientState):
    cache: RangeCache = field(default_factory=RangeCache)
    leaders: dict[int, int] = field(default_factory=dict)
    last_group: int = 0


@dataclass
class _Move:
    src: int
    dst: int
    phase: str = "learner"  # then "promote", then "remove"


def _key_inside(desc: RangeDescriptor, key: bytes) -> bool:
    return desc.start < key and (desc.end == KEYSPACE_END or key < desc.end)


class ShardedCluster(SimBase):
    nodes: dict[int, ShardNode]  # type: ignore[assignment]

    def __init__(self, cfg: ShardedConfig, trace: bool = False) -> None:
        super().__init__(cfg, trace)
        self.cfg: ShardedConfig = cfg
        self.checkers: dict[int, SafetyChecker] = {}
        voters = list(range(1, cfg.replication + 1))
        replicas = tuple(Replica(NodeId(v)) for v in voters)
        first = RangeDescriptor(RangeId(1), b"", KEYSPACE_END, Epoch(1, 1), replicas)
        self.directory: dict[int, RangeDescriptor] = {1: first}
        self.next_range_id = 2
        sm = RangeKV()
        sm.range_id, sm.version, sm.applied = 1, 1, Index(1)
        state = bootstrap_state(voters, data=sm.snapshot())
        self.nodes = {}
        for nid in range(1, cfg.nodes + 1):
            disk = StorageDisk(
                state if nid in voters else RaftState(), random.Random(self.rng.getrandbits(64))
            )
            self.nodes[nid] = self._load_node(nid, disk, set())
        self.clients = [
            ShardClient(c, cache=RangeCache(self.directory.values()))
            for c in range(1, cfg.clients + 1)
        ]
        self.busy: dict[int, str] = {}
        """Ranges with a split or move under way: one operation per range at a time."""
        self.moves: dict[int, _Move] = {}
        self.transfers: dict[int, tuple[int, int]] = {}  # range -> (target, started)
        self._reproposed: dict[int, int] = {}
        self.counts = dict.fromkeys(
            (
                "splits",
                "splits_started",
                "moves",
                "moves_started",
                "transfers",
                "transfers_started",
                "wrong_range",
                "pending_replicas",
                "deleted_replicas",
                "crashes",
            ),
            0,
        )

    # -- hooks of SimBase ------------------------------------------------------------

    def _replica(self, node: SimHost, group: int) -> SimReplica | None:
        return self.nodes[node.id].replicas.get(group)

    def _checker(self, group: int) -> SafetyChecker:
        checker = self.checkers.get(group)
        if checker is None:
            checker = self.checkers[group] = SafetyChecker()
        return checker

    def _name(self, node: SimHost, rep: SimReplica) -> str:
        return f"n{node.id}/r{rep.group}"

    def _events(self) -> dict[str, int]:
        return dict(self.counts, ranges=len(self.directory))

    def _start_nodes(self) -> None:
        for node in self.nodes.values():
            self._start_timers(node)

    def _start_timers(self, node: ShardNode) -> None:
        self.at(self.rng.randint(0, self.cfg.tick_us), self._tick, node.id, node.incarnation)
        hk = self.cfg.housekeeping_us
        self.at(self.rng.randint(0, hk), self._housekeeping, node.id, node.incarnation)

    def _some_leader(self) -> int | None:
        leaders = sorted(
            {
                n.id
                for n in self.nodes.values()
                if n.alive and not n.paused
                for r in n.replicas.values()
                if r.raw.raft.role is Role.LEADER
            }
        )
        return self.rng.choice(leaders) if leaders else None

    def _became_leader(self, node: SimHost, rep: SimReplica) -> None:
        want = self.transfers.get(rep.group)
        if want is not None and want[0] == node.id:
            del self.transfers[rep.group]
            if self.now - want[1] <= self.cfg.election_tick * self.cfg.tick_us:
                self.counts["transfers"] += 1

    def _drops(self, rep: SimReplica, m: Message) -> bool:
        # As the real node does: a replica without its snapshot holds nothing to vote
        # on. (Re-added after its data was deleted, it would otherwise vote with an
        # empty log for a stale candidate whose old configuration still counts it.)
        assert isinstance(rep, ShardReplica)
        if m.type in _VOTES and rep.kv().range_id == 0:
            return not self.cfg.pending_votes
        return False

    def _crash(self, node: SimHost) -> None:
        if node.alive:
            self.counts["crashes"] += 1
            self._crash_host(node)

    def _restart(self, nid: int) -> None:
        old = self.nodes[nid]
        if old.alive:
            return
        node = self._load_node(nid, old.disk, old.dropped)
        node.incarnation = old.incarnation + 1
        for checker in self.checkers.values():
            checker.forget_node_commit(nid)
        self.nodes[nid] = node
        groups = ", ".join(f"r{g} at {r.sm.applied}" for g, r in sorted(node.replicas.items()))
        self.log(f"restart n{nid} holding {groups or 'nothing'}")
        self._start_timers(node)

    def _serving_replica(self, node: SimHost, req: Request) -> SimReplica | None:
        rep = self.nodes[node.id].replicas.get(req.group)
        if rep is None or rep.kv().range_id == 0:
            self._refuse(req)
            return None
        return rep

    def _target(self, c: ClientState, req: Request) -> int:
        assert isinstance(c, ShardClient)
        key = req.key.encode()
        desc = c.cache.lookup(key)
        if desc is None or (c.attempt == 1 and self.rng.random() < self.cfg.refresh_chance):
            self._refresh(c)
            desc = c.cache.lookup(key)
            assert desc is not None, "the directory covers every key"
        req.group = desc.range_id
        c.last_group = desc.range_id
        if req.kind is OpKind.GET and c.attempt == 1 and self.rng.random() < 0.5:
            return self.rng.choice(desc.nodes())  # followers serve reads by ReadIndex
        lead = c.leaders.get(desc.range_id)
        return lead if lead in desc.nodes() else self.rng.choice(desc.voters())

    def _retarget(self, c: ClientState, hint: int | None) -> None:
        assert isinstance(c, ShardClient)
        if hint == WRONG_RANGE:
            self._refresh(c)
            c.leaders.pop(c.last_group, None)
        elif hint:
            c.leaders[c.last_group] = hint
        else:
            c.leaders.pop(c.last_group, None)
            if self.rng.random() < 0.5:
                self._refresh(c)

    def _refresh(self, c: ShardClient) -> None:
        """What a client learns from OP_RANGES: here, the directory as it is now."""
        c.cache.update(self.directory.values())

    def _refuse(self, req: Request) -> None:
        self.counts["wrong_range"] += 1
        self._respond(req, False, None, WRONG_RANGE)

    def _install(self, node: SimHost, rep: SimReplica, snap: Snapshot) -> None:
        rep.sm = RangeKV.restore(snap.data, snap.meta.index)

    def _apply(self, node: SimHost, rep: SimReplica, e: Entry) -> None:
        assert isinstance(rep, ShardReplica)
        if e.type is EntryType.NORMAL and e.data[:1] == _SPLIT:
            self._apply_split(self.nodes[node.id], rep, e)
            return
        if e.type is EntryType.NORMAL and e.data and self.cfg.fence_keys:
            cmd = Command.decode(e.data)
            if not rep.kv().owns(cmd.key):
                rep.sm.skip(e.index)  # the key split away: refused, changes nothing
                req = rep.pending_writes.pop((cmd.client, cmd.seq), None)
                if req is not None:
                    self._refuse(req)
                return
        super()._apply(node, rep, e)

    def _read_result(self, rep: SimReplica, req: Request) -> tuple[bool, Any, int]:
        assert isinstance(rep, ShardReplica)
        if self.cfg.fence_keys and not rep.kv().owns(req.key):
            self.counts["wrong_range"] += 1
            return False, None, WRONG_RANGE
        return super()._read_result(rep, req)

    # -- nodes and replicas ----------------------------------------------------------

    def _load_node(self, nid: int, disk: StorageDisk, dropped: set[int]) -> ShardNode:
        node = ShardNode(id=nid, disk=disk, dropped=dropped)
        for group in disk.groups():
            if group not in dropped:
                node.replicas[group] = self._make_replica(nid, group, disk.load(group))
        return node

    def _make_replica(self, nid: int, group: GroupId, state: RaftState) -> ShardReplica:
        rcfg = self._raft_config(nid, group)
        raw = RawNode(rcfg, state, random.Random(self.rng.getrandbits(64)))
        snap = state.snapshot
        sm = RangeKV.restore(snap.data, snap.meta.index) if snap else RangeKV()
        return ShardReplica(group=group, raw=raw, sm=sm)

    def _tick(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        if not self._live(node, incarnation):
            return
        self.at(self.cfg.tick_us, self._tick, nid, incarnation)
        if node.paused:
            return  # a stopped process does not notice time passing
        for group in sorted(node.replicas):
            rep = node.replicas[group]
            rep.raw.tick()
            self._after_input(node, rep)

    def _range_leader(self, rid: int) -> tuple[ShardNode, ShardReplica] | None:
        best: tuple[ShardNode, ShardReplica] | None = None
        for node in self.nodes.values():
            rep = node.replicas.get(rid)
            if rep is None or not node.alive or node.paused:
                continue
            if rep.raw.raft.role is Role.LEADER and (
                best is None or rep.raw.raft.term > best[1].raw.raft.term
            ):
                best = (node, rep)
        return best

    @staticmethod
    def _caught_up(rep: ShardReplica, node: int) -> bool:
        """As the real ``Replica.caught_up``: this leader replicates to ``node`` with a
        short lag."""
        raft = rep.raw.raft
        pr = raft.trk.progress.get(NodeId(node))
        return (
            raft.role is Role.LEADER
            and pr is not None
            and pr.state.value == "replicate"
            and pr.match + 1 >= raft.log.first_index()
            and pr.match + 100 >= raft.log.last_index()
        )

    # -- splits ----------------------------------------------------------------------

    def _fault_range_split(self, length: int) -> None:
        if len(self.directory) >= self.cfg.max_ranges:
            return
        keys = [f"k{i}".encode() for i in range(self.cfg.keys)]
        options = [
            d
            for rid, d in sorted(self.directory.items())
            if rid not in self.busy and any(_key_inside(d, k) for k in keys)
        ]
        if not options:
            return
        desc = self.rng.choice(options)
        key = self.rng.choice(sorted(k for k in keys if _key_inside(desc, k)))
        lead = self._range_leader(desc.range_id)
        if lead is None or lead[1].kv().version != desc.epoch.version:
            return  # no leader, or a group behind the directory: the planner waits
        left, right = desc.split_at(key, RangeId(self.next_range_id))
        self.next_range_id += 1
        self.directory[left.range_id] = left
        self.directory[right.range_id] = right
        self.busy[left.range_id] = "split"
        self.counts["splits_started"] += 1
        self.log(f"FAULT split r{desc.range_id} at {key.decode()}: {right.describe()}")
        self._propose_split(lead[0], lead[1], left, right)

    def _propose_split(
        self, node: ShardNode, rep: ShardReplica, left: RangeDescriptor, right: RangeDescriptor
    ) -> None:
        """The second step of a split: the admin entry in the range's own log."""
        doc = [
            left.range_id,
            right.range_id,
            right.start.decode(),
            left.epoch.version,
            sorted(int(v) for v in left.voters()),
        ]
        try:
            rep.raw.propose(_SPLIT + json.dumps(doc).encode())
        except ProposalDropped as exc:
            self.log(f"{self._name(node, rep)}: the split of r{left.range_id} dropped: {exc}")
            return
        self._after_input(node, rep)

    def _apply_split(self, node: ShardNode, rep: ShardReplica, e: Entry) -> None:
        rid, child_id, key, version, voters = json.loads(e.data[1:])
        sm = rep.kv()
        sm.skip(e.index)
        if sm.range_id != rid or sm.version + 1 != version or not sm.owns(key) or key == sm.start:
            self.log(f"{self._name(node, rep)} ignores a split of version {version} at {e.index}")
            return  # a second copy of a split applied already
        child_sm = sm.split_off(key, child_id)
        self.log(f"{self._name(node, rep)} splits at {key} (index {e.index}): r{child_id}")
        if self.busy.get(rid) == "split":
            del self.busy[rid]
            self.counts["splits"] += 1
        if child_id in node.replicas or child_id in node.dropped:
            return  # applied again after a restart: the child exists, or moved away
        group = GroupId(child_id)
        if group not in node.disk.groups():
            node.disk.bootstrap(group, bootstrap_state(voters, data=child_sm.snapshot()))
        child = self._make_replica(node.id, group, node.disk.load(group))
        node.replicas[child_id] = child
        if rep.raw.raft.role is Role.LEADER:
            child.raw.campaign()  # the parent's leader leads the child too, at once
        self._after_input(node, child)

    def _reconcile(self, node: ShardNode, rep: ShardReplica) -> None:
        """At a range's leader: finish a split the directory recorded but the range
        never applied (its proposer failed between the two steps)."""
        sm = rep.kv()
        desc = self.directory.get(rep.group)
        if desc is None or desc.epoch.version != sm.version + 1:
            return
        if desc.start.decode() != sm.start or desc.end.decode() == sm.end:
            return
        if self.now - self._reproposed.get(rep.group, -(10**12)) < 4 * self.cfg.housekeeping_us:
            return
        right = next(d for d in self.directory.values() if d.start == desc.end)
        self._reproposed[rep.group] = self.now
        self.log(f"{self._name(node, rep)} finishes the split the directory recorded")
        self._propose_split(node, rep, desc, right)

    # -- moves and leader transfers --------------------------------------------------

    def _fault_move(self, length: int) -> None:
        options = [
            d
            for rid, d in sorted(self.directory.items())
            if rid not in self.busy and not d.learners()
        ]
        if not options:
            return
        desc = self.rng.choice(options)
        outside = [n for n in sorted(self.nodes) if NodeId(n) not in desc.nodes()]
        if not outside:
            return
        dst = self.rng.choice(outside)
        src = self.rng.choice(sorted(desc.voters()))
        rid = desc.range_id
        self.directory[rid] = desc.with_replicas(
            (*desc.replicas, Replica(NodeId(dst), learner=True))
        )
        self.busy[rid] = "move"
        self.moves[rid] = _Move(src, dst)
        self.counts["moves_started"] += 1
        self.log(f"FAULT move r{rid} from n{src} to n{dst}")
        self.at(self.cfg.housekeeping_us, self._move_step, rid)

    def _move_step(self, rid: int) -> None:
        """The planner's side of a move: change the directory one step at a time, as
        the group catches up with it."""
        mv = self.moves[rid]
        lead = self._range_leader(rid)
        if lead is not None:
            rep = lead[1]
            raft = rep.raw.raft
            conf = raft.trk.conf
            settled = not conf.joint and raft.pending_conf_index <= raft.log.applied
            desc = self.directory[rid]
            dst, src = NodeId(mv.dst), NodeId(mv.src)
            if mv.phase == "learner" and dst in conf.learners and self._caught_up(rep, dst):
                self.directory[rid] = desc.with_replicas(
                    tuple(Replica(r.node_id) if r.node_id == dst else r for r in desc.replicas)
                )
                mv.phase = "promote"
            elif mv.phase == "promote" and settled and dst in conf.voters:
                self.directory[rid] = desc.with_replicas(
                    tuple(r for r in desc.replicas if r.node_id != src)
                )
                mv.phase = "remove"
            elif mv.phase == "remove" and settled and src not in conf.voters | conf.learners:
                del self.moves[rid]
                del self.busy[rid]
                self.counts["moves"] += 1
                self.log(f"move of r{rid} from n{src} to n{dst} done")
                return
        self.at(self.cfg.housekeeping_us, self._move_step, rid)

    def _converge(self, node: ShardNode, rep: ShardReplica) -> None:
        """At a range's leader: one conf change toward the directory's replicas."""
        desc = self.directory.get(rep.group)
        raft = rep.raw.raft
        conf = raft.trk.conf
        if desc is None or conf.joint or raft.pending_conf_index > raft.log.applied:
            return
        members = conf.voters | conf.learners
        change: Change | None = None
        for n in desc.nodes():
            if n not in members:
                change = Change(ChangeType.ADD_LEARNER, n)
                break
        else:
            for n in desc.voters():
                if n in conf.learners and self._caught_up(rep, n):
                    change = Change(ChangeType.ADD_VOTER, n)
                    break
            else:
                extra = sorted(members - set(desc.nodes()))
                if not extra or any(v not in conf.voters for v in desc.voters()):
                    return
                if extra[0] == node.id:
                    # The leader is to go: hand over first, to a voter that stays.
                    to = [v for v in sorted(desc.voters()) if self._caught_up(rep, v)]
                    if to and raft.lead_transferee == 0:
                        target = self.rng.choice(to)
                        self.log(f"{self._name(node, rep)} hands over to n{target} to leave")
                        rep.raw.transfer_leader(target)
                        self._after_input(node, rep)
                    return
                change = Change(ChangeType.REMOVE, extra[0])
        try:
            rep.raw.propose_conf_change(ConfChange((change,)))
        except (ProposalDropped, ValueError) as exc:
            self.log(f"{self._name(node, rep)}: conf change {change.type.value} refused: {exc}")
            return
        self.log(f"{self._name(node, rep)} proposes {change.type.value} n{change.node}")
        self._after_input(node, rep)

    def _fault_transfer(self, length: int) -> None:
        rid = self.rng.choice(sorted(self.directory))
        lead = self._range_leader(rid)
        if lead is None:
            return
        node, rep = lead
        voters = sorted(rep.raw.raft.trk.voters() - {NodeId(node.id)})
        if not voters:
            return
        to = self.rng.choice(voters)
        self.log(f"FAULT transfer leadership of r{rid} n{node.id} -> n{to}")
        self.transfers[rid] = (to, self.now)
        self.counts["transfers_started"] += 1
        rep.raw.transfer_leader(to)
        self._after_input(node, rep)

    # -- hosting ---------------------------------------------------------------------

    def _housekeeping(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        if not self._live(node, incarnation):
            return
        self.at(self.cfg.housekeeping_us, self._housekeeping, nid, incarnation)
        if node.paused:
            return
        self._host_listed(node)
        self._drop_unlisted(node)
        for group in sorted(node.replicas):
            rep = node.replicas.get(group)
            if rep is not None and rep.raw.raft.role is Role.LEADER:
                self._reconcile(node, rep)
                self._converge(node, rep)

    def _host_listed(self, node: ShardNode) -> None:
        """A pending replica for each range the directory lists here and no replica
        here will create by a split."""
        me = NodeId(node.id)
        for rid, desc in sorted(self.directory.items()):
            if me not in desc.nodes() or rid in node.replicas:
                continue
            start = desc.start.decode()
            if any(r.kv().owns(start) for r in node.replicas.values()):
                continue  # that replica's split creates it
            node.dropped.discard(rid)
            group = GroupId(rid)
            state = node.disk.load(group) if group in node.disk.groups() else RaftState()
            node.replicas[rid] = self._make_replica(node.id, group, state)
            self.counts["pending_replicas"] += 1
            self.log(f"n{node.id} hosts a pending replica of r{rid}")

    def _drop_unlisted(self, node: ShardNode) -> None:
        me = NodeId(node.id)
        for rid in sorted(node.replicas):
            rep = node.replicas[rid]
            desc = self.directory.get(rid)
            if (desc is not None and me in desc.nodes()) or rep.io_busy:
                continue
            conf = rep.raw.raft.trk.conf
            why = ""
            if rep.kv().range_id == 0:
                why = "pending and not listed"
            elif me not in conf.voters | conf.learners | conf.voters_outgoing:
                why = "applied its removal"
            else:
                lead = self._range_leader(rid)
                if lead is not None and lead[0] is not node:
                    lconf = lead[1].raw.raft.trk.conf
                    if me not in lconf.voters | lconf.learners | lconf.voters_outgoing:
                        why = f"leader n{lead[0].id} applied its removal"
            if why:
                self._delete(node, rep, why)

    def _delete(self, node: ShardNode, rep: ShardReplica, why: str) -> None:
        raft = rep.raw.raft
        node.disk.reset(rep.group, HardState(Term(raft.term), raft.vote, Index(0)))
        del node.replicas[rep.group]
        node.dropped.add(rep.group)
        self._checker(rep.group).forget_node_commit(node.id)
        self.counts["deleted_replicas"] += 1
        self.log(f"n{node.id} deletes its replica of r{rep.group}: {why}")
        waiting = list(rep.pending_writes.values()) + list(rep.pending_reads.values())
        waiting += [req for _, req in rep.waiting_reads]
        for req in waiting:
            self._refuse(req)

    # -- the end ---------------------------------------------------------------------

    def _final_checks(self) -> None:
        """After the faults end the cluster must settle whole: see the module docstring."""
        fail = self._fail
        descs = sorted(self.directory.values(), key=lambda d: d.start)
        if descs[0].start != b"" or descs[-1].end != KEYSPACE_END:
            fail("the directory's ranges do not cover the keyspace's ends")
        for a, b in itertools.pairwise(descs):
            if a.end != b.start:
                fail(f"{a.describe()} and {b.describe()} do not meet")
        if self.busy:
            ops = ", ".join(f"{op} of r{rid}" for rid, op in sorted(self.busy.items()))
            raise SimulationError(f"liveness violated: unfinished after the cluster settled: {ops}")
        for desc in descs:
            self._check_range(desc)
        for node in self.nodes.values():
            for rid in sorted(node.replicas):
                listed = self.directory.get(rid)
                if listed is None or NodeId(node.id) not in listed.nodes():
                    fail(f"n{node.id} still hosts r{rid}, which the directory does not list there")

    @staticmethod
    def _fail(detail: str) -> NoReturn:
        raise SimulationError(f"ranges whole violated: {detail}")

    def _check_range(self, desc: RangeDescriptor) -> None:
        rid = desc.range_id
        lead = self._range_leader(rid)
        if lead is None:
            raise SimulationError(
                f"liveness violated: r{rid} has no leader "
                f"{self.cfg.settle_us // 1000}ms after faults ended"
            )
        leader = lead[1]
        want = (set(desc.voters()), set(desc.learners()))
        bounds = (desc.start.decode(), desc.end.decode(), desc.epoch.version)
        for n in desc.nodes():
            rep = self.nodes[n].replicas.get(rid)
            if rep is None or rep.kv().range_id != rid:
                self._fail(f"n{n} holds no data of {desc.describe()}")
            sm = rep.kv()
            where = f"n{n}'s replica of r{rid}"
            if (sm.start, sm.end, sm.version) != bounds:
                self._fail(
                    f"{where} has bounds [{sm.start!r}, {sm.end!r}) at version {sm.version}; "
                    f"the directory says {desc.describe()}"
                )
            conf = rep.raw.raft.trk.conf
            if conf.joint or (set(conf.voters), set(conf.learners)) != want:
                self._fail(
                    f"{where} has voters {sorted(conf.voters)} learners {sorted(conf.learners)}; "
                    f"the directory says {desc.describe()}"
                )
            behind = leader.raw.raft.log.committed - rep.raw.raft.log.committed
            if behind > 0:
                raise SimulationError(
                    f"liveness violated: {where} is {behind} entries behind leader "
                    f"n{lead[0].id}'s commit after the cluster settled"
                )
            if sm.applied != leader.sm.applied or sm.data != leader.sm.data:
                self._fail(
                    f"{where} applied {sm.applied} with {len(sm.data)} keys; its leader "
                    f"n{lead[0].id} applied {leader.sm.applied} with {len(leader.sm.data)}"
                )
            outside = sorted(k for k in sm.data if not sm.owns(k))
            if outside:
                self._fail(f"{where} holds keys outside its bounds: {outside}")
