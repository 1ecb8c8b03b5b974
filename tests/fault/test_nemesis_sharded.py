"""The nemesis on a sharded cluster, against a fake ``TortureCluster`` that records what
it is asked to do: which node a ``-leader`` fault hits, what a transfer, a forced split
and a join ask for, and that joins stop at ``SHARDED_JOINS``. No processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from quorumkv.torture import FaultKind, PlannedFault, TortureCluster
from quorumkv.torture._nemesis import SHARDED_JOINS, FaultLog, Nemesis
from quorumkv.torture._sharded import Target, pick_target, split_point

KEYS = [b"k0", b"k1", b"k2", b"k3", b"k4"]
TARGETS = [
    Target(1, 2, (1, 2, 3)),
    Target(2, 1, (1, 2, 3), (b"k0", b"k1")),
    Target(3, 3, (1, 2, 3), (b"k2", b"k3", b"k4")),
]


@dataclass
class _Proc:
    alive: bool = True
    paused: bool = False


@dataclass
class _FakeCluster:
    sharded: bool = True
    founders: int = 3
    keys: list[bytes] = field(default_factory=lambda: list(KEYS))
    procs: dict[int, _Proc] = field(default_factory=lambda: {i: _Proc() for i in (1, 2, 3)})
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def alive(self) -> list[int]:
        return [i for i, p in sorted(self.procs.items()) if p.alive and not p.paused]

    def targets(self) -> list[Target]:
        return TARGETS

    def range_starts(self) -> list[bytes]:
        return [b"", b"k2"]

    def kill(self, node: int) -> None:
        self.calls.append(("kill", node))
        self.procs[node].alive = False

    def pause(self, node: int) -> None:
        self.calls.append(("pause", node))
        self.procs[node].paused = True

    def resume(self, node: int) -> None:
        self.calls.append(("resume", node))
        self.procs[node].paused = False

    def restart(self, node: int) -> None:
        self.calls.append(("restart", node))
        self.procs[node].alive = True

    def unexpected_exits(self) -> list[Any]:
        return []

    def transfer_range(self, target: Target, to: int, timeout: float) -> str:
        self.calls.append(("transfer", target.range_id, to))
        return f"range {target.range_id}'s leader is now {to}"

    def split(self, key: bytes, timeout: float) -> tuple[bool, str]:
        self.calls.append(("split", key))
        return True, f"split at {key!r}"

    def add_node(self, timeout: float) -> tuple[int, str]:
        node = max(self.procs) + 1
        self.procs[node] = _Proc()
        self.calls.append(("join", node))
        return node, "joined: registered, a meta learner"


def _nemesis() -> tuple[Nemesis, _FakeCluster, list[str]]:
    fake = _FakeCluster()
    lines: list[str] = []
    log = FaultLog(lambda: 0.0, None, lines.append)
    return Nemesis(cast(TortureCluster, fake), log, lambda: 0.0), fake, lines


def _fault(kind: FaultKind, pick: int, index: int = 0) -> PlannedFault:
    return PlannedFault(index, 1.0, kind, 0.0 if kind.is_side else 1.5, pick)


def test_a_leader_fault_hits_the_leader_of_the_group_pick_chooses() -> None:
    for pick in range(6):
        nemesis, fake, lines = _nemesis()
        f = _fault(FaultKind.KILL_LEADER, pick)
        nemesis._start(f)
        target = pick_target(pick, TARGETS)
        assert target is not None
        assert fake.calls == [("kill", target.node)]
        assert target.describe() in lines[-1]
        nemesis._heal(f)
        assert fake.calls[-1] == ("restart", target.node)
    nemesis, fake, lines = _nemesis()
    f = _fault(FaultKind.PAUSE_LEADER, 2)
    nemesis._start(f)
    assert fake.calls == [("pause", 3)] and "SIGSTOP node 3 leader of range 3 (keys" in lines[-1]
    nemesis._heal(f)
    assert fake.calls[-1] == ("resume", 3)


def test_side_events_transfer_split_and_join_with_a_cap() -> None:
    nemesis, fake, lines = _nemesis()
    nemesis._side(_fault(FaultKind.TRANSFER, 4))  # pick 4: range 2, led by node 1
    ((what, rid, to),) = fake.calls
    assert (what, rid) == ("transfer", 2) and to in (2, 3)
    assert "range 2's leader is now" in lines[-1]

    fake.calls.clear()
    nemesis._side(_fault(FaultKind.RANGE_SPLIT, 7))
    assert fake.calls == [("split", split_point(7, KEYS, [b"", b"k2"]))]
    assert fake.calls[0][1] in (b"k0", b"k1", b"k3", b"k4")

    fake.calls.clear()
    for i in range(SHARDED_JOINS + 2):
        nemesis._side(_fault(FaultKind.MEMBER, i, index=10 + i))
    assert fake.calls == [("join", 3 + n) for n in range(1, SHARDED_JOINS + 1)]
    assert "cannot remove one" in lines[-1]
    assert len(fake.procs) == 3 + SHARDED_JOINS  # nothing was ever removed
    assert nemesis.side_summary() == f"member {SHARDED_JOINS}/{SHARDED_JOINS}, " + (
        "range-split 1/1, transfer 1/1"
    )


def test_a_transfer_goes_only_to_a_running_voter() -> None:
    nemesis, fake, lines = _nemesis()
    fake.procs[2].alive = fake.procs[3].alive = False  # range 2 (node 1 leads) has no one
    nemesis._side(_fault(FaultKind.TRANSFER, 4))
    assert fake.calls == [] and "skip transfer" in lines[-1]
    fake.procs[3].alive = True
    nemesis._side(_fault(FaultKind.TRANSFER, 4))
    assert fake.calls == [("transfer", 2, 3)]
