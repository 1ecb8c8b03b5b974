"""The directory: the state machine of the meta range.

Theory of operation
-------------------
The directory holds three things, all changed only by ``apply``:

* the ranges, sorted by start key. They always tile the keyspace: the first starts at
  ``b""``, each ends where the next starts, the last ends at ``b""`` (the end). A key is
  found with one ``bisect`` on the start keys;
* the node registry: address, capacity, administrative state (``NodeState``), last
  heartbeat time, as given by the caller;
* the allocator of range ids (``next_range_id``), and the last stats each range's leader
  reported.

``apply(cmd)`` is deterministic: the same commands in the same order give the same state
on every replica, bit for bit (``to_bytes``). A command either applies whole or raises a
``ShardError`` having changed nothing, so the driver can hand the error back to whoever
proposed it. Commands that change a range carry the epoch they were computed from; the
directory compares it with the range's current epoch and refuses any difference
(compare-and-swap), so a decision made from a stale view can never be applied on top of
a newer one. ``apply_entry`` is the form for a Raft apply loop: it decodes a log entry and
returns the error as a value, so a damaged entry cannot crash a replica.

``check()`` verifies every invariant and raises ``AssertionError`` on a broken one; tests
call it after every step, and ``from_bytes`` runs it on every snapshot it loads.

This module must never do I/O, read a clock, or plan anything: placement decisions live in
``_placement`` and only ever reach the directory as commands.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import assert_never, overload

from quorumkv.consensus import NONE, NodeId
from quorumkv.shard._commands import (
    Bootstrap,
    ChangeReplicas,
    Command,
    Heartbeat,
    HeartbeatResult,
    NodeInfo,
    NodeState,
    RegisterNode,
    Result,
    SetLeaderHint,
    SetNodeState,
    SplitRange,
    decode_command,
)
from quorumkv.shard._errors import (
    MalformedShardDataError,
    ShardCommandError,
    ShardError,
    StaleEpochError,
    UnknownRangeError,
)
from quorumkv.shard._range import (
    KEYSPACE_END,
    KEYSPACE_START,
    Epoch,
    RangeDescriptor,
    RangeId,
    RangeStats,
    Replica,
    key_below_end,
)
from quorumkv.shard._wire import as_int, as_list, dumps, loads

SNAPSHOT_FORMAT = 1


REMOVED_REFUSAL = "was removed; its heartbeat is refused"
"""How the directory refuses a removed node's heartbeat (the node retires on it)."""


class Directory:
    """The ranges, the node registry and the range id allocator of one cluster."""

    __slots__ = ("_by_id", "_ids", "_next_range_id", "_nodes", "_starts", "_stats")

    def __init__(self, next_range_id: int = 1) -> None:
        """An empty, not yet bootstrapped directory. Range ids below ``next_range_id``
        are never allocated (reserve them, for instance for the meta range's own group)."""
        if type(next_range_id) is not int or next_range_id < 1:
            raise ShardCommandError(f"next_range_id must be an int >= 1: {next_range_id!r}")
        self._starts: list[bytes] = []  # sorted start keys
        self._ids: list[RangeId] = []  # range id at the same position
        self._by_id: dict[RangeId, RangeDescriptor] = {}
        self._nodes: dict[NodeId, NodeInfo] = {}
        self._stats: dict[RangeId, RangeStats] = {}
        self._next_range_id = next_range_id

    # -- reading ----------------------------------------------------------------------

    @property
    def bootstrapped(self) -> bool:
        return bool(self._ids)

    @property
    def next_range_id(self) -> RangeId:
        return RangeId(self._next_range_id)

    @property
    def nodes(self) -> Mapping[NodeId, NodeInfo]:
        return MappingProxyType(self._nodes)

    @property
    def stats(self) -> Mapping[RangeId, RangeStats]:
        """The last stats each range's leader reported at the range's current version."""
        return MappingProxyType(self._stats)

    def __len__(self) -> int:
        return len(self._ids)

    def ranges(self) -> Iterator[RangeDescriptor]:
        """Every range, in key order."""
        for rid in self._ids:
            yield self._by_id[rid]

    def range(self, range_id: RangeId) -> RangeDescriptor:
        try:
            return self._by_id[range_id]
        except KeyError:
            raise UnknownRangeError(range_id) from None

    def get(self, range_id: RangeId) -> RangeDescriptor | None:
        return self._by_id.get(range_id)

    def lookup(self, key: bytes) -> RangeDescriptor:
        """The range holding ``key``."""
        if not self._ids:
            raise ShardCommandError("the directory is not bootstrapped")
        return self._by_id[self._ids[bisect_right(self._starts, key) - 1]]

    def overlapping(self, start: bytes, end: bytes = KEYSPACE_END) -> list[RangeDescriptor]:
        """The ranges sharing a key with ``[start, end)``, in key order: what a meta scan
        returns to a client filling its cache."""
        if not self._ids or not key_below_end(start, end):
            return []
        i = bisect_right(self._starts, start) - 1
        j = len(self._starts) if end == KEYSPACE_END else bisect_left(self._starts, end)
        return [self._by_id[rid] for rid in self._ids[i:j]]

    def replicas_on(self, node: NodeId) -> list[RangeDescriptor]:
        """The ranges with a replica (voter or learner) on ``node``, in key order."""
        return [d for d in self.ranges() if d.replica(node) is not None]

    def describe(self) -> str:
        states = ", ".join(f"{n}:{i.state.value}" for n, i in sorted(self._nodes.items()))
        return (
            f"directory: {len(self._ids)} ranges, next range id {self._next_range_id}, "
            f"nodes [{states}]"
        )

    # -- applying ---------------------------------------------------------------------

    @overload
    def apply(self, cmd: Bootstrap) -> RangeDescriptor: ...
    @overload
    def apply(self, cmd: RegisterNode) -> NodeInfo: ...
    @overload
    def apply(self, cmd: SetNodeState) -> NodeInfo: ...
    @overload
    def apply(self, cmd: Heartbeat) -> HeartbeatResult: ...
    @overload
    def apply(self, cmd: SplitRange) -> tuple[RangeDescriptor, RangeDescriptor]: ...
    @overload
    def apply(self, cmd: ChangeReplicas) -> RangeDescriptor: ...
    @overload
    def apply(self, cmd: SetLeaderHint) -> RangeDescriptor: ...
    def apply(self, cmd: Command) -> Result:
        """Apply one command, or raise a ``ShardError`` having changed nothing."""
        if isinstance(cmd, Bootstrap):
            return self._bootstrap(cmd)
        if isinstance(cmd, RegisterNode):
            return self._register(cmd)
        if isinstance(cmd, SetNodeState):
            return self._set_state(cmd)
        if isinstance(cmd, Heartbeat):
            return self._heartbeat(cmd)
        if isinstance(cmd, SplitRange):
            return self._split(cmd)
        if isinstance(cmd, ChangeReplicas):
            return self._change_replicas(cmd)
        if isinstance(cmd, SetLeaderHint):
            return self._set_leader(cmd)
        assert_never(cmd)

    def apply_entry(self, data: bytes) -> Result | ShardError:
        """Decode and apply one Raft log entry; a refusal or a damaged entry comes back as
        the error, never raised, and leaves the directory unchanged."""
        try:
            return self.apply(decode_command(data))
        except ShardError as e:
            return e

    def _bootstrap(self, cmd: Bootstrap) -> RangeDescriptor:
        if self._ids:
            raise ShardCommandError("the directory is already bootstrapped")
        if cmd.range_id < self._next_range_id:
            raise ShardCommandError(
                f"range id {cmd.range_id} is reserved or used; ids start at {self._next_range_id}"
            )
        for n in cmd.voters:
            self._require_up(n, "bootstrap")
        replicas = tuple(Replica(n) for n in cmd.voters)
        desc = RangeDescriptor(cmd.range_id, KEYSPACE_START, KEYSPACE_END, Epoch(), replicas)
        self._starts.append(desc.start)
        self._ids.append(desc.range_id)
        self._by_id[desc.range_id] = desc
        self._next_range_id = cmd.range_id + 1
        return desc

    def _register(self, cmd: RegisterNode) -> NodeInfo:
        old = self._nodes.get(cmd.node_id)
        if old is None:
            info = NodeInfo(cmd.node_id, cmd.address, cmd.capacity_bytes, NodeState.UP, cmd.now)
        elif old.state is NodeState.REMOVED:
            raise ShardCommandError(f"node {cmd.node_id} was removed; node ids are never reused")
        else:
            beat = max(old.last_heartbeat, float(cmd.now))
            info = NodeInfo(cmd.node_id, cmd.address, cmd.capacity_bytes, old.state, beat)
        self._nodes[cmd.node_id] = info
        return info

    def _set_state(self, cmd: SetNodeState) -> NodeInfo:
        old = self._node(cmd.node_id)
        if old.state is NodeState.REMOVED and cmd.state is NodeState.REMOVED:
            return old  # a retried removal (its first answer lost) finds it done
        if old.state is NodeState.REMOVED:
            raise ShardCommandError(f"node {cmd.node_id} was removed; it cannot come back")
        if cmd.state is NodeState.REMOVED:
            held = self.replicas_on(cmd.node_id)
            if held:
                raise ShardCommandError(
                    f"node {cmd.node_id} still holds {len(held)} replicas (first: range "
                    f"{held[0].range_id}); drain it before removing it"
                )
        info = NodeInfo(old.node_id, old.address, old.capacity_bytes, cmd.state, old.last_heartbeat)
        self._nodes[cmd.node_id] = info
        return info

    def _heartbeat(self, cmd: Heartbeat) -> HeartbeatResult:
        old = self._node(cmd.node_id)
        if old.state is NodeState.REMOVED:
            raise ShardCommandError(f"node {cmd.node_id} {REMOVED_REFUSAL}")
        beat = max(old.last_heartbeat, float(cmd.now))
        info = NodeInfo(old.node_id, old.address, old.capacity_bytes, old.state, beat)
        ignored: list[RangeId] = []
        accepted: list[tuple[RangeStats, RangeDescriptor]] = []
        for stats in cmd.ranges:
            desc = self._by_id.get(stats.range_id)
            if (
                desc is None
                or stats.epoch.version != desc.epoch.version
                or stats.leader != cmd.node_id
                or stats.leader not in desc.voters()
            ):
                ignored.append(stats.range_id)
            else:
                accepted.append((stats, desc))
        # Nothing can fail from here on.
        self._nodes[cmd.node_id] = info
        for stats, desc in accepted:
            self._stats[stats.range_id] = stats
            if desc.leader != stats.leader:
                self._by_id[desc.range_id] = desc.with_leader(stats.leader)
        return HeartbeatResult(info, tuple(ignored))

    def _split(self, cmd: SplitRange) -> tuple[RangeDescriptor, RangeDescriptor]:
        desc = self._at_epoch(cmd.range_id, cmd.expected_epoch)
        left, right = desc.split_at(cmd.split_key, RangeId(self._next_range_id))
        i = self._ids.index(desc.range_id)
        self._by_id[left.range_id] = left
        self._by_id[right.range_id] = right
        self._starts.insert(i + 1, right.start)
        self._ids.insert(i + 1, right.range_id)
        self._stats.pop(desc.range_id, None)  # measured over the old bounds
        self._next_range_id += 1
        return left, right

    def _change_replicas(self, cmd: ChangeReplicas) -> RangeDescriptor:
        desc = self._at_epoch(cmd.range_id, cmd.expected_epoch)
        rid = desc.range_id
        replicas = {r.node_id: r for r in desc.replicas}
        for n in cmd.add:
            if n in replicas:
                raise ShardCommandError(f"range {rid}: node {n} already holds a replica")
            self._require_up(n, f"range {rid}: adding a replica")
            replicas[n] = Replica(n, learner=True)
        for n in cmd.promote:
            r = replicas.get(n)
            if r is None or not r.learner:
                raise ShardCommandError(f"range {rid}: node {n} holds no learner to promote")
            replicas[n] = Replica(n)
        for n in cmd.remove:
            if n not in replicas:
                raise ShardCommandError(f"range {rid}: node {n} holds no replica to remove")
            del replicas[n]
        if not any(not r.learner for r in replicas.values()):
            raise ShardCommandError(f"range {rid}: the change would leave no voter")
        new = desc.with_replicas(tuple(replicas.values()))
        self._by_id[rid] = new
        return new

    def _set_leader(self, cmd: SetLeaderHint) -> RangeDescriptor:
        desc = self.range(cmd.range_id)
        if cmd.leader != NONE and cmd.leader not in desc.voters():
            raise ShardCommandError(
                f"range {desc.range_id}: node {cmd.leader} is not a voter and cannot lead"
            )
        new = desc.with_leader(cmd.leader)
        self._by_id[desc.range_id] = new
        return new

    def _at_epoch(self, range_id: RangeId, expected: Epoch) -> RangeDescriptor:
        desc = self.range(range_id)
        if desc.epoch != expected:
            raise StaleEpochError(range_id, expected, desc.epoch)
        return desc

    def _node(self, node: NodeId) -> NodeInfo:
        info = self._nodes.get(node)
        if info is None:
            raise ShardCommandError(f"node {node} is not registered")
        return info

    def _require_up(self, node: NodeId, what: str) -> None:
        info = self._node(node)
        if info.state is not NodeState.UP:
            raise ShardCommandError(f"{what}: node {node} is {info.state.value}, not up")

    # -- invariants -------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``AssertionError`` naming the first broken invariant."""

        def fail(msg: str) -> None:
            raise AssertionError(f"directory invariant broken: {msg}")

        if len(self._starts) != len(self._ids) or len(self._ids) != len(self._by_id):
            fail("the index lists and the id map disagree in length")
        if set(self._ids) != set(self._by_id):
            fail("the key-ordered ids and the id map hold different ranges")
        expect_start = KEYSPACE_START
        for i, rid in enumerate(self._ids):
            d = self._by_id[rid]
            if d.range_id != rid or self._starts[i] != d.start:
                fail(f"range {rid} is indexed under the wrong id or start")
            if i == 0 and d.start != KEYSPACE_START:
                fail(f"the first range {rid} starts at {d.start!r}, not at the beginning")
            if d.start != expect_start:
                fail(
                    f"range {rid} starts at {d.start!r}; the previous one ends at "
                    f"{expect_start!r} (a gap or an overlap)"
                )
            if d.end == KEYSPACE_END and i != len(self._ids) - 1:
                fail(f"range {rid} runs to the end of the keyspace but is not the last")
            expect_start = d.end
            if rid >= self._next_range_id:
                fail(f"range {rid} is at or above the allocator's next id")
            for r in d.replicas:
                info = self._nodes.get(r.node_id)
                if info is None or info.state is NodeState.REMOVED:
                    fail(f"range {rid} has a replica on unregistered or removed node {r.node_id}")
        if self._ids and expect_start != KEYSPACE_END:
            fail(f"the last range ends at {expect_start!r}, not at the end of the keyspace")
        for rid, s in self._stats.items():
            desc = self._by_id.get(rid)
            if desc is None or s.epoch.version != desc.epoch.version:
                fail(f"stats of range {rid} are kept for bounds it no longer has")

    # -- snapshots --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The whole state, deterministically encoded (the meta range's snapshot)."""
        return dumps(
            [
                SNAPSHOT_FORMAT,
                self._next_range_id,
                [self._nodes[n].to_wire() for n in sorted(self._nodes)],
                [self._by_id[rid].to_wire() for rid in self._ids],
                [self._stats[rid].to_wire() for rid in sorted(self._stats)],
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Directory:
        """Rebuild a directory from ``to_bytes``; ``MalformedShardDataError`` if the bytes
        do not decode or describe a state that breaks an invariant."""
        fmt, next_id, nodes, ranges, stats = as_list(loads(data), "directory snapshot", 5)
        if fmt != SNAPSHOT_FORMAT:
            raise MalformedShardDataError(f"unknown directory snapshot format {fmt!r}")
        d = cls(as_int(next_id, "next range id", 1))
        for doc in as_list(nodes, "nodes"):
            info = NodeInfo.from_wire(doc)
            if info.node_id in d._nodes:
                raise MalformedShardDataError(f"node {info.node_id} appears twice")
            d._nodes[info.node_id] = info
        for doc in as_list(ranges, "ranges"):
            desc = RangeDescriptor.from_wire(doc)
            if desc.range_id in d._by_id:
                raise MalformedShardDataError(f"range {desc.range_id} appears twice")
            d._by_id[desc.range_id] = desc
            d._ids.append(desc.range_id)
            d._starts.append(desc.start)
        for doc in as_list(stats, "stats"):
            s = RangeStats.from_wire(doc)
            if s.range_id in d._stats:
                raise MalformedShardDataError(f"stats of range {s.range_id} appear twice")
            d._stats[s.range_id] = s
        try:
            d.check()
        except AssertionError as e:
            raise MalformedShardDataError(f"directory snapshot: {e}") from None
        return d
