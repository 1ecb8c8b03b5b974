"""The steps a leader takes toward the directory's replicas (``server._moves``), on fakes
of a replica's Raft state: adds before promotions before removals, never a removal while
a voter the directory lists does not vote yet, this node's own removal last; and the
meta range's voters replaced when their node is down."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from quorumkv.consensus import ChangeType, GroupId, NodeId
from quorumkv.kv import Engine
from quorumkv.server._machines import KVMachine
from quorumkv.server._moves import Mover
from quorumkv.server._sharding import Shards
from quorumkv.shard import (
    Directory,
    Epoch,
    NodeState,
    RangeDescriptor,
    RangeId,
    RegisterNode,
    SetNodeState,
)
from quorumkv.shard import Replica as Rep

ME = 1


def _mover() -> Mover:
    shards = SimpleNamespace(node=SimpleNamespace(node_id=ME))
    return Mover(shards)  # type: ignore[arg-type]


def _replica(voters: set[int], learners: Any = (), caught: Any = ()) -> Any:
    conf = SimpleNamespace(
        voters={NodeId(v) for v in voters}, learners={NodeId(v) for v in learners}
    )
    raft = SimpleNamespace(trk=SimpleNamespace(conf=conf))
    return SimpleNamespace(raw=SimpleNamespace(raft=raft), caught_up=lambda n: n in caught)


def _desc(voters: list[int], learners: Any = ()) -> RangeDescriptor:
    reps = tuple(Rep(NodeId(v)) for v in voters) + tuple(Rep(NodeId(n), True) for n in learners)
    return RangeDescriptor(RangeId(2), b"", b"", Epoch(), reps)


@pytest.mark.parametrize(
    ("raft", "want", "step"),
    [
        # Nothing to do.
        (({1, 2, 3}, ()), ([1, 2, 3], []), None),
        # A learner the directory added.
        (({1, 2, 3}, ()), ([1, 2, 3], [4]), (ChangeType.ADD_LEARNER, 4)),
        # A voter the directory lists that the group lacks: a learner first.
        (({1, 2, 3}, ()), ([1, 2, 3, 4], []), (ChangeType.ADD_LEARNER, 4)),
        # Promoted once caught up, not before.
        (({1, 2, 3}, {4}, {4}), ([1, 2, 3, 4], []), (ChangeType.ADD_VOTER, 4)),
        (({1, 2, 3}, {4}, set()), ([1, 2, 3, 4], []), None),
        # A removal waits until every voter the directory lists votes.
        (({1, 2, 3}, {4}, set()), ([1, 2, 4], []), None),
        (({1, 2, 3}, {4}, {4}), ([1, 2, 4], []), (ChangeType.ADD_VOTER, 4)),
        (({1, 2, 3, 4}, ()), ([1, 2, 4], []), (ChangeType.REMOVE, 3)),
        # A learner the directory dropped (a stuck move).
        (({1, 2, 3}, {4}), ([1, 2, 3], []), (ChangeType.REMOVE, 4)),
        # Others before this node, whose own removal comes last (a transfer, then the
        # next leader removes it).
        (({1, 2, 3, 4, 5}, ()), ([2, 4, 5], []), (ChangeType.REMOVE, 3)),
        (({1, 2, 4, 5}, ()), ([2, 4, 5], []), (ChangeType.REMOVE, 1)),
    ],
)
def test_the_next_step_toward_the_directory(raft: Any, want: Any, step: Any) -> None:
    r = _replica(*raft)
    assert _mover()._next_step(r, _desc(*want)) == step


def _directory(beats: dict[int, float]) -> Directory:
    d = Directory(next_range_id=2)
    for n, t in beats.items():
        d.apply(RegisterNode(NodeId(n), f"127.0.0.1:{7000 + n}", 0, t))
    return d


def test_the_meta_range_gets_a_learner_on_every_registered_node() -> None:
    now = time.time()
    d = _directory({1: now, 2: now, 3: now, 4: now})
    r = _replica({1, 2, 3})
    assert _mover()._meta_step(r, d, 30.0) == (ChangeType.ADD_LEARNER, 4)


def test_a_down_meta_voter_is_replaced_by_a_caught_up_learner_then_removed() -> None:
    now = time.time()
    d = _directory({1: now, 2: now, 3: now - 60, 4: now, 5: now})
    m = _mover()
    assert m._meta_step(_replica({1, 2, 3}, {4, 5}, set()), d, 30.0) is None
    assert m._meta_step(_replica({1, 2, 3}, {4, 5}, {5}), d, 30.0) == (ChangeType.ADD_VOTER, 5)
    assert m._meta_step(_replica({1, 2, 3, 5}, {4}, {4}), d, 30.0) == (ChangeType.REMOVE, 3)
    # All live, three voters: nothing.
    d = _directory({1: now, 2: now, 3: now, 4: now})
    assert m._meta_step(_replica({1, 2, 3}, {4}, {4}), d, 30.0) is None


def test_a_removed_node_gets_no_meta_replica() -> None:
    now = time.time()
    d = _directory({1: now, 2: now, 3: now})
    d.apply(SetNodeState(NodeId(3), NodeState.REMOVED))
    assert _mover()._meta_step(_replica({1, 2}), d, 30.0) is None


def test_a_draining_or_removed_meta_voter_moves_to_a_node_that_is_up() -> None:
    now = time.time()
    d = _directory({1: now, 2: now, 3: now, 4: now})
    d.apply(SetNodeState(NodeId(2), NodeState.DRAINING))
    m = _mover()
    # Not caught up: wait; caught up: promote, then demote the draining voter.
    assert m._meta_step(_replica({1, 2, 3}, {4}, set()), d, 30.0) is None
    assert m._meta_step(_replica({1, 2, 3}, {4}, {4}), d, 30.0) == (ChangeType.ADD_VOTER, 4)
    assert m._meta_step(_replica({1, 2, 3, 4}), d, 30.0) == (ChangeType.ADD_LEARNER, 2)
    # Three nodes only: the draining voter keeps its vote (nowhere else to put it).
    d = _directory({1: now, 2: now, 3: now})
    d.apply(SetNodeState(NodeId(2), NodeState.DRAINING))
    assert m._meta_step(_replica({1, 2, 3}), d, 30.0) is None
    # This node draining: it demotes itself last (``_change`` hands over first).
    d = _directory({1: now, 2: now, 3: now, 4: now})
    d.apply(SetNodeState(NodeId(ME), NodeState.DRAINING))
    assert m._meta_step(_replica({1, 2, 3, 4}), d, 30.0) == (ChangeType.ADD_LEARNER, ME)


def test_a_meta_learner_on_a_removed_node_is_removed_once_silent() -> None:
    now = time.time()
    d = _directory({1: now, 2: now, 3: now, 4: now})
    d.apply(SetNodeState(NodeId(4), NodeState.REMOVED))
    # Its last heartbeat (before the removal; later ones are refused) is recent:
    # kept a while, so that it reads its removal.
    assert _mover()._meta_step(_replica({1, 2, 3}, {4}), d, 30.0) is None
    d = _directory({1: now, 2: now, 3: now, 4: now - 60})
    d.apply(SetNodeState(NodeId(4), NodeState.REMOVED))
    assert _mover()._meta_step(_replica({1, 2, 3}, {4}), d, 30.0) == (ChangeType.REMOVE, 4)


def _group(voters: set[int], learners: Any = (), outgoing: Any = ()) -> Any:
    conf = SimpleNamespace(
        voters={NodeId(v) for v in voters},
        learners={NodeId(v) for v in learners},
        voters_outgoing={NodeId(v) for v in outgoing},
    )
    return SimpleNamespace(
        raw=SimpleNamespace(raft=SimpleNamespace(trk=SimpleNamespace(conf=conf)))
    )


def test_a_removed_node_retires_only_once_no_group_counts_it(tmp_path: Any) -> None:
    engine = Engine(tmp_path / "kv")
    try:
        node = SimpleNamespace(node_id=ME, replicas={}, retired=None)
        shards = SimpleNamespace(node=node)
        held = SimpleNamespace(sm=KVMachine.pending(engine, 5))
        node.replicas = {GroupId(1): _group({1, 2, 3}), GroupId(5): held}
        assert not Shards._may_retire(shards)  # type: ignore[arg-type]
        assert node.retired is None  # still a meta voter
        node.replicas[GroupId(1)] = _group({2, 3, 4}, {1}, outgoing={1, 2, 3})
        assert not Shards._may_retire(shards)  # type: ignore[arg-type]  # joint: votes
        node.replicas[GroupId(1)] = _group({2, 3, 4}, {1})
        node.replicas[GroupId(6)] = SimpleNamespace(sm=object())  # a replica with data
        assert not Shards._may_retire(shards)  # type: ignore[arg-type]
        del node.replicas[GroupId(6)]  # collected; only a pending one is left
        assert Shards._may_retire(shards)  # type: ignore[arg-type]
        assert node.retired == f"node {ME} was removed from the cluster"
    finally:
        engine.close()
