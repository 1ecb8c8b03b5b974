"""Quorum arithmetic: which index a configuration has committed, who won a vote.

Pure functions over voter sets. A *majority* configuration decides by more than half of
its voters; a *joint* configuration (thesis 4.3) decides only when both of its halves do.
An empty majority configuration agrees to everything, so a joint configuration whose
outgoing half is empty behaves exactly like its incoming half.

Nothing here knows about roles, terms or messages; ``tests/consensus/test_quorum.py`` checks
these functions against a brute-force reference over random inputs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from ._types import Index, NodeId

INFINITE_INDEX = Index(2**63 - 1)


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority_committed(voters: frozenset[NodeId], match: Mapping[NodeId, Index]) -> Index:
    """The highest index that more than half of ``voters`` have (missing voters count 0)."""
    if not voters:
        return INFINITE_INDEX
    indexes = sorted((match.get(v, Index(0)) for v in voters), reverse=True)
    return indexes[len(indexes) // 2]


def majority_vote(voters: frozenset[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """WON once more than half said yes, LOST once that can no longer happen."""
    if not voters:
        return VoteResult.WON
    yes = no = 0
    for v in voters:
        granted = votes.get(v)
        if granted is True:
            yes += 1
        elif granted is False:
            no += 1
    need = len(voters) // 2 + 1
    if yes >= need:
        return VoteResult.WON
    if len(voters) - no < need:
        return VoteResult.LOST
    return VoteResult.PENDING


@dataclass(frozen=True, slots=True)
class JointConfig:
    """The voters of a group: ``incoming`` always, ``outgoing`` only while joint."""

    incoming: frozenset[NodeId]
    outgoing: frozenset[NodeId] = frozenset()

    def voters(self) -> frozenset[NodeId]:
        return self.incoming | self.outgoing

    def committed(self, match: Mapping[NodeId, Index]) -> Index:
        return min(
            majority_committed(self.incoming, match),
            majority_committed(self.outgoing, match),
        )

    def vote(self, votes: Mapping[NodeId, bool]) -> VoteResult:
        a = majority_vote(self.incoming, votes)
        b = majority_vote(self.outgoing, votes)
        if a is b:
            return a
        if VoteResult.LOST in (a, b):
            return VoteResult.LOST
        return VoteResult.PENDING

    def has_quorum(self, active: frozenset[NodeId] | set[NodeId]) -> bool:
        """Whether ``active`` nodes alone form a quorum (for check-quorum, leases)."""
        return self.vote({v: v in active for v in self.voters()}) is VoteResult.WON
