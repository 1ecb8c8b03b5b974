"""The range model: a contiguous slice of the keyspace, its replicas and its epoch.

Theory of operation
-------------------
A range owns the keys in ``[start, end)``. Keys are bytes compared as bytes; ``start ==
b""`` is the beginning of the keyspace and ``end == b""`` its end (so ``b""`` means
"unbounded" only as an end). A range is one Raft group: its ``range_id`` *is* the group
id that names its messages, WAL records and snapshots.

The epoch is a pair of counters, as in TiKV's region epoch:

* ``conf_ver`` grows by one on every replica change (add learner, promote, remove);
* ``version`` grows by one on every change of bounds (split, and later merge).

Every request and every directory command carries the epoch it was computed from, and is
refused when that epoch is not the current one. Of two descriptors that overlap, the one
with the higher ``version`` is the newer: each split raises the version of both halves
above the parent's, so the range holding any given key only ever goes up in version.

A split keeps the left half under the old id (its start key is unchanged) and gives the
right half the new id; both keep the replicas and the leader hint, because right after a
split the same Raft peers, with the same leader, serve both halves. No data moves.

Replicas are listed in the order they joined the range, so the newest is last: that is
how the placement driver, which keeps no memory, tells which replica a move added.

``RangeStats`` is what a range's leader reports about it: size, key count, write load,
the middle key the store proposes for a split, and the replicas still catching up.

Everything here is plain immutable data with validation and wire encoding; this module
must never do I/O, read a clock, or know about the directory or placement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quorumkv.consensus import NONE, GroupId, NodeId
from quorumkv.shard._errors import MalformedShardDataError, ShardCommandError, ShardError
from quorumkv.shard._wire import as_bool, as_bytes, as_float, as_int, as_list

RangeId = GroupId
"""A range, which is one Raft group: the same id names both."""

KEYSPACE_START = b""
KEYSPACE_END = b""
"""As an end bound, ``b""`` means the end of the keyspace."""


def key_below_end(key: bytes, end: bytes) -> bool:
    """``key < end``, where an empty ``end`` is past every key."""
    return end == KEYSPACE_END or key < end


def end_le(a: bytes, b: bytes) -> bool:
    """``a <= b`` for two *end* bounds (``b""`` is the largest)."""
    if b == KEYSPACE_END:
        return True
    return a != KEYSPACE_END and a <= b


def describe_key(key: bytes, *, end: bool = False) -> str:
    if key == b"":
        return "+inf" if end else "-inf"
    return repr(key)[1:]


@dataclass(frozen=True, slots=True)
class Epoch:
    """``(conf_ver, version)``: replica changes and bound changes, counted."""

    conf_ver: int = 1
    version: int = 1

    def __post_init__(self) -> None:
        for name in ("conf_ver", "version"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ShardCommandError(f"epoch {name} must be a non-negative int: {value!r}")

    def with_conf_change(self) -> Epoch:
        return Epoch(self.conf_ver + 1, self.version)

    def with_bounds_change(self) -> Epoch:
        return Epoch(self.conf_ver, self.version + 1)

    def newer_than(self, other: Epoch) -> bool:
        """Ordered by ``version`` first (bounds), then ``conf_ver``."""
        return (self.version, self.conf_ver) > (other.version, other.conf_ver)

    def describe(self) -> str:
        return f"(conf_ver {self.conf_ver}, version {self.version})"

    def to_wire(self) -> list[int]:
        return [self.conf_ver, self.version]

    @classmethod
    def from_wire(cls, doc: object) -> Epoch:
        conf_ver, version = as_list(doc, "epoch", 2)
        return cls(as_int(conf_ver, "epoch conf_ver"), as_int(version, "epoch version"))


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica of a range: a voter, or a learner that receives the log but does not
    vote (a new replica is a learner until it has caught up)."""

    node_id: NodeId
    learner: bool = False

    def __post_init__(self) -> None:
        if type(self.node_id) is not int or self.node_id <= 0:
            raise ShardCommandError(f"a replica needs a positive node id, not {self.node_id!r}")

    def describe(self) -> str:
        return f"{self.node_id}{'L' if self.learner else ''}"


def _wire_replicas(replicas: tuple[Replica, ...]) -> list[list[object]]:
    return [[r.node_id, r.learner] for r in replicas]


def _replicas_from_wire(doc: object) -> tuple[Replica, ...]:
    out = []
    for item in as_list(doc, "replicas"):
        node, learner = as_list(item, "replica", 2)
        out.append(Replica(NodeId(as_int(node, "replica node", 1)), as_bool(learner, "learner")))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class RangeDescriptor:
    """The keys ``[start, end)``, the replicas that hold them, and the epoch.

    ``replicas`` are in the order they joined the range, the newest last (a promoted
    learner keeps its place); there is at least one voter. ``leader`` is a hint
    (``NONE`` when unknown) naming a voter; it changes without an epoch bump.
    """

    range_id: RangeId
    start: bytes
    end: bytes
    epoch: Epoch
    replicas: tuple[Replica, ...]
    leader: NodeId = NONE

    def __post_init__(self) -> None:
        if type(self.range_id) is not int or self.range_id <= 0:
            raise ShardCommandError(f"a range id must be a positive int, not {self.range_id!r}")
        if not isinstance(self.start, bytes) or not isinstance(self.end, bytes):
            raise ShardCommandError("range bounds must be bytes")
        if not key_below_end(self.start, self.end):
            raise ShardCommandError(
                f"range {self.range_id}: start {self.start!r} is not below end {self.end!r}"
            )
        ordered = tuple(self.replicas)
        nodes = [r.node_id for r in ordered]
        if len(set(nodes)) != len(nodes):
            raise ShardCommandError(f"range {self.range_id}: a node holds two replicas {nodes}")
        if not any(not r.learner for r in ordered):
            raise ShardCommandError(f"range {self.range_id}: needs at least one voter")
        if type(self.leader) is not int or self.leader < 0:
            raise ShardCommandError(f"range {self.range_id}: bad leader hint {self.leader!r}")
        if self.leader != NONE and not any(
            r.node_id == self.leader and not r.learner for r in ordered
        ):
            raise ShardCommandError(
                f"range {self.range_id}: leader hint {self.leader} is not a voter"
            )
        object.__setattr__(self, "replicas", ordered)

    # -- reading ----------------------------------------------------------------------

    def voters(self) -> tuple[NodeId, ...]:
        return tuple(r.node_id for r in self.replicas if not r.learner)

    def learners(self) -> tuple[NodeId, ...]:
        return tuple(r.node_id for r in self.replicas if r.learner)

    def nodes(self) -> tuple[NodeId, ...]:
        return tuple(r.node_id for r in self.replicas)

    def replica(self, node: NodeId) -> Replica | None:
        for r in self.replicas:
            if r.node_id == node:
                return r
        return None

    def contains(self, key: bytes) -> bool:
        return self.start <= key and key_below_end(key, self.end)

    def overlaps(self, start: bytes, end: bytes = KEYSPACE_END) -> bool:
        """Whether ``[start, end)`` (``end == b""``: to the end) shares a key with this
        range. An empty span (``start >= end``) overlaps nothing."""
        if not key_below_end(start, end):
            return False
        return key_below_end(start, self.end) and key_below_end(self.start, end)

    def covers(self, start: bytes, end: bytes = KEYSPACE_END) -> bool:
        """Whether every key of ``[start, end)`` is in this range."""
        return self.start <= start and end_le(end, self.end)

    def clip(self, start: bytes, end: bytes = KEYSPACE_END) -> tuple[bytes, bytes]:
        """The part of ``[start, end)`` inside this range (the caller checks overlap)."""
        lo = max(start, self.start)
        hi = self.end if end_le(self.end, end) else end
        return lo, hi

    # -- deriving (every change returns a new descriptor) -----------------------------

    def split_at(
        self, key: bytes, new_range_id: RangeId
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        """``[start, key)`` under this id and ``[key, end)`` under ``new_range_id``, both
        at ``version + 1``. The key must lie strictly inside the range."""
        if not isinstance(key, bytes) or not (self.start < key and key_below_end(key, self.end)):
            raise ShardCommandError(
                f"range {self.range_id} [{describe_key(self.start)}, "
                f"{describe_key(self.end, end=True)}) cannot split at {key!r}: "
                "the key must be inside the range and above its start"
            )
        if new_range_id == self.range_id:
            raise ShardCommandError(f"range {self.range_id}: a split needs a new range id")
        epoch = self.epoch.with_bounds_change()
        left = RangeDescriptor(self.range_id, self.start, key, epoch, self.replicas, self.leader)
        right = RangeDescriptor(new_range_id, key, self.end, epoch, self.replicas, self.leader)
        return left, right

    def with_replicas(self, replicas: tuple[Replica, ...]) -> RangeDescriptor:
        """The same range with another replica set, at ``conf_ver + 1``. A leader hint that
        is no longer a voter is dropped."""
        leader = self.leader
        if not any(r.node_id == leader and not r.learner for r in replicas):
            leader = NONE
        epoch = self.epoch.with_conf_change()
        return RangeDescriptor(self.range_id, self.start, self.end, epoch, replicas, leader)

    def with_leader(self, leader: NodeId) -> RangeDescriptor:
        """The same range with another leader hint; the epoch does not change."""
        return RangeDescriptor(
            self.range_id, self.start, self.end, self.epoch, self.replicas, leader
        )

    # -- rendering and wire -----------------------------------------------------------

    def describe(self) -> str:
        reps = ",".join(r.describe() for r in self.replicas)
        lead = f" leader {self.leader}" if self.leader != NONE else ""
        return (
            f"r{self.range_id} [{describe_key(self.start)}, {describe_key(self.end, end=True)})"
            f" c{self.epoch.conf_ver}v{self.epoch.version} replicas {reps}{lead}"
        )

    def to_wire(self) -> list[object]:
        return [
            self.range_id,
            self.start,
            self.end,
            self.epoch.to_wire(),
            _wire_replicas(self.replicas),
            self.leader,
        ]

    @classmethod
    def from_wire(cls, doc: object) -> RangeDescriptor:
        f = as_list(doc, "range descriptor", 6)
        try:
            return cls(
                RangeId(as_int(f[0], "range id", 1)),
                as_bytes(f[1], "range start"),
                as_bytes(f[2], "range end"),
                Epoch.from_wire(f[3]),
                _replicas_from_wire(f[4]),
                NodeId(as_int(f[5], "leader hint")),
            )
        except MalformedShardDataError:
            raise
        except ShardError as e:
            raise MalformedShardDataError(f"range descriptor: {e}") from None


@dataclass(frozen=True, slots=True)
class RangeStats:
    """What the leader of a range reports about it in a heartbeat.

    ``epoch`` is the descriptor epoch the leader measured under: a report whose version
    differs from the directory's describes other bounds and is ignored, and the placement
    driver trusts ``pending`` only at the exact current epoch. ``write_ops`` is the write
    rate in operations per second averaged over the reporting window (the store decides
    the window, so a short burst does not count as sustained load). ``middle_key`` is the
    key the store proposes for a split (about half the bytes on each side), if it has one.
    ``pending`` names replicas that have not caught up yet (a learner still installing its
    snapshot); they are not promoted until they leave this list.
    """

    range_id: RangeId
    epoch: Epoch
    leader: NodeId
    size_bytes: int = 0
    keys: int = 0
    write_ops: float = 0.0
    middle_key: bytes | None = None
    pending: tuple[NodeId, ...] = ()

    def __post_init__(self) -> None:
        if type(self.range_id) is not int or self.range_id <= 0:
            raise ShardCommandError(f"stats for an invalid range id {self.range_id!r}")
        if type(self.leader) is not int or self.leader <= 0:
            raise ShardCommandError(f"range {self.range_id}: stats need the reporting leader")
        for name in ("size_bytes", "keys"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ShardCommandError(f"range {self.range_id}: {name} must be an int >= 0")
        if not isinstance(self.write_ops, int | float) or not self.write_ops >= 0:
            raise ShardCommandError(f"range {self.range_id}: write_ops must be a number >= 0")
        object.__setattr__(self, "pending", tuple(sorted(self.pending)))

    def to_wire(self) -> list[object]:
        return [
            self.range_id,
            self.epoch.to_wire(),
            self.leader,
            self.size_bytes,
            self.keys,
            float(self.write_ops),
            self.middle_key,
            list(self.pending),
        ]

    @classmethod
    def from_wire(cls, doc: object) -> RangeStats:
        f = as_list(doc, "range stats", 8)
        middle = None if f[6] is None else as_bytes(f[6], "middle key")
        pending = tuple(NodeId(as_int(n, "pending node", 1)) for n in as_list(f[7], "pending"))
        try:
            return cls(
                RangeId(as_int(f[0], "range id", 1)),
                Epoch.from_wire(f[1]),
                NodeId(as_int(f[2], "leader", 1)),
                as_int(f[3], "size_bytes"),
                as_int(f[4], "keys"),
                as_float(f[5], "write_ops"),
                middle,
                pending,
            )
        except MalformedShardDataError:
            raise
        except ShardError as e:
            raise MalformedShardDataError(f"range stats: {e}") from None


def descriptors_to_wire(descs: tuple[RangeDescriptor, ...] | list[RangeDescriptor]) -> list[Any]:
    return [d.to_wire() for d in descs]


def descriptors_from_wire(doc: object) -> tuple[RangeDescriptor, ...]:
    return tuple(RangeDescriptor.from_wire(d) for d in as_list(doc, "descriptors"))
