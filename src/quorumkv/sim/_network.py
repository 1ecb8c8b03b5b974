"""The simulated network between nodes: delay, reorder, drop, duplicate, partition.

Theory of operation
-------------------
``route`` decides, for one message, when (if ever) it arrives: a list of delivery delays,
empty for a dropped message, two for a duplicated one. Delays are drawn per message, so
messages overtake each other (reordering). A link is cut while a partition is in force:
``cut`` holds directed (from, to) pairs, so a symmetric partition cuts both directions
and a one-way fault cuts one. A message is also dropped if its link is cut when it would
arrive.

All randomness comes from the ``rng`` it is given, so one seed decides every delivery.
It never delivers anything itself; the cluster schedules the deliveries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class NetworkProfile:
    min_delay_us: int = 200
    max_delay_us: int = 3_000
    drop: float = 0.0
    duplicate: float = 0.0


@dataclass
class Network:
    rng: random.Random
    profile: NetworkProfile = field(default_factory=NetworkProfile)
    cut: set[tuple[int, int]] = field(default_factory=set)
    dropped: int = 0
    duplicated: int = 0

    def route(self, frm: int, to: int) -> list[int]:
        """Delivery delays (µs) for one message from ``frm`` to ``to``."""
        p = self.profile
        if (frm, to) in self.cut or (p.drop and self.rng.random() < p.drop):
            self.dropped += 1
            return []
        delays = [self.rng.randint(p.min_delay_us, p.max_delay_us)]
        if p.duplicate and self.rng.random() < p.duplicate:
            self.duplicated += 1
            delays.append(self.rng.randint(p.min_delay_us, p.max_delay_us * 3))
        return delays

    def link_up(self, frm: int, to: int) -> bool:
        return (frm, to) not in self.cut

    def isolate(self, groups: list[set[int]]) -> None:
        """Cut every link between different groups, both ways."""
        self.cut = {
            (a, b)
            for i, ga in enumerate(groups)
            for j, gb in enumerate(groups)
            if i != j
            for a in ga
            for b in gb
        }

    def cut_one_way(self, frm: set[int], to: set[int]) -> None:
        self.cut |= {(a, b) for a in frm for b in to if a != b}

    def bridge(self, left: set[int], bridge: int, right: set[int]) -> None:
        """``left`` and ``right`` cannot talk; ``bridge`` talks to both."""
        self.isolate([left, right])
        self.cut = {(a, b) for (a, b) in self.cut if bridge not in (a, b)}

    def heal(self) -> None:
        self.cut.clear()

    def healthy(self) -> bool:
        return not self.cut and not self.profile.drop
