"""The placement driver's planner: from the directory, stats and the time, the next steps.

Theory of operation
-------------------
``plan(directory, stats, now, config, busy)`` is a pure function. The meta range's
leader calls it every few seconds, carries the operations out (each through the range's
own Raft group, then recorded in the directory with its epoch as compare-and-swap), and
calls it again. The planner keeps no memory between calls: a move in progress is read back
from the descriptor itself (a learner is present, or more voters than the replication
factor), so a new meta leader resumes every half-done move where it stands.

Nodes: a node is *live* when it is not removed and its last heartbeat is at most
``down_after`` old; it is *eligible* (may receive replicas and leaders) when it is live
and UP. Loads count, per eligible node, its replicas (voters and learners), their bytes
(from stats measured at the range's current version; none: 0) and the leaders it holds.

Each round plans at most one operation per range, in this priority (then key order):

1. repair: remove a learner stuck on a node that is not eligible; add a learner for a
   range under its replication factor or with a voter on a down or removed node;
2. continue moves: promote a learner that the leader reports caught up (stats at the
   exact current epoch, the learner not in ``pending``); remove one voter of a range with
   more voters than its factor (the *victim*, see ``_View._victim``: a voter on a node
   that is not eligible first, else by load) or, if the victim leads, transfer leadership
   away first;
3. drain: add a learner for a range with a voter on a draining node (leadership moves off
   it as its replicas leave, or right away when there is nowhere to move them);
4. split: a range at or past ``split_bytes``, ``split_keys`` or ``hot_write_ops``, at
   the middle key its stats propose (never at a key outside the range);
5. rebalance replicas: from the node with the most replicas to the one with the fewest,
   when one is outside the hysteresis band and they differ by at least two, picking the
   range that best evens bytes, then the one whose replica set shares fewest ranges
   with the destination (so a failed node's ranges are re-replicated from and onto
   every other node), then one the source does not lead. Once every count is inside its
   band and nothing is in flight: one byte move from the heaviest node, keeping counts in
   the band;
6. balance leaders likewise, by leader transfer.

A move is planned only if the victim rule (``_View._victim``) would remove the replica
from the intended source when the move reaches that step, so the stateless continuation
finishes the move the planner meant: exactly, when it is alone in flight; with others in
flight the loads shift meanwhile, and it may end by removing another voter at least as
loaded, but never the replica it added (replicas are listed in joining order, and the
newest healthy one stays). Loads are *projected*: the learners in flight count on their nodes and
the replicas those moves will remove are already taken off, so a round never plans moves
that the moves in flight have made pointless.

Safety: a voter is removed only from a range with more voters than its factor, so no step
takes a range below it; a range that lost its quorum gets no operation (none could
commit). Each completed move lowers the sum of squared loads (replicas, or bytes once the
replicas are in band), so the process stops; the hysteresis band makes a balanced
cluster plan nothing. At most ``max_moves_in_flight`` ranges are in a move at once
(``busy`` ranges, whose operation is still being carried out, count too and get no new
operation).

Not yet: swaps (a large range one way, a small one back) between nodes at the top of the
replica band, so bytes stay uneven when range sizes differ widely and the nodes that hold
too few bytes already hold the most ranges; merges of small idle ranges; placement
constraints (zones, racks) and replica diversity beyond the pair counts above.

This module must never do I/O, read a clock, draw random numbers or change the directory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from quorumkv.consensus import NONE, NodeId
from quorumkv.shard._commands import NodeState
from quorumkv.shard._directory import Directory
from quorumkv.shard._operations import (
    AddLearner,
    Operation,
    PlacementConfig,
    Promote,
    RemoveReplica,
    Split,
    TransferLeader,
)
from quorumkv.shard._range import RangeDescriptor, RangeId, RangeStats, key_below_end

REPAIR, CONTINUE, DRAIN, SPLIT, REBALANCE, LEADER = range(6)


def _pair(a: NodeId, b: NodeId) -> tuple[NodeId, NodeId]:
    return (a, b) if a < b else (b, a)


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """What one node carries: replicas (voters and learners), their bytes, leaders."""

    replicas: int = 0
    bytes: int = 0
    leaders: int = 0


def node_loads(directory: Directory, stats: Mapping[RangeId, RangeStats]) -> dict[NodeId, NodeLoad]:
    """The load of every registered node that is not removed (for status pages, tests)."""
    view = _View(directory, stats, 0.0, PlacementConfig(), frozenset())
    return {
        n: NodeLoad(view.count[n], view.bytes[n], view.leaders[n])
        for n in sorted(directory.nodes)
        if directory.nodes[n].state is not NodeState.REMOVED
    }


def plan(
    directory: Directory,
    stats: Mapping[RangeId, RangeStats],
    now: float,
    config: PlacementConfig | None = None,
    busy: Collection[RangeId] = frozenset(),
) -> list[Operation]:
    """The next operations, at most one per range, in priority order then key order."""
    view = _View(directory, stats, now, config or PlacementConfig(), frozenset(busy))
    view.plan_per_range()
    view.plan_splits()
    if not view.plan_replica_moves():
        view.plan_byte_moves()
    view.plan_leader_transfers()
    return view.result()


class _View:
    """One planning round: the loads, the projections, the operations chosen so far."""

    def __init__(
        self,
        directory: Directory,
        stats: Mapping[RangeId, RangeStats],
        now: float,
        cfg: PlacementConfig,
        busy: frozenset[RangeId],
    ) -> None:
        self.cfg = cfg
        self.busy = busy
        self.stats = stats
        self.ranges = list(directory.ranges())
        self.order = {d.range_id: i for i, d in enumerate(self.ranges)}
        self.nodes = dict(directory.nodes)
        self.live = {
            n
            for n, info in self.nodes.items()
            if info.state is not NodeState.REMOVED and now - info.last_heartbeat <= cfg.down_after
        }
        self.eligible = sorted(n for n in self.live if self.nodes[n].state is NodeState.UP)
        self.eligible_set = set(self.eligible)
        self.size: dict[RangeId, int] = {}
        self.leader: dict[RangeId, NodeId] = {}
        self.count: Counter[NodeId] = Counter()
        self.bytes: Counter[NodeId] = Counter()
        self.leaders: Counter[NodeId] = Counter()
        for d in self.ranges:
            st = stats.get(d.range_id)
            current = st is not None and st.epoch.version == d.epoch.version
            self.size[d.range_id] = st.size_bytes if st is not None and current else 0
            lead = d.leader
            if st is not None and current and st.leader in d.voters():
                lead = st.leader
            self.leader[d.range_id] = lead
            if lead != NONE:
                self.leaders[lead] += 1
            for n in d.nodes():
                self.count[n] += 1
                self.bytes[n] += self.size[d.range_id]
        # Projections: the loads once every planned and in-flight step has settled.
        self.pcount = Counter(self.count)
        self.pbytes = Counter(self.bytes)
        self.pleaders = Counter(self.leaders)
        # How many ranges each pair of nodes shares: moves prefer replica sets whose
        # members share little, so that a failed node's ranges are re-replicated from
        # (and onto) every other node rather than from a few.
        self.pairs: Counter[tuple[NodeId, NodeId]] = Counter()
        for d in self.ranges:
            voters = d.voters()
            for i, a in enumerate(voters):
                for b in voters[i + 1 :]:
                    self.pairs[_pair(a, b)] += 1
        self.ops: dict[RangeId, tuple[int, Operation]] = {}
        self.in_flight = sum(1 for d in self.ranges if self._transitional(d) or d.range_id in busy)
        self.needs: list[tuple[int, int, RangeDescriptor, str]] = []

    # -- helpers ----------------------------------------------------------------------

    def result(self) -> list[Operation]:
        chosen = sorted(self.ops.items(), key=lambda kv: (kv[1][0], self.order[kv[0]]))
        return [op for _, (_, op) in chosen]

    def _emit(self, prio: int, op: Operation) -> None:
        assert op.range_id not in self.ops, f"two operations planned for r{op.range_id}"
        self.ops[op.range_id] = (prio, op)

    def _transitional(self, d: RangeDescriptor) -> bool:
        return bool(d.learners()) or len(d.voters()) > self.cfg.replication_factor

    def _why_not_eligible(self, n: NodeId) -> str:
        info = self.nodes.get(n)
        if info is None:
            return "unregistered"
        if info.state is NodeState.REMOVED:
            return "removed"
        if n not in self.live:
            return "down"
        return str(info.state.value)

    def _free(self, d: RangeDescriptor) -> bool:
        """No operation yet this round, not busy."""
        return d.range_id not in self.ops and d.range_id not in self.busy

    def _stable(self, d: RangeDescriptor) -> bool:
        """Exactly the factor of voters, all on eligible nodes, no learner: movable."""
        voters = d.voters()
        return (
            not d.learners()
            and len(voters) == self.cfg.replication_factor
            and all(v in self.eligible_set for v in voters)
        )

    def _victim(
        self, d: RangeDescriptor, extra: NodeId = NONE, *, learners: bool = False
    ) -> NodeId:
        """The replica a range with too many voters gives up (loads as projected).

        A replica on a node that is not eligible goes first (down before draining).
        Otherwise the newest replica (the last to join: the one the move in progress
        added) stays, and of the others: while some node's replica count is outside its
        band, the one on the node with the most replicas goes (then most bytes, not the
        leader, lowest id); once every count is inside the band, the one on the node with
        the most bytes, unless that would push its count below the band. A replica move
        is planned only between nodes two or more apart and a byte move only alone, so
        this removes the intended source, or a voter loaded at least as much.

        ``learners``: count the learners as the voters they are about to become;
        ``extra``: as if that node had just joined as a voter (one replica and the
        range's bytes heavier than projected)."""
        lead = self.leader[d.range_id]
        cands = [r.node_id for r in d.replicas if learners or not r.learner]
        if extra != NONE:
            cands.append(extra)
        size = self.size[d.range_id]

        def count(n: NodeId) -> int:
            return self.pcount[n] + (1 if n == extra else 0)

        def weight(n: NodeId) -> int:
            return self.pbytes[n] + (size if n == extra else 0)

        bad = [n for n in cands if n not in self.eligible_set]
        if bad:
            return min(bad, key=lambda n: (n in self.live, -count(n), n))
        older = cands[:-1]
        victim = min(older, key=lambda n: (-count(n), -weight(n), n == lead, n))
        lo, hi = self._band(self.pcount, self.cfg.range_tolerance, 1.0, 1 if extra else 0)
        if all(lo <= count(n) <= hi for n in self.eligible):
            heavy = min(older, key=lambda n: (-weight(n), -count(n), n == lead, n))
            if count(heavy) - 1 >= lo:
                return heavy
        return victim

    def _best_leader(self, d: RangeDescriptor, exclude: NodeId) -> NodeId:
        cands = [v for v in d.voters() if v != exclude and v in self.eligible_set]
        if not cands:
            return NONE
        return min(cands, key=lambda n: (self.pleaders[n], n))

    def _room(self, n: NodeId, size: int) -> bool:
        cap = self.nodes[n].capacity_bytes
        return cap == 0 or self.pbytes[n] + size <= cap * self.cfg.max_disk_fill

    def _best_target(self, d: RangeDescriptor) -> NodeId:
        size = self.size[d.range_id]
        held = set(d.nodes())
        cands = [n for n in self.eligible if n not in held and self._room(n, size)]
        if not cands:
            return NONE
        return min(cands, key=lambda n: (self.pcount[n], self.pbytes[n], n))

    def _move_leader(self, d: RangeDescriptor, to: NodeId, prio: int, reason: str) -> None:
        frm = self.leader[d.range_id]
        self._emit(prio, TransferLeader(d.range_id, d.epoch, to, reason))
        self.pleaders[frm] -= 1
        self.pleaders[to] += 1

    def _add(self, d: RangeDescriptor, node: NodeId, prio: int, reason: str) -> None:
        self._emit(prio, AddLearner(d.range_id, d.epoch, node, reason))
        self.pcount[node] += 1
        self.pbytes[node] += self.size[d.range_id]
        self.in_flight += 1

    def _unproject(self, node: NodeId, d: RangeDescriptor) -> None:
        self.pcount[node] -= 1
        self.pbytes[node] -= self.size[d.range_id]

    # -- 1-3: repairs and moves in progress -------------------------------------------

    def plan_per_range(self) -> None:
        rf = self.cfg.replication_factor
        for d in self.ranges:
            if d.range_id in self.busy:
                continue
            voters, learners = d.voters(), d.learners()
            alive = [v for v in voters if v in self.live]
            if 2 * len(alive) <= len(voters):
                continue  # lost quorum: no replica change could commit
            stuck = [n for n in learners if n not in self.eligible_set]
            if stuck:
                why = self._why_not_eligible(stuck[0])
                self._unproject(stuck[0], d)
                op = RemoveReplica(d.range_id, d.epoch, stuck[0], f"learner on a {why} node")
                self._emit(REPAIR, op)
            elif learners:
                if len(voters) + len(learners) > rf:
                    # The move will end by removing a replica: project it now, so that
                    # new moves see the source as it will be.
                    self._unproject(self._victim(d, learners=True), d)
                self._maybe_promote(d)
            elif len(voters) > rf:
                self._remove_extra(d)
            elif len(voters) < rf or any(v not in self.eligible_set for v in voters):
                gone = [v for v in voters if v not in self.live]  # down or removed
                for v in voters:
                    if v not in self.eligible_set:
                        self._unproject(v, d)
                if len(voters) < rf:
                    why, prio = f"under-replicated ({len(voters)} of {rf} voters)", REPAIR
                elif gone:
                    why, prio = (
                        f"replace the voter on {self._why_not_eligible(gone[0])} node {gone[0]}",
                        REPAIR,
                    )
                else:
                    why, prio = "move off a draining node", DRAIN
                self.needs.append((prio, self.order[d.range_id], d, why))
        self._resolve_needs()

    def _maybe_promote(self, d: RangeDescriptor) -> None:
        st = self.stats.get(d.range_id)
        if st is None or st.epoch != d.epoch:
            return  # no report at this epoch yet: cannot tell whether it caught up
        ready = [n for n in d.learners() if n not in st.pending]
        if ready:
            self._emit(CONTINUE, Promote(d.range_id, d.epoch, ready[0], "learner caught up"))

    def _remove_extra(self, d: RangeDescriptor) -> None:
        victim = self._victim(d)
        if victim == self.leader[d.range_id] and victim in self.live:
            # a leader on a down node is a stale hint: the group elects another itself
            to = self._best_leader(d, victim)
            if to != NONE:
                self._unproject(victim, d)
                self._move_leader(d, to, CONTINUE, f"node {victim} leaves the range")
                return
        self._unproject(victim, d)
        why = self._why_not_eligible(victim) if victim not in self.eligible_set else "most loaded"
        self._emit(CONTINUE, RemoveReplica(d.range_id, d.epoch, victim, f"extra voter ({why})"))

    def _resolve_needs(self) -> None:
        budget = self.cfg.max_moves_in_flight - self.in_flight
        for prio, _, d, why in sorted(self.needs, key=lambda t: (t[0], t[1])):
            target = self._best_target(d) if budget > 0 else NONE
            if target != NONE:
                self._add(d, target, prio, why)
                budget -= 1
                continue
            lead = self.leader[d.range_id]
            if lead != NONE and lead in self.live and lead not in self.eligible_set:
                to = self._best_leader(d, lead)
                if to != NONE:
                    self._move_leader(
                        d, to, DRAIN, f"leader on a {self._why_not_eligible(lead)} node"
                    )

    # -- 4: splits --------------------------------------------------------------------

    def plan_splits(self) -> None:
        cfg = self.cfg
        for d in self.ranges:
            st = self.stats.get(d.range_id)
            if st is None or st.epoch.version != d.epoch.version or not self._free(d):
                continue
            if self._transitional(d):
                continue
            reasons = []
            if st.size_bytes >= cfg.split_bytes:
                reasons.append(f"{st.size_bytes} bytes >= {cfg.split_bytes}")
            if st.keys >= cfg.split_keys:
                reasons.append(f"{st.keys} keys >= {cfg.split_keys}")
            if st.write_ops >= cfg.hot_write_ops:
                reasons.append(f"{st.write_ops:g} writes/s >= {cfg.hot_write_ops:g}")
            key = st.middle_key
            if reasons and key is not None and d.start < key and key_below_end(key, d.end):
                self._emit(SPLIT, Split(d.range_id, d.epoch, key, "; ".join(reasons)))

    # -- 5: replica and byte balance --------------------------------------------------

    def _band(
        self, loads: Counter[NodeId], fraction: float, minimum: float, extra: int = 0
    ) -> tuple[float, float]:
        """``mean -+ max(fraction * mean, minimum)`` over the eligible nodes (``extra``:
        load not in ``loads`` yet, such as a replica about to be added)."""
        if not self.eligible:
            return 0.0, 0.0
        mean = (sum(loads[n] for n in self.eligible) + extra) / len(self.eligible)
        tol = max(mean * fraction, minimum)
        return mean - tol, mean + tol

    def _movable(self, d: RangeDescriptor, src: NodeId, dst: NodeId) -> bool:
        return (
            self._free(d)
            and self._stable(d)
            and src in d.voters()
            and d.replica(dst) is None
            and self._room(dst, self.size[d.range_id])
            and self._victim(d, extra=dst) == src
        )

    def _shared(self, d: RangeDescriptor, src: NodeId, dst: NodeId) -> int:
        """How many ranges ``dst`` already shares with the voters that stay."""
        return sum(self.pairs[_pair(dst, v)] for v in d.voters() if v != src)

    def _do_move(self, d: RangeDescriptor, src: NodeId, dst: NodeId, why: str) -> None:
        self._add(d, dst, REBALANCE, why)
        self._unproject(src, d)
        for v in d.voters():
            if v != src:
                self.pairs[_pair(src, v)] -= 1
                self.pairs[_pair(dst, v)] += 1

    def plan_replica_moves(self) -> bool:
        """Even out replica counts; returns whether anything was planned."""
        if len(self.eligible) < 2:
            return False
        planned = False
        by_node = self._ranges_by_voter()
        while self.in_flight < self.cfg.max_moves_in_flight:
            lo, hi = self._band(self.pcount, self.cfg.range_tolerance, 1.0)
            pc, pb = self.pcount, self.pbytes
            srcs = sorted(self.eligible, key=lambda n: (-pc[n], -pb[n], n))
            dsts = sorted(self.eligible, key=lambda n: (pc[n], pb[n], n))
            move = self._find_count_move(srcs, dsts, lo, hi, by_node)
            if move is None:
                break
            d, src, dst = move
            why = f"replicas: node {src} has {pc[src]}, node {dst} {pc[dst]}"
            self._do_move(d, src, dst, why)
            planned = True
        return planned

    def _find_count_move(
        self,
        srcs: list[NodeId],
        dsts: list[NodeId],
        lo: float,
        hi: float,
        by_node: dict[NodeId, list[RangeDescriptor]],
    ) -> tuple[RangeDescriptor, NodeId, NodeId] | None:
        pc, pb = self.pcount, self.pbytes
        for src in srcs:
            for dst in dsts:
                if pc[src] - pc[dst] < 2:
                    break
                if not (pc[src] > hi or pc[dst] < lo):
                    continue
                cands = [d for d in by_node.get(src, []) if self._movable(d, src, dst)]
                if not cands:
                    continue

                def key(
                    d: RangeDescriptor, src: NodeId = src, dst: NodeId = dst
                ) -> tuple[int, int, bool, int]:
                    s = self.size[d.range_id]
                    gap = abs((pb[src] - s) - (pb[dst] + s))
                    shared = self._shared(d, src, dst)
                    # bytes first (to within one split size), then replica-set diversity,
                    # then leave leaders in place
                    bucket = gap // self.cfg.split_bytes
                    lead = self.leader[d.range_id] == src
                    return (bucket, shared, lead, self.order[d.range_id])

                return min(cands, key=key), src, dst
        return None

    def plan_byte_moves(self) -> None:
        """Even out bytes, one move at a time, while replica counts stay in their band.

        A byte move has no replica margin to protect it, so it is planned only when
        nothing else is in flight; the victim rule (bytes first once every count is in its
        band) then removes the source replica as intended."""
        if len(self.eligible) < 2 or self.in_flight > 0 or self.cfg.max_moves_in_flight < 1:
            return
        clo, chi = self._band(self.pcount, self.cfg.range_tolerance, 1.0)
        blo, bhi = self._band(self.pbytes, self.cfg.bytes_tolerance, self.cfg.split_bytes)
        pc, pb = self.pcount, self.pbytes
        if any(not clo <= pc[n] <= chi for n in self.eligible):
            return  # replica counts first: bytes move only once they are in band
        by_node = self._ranges_by_voter()
        for src in sorted(self.eligible, key=lambda n: (-pb[n], n)):
            for dst in sorted(self.eligible, key=lambda n: (pb[n], n)):
                diff = pb[src] - pb[dst]
                if diff <= 0:
                    break
                if not (pb[src] > bhi or pb[dst] < blo):
                    continue
                if pc[dst] + 1 > chi or pc[src] - 1 < clo:
                    continue
                best = self._byte_candidate(by_node.get(src, []), src, dst, diff)
                if best is not None:
                    why = f"bytes: node {src} has {pb[src]}, node {dst} {pb[dst]}"
                    self._do_move(best, src, dst, why)
                    return

    def _byte_candidate(
        self, ranges: list[RangeDescriptor], src: NodeId, dst: NodeId, diff: int
    ) -> RangeDescriptor | None:
        """The movable range whose size is closest to half the byte gap, if any (only
        ranges smaller than the gap: moving one narrows it)."""
        best: RangeDescriptor | None = None
        best_key = (0, 0)
        for d in ranges:
            size = self.size[d.range_id]
            if not 0 < size < diff or not self._movable(d, src, dst):
                continue
            key = (abs(diff - 2 * size), self.order[d.range_id])
            if best is None or key < best_key:
                best, best_key = d, key
        return best

    def _ranges_by_voter(self) -> dict[NodeId, list[RangeDescriptor]]:
        out: dict[NodeId, list[RangeDescriptor]] = {}
        for d in self.ranges:
            for v in d.voters():
                out.setdefault(v, []).append(d)
        return out

    # -- 6: leaders -------------------------------------------------------------------

    def plan_leader_transfers(self) -> None:
        if len(self.eligible) < 2:
            return
        led: dict[NodeId, list[RangeDescriptor]] = {}
        for d in self.ranges:
            led.setdefault(self.leader[d.range_id], []).append(d)
        done = 0
        while done < self.cfg.max_leader_transfers:
            lo, hi = self._band(self.pleaders, self.cfg.leader_tolerance, 1.0)
            pl = self.pleaders
            srcs = sorted(self.eligible, key=lambda n: (-pl[n], n))
            dsts = sorted(self.eligible, key=lambda n: (pl[n], n))
            found = None
            for src in srcs:
                for dst in dsts:
                    if pl[src] - pl[dst] < 2:
                        break
                    if not (pl[src] > hi or pl[dst] < lo):
                        continue
                    for d in led.get(src, []):
                        if self._free(d) and not self._transitional(d) and dst in d.voters():
                            found = (d, src, dst)
                            break
                    if found:
                        break
                if found:
                    break
            if found is None:
                return
            d, src, dst = found
            why = f"leaders: node {src} has {pl[src]}, node {dst} {pl[dst]}"
            self._move_leader(d, dst, LEADER, why)
            done += 1
