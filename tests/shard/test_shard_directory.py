"""The directory: every command, its refusals (never half-applied), wire forms, snapshots,
and the tiling invariant under random sequences of commands checked against a model."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from quorumkv.consensus import NONE, NodeId
from quorumkv.shard import (
    Bootstrap,
    ChangeReplicas,
    Command,
    Directory,
    Epoch,
    Heartbeat,
    HeartbeatResult,
    MalformedShardDataError,
    NodeState,
    RangeDescriptor,
    RangeId,
    RangeStats,
    RegisterNode,
    Replica,
    SetLeaderHint,
    SetNodeState,
    ShardCommandError,
    ShardError,
    SplitRange,
    StaleEpochError,
    UnknownRangeError,
    command_from_wire,
    decode_command,
    encode_command,
)
from quorumkv.shard._wire import dumps

N1, N2, N3, N4, N5 = (NodeId(n) for n in range(1, 6))


def make(nodes: int = 4, voters: tuple[int, ...] = (1, 2, 3)) -> Directory:
    d = Directory()
    for n in range(1, nodes + 1):
        d.apply(RegisterNode(NodeId(n), f"h{n}:7001", 1 << 30, 0.0))
    d.apply(Bootstrap(RangeId(1), tuple(NodeId(v) for v in voters)))
    d.check()
    return d


def refused(
    d: Directory, cmd: Command, error: type[ShardError], match: str | None = None
) -> ShardError:
    """Apply ``cmd``, expect ``error``, and check the directory did not change at all."""
    before = d.to_bytes()
    with pytest.raises(error, match=match) as info:
        d.apply(cmd)
    assert d.to_bytes() == before
    d.check()
    return info.value


# -- bootstrap and the registry -----------------------------------------------------------


def test_bootstrap_creates_one_range_over_the_whole_keyspace() -> None:
    d = make()
    (r,) = d.ranges()
    assert (r.range_id, r.start, r.end, r.epoch, r.voters()) == (
        1,
        b"",
        b"",
        Epoch(1, 1),
        (1, 2, 3),
    )
    assert d.next_range_id == 2
    assert d.lookup(b"") is r
    assert d.lookup(b"\xff" * 20) is r
    refused(d, Bootstrap(RangeId(5), (N1,)), ShardCommandError, "already bootstrapped")


def test_bootstrap_refusals() -> None:
    d = Directory(next_range_id=10)
    with pytest.raises(ShardCommandError, match="not bootstrapped"):
        d.lookup(b"a")
    d.apply(RegisterNode(N1, "h1:1", 0, 0.0))
    refused(d, Bootstrap(RangeId(2), (N1,)), ShardCommandError, "reserved")
    refused(d, Bootstrap(RangeId(10), (N1, N2)), ShardCommandError, "not registered")
    d.apply(SetNodeState(N1, NodeState.DRAINING))
    refused(d, Bootstrap(RangeId(10), (N1,)), ShardCommandError, "draining")
    d.apply(SetNodeState(N1, NodeState.UP))
    assert d.apply(Bootstrap(RangeId(10), (N1,))).range_id == 10
    assert d.next_range_id == 11
    with pytest.raises(ShardCommandError):
        Bootstrap(RangeId(1), ())
    with pytest.raises(ShardCommandError):
        Bootstrap(RangeId(1), (N1, N1))


def test_register_updates_address_keeps_state_and_never_reuses_removed_ids() -> None:
    d = make()
    info = d.apply(RegisterNode(N4, "new:1", 5, 7.0))
    assert (info.address, info.capacity_bytes, info.state, info.last_heartbeat) == (
        "new:1",
        5,
        NodeState.UP,
        7.0,
    )
    d.apply(SetNodeState(N4, NodeState.DRAINING))
    again = d.apply(RegisterNode(N4, "newer:1", 6, 3.0))
    assert again.state is NodeState.DRAINING
    assert again.last_heartbeat == 7.0  # time never goes back
    d.apply(SetNodeState(N4, NodeState.REMOVED))
    refused(d, RegisterNode(N4, "x:1", 0, 9.0), ShardCommandError, "never reused")
    refused(d, SetNodeState(N4, NodeState.UP), ShardCommandError, "cannot come back")
    # A removal sent again (its first answer was lost) finds it done.
    assert d.apply(SetNodeState(N4, NodeState.REMOVED)).state is NodeState.REMOVED
    refused(d, Heartbeat(N4, 10.0), ShardCommandError, "removed")
    refused(d, SetNodeState(N5, NodeState.UP), ShardCommandError, "not registered")
    with pytest.raises(ShardCommandError):
        RegisterNode(N1, "", 0, 0.0)
    with pytest.raises(ShardCommandError):
        RegisterNode(N1, "a:1", -1, 0.0)
    with pytest.raises(ShardCommandError):
        RegisterNode(N1, "a:1", 0, float("nan"))


def test_a_node_holding_replicas_cannot_be_removed() -> None:
    d = make()
    refused(d, SetNodeState(N1, NodeState.REMOVED), ShardCommandError, "still holds 1 replicas")
    assert d.apply(SetNodeState(N4, NodeState.REMOVED)).state is NodeState.REMOVED
    d.check()


# -- heartbeats ----------------------------------------------------------------------------


def test_heartbeat_records_time_stats_and_leader_hint() -> None:
    d = make()
    r = d.range(RangeId(1))
    stats = RangeStats(r.range_id, r.epoch, N2, 100, 10, 5.0, b"m")
    res = d.apply(Heartbeat(N2, 12.5, (stats,)))
    assert res == HeartbeatResult(d.nodes[N2], ())
    assert d.nodes[N2].last_heartbeat == 12.5
    assert d.stats[r.range_id] == stats
    assert d.range(r.range_id).leader == N2
    assert d.range(r.range_id).epoch == r.epoch  # a leader hint is no epoch change
    d.apply(Heartbeat(N2, 3.0))
    assert d.nodes[N2].last_heartbeat == 12.5


def test_heartbeat_ignores_stats_it_cannot_trust() -> None:
    d = make()
    r = d.range(RangeId(1))
    d.apply(ChangeReplicas(r.range_id, r.epoch, add=(N4,)))
    r = d.range(RangeId(1))
    reports = (
        RangeStats(RangeId(7), r.epoch, N1),  # unknown range
        RangeStats(r.range_id, Epoch(r.epoch.conf_ver, 0), N1),  # other bounds
    )
    assert d.apply(Heartbeat(N1, 1.0, reports)).ignored == (7, 1)
    # reported by someone else than the leader it names, or led by a learner
    assert d.apply(Heartbeat(N1, 1.0, (RangeStats(r.range_id, r.epoch, N2),))).ignored == (1,)
    assert d.apply(Heartbeat(N4, 1.0, (RangeStats(r.range_id, r.epoch, N4),))).ignored == (1,)
    assert d.stats == {}
    # an older conf_ver at the same version still measures the same keys
    old_conf = Epoch(r.epoch.conf_ver - 1, r.epoch.version)
    assert d.apply(Heartbeat(N3, 1.0, (RangeStats(r.range_id, old_conf, N3, 5),))).ignored == ()
    assert d.stats[r.range_id].size_bytes == 5
    with pytest.raises(ShardCommandError, match="twice"):
        Heartbeat(N3, 1.0, (RangeStats(r.range_id, r.epoch, N3),) * 2)


# -- splits --------------------------------------------------------------------------------


def test_split_allocates_the_next_id_and_drops_stale_stats() -> None:
    d = make()
    r = d.range(RangeId(1))
    d.apply(Heartbeat(N1, 1.0, (RangeStats(r.range_id, r.epoch, N1, 99),)))
    left, right = d.apply(SplitRange(r.range_id, r.epoch, b"m"))
    assert (left.range_id, left.end, right.range_id, right.start) == (1, b"m", 2, b"m")
    assert d.next_range_id == 3
    assert [x.range_id for x in d.ranges()] == [1, 2]
    assert d.lookup(b"l") == left
    assert d.lookup(b"m") == right
    assert d.stats == {}
    _, r3 = d.apply(SplitRange(left.range_id, left.epoch, b"c"))
    assert [x.range_id for x in d.ranges()] == [1, 3, 2]
    assert [x.range_id for x in d.overlapping(b"b", b"n")] == [1, 3, 2]
    assert [x.range_id for x in d.overlapping(b"c", b"m")] == [3]
    assert [x.range_id for x in d.overlapping(b"m")] == [2]
    assert d.overlapping(b"m", b"c") == []
    assert r3.range_id == 3
    d.check()


def test_split_refusals_change_nothing() -> None:
    d = make()
    r = d.range(RangeId(1))
    d.apply(SplitRange(r.range_id, r.epoch, b"m"))
    err = refused(d, SplitRange(r.range_id, r.epoch, b"f"), StaleEpochError, "version 1")
    assert isinstance(err, StaleEpochError)
    assert (err.range_id, err.expected, err.current) == (1, Epoch(1, 1), Epoch(1, 2))
    cur = d.range(RangeId(1))
    refused(d, SplitRange(cur.range_id, cur.epoch, b"q"), ShardCommandError, "cannot split")
    refused(d, SplitRange(RangeId(2), cur.epoch, b"m"), ShardCommandError, "cannot split")
    refused(d, SplitRange(RangeId(42), cur.epoch, b"m"), UnknownRangeError, "no range 42")
    with pytest.raises(ShardCommandError):
        SplitRange(RangeId(1), cur.epoch, b"")


# -- replica changes -----------------------------------------------------------------------


def test_a_move_is_add_learner_then_promote_then_remove() -> None:
    d = make()
    r = d.range(RangeId(1))
    d.apply(SetLeaderHint(r.range_id, N3))
    r = d.apply(ChangeReplicas(r.range_id, r.epoch, add=(N4,)))
    assert r.replica(N4) == Replica(N4, learner=True)
    assert r.epoch == Epoch(2, 1)
    r = d.apply(ChangeReplicas(r.range_id, r.epoch, promote=(N4,)))
    assert r.voters() == (1, 2, 3, 4)
    r = d.apply(ChangeReplicas(r.range_id, r.epoch, remove=(N3,)))
    assert r.voters() == (1, 2, 4)
    assert r.epoch == Epoch(4, 1)
    assert r.leader == NONE  # the leader left
    d.check()


def test_replica_change_refusals_change_nothing() -> None:
    d = make(nodes=5)
    r = d.range(RangeId(1))
    d.apply(SetNodeState(N5, NodeState.DRAINING))
    refused(d, ChangeReplicas(r.range_id, r.epoch, add=(N1,)), ShardCommandError, "already")
    refused(d, ChangeReplicas(r.range_id, r.epoch, add=(NodeId(9),)), ShardCommandError, "not reg")
    refused(d, ChangeReplicas(r.range_id, r.epoch, add=(N5,)), ShardCommandError, "draining")
    refused(d, ChangeReplicas(r.range_id, r.epoch, promote=(N1,)), ShardCommandError, "no learner")
    refused(d, ChangeReplicas(r.range_id, r.epoch, remove=(N4,)), ShardCommandError, "no replica")
    refused(d, ChangeReplicas(r.range_id, Epoch(0, 1), remove=(N1,)), StaleEpochError, "conf_ver 0")
    # a valid part does not get through when another part is refused
    refused(
        d,
        ChangeReplicas(r.range_id, r.epoch, add=(N4,), remove=(N9 := NodeId(9),)),
        ShardCommandError,
        f"node {N9} holds no replica",
    )
    one = make(voters=(1,))
    r1 = one.range(RangeId(1))
    refused(one, ChangeReplicas(r1.range_id, r1.epoch, remove=(N1,)), ShardCommandError, "no voter")
    with pytest.raises(ShardCommandError, match="changes nothing"):
        ChangeReplicas(RangeId(1), Epoch())
    with pytest.raises(ShardCommandError, match="twice"):
        ChangeReplicas(RangeId(1), Epoch(), add=(N1,), remove=(N1,))


def test_leader_hint_must_name_a_voter() -> None:
    d = make()
    r = d.range(RangeId(1))
    assert d.apply(SetLeaderHint(r.range_id, N2)).leader == N2
    r = d.apply(ChangeReplicas(r.range_id, r.epoch, add=(N4,)))
    refused(d, SetLeaderHint(r.range_id, N4), ShardCommandError, "not a voter")
    refused(d, SetLeaderHint(RangeId(9), N1), UnknownRangeError)
    assert d.apply(SetLeaderHint(r.range_id, NONE)).leader == NONE


# -- log entries, wire forms and snapshots -------------------------------------------------

EPOCH = Epoch(3, 4)
COMMANDS: list[Command] = [
    Bootstrap(RangeId(1), (N1, N2, N3)),
    RegisterNode(N4, "10.0.0.4:7001", 1 << 40, 12.5),
    SetNodeState(N4, NodeState.DRAINING),
    Heartbeat(N2, 99.0, (RangeStats(RangeId(1), EPOCH, N2, 10, 2, 1.5, b"k", (N4,)),)),
    Heartbeat(N2, 99.0),
    SplitRange(RangeId(1), EPOCH, b"split"),
    ChangeReplicas(RangeId(1), EPOCH, add=(N4,), remove=(N1,), promote=(N5,)),
    SetLeaderHint(RangeId(1), N3),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: type(c).__name__)
def test_command_wire_round_trip(cmd: Command) -> None:
    assert decode_command(encode_command(cmd)) == cmd
    assert command_from_wire(cmd.to_wire()) == cmd
    assert type(cmd).from_wire(cmd.to_wire()) == cmd


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # not msgpack
        dumps([2, [5, 1, [1, 1], b"k"]]),  # unknown format
        dumps([1, [99, 1]]),  # unknown tag
        dumps([1, []]),
        dumps([1, [5, 1, [1, 1]]]),  # a field short
        dumps([1, [5, 1, [1, 1], b""]]),  # empty split key
        dumps([1, [5, 1, [1, 1], "k"]]),  # key not bytes
        dumps([1, [6, 1, [1, 1], [], [], []]]),  # a change of nothing
        dumps([1, [3, 1, "gone"]]),  # unknown node state
        dumps([1, [1, 1, []]]),  # bootstrap without voters
        dumps([1, [2, 1, "a:1", 0, -5.0]]),  # negative time
    ],
)
def test_malformed_log_entries_are_refused_as_values(data: bytes) -> None:
    d = make()
    before = d.to_bytes()
    with pytest.raises(MalformedShardDataError):
        decode_command(data)
    assert isinstance(d.apply_entry(data), MalformedShardDataError)
    assert d.to_bytes() == before


def test_apply_entry_returns_results_and_refusals_without_raising() -> None:
    d = make()
    r = d.range(RangeId(1))
    result = d.apply_entry(encode_command(SplitRange(r.range_id, r.epoch, b"m")))
    assert isinstance(result, tuple)
    left, right = result
    assert left.end == right.start == b"m"
    stale = d.apply_entry(encode_command(SplitRange(r.range_id, r.epoch, b"c")))
    assert isinstance(stale, StaleEpochError)


def test_snapshot_round_trip_is_exact_and_deterministic() -> None:
    a, b = make(), make()
    for d in (a, b):
        r = d.range(RangeId(1))
        d.apply(SplitRange(r.range_id, r.epoch, b"m"))
        d.apply(Heartbeat(N1, 5.0, (RangeStats(RangeId(2), Epoch(1, 2), N1, 7, 1, 0.0, None),)))
        d.apply(SetNodeState(N4, NodeState.DRAINING))
    assert a.to_bytes() == b.to_bytes()
    c = Directory.from_bytes(a.to_bytes())
    assert c.to_bytes() == a.to_bytes()
    assert list(c.ranges()) == list(a.ranges())
    assert dict(c.nodes) == dict(a.nodes)
    assert dict(c.stats) == dict(a.stats)
    assert c.next_range_id == a.next_range_id
    assert len(c) == 2
    assert "2 ranges" in c.describe()


def _snapshot(ranges: list[Any], next_id: int = 9, stats: list[Any] | None = None) -> bytes:
    nodes = [[1, "h:1", 0, "up", 0.0]]
    return dumps([1, next_id, nodes, ranges, stats or []])


def _r(rid: int, start: bytes, end: bytes, version: int = 1, node: int = 1) -> list[Any]:
    return [rid, start, end, [1, version], [[node, False]], 0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_snapshot([_r(1, b"", b"m"), _r(2, b"n", b"")]), "gap or an overlap"),
        (_snapshot([_r(1, b"", b"m"), _r(2, b"l", b"")]), "gap or an overlap"),
        (_snapshot([_r(1, b"a", b"")]), "first range"),
        (_snapshot([_r(1, b"", b"m")]), "last range ends"),
        (_snapshot([_r(1, b"", b""), _r(2, b"", b"")]), "indexed|end of the keyspace"),
        (_snapshot([_r(1, b"", b"m"), _r(1, b"m", b"")]), "appears twice"),
        (_snapshot([_r(1, b"", b"")], next_id=1), "allocator"),
        (_snapshot([_r(1, b"", b"", node=2)]), "unregistered"),
        (_snapshot([_r(1, b"", b"")], stats=[[1, [1, 2], 1, 0, 0, 0.0, None, []]]), "bounds"),
        (dumps([7, 1, [], [], []]), "format"),
        (b"\x93\x01", "undecodable|expected"),
    ],
)
def test_snapshots_that_break_an_invariant_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(MalformedShardDataError, match=message):
        Directory.from_bytes(data)


def test_check_catches_a_corrupted_index() -> None:
    d = make()
    r = d.range(RangeId(1))
    d.apply(SplitRange(r.range_id, r.epoch, b"m"))
    d._starts[1] = b"n"
    with pytest.raises(AssertionError, match="wrong id or start"):
        d.check()


# -- random command sequences against a model ----------------------------------------------

KEYS = st.lists(st.sampled_from(b"acegikm"), min_size=1, max_size=3).map(bytes)


class DirectoryVersusModel(RuleBasedStateMachine):
    """Random splits (some from stale epochs), replica changes, leader hints, drains and
    heartbeats; every command goes through its log-entry encoding. The model keeps each
    range's bounds, voters and learners, and its epoch as counted by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.d = make(nodes=6)
        self.model: dict[int, dict[str, Any]] = {
            1: {"start": b"", "end": b"", "voters": {1, 2, 3}, "learners": set(), "cv": 1, "v": 1}
        }
        self.seen: list[RangeDescriptor] = [self.d.range(RangeId(1))]
        self.now = 1.0

    def _apply(self, cmd: Command) -> object:
        before = self.d.to_bytes()
        result = self.d.apply_entry(encode_command(cmd))
        if isinstance(result, ShardError):
            assert self.d.to_bytes() == before, f"{cmd} refused but changed the directory"
        else:
            for desc in result if isinstance(result, tuple) else [result]:
                if isinstance(desc, RangeDescriptor):
                    self.seen.append(desc)
        return result

    def _pick(self, data: st.DataObject) -> RangeDescriptor:
        ranges = list(self.d.ranges())
        return ranges[data.draw(st.integers(0, len(ranges) - 1))]

    def _epoch(self, data: st.DataObject, desc: RangeDescriptor) -> Epoch:
        """Mostly the current epoch; sometimes one seen earlier for the same range."""
        old = [s.epoch for s in self.seen if s.range_id == desc.range_id]
        return data.draw(st.sampled_from([desc.epoch, desc.epoch, *old]))

    @rule(data=st.data(), key=KEYS)
    def split(self, data: st.DataObject, key: bytes) -> None:
        desc = self._pick(data)
        epoch = self._epoch(data, desc)
        next_id = int(self.d.next_range_id)
        result = self._apply(SplitRange(desc.range_id, epoch, key))
        m = self.model[desc.range_id]
        inside = m["start"] < key and (m["end"] == b"" or key < m["end"])
        ok = epoch == desc.epoch and inside
        assert isinstance(result, tuple) == ok, (result, ok)
        if ok:
            self.model[next_id] = {
                **m,
                "start": key,
                "voters": set(m["voters"]),
                "learners": set(m["learners"]),
                "v": m["v"] + 1,
            }
            m["end"] = key
            m["v"] += 1
        else:
            assert isinstance(result, StaleEpochError if epoch != desc.epoch else ShardCommandError)

    @rule(data=st.data(), op=st.sampled_from(["add", "promote", "remove"]))
    def change(self, data: st.DataObject, op: str) -> None:
        desc = self._pick(data)
        epoch = self._epoch(data, desc)
        if op == "add":
            likely = [n for n in range(1, 7) if desc.replica(NodeId(n)) is None]
        else:
            likely = [int(n) for n in (desc.learners() if op == "promote" else desc.nodes())]
        n = NodeId(data.draw(st.sampled_from([*likely, *likely, 7, 1])))
        one: tuple[NodeId, ...] = (n,)
        none: tuple[NodeId, ...] = ()
        cmd = ChangeReplicas(
            desc.range_id,
            epoch,
            add=one if op == "add" else none,
            remove=one if op == "remove" else none,
            promote=one if op == "promote" else none,
        )
        result = self._apply(cmd)
        m = self.model[desc.range_id]
        info = self.d.nodes.get(n)
        if op == "add":
            valid = (
                n not in m["voters"] | m["learners"]
                and info is not None
                and (info.state is NodeState.UP)
            )
        elif op == "promote":
            valid = n in m["learners"]
        else:
            valid = (n in m["voters"] and len(m["voters"]) > 1) or n in m["learners"]
        ok = valid and epoch == desc.epoch
        assert isinstance(result, RangeDescriptor) == ok, (result, ok, op, m)
        if ok:
            m["cv"] += 1
            if op == "add":
                m["learners"].add(n)
            elif op == "promote":
                m["learners"].remove(n)
                m["voters"].add(n)
            else:
                m["voters"].discard(n)
                m["learners"].discard(n)

    @rule(data=st.data(), node=st.integers(0, 6))
    def leader(self, data: st.DataObject, node: int) -> None:
        desc = self._pick(data)
        result = self._apply(SetLeaderHint(desc.range_id, NodeId(node)))
        ok = node == 0 or node in self.model[desc.range_id]["voters"]
        assert isinstance(result, RangeDescriptor) == ok

    @rule(node=st.integers(4, 6), state=st.sampled_from([NodeState.UP, NodeState.DRAINING]))
    def node_state(self, node: int, state: NodeState) -> None:
        result = self._apply(SetNodeState(NodeId(node), state))
        assert not isinstance(result, ShardError)

    @rule(data=st.data(), size=st.integers(0, 1000))
    def heartbeat(self, data: st.DataObject, size: int) -> None:
        desc = self._pick(data)
        lead = data.draw(st.sampled_from(desc.voters()))
        self.now += 1
        epoch = self._epoch(data, desc)
        result = self._apply(
            Heartbeat(lead, self.now, (RangeStats(desc.range_id, epoch, lead, size),))
        )
        assert isinstance(result, HeartbeatResult)
        assert (result.ignored == ()) == (epoch.version == desc.epoch.version)

    @invariant()
    def tiles_and_matches_the_model(self) -> None:
        self.d.check()
        got = {
            d.range_id: {
                "start": d.start,
                "end": d.end,
                "voters": set(d.voters()),
                "learners": set(d.learners()),
                "cv": d.epoch.conf_ver,
                "v": d.epoch.version,
            }
            for d in self.d.ranges()
        }
        assert got == self.model
        for d in self.d.ranges():
            assert self.d.lookup(d.start) == d

    @precondition(lambda self: len(self.d) % 3 == 0)
    @invariant()
    def snapshot_round_trips(self) -> None:
        assert Directory.from_bytes(self.d.to_bytes()).to_bytes() == self.d.to_bytes()


DirectoryVersusModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, derandomize=True
)
TestDirectoryVersusModel = DirectoryVersusModel.TestCase
