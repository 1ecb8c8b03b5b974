"""Replica moves on a node of a sharded cluster: host what the directory lists, and move
each Raft group's membership toward it.

Theory of operation
-------------------
The directory (the meta range) is the desired state of every range's replicas. The
placement driver changes it with ``ChangeReplicas`` (a compare-and-swap on the range's
epoch); the nodes converge to it once a second, level-triggered, so a step lost to a
crash or a change of leader is simply taken again the next second (``Mover.step``):

* **Hosting** (every node). A range the directory lists on this node, and that no
  replica here holds, gets a *pending* replica: no data, no log. Once the range's leader
  has the node in its configuration it finds that log empty and sends a snapshot, which
  makes the replica whole. A range whose first key a replica here still covers is left
  to that replica's split, which creates it. A replica of a range the directory does not
  list here is destroyed (its data dropped) at once if it is pending; else once it has
  applied its own removal, or once no leader has talked to it for ``_ORPHAN_S`` and the
  range's leader confirms its configuration excludes this node (silence alone is no
  proof: a partitioned voter is silent too, and its data may be needed for a quorum).
* **Membership** (the leader of each range). One conf change at a time toward the
  directory's replicas: add a learner; promote a learner that this leader replicates to
  with a short lag (``Replica.caught_up``); remove a replica the directory dropped, only
  once every voter the directory lists votes, handing leadership over first if the
  replica to remove is this one. Each change records the directory's replica version
  (``conf_ver``) it moves toward: a leader whose copy of the directory is older than
  what its group applied waits for its copy instead of undoing a newer step.
* **The meta range** (its leader). Every registered node gets a meta replica, so every
  node reads the directory locally: voters on up to three live nodes (the founders
  first), learners everywhere else. A voter whose node is down past ``down_after`` is
  replaced: a caught-up learner on a live node that is up is promoted, then the voter
  removed. A voter on a draining or removed node is replaced the same way but demoted
  to a learner, so it keeps reading the directory; a learner on a removed node is
  removed once it has been silent for ``down_after``.
* **Leaving.** A node that its copy of the directory shows removed (an operator drained
  it, its replicas moved away, then ``OP_NODE_STATE`` marked it removed), or whose
  heartbeat the meta range refuses as removed, stops by itself (``Node.retired``), but
  only once no group still counts it (``Shards._may_retire``): until then it keeps
  handing over and collecting, and reports nothing.
* **Joining.** A node started with ``--join`` registers itself (``RegisterNode``, sent
  to any node it knows, which runs it through the meta leader) until its own meta replica
  shows it registered; the meta leader then adds it as a learner of the meta range.
* **Carrying out the plan** (the meta leader). The planner's replica moves
  (``AddLearner``, ``Promote``, ``RemoveReplica``) become ``ChangeReplicas`` entries;
  the steps above do the rest.

This module must never propose a conf change that leaves a range with fewer voters than
the directory lists, nor drop the data of a replica the directory lists on this node.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from quorumkv.consensus import NONE, ChangeType, GroupId, NodeId, Role
from quorumkv.net import OK, OP_META
from quorumkv.shard import (
    AddLearner,
    Directory,
    NodeState,
    Promote,
    RangeDescriptor,
    RangeId,
    RegisterNode,
    RemoveReplica,
    encode_command,
)

from ._machines import KVMachine

if TYPE_CHECKING:
    from ._replica import Replica
    from ._sharding import Shards

log = logging.getLogger("quorumkv.server")

META = GroupId(1)
META_VOTERS = 3
"""Voters of the meta range when at least that many nodes are live."""
_ORPHAN_S = 5.0
"""How long a replica the directory does not list here may go without a leader before
it is destroyed."""


class Mover:
    """One node's part in replica moves (see the module docstring)."""

    def __init__(self, shards: Shards) -> None:
        self.shards = shards
        self.node = shards.node
        self.moves = 0
        """Replica changes this node carried out as a range's (or the meta range's) leader."""
        self.registered = False

    def step(self, d: Directory | None, down_after: float) -> None:
        """One housekeeping round (every second)."""
        if not self.registered:
            self._register(d)
        if d is None:
            return
        self._learn_nodes(d)
        self._host(d)
        for group, r in list(self.node.replicas.items()):
            if r.raw.raft.role is not Role.LEADER:
                continue
            if group == META:
                self._meta_members(r, d, down_after)
            elif isinstance(r.sm, KVMachine) and not r.sm.is_pending:
                known = d.get(RangeId(int(group)))
                if known is not None:
                    self._range_members(r, known)

    # -- joining -----------------------------------------------------------------------

    def _register(self, d: Directory | None) -> None:
        node = self.node
        if d is not None and NodeId(node.node_id) in d.nodes:
            self.registered = True
            return
        if not node.cfg.join:
            return  # a founder is registered by the bootstrap
        cmd = RegisterNode(NodeId(node.node_id), node.cfg.listen, 0, time.time())
        self.shards.spawn(("register", 0), self._register_at_any(encode_command(cmd)))

    async def _register_at_any(self, data: bytes) -> None:
        node = self.node
        why = "no other node known"
        for peer in sorted(node.members):
            if peer == node.node_id:
                continue
            rpc = self.shards.rpc(peer)
            if rpc is None:
                continue
            try:
                code, res = await rpc.call(OP_META, ["register", data], timeout=5.0)
            except Exception as e:  # any failure: try the next node
                why = f"node {peer}: {e!r}"
                continue
            if code == OK:
                log.info("node %d registered with the cluster through node %d",
                         node.node_id, peer)  # fmt: skip
                return
            why = f"node {peer}: {res}"
        log.info("node %d: not registered yet (%s)", node.node_id, why)

    def _learn_nodes(self, d: Directory) -> None:
        for nid, info in d.nodes.items():
            if info.state is not NodeState.REMOVED:
                self.node.learn_address(int(nid), info.address)

    # -- hosting -----------------------------------------------------------------------

    def _host(self, d: Directory) -> None:
        node = self.node
        me = NodeId(node.node_id)
        now = time.monotonic()
        covered: list[tuple[bytes, bytes]] = []
        for group, r in node.replicas.items():
            if group != META and isinstance(r.sm, KVMachine) and not r.sm.is_pending:
                covered.append((r.sm.rs.start, r.sm.rs.end))
        for desc in d.replicas_on(me):
            group = GroupId(int(desc.range_id))
            if group in node.replicas:
                continue
            if any(s <= desc.start and (not e or desc.start < e) for s, e in covered):
                continue  # a replica here has not applied the split that makes it yet
            log.info("node %d: hosting range %d, to be filled by a snapshot",
                     node.node_id, group)  # fmt: skip
            node.add_replica(group, KVMachine.pending(node.engine, int(group)))
        for group, r in list(node.replicas.items()):
            if group == META or not isinstance(r.sm, KVMachine):
                continue
            raft = r.raw.raft
            # No leader talks to it: a voter then knows none (it campaigns in vain); a
            # learner, or a replica that applied its own removal, never campaigns, so
            # its election clock just runs on without a leader's message resetting it.
            silent = raft.role is not Role.LEADER and (
                raft.lead == NONE or raft.election_elapsed > 2 * raft.cfg.election_tick
            )
            if not silent:
                r.leaderless_since = None
            elif r.leaderless_since is None:
                r.leaderless_since = now
            known = d.get(RangeId(int(group)))
            if known is not None and known.replica(me) is not None:
                continue
            if r.quiet:
                # Not listed here, yet quiet: a stale leader (deposed while it was quiet)
                # or a follower that missed its removal. Ticking again lets check-quorum
                # depose the one and the other's silence show, so both are collected.
                r.wake()
            if r.snaps.restoring:
                continue
            if r.sm.is_pending:
                # It never held data (a voter is only ever a caught-up learner).
                node.remove_replica(group, "the directory moved the range off this node")
                continue
            if known is None:
                continue  # a range the local directory does not know yet: a fresh split
            conf = raft.trk.conf
            members = set(conf.voters) | set(conf.learners) | set(conf.voters_outgoing)
            if me not in members | set(conf.learners_next):
                node.remove_replica(group, "it applied its own removal")
            elif r.leaderless_since is not None and now - r.leaderless_since >= _ORPHAN_S:
                # Silence alone is no proof: a partitioned voter is silent too. Delete
                # only once the range's leader says its configuration excludes this node.
                self.shards.spawn(("gc", int(group)), self._confirm_removed(r, known))

    async def _confirm_removed(self, r: Replica, known: RangeDescriptor) -> None:
        node = self.node
        lead = int(known.leader)
        if not lead or lead == node.node_id:
            return
        rpc = self.shards.rpc(lead)
        if rpc is None:
            return
        code, res = await rpc.call(OP_META, ["conf", int(known.range_id)], timeout=5.0)
        if code != OK or not isinstance(res, list) or len(res) != 2:
            return
        voters, learners = res
        if node.node_id in voters or node.node_id in learners:
            return
        if node.replicas.get(r.group) is r and not r.snaps.restoring:
            node.remove_replica(r.group, f"range {r.group}'s leader (node {lead}) removed it")

    # -- a range's membership ------------------------------------------------------------

    def _range_members(self, r: Replica, known: RangeDescriptor) -> None:
        desc = r.sm.desc
        if desc is None or desc.epoch.version != known.epoch.version:
            return  # a split in between: the directory describes other bounds
        if known.epoch.conf_ver < r.conf_ver or r.busy():
            return
        step = self._next_step(r, known)
        if step is not None:
            kind, target = step
            self.shards.spawn(
                ("conf", int(r.group)), self._change(r, kind, target, known.epoch.conf_ver)
            )

    def _next_step(self, r: Replica, known: RangeDescriptor) -> tuple[ChangeType, int] | None:
        """The next conf change toward the directory's replicas (None: there already,
        or waiting for a learner to catch up)."""
        conf = r.raw.raft.trk.conf
        voters = {int(v) for v in conf.voters}
        learners = {int(v) for v in conf.learners}
        want_voters = {int(v) for v in known.voters()}
        want_learners = {int(v) for v in known.learners()}
        for n in sorted((want_voters | want_learners) - voters - learners):
            return ChangeType.ADD_LEARNER, n
        for n in sorted(want_voters & learners):
            if r.caught_up(n):
                return ChangeType.ADD_VOTER, n
        if not want_voters <= voters:
            return None  # removals wait until every voter the directory lists votes
        me = self.node.node_id
        # Others first; this node last (``_change`` hands leadership over instead).
        for n in sorted((voters | learners) - want_voters - want_learners, key=lambda n: n == me):
            return ChangeType.REMOVE, n
        return None

    async def _change(self, r: Replica, kind: ChangeType, target: int, conf_ver: int) -> None:
        node = self.node
        if kind in (ChangeType.REMOVE, ChangeType.ADD_LEARNER) and target == node.node_id:
            # The leader cannot remove or demote itself: hand over, and the next leader
            # does it.
            await r.transfer(0)
            return
        log.info("node %d: range %d: %s node %d (directory replicas version %d)",
                 node.node_id, r.group, kind.name.lower(), target, conf_ver)  # fmt: skip
        await r.change_replicas(kind, target, conf_ver)
        self.moves += 1
        node.metrics.replica_changes.inc()

    # -- the meta range's membership -------------------------------------------------------

    def _meta_members(self, r: Replica, d: Directory, down_after: float) -> None:
        if r.busy():
            return
        step = self._meta_step(r, d, down_after)
        if step is not None:
            kind, target = step
            self.shards.spawn(("conf", int(META)), self._change(r, kind, target, 0))

    def _meta_step(
        self, r: Replica, d: Directory, down_after: float
    ) -> tuple[ChangeType, int] | None:
        conf = r.raw.raft.trk.conf
        voters = {int(v) for v in conf.voters}
        learners = {int(v) for v in conf.learners}
        now = time.time()
        me = self.node.node_id
        registered = {int(n) for n, i in d.nodes.items() if i.state is not NodeState.REMOVED}
        up = {int(n) for n, i in d.nodes.items() if i.state is NodeState.UP}

        def live(n: int) -> bool:
            info = d.nodes.get(NodeId(n))
            if n == me:
                return True
            return info is not None and now - info.last_heartbeat <= down_after

        def eligible(n: int) -> bool:  # may hold a meta vote: up (not draining) and live
            return n in up and live(n)

        for n in sorted(registered - voters - learners):
            return ChangeType.ADD_LEARNER, n
        for n in sorted(learners - registered):
            if not live(n):
                # A learner on a removed node, once it has gone quiet: until then it
                # still reads the directory, which is how it learns it was removed.
                return ChangeType.REMOVE, n
        live_voters = {v for v in voters if live(v)}
        good_voters = {v for v in voters if eligible(v)}
        if len(good_voters) < META_VOTERS:
            for n in sorted(learners):
                if eligible(n) and r.caught_up(n):
                    return ChangeType.ADD_VOTER, n
        if len(live_voters) >= min(META_VOTERS, len(voters)) and len(voters) > META_VOTERS:
            for v in sorted(voters - live_voters):
                if v != me:
                    return ChangeType.REMOVE, v
        if len(good_voters) >= META_VOTERS:
            # A live voter on a draining or removed node, once enough good ones vote, is
            # demoted to a learner: it keeps reading the directory (and so learns when
            # it is removed). This node's own last (``_change`` hands leadership over).
            for v in sorted(live_voters - good_voters, key=lambda n: n == me):
                return ChangeType.ADD_LEARNER, v
        return None

    # -- the plan ------------------------------------------------------------------------

    def carry_out(self, op: Any) -> bool:
        """Record a planned replica move in the directory (the meta leader only); False
        for an operation that is not a replica move."""
        if not isinstance(op, AddLearner | Promote | RemoveReplica):
            return False
        log.info("node %d (placement): %s", self.node.node_id, op.describe())
        self.shards.spawn(("place", int(op.range_id)), self._record(op))
        return True

    async def _record(self, op: AddLearner | Promote | RemoveReplica) -> None:
        res = await self.shards.meta_call(encode_command(op.command()))
        if isinstance(res, Exception):
            log.info("node %d (placement): %s was refused: %s",
                     self.node.node_id, op.describe(), res)  # fmt: skip
