"""Partitions as sets of blocked directed links: who may not send to whom.

A ``Partition`` is a set of ``(src, dst)`` node pairs: ``src``'s packets to ``dst`` are
dropped. A symmetric cut lists both directions; a one-way loss lists one. The network
(``_network``) turns each pair into a blackhole route to ``dst``'s address inside
``src``'s namespace, which is all a partition needs without iptables: a route decides
where what a node *sends* goes, so a pair blocks exactly one direction.

The shapes are Jepsen's: one node isolated; a majority and a minority; a bridge (two
halves cut from each other, one node in both, so each half may think it has a quorum
through it); one node's outgoing or incoming traffic lost. Every shape leaves a
majority that can talk among itself, except that a bridge's majority only exists
through the bridge node.

This module must never do I/O; which nodes a shape picks comes from a
``random.Random`` the caller seeds.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

from quorumkv.torture._schedule import FaultKind


@dataclass(frozen=True, slots=True)
class Partition:
    """Blocked directed links and a one-line description for the fault log."""

    blocked: frozenset[tuple[int, int]]
    description: str

    @property
    def nodes(self) -> tuple[int, ...]:
        """Every node some blocked link starts or ends at."""
        return tuple(sorted({n for pair in self.blocked for n in pair}))


def cut(left: Collection[int], right: Collection[int]) -> frozenset[tuple[int, int]]:
    """Both directions between every node of ``left`` and every node of ``right``."""
    return frozenset(pair for a in left for b in right if a != b for pair in ((a, b), (b, a)))


def isolate(victim: int, nodes: Collection[int]) -> Partition:
    others = sorted(set(nodes) - {victim})
    return Partition(cut([victim], others), f"node {victim} isolated from {others}")


def split(nodes: Collection[int], rng: random.Random) -> Partition:
    """A minority of ``(n - 1) // 2`` nodes (at least one) cut from the rest."""
    order = sorted(nodes)
    rng.shuffle(order)
    size = max(1, (len(order) - 1) // 2)
    minority, majority = sorted(order[:size]), sorted(order[size:])
    return Partition(cut(minority, majority), f"split {majority} | {minority}")


def bridge(nodes: Collection[int], rng: random.Random) -> Partition:
    """Two halves cut from each other; one node (the bridge) reaches both."""
    order = sorted(nodes)
    if len(order) < 3:
        raise ValueError(f"a bridge needs at least 3 nodes, not {len(order)}")
    rng.shuffle(order)
    middle, rest = order[0], order[1:]
    half = len(rest) // 2
    left, right = sorted(rest[:half]), sorted(rest[half:])
    return Partition(cut(left, right), f"bridge {left} <-{middle}-> {right}")


def one_way(victim: int, nodes: Collection[int], *, outgoing: bool) -> Partition:
    """``outgoing``: the victim's packets to every peer are lost (it hears them, they do
    not hear it); otherwise theirs to it are."""
    others = sorted(set(nodes) - {victim})
    if outgoing:
        pairs = frozenset((victim, o) for o in others)
        text = f"node {victim} cannot send to {others} (it still hears them)"
    else:
        pairs = frozenset((o, victim) for o in others)
        text = f"node {victim} hears nothing from {others} (they still hear it)"
    return Partition(pairs, text)


def partition_for(
    kind: FaultKind, nodes: Collection[int], pick: int, leader: int | None
) -> Partition:
    """The partition a fault of ``kind`` with ``pick`` makes among ``nodes`` (the
    running members); ``leader`` (if known) is the victim half the time."""
    if len(nodes) < 2:
        raise ValueError(f"a partition needs at least 2 nodes, not {sorted(nodes)}")
    rng = random.Random(pick)

    def victim() -> int:
        if leader in nodes and rng.random() < 0.5:
            assert leader is not None
            return leader
        return rng.choice(sorted(nodes))

    if kind is FaultKind.ISOLATE:
        return isolate(victim(), nodes)
    if kind is FaultKind.SPLIT:
        return split(nodes, rng)
    if kind is FaultKind.BRIDGE:
        return bridge(nodes, rng)
    if kind is FaultKind.ONE_WAY:
        v = victim()
        return one_way(v, nodes, outgoing=rng.random() < 0.5)
    raise ValueError(f"{kind.value} is not a partition")
