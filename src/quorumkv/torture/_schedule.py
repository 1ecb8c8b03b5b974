"""The fault schedule of a torture run, drawn from a seed: which fault, when, how long.

Theory of operation
-------------------
``make_plan(seed, duration, kinds)`` draws, from ``random.Random(seed)`` and nothing
else, a timeline of *main* faults (crashes, pauses, partitions, a full disk), one at a
time with a quiet gap after each so the cluster can show how fast it recovers, and
*side* events (membership changes, leader transfers, and on a sharded cluster forced
range splits) placed mostly inside the main faults' holds, so that they happen while
something is broken. A main fault starts at ``at`` seconds after the run began and is
healed ``hold`` seconds later; every fault of the plan is healed before ``duration``.

Targets are not chosen here: which node leads, which nodes are members, or (sharded)
where the ranges start, is only known when the fault starts. Each fault carries
``pick``, a number drawn from the seed that the nemesis turns into a choice among the
nodes (or ranges) of that moment (``choose``, ``_sharded``), so a seed fixes the plan
while the run it drives (real processes, real time) is not deterministic. A seed
reproduces the schedule, not the interleaving.

This module must never do I/O, read a clock, or use the global random generator.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass


class FaultKind(enum.Enum):
    """What the nemesis can do. The value is the name used on the command line."""

    KILL = "kill"
    """SIGKILL a random node; restart it on its data after the hold."""
    KILL_LEADER = "kill-leader"
    """SIGKILL the leader; restart it after the hold."""
    PAUSE = "pause"
    """SIGSTOP a random node for longer than an election timeout; then SIGCONT."""
    PAUSE_LEADER = "pause-leader"
    """SIGSTOP the leader; then SIGCONT."""
    ISOLATE = "isolate"
    """Network namespaces: cut one node off from every peer, both ways."""
    SPLIT = "split"
    """Network namespaces: a majority and a minority that cannot reach each other."""
    BRIDGE = "bridge"
    """Network namespaces: two halves cut from each other, one node seeing both."""
    ONE_WAY = "one-way"
    """Network namespaces: one node's packets to its peers are lost, or theirs to it."""
    DISK_FULL = "disk-full"
    """Fill one node's tmpfs data disk; it must stop; free it and restart the node."""
    MEMBER = "member"
    """Side event: add a node (N -> N+1 members) or remove one (N+1 -> N). Sharded: a
    node joins (draining and removing a node is not a torture event yet), and ranges move to it."""
    TRANSFER = "transfer"
    """Side event: move leadership to another voter. Sharded: of the meta range or of
    a range holding torture keys."""
    RANGE_SPLIT = "range-split"
    """Side event, sharded only: split a range at or next to a torture key."""

    @property
    def is_side(self) -> bool:
        """Whether it is a side event (instantaneous, may overlap a main fault)."""
        return self in SIDE_KINDS

    @property
    def is_partition(self) -> bool:
        return self in PARTITION_KINDS


PARTITION_KINDS = frozenset(
    {FaultKind.ISOLATE, FaultKind.SPLIT, FaultKind.BRIDGE, FaultKind.ONE_WAY}
)
"""Kinds that need one network namespace per node (``--netns``)."""
SIDE_KINDS = frozenset({FaultKind.MEMBER, FaultKind.TRANSFER, FaultKind.RANGE_SPLIT})
SHARDED_KINDS = frozenset({FaultKind.RANGE_SPLIT})
"""Kinds that need a sharded cluster."""
ROOT_KINDS = PARTITION_KINDS | {FaultKind.DISK_FULL}
"""Kinds that need root: namespaces and routes, or mounting a tmpfs."""

HOLD: dict[FaultKind, tuple[float, float]] = {
    FaultKind.KILL: (1.0, 3.0),
    FaultKind.KILL_LEADER: (1.0, 3.0),
    # longer than an election timeout (0.5-1 s at the default 50 ms x 10 ticks)
    FaultKind.PAUSE: (1.2, 2.5),
    FaultKind.PAUSE_LEADER: (1.2, 2.5),
    FaultKind.ISOLATE: (2.0, 5.0),
    FaultKind.SPLIT: (2.0, 5.0),
    FaultKind.BRIDGE: (2.0, 5.0),
    FaultKind.ONE_WAY: (2.0, 5.0),
    FaultKind.DISK_FULL: (2.0, 4.0),
}
"""Seconds a main fault of each kind lasts, drawn uniformly from the range."""
GAP = (1.0, 3.0)
"""Seconds of calm after each main fault is healed."""
WARMUP = 1.0
"""Seconds of load before the first fault."""
SIDE_CHANCE = 0.5
"""Chance that a main fault carries a side event during its hold (and a gap one)."""


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """One fault of the plan. ``hold`` is 0 for side events (they last as long as the
    call that makes them). ``pick`` is turned into a target by ``choose``."""

    index: int
    at: float
    kind: FaultKind
    hold: float
    pick: int

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "at": round(self.at, 3),
            "kind": self.kind.value,
            "hold": round(self.hold, 3),
            "pick": self.pick,
        }


def parse_kinds(text: str) -> tuple[FaultKind, ...]:
    """``"kill,pause"`` as fault kinds; ``ValueError`` naming the unknown ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = {k.value: k for k in FaultKind}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown fault kinds {', '.join(unknown)}; known: {', '.join(known)}")
    if not names:
        raise ValueError("no fault kind given")
    return tuple(dict.fromkeys(known[n] for n in names))


def default_kinds(*, netns: bool, root: bool, sharded: bool = False) -> tuple[FaultKind, ...]:
    """Every kind the network mode, privileges and kind of cluster allow."""
    out = []
    for k in FaultKind:
        if k.is_partition and not netns:
            continue
        if k is FaultKind.DISK_FULL and not root:
            continue
        if k in SHARDED_KINDS and not sharded:
            continue
        out.append(k)
    return tuple(out)


def make_plan(
    seed: int, duration: float, kinds: Iterable[FaultKind], *, warmup: float = WARMUP
) -> tuple[PlannedFault, ...]:
    """The faults of a run of ``duration`` seconds, in order of ``at``. A pure function
    of its arguments; every main fault ends (``at + hold``) by ``duration``."""
    chosen = list(dict.fromkeys(kinds))
    main = [k for k in chosen if not k.is_side]
    side = [k for k in chosen if k.is_side]
    rng = random.Random(seed)
    out: list[tuple[float, FaultKind, float]] = []

    def side_at(start: float, end: float) -> None:
        if side and end > start and rng.random() < SIDE_CHANCE:
            out.append((rng.uniform(start, end), rng.choice(side), 0.0))

    t = warmup
    if not main:  # side events alone: one every gap
        while side and t < duration:
            out.append((t, rng.choice(side), 0.0))
            t += rng.uniform(*GAP)
    while main:
        kind = rng.choice(main)
        hold = rng.uniform(*HOLD[kind])
        if t + hold > duration:
            break
        out.append((t, kind, hold))
        side_at(t + 0.2 * hold, t + 0.8 * hold)
        gap = rng.uniform(*GAP)
        side_at(t + hold + 0.2 * gap, t + hold + 0.6 * gap)
        t += hold + gap
    out = sorted((f for f in out if f[0] < duration), key=lambda f: f[0])
    picks = [rng.randrange(1 << 30) for _ in out]
    return tuple(
        PlannedFault(i, at, kind, hold, pick)
        for i, ((at, kind, hold), pick) in enumerate(zip(out, picks, strict=True))
    )


def choose(pick: int, candidates: Collection[int]) -> int:
    """The node ``pick`` designates among ``candidates`` (by their sorted order)."""
    if not candidates:
        raise ValueError("no node to choose from")
    ordered = sorted(candidates)
    return ordered[pick % len(ordered)]
