"""``ReplicaReads``: which replicas a read goes to when the client spreads reads.

Theory of operation
-------------------
A client's ``read_from`` says where its reads go:

* ``"leader"`` (the default): where its writes go, the leader of the cluster or of
  the key's range;
* ``"follower"``: to the group's followers, one after the other for successive reads,
  the leader only when no follower could answer;
* ``"any"``: to every voter in turn, the leader included.

Reads stay linearizable wherever they are answered: a follower asks the leader for a
read index (thesis 6.4, a forwarded ReadIndex), waits until it has applied up to it,
then answers (the server's replica does this, whatever its role). ``serializable``
reads go the same way and stay what they are: answered at once from the replica's state.

Learners are never chosen. They are replicas being added (a move, a node joining), often
still waiting for their snapshot or catching up, so a read there would mostly wait out
its deadline; a learner that is asked anyway answers correctly, the same way.

A read tries the replicas ``order`` returns, once each, in that order; a replica that
fails (no leader known there, no read index in time, unreachable, stalled, not holding
the range) is left out of the next reads for ``AVOID_S``, and once every one has failed
(or none is left) the read goes to the leader by the router's usual retries
(``_route``): spreading reads never makes them less available than reading at the
leader. The
candidates are the voters of the range's descriptor on a sharded cluster, and those of
a node's status on an unsharded one.

This module only chooses and remembers; it must never send, retry, or interpret an
answer (the router does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

ReadFrom = Literal["leader", "follower", "any"]
"""The values of a client's ``read_from``."""

READ_FROM: tuple[str, ...] = get_args(ReadFrom)

AVOID_S = 2.0
"""How long a replica that failed a read is passed over by the next reads (seconds)."""

MEMBERS_TTL_S = 30.0
"""How long an unsharded client trusts the voters a status named before asking again."""


def check_read_from(value: object) -> ReadFrom:
    """``value`` as a ``ReadFrom``; ``ValueError`` naming the choices if it is none."""
    if value == "leader":
        return "leader"
    if value == "follower":
        return "follower"
    if value == "any":
        return "any"
    raise ValueError(f"read_from must be one of {', '.join(READ_FROM)}, not {value!r}")


class ReplicaReads:
    """The rotation and the replicas to avoid of one client that spreads its reads."""

    def __init__(self, mode: ReadFrom) -> None:
        if mode == "leader":
            raise ValueError("reads from the leader are the router's own path")
        self.mode: ReadFrom = mode
        self._turn = 0
        self._avoid: dict[str, float] = {}
        """Replicas that failed a read lately, until when (loop time) to pass them over."""

    def order(self, voters: Sequence[str], leader: str | None, now: float) -> list[str]:
        """The replicas one read tries, in order: the candidates (``"follower"``: the
        voters but the leader; ``"any"``: every voter), starting one further along at
        each read, less those that failed lately. Empty: no candidate (the read goes to
        the leader)."""
        seen = dict.fromkeys(voters)
        if self.mode == "follower" and leader is not None:
            seen.pop(leader, None)
        cands = list(seen)
        if not cands:
            return []
        start = self._turn % len(cands)
        self._turn += 1
        turn = cands[start:] + cands[:start]
        if not self._avoid:
            return turn
        return [a for a in turn if self._avoid.get(a, 0.0) <= now]

    def failed(self, addr: str, now: float) -> None:
        """``addr`` could not answer a read: pass it over for ``AVOID_S``."""
        self._avoid[addr] = now + AVOID_S
        if len(self._avoid) > 64:  # forget the ones whose time is over
            self._avoid = {a: t for a, t in self._avoid.items() if t > now}

    def answered(self, addr: str) -> None:
        """``addr`` answered a read: no longer passed over."""
        if self._avoid:
            self._avoid.pop(addr, None)
