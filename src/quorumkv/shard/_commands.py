"""The meta range's vocabulary: node registry records and the directory's commands.

Every command is a frozen, slotted dataclass validated when built, with ``to_wire()`` and
``from_wire()`` so that it can travel in a Raft log entry (``encode_command`` /
``decode_command`` give the bytes). A command that changes a range names the epoch it was
computed from (``expected_epoch``); the directory applies it only at exactly that epoch.

Times (``now``) are numbers chosen by the proposer (the meta range's leader reads its
clock when it builds the command), so applying a command never reads a clock and every
replica computes the same state.

Wire tags and field positions must never change meaning: encoded commands live in logs
and snapshots. This module must never do I/O or apply anything itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from quorumkv.consensus import NodeId
from quorumkv.shard._errors import MalformedShardDataError, ShardCommandError, ShardError
from quorumkv.shard._range import Epoch, RangeDescriptor, RangeId, RangeStats
from quorumkv.shard._wire import as_bytes, as_float, as_int, as_list, as_str, dumps, loads

FORMAT = 1
"""Version of the encoding in ``encode_command``."""


class NodeState(enum.Enum):
    """A node's administrative state. Liveness (up or down) is separate: it follows from
    the last heartbeat and the caller's clock, never from this field."""

    UP = "up"  # may receive new replicas and leaders
    DRAINING = "draining"  # keeps serving, but everything moves off it
    REMOVED = "removed"  # gone for good; its id is never reused


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node of the registry."""

    node_id: NodeId
    address: str
    capacity_bytes: int  # 0: unknown, no limit assumed
    state: NodeState
    last_heartbeat: float

    def describe(self) -> str:
        return (
            f"node {self.node_id} at {self.address} {self.state.value}, capacity "
            f"{self.capacity_bytes} B, last heartbeat {self.last_heartbeat:g}"
        )

    def to_wire(self) -> list[object]:
        return [
            self.node_id,
            self.address,
            self.capacity_bytes,
            self.state.value,
            float(self.last_heartbeat),
        ]

    @classmethod
    def from_wire(cls, doc: object) -> NodeInfo:
        f = as_list(doc, "node", 5)
        try:
            state = NodeState(as_str(f[3], "node state"))
        except ValueError:
            raise MalformedShardDataError(f"unknown node state {f[3]!r}") from None
        return cls(
            NodeId(as_int(f[0], "node id", 1)),
            as_str(f[1], "node address"),
            as_int(f[2], "node capacity"),
            state,
            as_float(f[4], "last heartbeat"),
        )


def _check_node(node: object, what: str) -> None:
    if type(node) is not int or node <= 0:
        raise ShardCommandError(f"{what} needs a positive node id, not {node!r}")


def _check_range(range_id: object) -> None:
    if type(range_id) is not int or range_id <= 0:
        raise ShardCommandError(f"a range id must be a positive int, not {range_id!r}")


def _check_time(now: object) -> None:
    if isinstance(now, bool) or not isinstance(now, int | float) or not now >= 0:
        raise ShardCommandError(f"a time must be a number >= 0, not {now!r}")


def _nodes(doc: object, what: str) -> tuple[NodeId, ...]:
    return tuple(NodeId(as_int(n, what, 1)) for n in as_list(doc, what))


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Create the first range, covering the whole keyspace, on ``voters``."""

    TAG: ClassVar[int] = 1
    range_id: RangeId
    voters: tuple[NodeId, ...]

    def __post_init__(self) -> None:
        _check_range(self.range_id)
        if not self.voters:
            raise ShardCommandError("bootstrap needs at least one voter")
        for n in self.voters:
            _check_node(n, "bootstrap")
        if len(set(self.voters)) != len(self.voters):
            raise ShardCommandError(f"bootstrap names a node twice: {list(self.voters)}")

    def to_wire(self) -> list[object]:
        return [self.TAG, self.range_id, list(self.voters)]

    @classmethod
    def from_wire(cls, doc: object) -> Bootstrap:
        f = _fields(doc, cls.TAG, 2)
        return cls(RangeId(as_int(f[0], "range id", 1)), _nodes(f[1], "voters"))


@dataclass(frozen=True, slots=True)
class RegisterNode:
    """Add a node to the registry (state UP), or update the address and capacity of a
    registered one. ``now`` counts as its first heartbeat."""

    TAG: ClassVar[int] = 2
    node_id: NodeId
    address: str
    capacity_bytes: int
    now: float

    def __post_init__(self) -> None:
        _check_node(self.node_id, "register")
        if not isinstance(self.address, str) or not self.address:
            raise ShardCommandError(f"node {self.node_id}: an address is required")
        if type(self.capacity_bytes) is not int or self.capacity_bytes < 0:
            raise ShardCommandError(f"node {self.node_id}: capacity must be an int >= 0")
        _check_time(self.now)

    def to_wire(self) -> list[object]:
        return [self.TAG, self.node_id, self.address, self.capacity_bytes, float(self.now)]

    @classmethod
    def from_wire(cls, doc: object) -> RegisterNode:
        f = _fields(doc, cls.TAG, 4)
        return cls(
            NodeId(as_int(f[0], "node id", 1)),
            as_str(f[1], "address"),
            as_int(f[2], "capacity"),
            as_float(f[3], "now"),
        )


@dataclass(frozen=True, slots=True)
class SetNodeState:
    """Drain a node, bring it back up, or mark it removed (only once it holds nothing)."""

    TAG: ClassVar[int] = 3
    node_id: NodeId
    state: NodeState

    def __post_init__(self) -> None:
        _check_node(self.node_id, "set node state")
        if not isinstance(self.state, NodeState):
            raise ShardCommandError(f"not a node state: {self.state!r}")

    def to_wire(self) -> list[object]:
        return [self.TAG, self.node_id, self.state.value]

    @classmethod
    def from_wire(cls, doc: object) -> SetNodeState:
        f = _fields(doc, cls.TAG, 2)
        try:
            state = NodeState(as_str(f[1], "state"))
        except ValueError:
            raise MalformedShardDataError(f"unknown node state {f[1]!r}") from None
        return cls(NodeId(as_int(f[0], "node id", 1)), state)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A node is alive at ``now``; ``ranges`` are the stats of ranges it leads."""

    TAG: ClassVar[int] = 4
    node_id: NodeId
    now: float
    ranges: tuple[RangeStats, ...] = ()

    def __post_init__(self) -> None:
        _check_node(self.node_id, "heartbeat")
        _check_time(self.now)
        ids = [s.range_id for s in self.ranges]
        if len(set(ids)) != len(ids):
            raise ShardCommandError(f"heartbeat of node {self.node_id} reports a range twice")

    def to_wire(self) -> list[object]:
        return [self.TAG, self.node_id, float(self.now), [s.to_wire() for s in self.ranges]]

    @classmethod
    def from_wire(cls, doc: object) -> Heartbeat:
        f = _fields(doc, cls.TAG, 3)
        stats = tuple(RangeStats.from_wire(s) for s in as_list(f[2], "range stats"))
        return cls(NodeId(as_int(f[0], "node id", 1)), as_float(f[1], "now"), stats)


@dataclass(frozen=True, slots=True)
class SplitRange:
    """Split a range at ``split_key``; the right half gets the next free range id."""

    TAG: ClassVar[int] = 5
    range_id: RangeId
    expected_epoch: Epoch
    split_key: bytes

    def __post_init__(self) -> None:
        _check_range(self.range_id)
        if not isinstance(self.split_key, bytes) or not self.split_key:
            raise ShardCommandError(f"range {self.range_id}: a split key must be non-empty bytes")

    def to_wire(self) -> list[object]:
        return [self.TAG, self.range_id, self.expected_epoch.to_wire(), self.split_key]

    @classmethod
    def from_wire(cls, doc: object) -> SplitRange:
        f = _fields(doc, cls.TAG, 3)
        return cls(
            RangeId(as_int(f[0], "range id", 1)),
            Epoch.from_wire(f[1]),
            as_bytes(f[2], "split key"),
        )


@dataclass(frozen=True, slots=True)
class ChangeReplicas:
    """One replica change: ``add`` new learners, ``promote`` learners to voters,
    ``remove`` replicas. A node may appear in one list only."""

    TAG: ClassVar[int] = 6
    range_id: RangeId
    expected_epoch: Epoch
    add: tuple[NodeId, ...] = ()
    remove: tuple[NodeId, ...] = ()
    promote: tuple[NodeId, ...] = ()

    def __post_init__(self) -> None:
        _check_range(self.range_id)
        named = [*self.add, *self.remove, *self.promote]
        if not named:
            raise ShardCommandError(f"range {self.range_id}: a replica change changes nothing")
        for n in named:
            _check_node(n, "a replica change")
        if len(set(named)) != len(named):
            raise ShardCommandError(
                f"range {self.range_id}: a replica change names a node twice: {named}"
            )

    def to_wire(self) -> list[object]:
        return [
            self.TAG,
            self.range_id,
            self.expected_epoch.to_wire(),
            list(self.add),
            list(self.remove),
            list(self.promote),
        ]

    @classmethod
    def from_wire(cls, doc: object) -> ChangeReplicas:
        f = _fields(doc, cls.TAG, 5)
        return cls(
            RangeId(as_int(f[0], "range id", 1)),
            Epoch.from_wire(f[1]),
            _nodes(f[2], "add"),
            _nodes(f[3], "remove"),
            _nodes(f[4], "promote"),
        )


@dataclass(frozen=True, slots=True)
class SetLeaderHint:
    """Record who leads a range (``NONE`` clears the hint). Not epoch-checked: the hint
    only has to name a current voter."""

    TAG: ClassVar[int] = 7
    range_id: RangeId
    leader: NodeId

    def __post_init__(self) -> None:
        _check_range(self.range_id)
        if type(self.leader) is not int or self.leader < 0:
            raise ShardCommandError(f"range {self.range_id}: bad leader {self.leader!r}")

    def to_wire(self) -> list[object]:
        return [self.TAG, self.range_id, self.leader]

    @classmethod
    def from_wire(cls, doc: object) -> SetLeaderHint:
        f = _fields(doc, cls.TAG, 2)
        return cls(RangeId(as_int(f[0], "range id", 1)), NodeId(as_int(f[1], "leader")))


Command = (
    Bootstrap
    | RegisterNode
    | SetNodeState
    | Heartbeat
    | SplitRange
    | ChangeReplicas
    | SetLeaderHint
)

_BY_TAG: dict[int, Any] = {
    c.TAG: c
    for c in (
        Bootstrap,
        RegisterNode,
        SetNodeState,
        Heartbeat,
        SplitRange,
        ChangeReplicas,
        SetLeaderHint,
    )
}


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """The node's record after the heartbeat, and the reported ranges that were ignored
    (unknown, measured at another version, or not led by the reporting node)."""

    node: NodeInfo
    ignored: tuple[RangeId, ...]


Result = RangeDescriptor | tuple[RangeDescriptor, RangeDescriptor] | NodeInfo | HeartbeatResult
"""What applying a command gives back."""


def _fields(doc: object, tag: int, count: int) -> list[Any]:
    f = as_list(doc, "command", count + 1)
    if f[0] != tag:
        raise MalformedShardDataError(f"command tag {f[0]!r} is not {tag}")
    return f[1:]


def command_from_wire(doc: object) -> Command:
    """The command a ``to_wire()`` document describes."""
    f = as_list(doc, "command")
    if not f or type(f[0]) is not int or f[0] not in _BY_TAG:
        raise MalformedShardDataError(f"unknown command {f[:1]!r}")
    try:
        cmd: Command = _BY_TAG[f[0]].from_wire(f)
    except MalformedShardDataError:
        raise
    except ShardError as e:
        raise MalformedShardDataError(f"command does not validate: {e}") from None
    return cmd


def encode_command(cmd: Command) -> bytes:
    """The bytes to put in a Raft log entry."""
    return dumps([FORMAT, cmd.to_wire()])


def decode_command(data: bytes) -> Command:
    """The command in a log entry; ``MalformedShardDataError`` if it is not one."""
    doc = as_list(loads(data), "log entry", 2)
    if doc[0] != FORMAT:
        raise MalformedShardDataError(f"unknown command format {doc[0]!r}")
    return command_from_wire(doc[1])
