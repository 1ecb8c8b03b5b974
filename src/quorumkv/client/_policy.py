"""What the client does with each answer code, and the error it gives up with.

Theory of operation
-------------------
A request is retried until its deadline for as long as the answers say that another
try may succeed (``quorumkv.net``'s codes):

==================  ==================================  ============================
answer              next try                            error at the deadline
==================  ==================================  ============================
ERR_NOT_LEADER      at once, at the named leader        ``NotLeaderError``
                    (after a backoff when none named)
ERR_UNAVAILABLE,    the next endpoint, after a backoff  ``UnavailableError``
ERR_SHUTTING_DOWN,
lost connection,
failed dial
ERR_TOO_MANY        the same node, after a backoff      ``TooManyRequestsError``
ERR_TIMEOUT,        the same node, after a backoff      ``RequestTimeoutError``
no answer in time   (none: the deadline has passed)
==================  ==================================  ============================

The error raised at the deadline is the one of the *last* failure; a call gives up
early when its next try could not start with ``BACKOFF_MIN`` still left. Backoffs grow
exponentially from ``BACKOFF_MIN`` to ``BACKOFF_MAX`` (to ``ELECTION_BACKOFF_MAX`` while
no leader is reachable), with jitter (each delay drawn from its upper half) so that the
clients of a cluster that just lost its leader do not return in step. The other codes
can never succeed on a retry: ``terminal_error`` turns them into the error the caller
gets at once.

This module is pure: no I/O, no clock, no global random (the caller passes its RNG).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from quorumkv.errors import (
    ClientError,
    MalformedRequestError,
    MembershipError,
    NotLeaderError,
    ProtocolError,
    QuorumKVError,
    RequestTimeoutError,
    TooManyRequestsError,
    UnavailableError,
)
from quorumkv.net import ERR_BAD_REQUEST, ERR_MEMBERSHIP, ERR_PROTOCOL

BACKOFF_MIN = 0.02
"""Seconds before the first retry that waits."""
BACKOFF_MAX = 1.0
"""The longest wait between two tries of an overloaded or slow cluster."""
ATTEMPT_TIMEOUT = 1.0
"""Seconds one try waits for its answer before the call moves to another node. A node
that stalls with its connection open (SIGSTOP, swap) never closes it; the others elect a
new leader within about an election timeout (0.5-1 s by default). A write's try that
times out has an unknown outcome; its retries keep the same session, so it applies once.
"""
ELECTION_BACKOFF_MAX = 0.1
"""The longest wait while the cluster has no leader we can reach (an election, a dead
leader): elections end within about an election timeout (0.5-1 s by default), and a
client that then sleeps a long backoff adds it to the failover window it observes.
Refusals in that state cost the nodes little, so clients look again every 100 ms."""
MAX_IMMEDIATE_REDIRECTS = 3
"""Redirects followed at once within one call; later ones wait a backoff first, so two
nodes that name each other as leader (stale views during an election) do not spin."""


def backoff_delay(attempt: int, rng: random.Random, cap: float = BACKOFF_MAX) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based) of one call."""
    ceiling = min(cap, BACKOFF_MIN * (1 << min(attempt, 16)))
    return rng.uniform(ceiling / 2, ceiling)


def backoff_cap(kind: Kind | None) -> float:
    """How long a wait may grow after a failure of ``kind``: short while the cluster
    is between leaders, long when it is overloaded or slow."""
    if kind in (Kind.NOT_LEADER, Kind.UNAVAILABLE, None):
        return ELECTION_BACKOFF_MAX
    return BACKOFF_MAX


def next_delay(
    attempt: int, rng: random.Random, remaining: float, cap: float = BACKOFF_MAX
) -> float | None:
    """The backoff before retry number ``attempt``, or None when the deadline, due in
    ``remaining`` seconds, would leave less than ``BACKOFF_MIN`` for the try itself:
    a try started that late would most likely turn a clear failure into an unknown
    outcome, so the call gives up at once instead."""
    delay = backoff_delay(attempt, rng, cap)
    return delay if delay + BACKOFF_MIN < remaining else None


class Kind(enum.Enum):
    """Why the last try of a request failed, when a later one may succeed."""

    NOT_LEADER = "not leader"
    UNAVAILABLE = "unavailable"
    TOO_MANY = "too many requests"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Failure:
    """The last retryable failure of a call: its kind, a human detail (which node said
    what) and, for ``NOT_LEADER``, the leader it named (0: none)."""

    kind: Kind
    detail: str
    leader: int = 0


def give_up(
    what: str, failure: Failure | None, budget: float, tries: int, unknown: bool = False
) -> ClientError:
    """The error for a call that reached its deadline: by the kind of its last failure,
    or ``RequestTimeoutError`` when the deadline passed while an answer was awaited or
    ``unknown`` (an earlier try of this write may have taken effect)."""
    spent = f"{what}: gave up after {tries} tries in {budget:g}s"
    if failure is None:
        if unknown:
            return RequestTimeoutError(f"{spent}: the outcome of an earlier try is unknown")
        return UnavailableError(f"{spent}: no endpoint answered")
    text = f"{spent}; last: {failure.detail}"
    if unknown and failure.kind is not Kind.TIMEOUT:
        return RequestTimeoutError(f"{text}; an earlier try's outcome is unknown")
    if failure.kind is Kind.NOT_LEADER:
        return NotLeaderError(text, failure.leader)
    if failure.kind is Kind.TOO_MANY:
        return TooManyRequestsError(text)
    if failure.kind is Kind.TIMEOUT:
        return RequestTimeoutError(f"{text} (the outcome is unknown)")
    return UnavailableError(text)


def message(body: object) -> str:
    """The human text of an error answer's body."""
    return body if isinstance(body, str) else repr(body)


def parse_not_leader(body: object) -> tuple[int, str | None]:
    """``(leader id or 0, leader address or None)`` from an ERR_NOT_LEADER body."""
    if isinstance(body, list | tuple) and len(body) == 2:
        leader, addr = body
        if isinstance(leader, int) and leader > 0:
            return leader, addr if isinstance(addr, str) and addr else None
    return 0, None


def terminal_error(code: int, body: object, addr: str) -> QuorumKVError:
    """The error for an answer code that no retry can change."""
    if code == ERR_BAD_REQUEST:
        return MalformedRequestError(f"{addr} refused the request: {message(body)}")
    if code == ERR_MEMBERSHIP:
        return MembershipError(message(body))
    if code == ERR_PROTOCOL:
        return ProtocolError(f"{addr}: {message(body)}")
    return ProtocolError(f"{addr} answered with unknown code {code!r}: {message(body)}")
