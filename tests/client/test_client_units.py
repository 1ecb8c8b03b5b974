"""The client's pure parts: session lanes, backoff, give-up errors, argument handling."""

from __future__ import annotations

import random

import pytest

from quorumkv.client._lanes import Lanes
from quorumkv.client._policy import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    ELECTION_BACKOFF_MAX,
    Failure,
    Kind,
    backoff_cap,
    backoff_delay,
    give_up,
    next_delay,
    parse_not_leader,
)
from quorumkv.client._requests import key_range, parse_endpoints, to_bytes
from quorumkv.errors import (
    MalformedRequestError,
    NotLeaderError,
    RequestTimeoutError,
    TooManyRequestsError,
    UnavailableError,
)
from quorumkv.kv import ALL_KEYS


def test_lanes_are_reused_last_in_first_out_with_the_next_seq() -> None:
    lanes = Lanes()
    a, b = lanes.take(), lanes.take()
    assert a.client != b.client and 0 < a.client < 1 << 63 and a.seq == b.seq == 1
    lanes.give(a)
    lanes.give(b)
    again = lanes.take()
    assert again is b and again.seq == 2
    assert len(lanes) == 2


def test_backoff_grows_to_its_ceiling_with_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, rng) for n in range(12)]
    assert BACKOFF_MIN / 2 <= delays[0] <= BACKOFF_MIN
    assert all(BACKOFF_MAX / 2 <= d <= BACKOFF_MAX for d in delays[8:])
    assert len({round(d, 9) for d in delays[8:]}) > 1, "jittered"
    assert next_delay(0, rng, remaining=10.0) is not None
    assert next_delay(0, rng, remaining=BACKOFF_MIN) is None


def test_backoff_stays_short_between_leaders() -> None:
    # Found by the failover benchmark: with waits growing to 1 s, clients observed a
    # median failover of 1.9 s for elections that took 0.7 s.
    rng = random.Random(7)
    for kind in (Kind.NOT_LEADER, Kind.UNAVAILABLE):
        cap = backoff_cap(kind)
        assert cap == ELECTION_BACKOFF_MAX
        assert all(backoff_delay(n, rng, cap) <= ELECTION_BACKOFF_MAX for n in range(20))
    assert backoff_cap(Kind.TOO_MANY) == backoff_cap(Kind.TIMEOUT) == BACKOFF_MAX


def test_give_up_says_unknown_once_a_write_may_have_taken_effect() -> None:
    # Found in review: a write answered "outcome unknown" (its leader stepped down),
    # then "unavailable" until the deadline, was reported as UnavailableError, which
    # says nothing was applied.
    for kind in Kind:
        err = give_up("put", Failure(kind, "node says no"), 1.0, 3, unknown=True)
        assert isinstance(err, RequestTimeoutError), kind
    assert isinstance(give_up("put", None, 1.0, 0, unknown=True), RequestTimeoutError)
    assert isinstance(give_up("put", None, 1.0, 0), UnavailableError)


def test_give_up_raises_by_the_last_failure() -> None:
    def err(kind: Kind) -> Exception:
        return give_up("put", Failure(kind, "node says no", 3), 1.0, 4)

    assert isinstance(err(Kind.UNAVAILABLE), UnavailableError)
    assert isinstance(err(Kind.TOO_MANY), TooManyRequestsError)
    assert isinstance(err(Kind.TIMEOUT), RequestTimeoutError)
    not_leader = err(Kind.NOT_LEADER)
    assert isinstance(not_leader, NotLeaderError) and not_leader.leader == 3
    assert "4 tries" in str(not_leader) and "node says no" in str(not_leader)
    assert isinstance(give_up("get", None, 1.0, 0), UnavailableError)


def test_not_leader_bodies() -> None:
    assert parse_not_leader([2, "h:1"]) == (2, "h:1")
    assert parse_not_leader([0, None]) == (0, None)
    assert parse_not_leader([2, ""]) == (2, None)
    assert parse_not_leader("garbage") == (0, None)


def test_arguments() -> None:
    assert to_bytes("key", "é") == "é".encode() and to_bytes("key", b"\xff") == b"\xff"
    with pytest.raises(MalformedRequestError, match="key must be bytes or str, not int"):
        to_bytes("key", 1)
    assert key_range("a", b"", prefix=True) == (b"a", b"b")
    assert key_range("", b"", prefix=True) == (ALL_KEYS, ALL_KEYS)
    assert parse_endpoints("h:1,[::1]:2") == ["h:1", "[::1]:2"]
    with pytest.raises(ValueError, match="port"):
        parse_endpoints(["h:99999"])
