"""Which handshakes a node takes: peers only of its own protocol version (replicas of
two versions could judge one log entry differently), clients of any version whose
commands it reads."""

from __future__ import annotations

import pytest

from quorumkv.net import KIND_CLIENT, KIND_PEER, KIND_SNAP, MAGIC, VERSION, check_hello, peer_hello


def test_a_client_of_the_previous_version_is_taken() -> None:
    for version in (1, VERSION):
        assert check_hello({"magic": MAGIC, "version": version, "kind": KIND_CLIENT}, 7) == (
            KIND_CLIENT,
            "",
        )


@pytest.mark.parametrize("kind", [KIND_PEER, KIND_SNAP])
def test_a_peer_must_speak_this_very_version(kind: str) -> None:
    hello = peer_hello(kind, 7, 2, "127.0.0.1:2")
    assert check_hello(hello, 7) == (kind, "")
    for version in (1, VERSION + 1, True, "2"):
        kind_seen, why = check_hello({**hello, "version": version}, 7)
        assert kind_seen == "" and f"protocol version {version!r} is not supported" in why


def test_a_version_that_only_compares_equal_is_refused() -> None:
    for version in (True, 1.0, 2.0):
        got = check_hello({"magic": MAGIC, "version": version, "kind": KIND_CLIENT}, 7)
        assert got[0] == "", version
