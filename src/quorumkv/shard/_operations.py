"""What the placement driver decides: its configuration and the operations it plans.

Each operation is one step on one range, named with the epoch it was computed from, so
that carrying it out is a compare-and-swap: ``command()`` gives the directory command that
records the step once the range's own Raft group has made it (for ``TransferLeader``, the
leader hint to record once the transfer succeeded). A step planned from a stale view is
then refused by the directory instead of being applied on top of a newer state.

A replica move is three steps planned one at a time, never one operation: ``AddLearner``
(the new replica catches up by snapshot without voting), ``Promote`` once the leader
reports it caught up, then ``RemoveReplica`` of the replica it replaces. The range thus
has at least its replication factor of voters at every moment.

This module must never do I/O or decide anything; ``_placement`` decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from quorumkv.consensus import NodeId
from quorumkv.shard._commands import ChangeReplicas, SetLeaderHint, SplitRange
from quorumkv.shard._errors import ShardCommandError
from quorumkv.shard._range import Epoch, RangeId

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    """The placement driver's knobs. Every default is a starting point, not a law.

    * ``replication_factor`` (3): voters per range; 5 survives two failures.
    * ``split_bytes`` (64 MiB), ``split_keys`` (1,000,000): split a range at or above
      either size (as TiKV's region-split-size and region-split-keys).
    * ``hot_write_ops`` (2,500 writes/s): split a range whose reported write rate,
      sustained over the store's reporting window, reaches this (as CockroachDB's
      load-based splitting).
    * ``down_after`` (30 s): a node silent for longer is down; its replicas are
      re-replicated elsewhere.
    * ``max_moves_in_flight`` (4): replica moves (learner added and not yet settled) at
      once, cluster-wide; each costs a snapshot.
    * ``max_leader_transfers`` (8): leader transfers planned per round.
    * ``range_tolerance`` (0.05), ``leader_tolerance`` (0.05), ``bytes_tolerance``
      (0.10): the hysteresis band, as a fraction of the mean per node. Replicas move only
      when some node is outside ``mean ± max(tolerance * mean, 1)`` replicas (leaders
      likewise); bytes only when outside ``mean ± max(tolerance * mean, split_bytes)``.
      Inside the band nothing moves, so a balanced cluster stays still.
    * ``max_disk_fill`` (0.95): never place a replica that would fill a node's reported
      capacity beyond this fraction (a capacity of 0 means unknown: no limit).
    """

    replication_factor: int = 3
    split_bytes: int = 64 * MiB
    split_keys: int = 1_000_000
    hot_write_ops: float = 2500.0
    down_after: float = 30.0
    max_moves_in_flight: int = 4
    max_leader_transfers: int = 8
    range_tolerance: float = 0.05
    leader_tolerance: float = 0.05
    bytes_tolerance: float = 0.10
    max_disk_fill: float = 0.95

    def __post_init__(self) -> None:
        positive = ("replication_factor", "split_bytes", "split_keys", "hot_write_ops")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ShardCommandError(f"placement config: {name} must be > 0")
        for name in ("down_after", "range_tolerance", "leader_tolerance", "bytes_tolerance"):
            if not getattr(self, name) >= 0:
                raise ShardCommandError(f"placement config: {name} must be >= 0")
        for name in ("max_moves_in_flight", "max_leader_transfers"):
            if not getattr(self, name) >= 0:
                raise ShardCommandError(f"placement config: {name} must be >= 0")
        if not 0 < self.max_disk_fill <= 1:
            raise ShardCommandError("placement config: max_disk_fill must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class Split:
    """Split the range at ``key`` (no data moves: both halves stay on the same nodes)."""

    range_id: RangeId
    epoch: Epoch
    key: bytes
    reason: str = ""

    def command(self) -> SplitRange:
        return SplitRange(self.range_id, self.epoch, self.key)

    def describe(self) -> str:
        return f"split r{self.range_id} at {self.key!r}: {self.reason}"


@dataclass(frozen=True, slots=True)
class AddLearner:
    """Add a non-voting replica on ``node``; it catches up by snapshot."""

    range_id: RangeId
    epoch: Epoch
    node: NodeId
    reason: str = ""

    def command(self) -> ChangeReplicas:
        return ChangeReplicas(self.range_id, self.epoch, add=(self.node,))

    def describe(self) -> str:
        return f"add learner of r{self.range_id} on node {self.node}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Promote:
    """Make the caught-up learner on ``node`` a voter."""

    range_id: RangeId
    epoch: Epoch
    node: NodeId
    reason: str = ""

    def command(self) -> ChangeReplicas:
        return ChangeReplicas(self.range_id, self.epoch, promote=(self.node,))

    def describe(self) -> str:
        return f"promote learner of r{self.range_id} on node {self.node}: {self.reason}"


@dataclass(frozen=True, slots=True)
class RemoveReplica:
    """Remove the replica on ``node`` (a learner, or a voter beyond the factor)."""

    range_id: RangeId
    epoch: Epoch
    node: NodeId
    reason: str = ""

    def command(self) -> ChangeReplicas:
        return ChangeReplicas(self.range_id, self.epoch, remove=(self.node,))

    def describe(self) -> str:
        return f"remove replica of r{self.range_id} on node {self.node}: {self.reason}"


@dataclass(frozen=True, slots=True)
class TransferLeader:
    """Move the range's leadership to the voter on ``to``."""

    range_id: RangeId
    epoch: Epoch
    to: NodeId
    reason: str = ""

    def command(self) -> SetLeaderHint:
        return SetLeaderHint(self.range_id, self.to)

    def describe(self) -> str:
        return f"transfer leader of r{self.range_id} to node {self.to}: {self.reason}"


Operation = Split | AddLearner | Promote | RemoveReplica | TransferLeader
