"""Helpers for tests on real node processes (the ``make_cluster`` fixture is in
tests/conftest.py): polling with a deadline, and catch-up checks."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from quorumkv.local import LocalCluster


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def caught_up(cluster: LocalCluster, node: int) -> bool:
    """Whether ``node`` has applied everything the leader has committed."""
    lead = cluster.leader()
    lst = cluster.nodes[lead].status()
    st = cluster.nodes[node].status()
    return bool(lst and st and st["applied"] >= lst["commit"])
