"""Partitions on real processes: one network namespace per node, blackhole routes.

These need root (CI runs as root). Without it they FAIL, saying so: a partition test
that skips silently would let a broken harness pass. Every namespace, link, route and
process they make is removed at the end, and the tests check that nothing is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import mounts_under, namespaces

from quorumkv.torture import FaultKind, Netns, TortureConfig, TortureError, make_plan, run_torture
from quorumkv.torture._network import leftovers
from quorumkv.torture._partition import isolate, one_way

PORT = 9000
LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)
PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()\n"
    "except OSError:\n"
    "    sys.exit(1)\n"
)


@pytest.fixture
def net() -> Iterator[Netns]:
    n = Netns()
    try:
        n.open()  # TortureError (not root): the test fails with that message
        yield n
    finally:
        n.close()
    assert not leftovers(n.run_id)


def _connects(net: Netns, src: int | None, dst: int) -> bool:
    """Whether a TCP connection from node ``src``'s namespace (None: the root one)
    to node ``dst``'s listener is established."""
    prefix = [] if src is None else net.prefix(src)
    cmd = [*prefix, sys.executable, "-c", PROBE, net.ip_of(dst), str(PORT)]
    return subprocess.run(cmd, check=False, timeout=10).returncode == 0


def _routed(net: Netns, src: int, dst: int) -> bool:
    """Whether node ``src``'s namespace routes packets for ``dst`` to the bridge (a
    blackholed destination gets "Invalid argument" from ``ip route get``)."""
    out = subprocess.run(
        ["ip", "-n", net.namespace(src), "route", "get", net.ip_of(dst)],
        capture_output=True,
        text=True,
        check=False,
    )
    text = out.stdout + out.stderr
    assert "dev eth0" in text or "Invalid argument" in text, text
    return "dev eth0" in text


def test_routes_cut_exactly_the_blocked_directions(net: Netns) -> None:
    nodes = [1, 2, 3]
    listeners = []
    try:
        for i in nodes:
            net.add_node(i)
            p = subprocess.Popen(
                [*net.prefix(i), sys.executable, "-c", LISTEN, net.ip_of(i), str(PORT)],
                stdout=subprocess.PIPE,
            )
            listeners.append(p)
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        everyone = [(a, b) for a in nodes for b in nodes if a != b]
        assert all(_connects(net, a, b) for a, b in everyone)

        net.apply(isolate(2, nodes))
        assert not _connects(net, 2, 1) and not _connects(net, 1, 2)
        assert not _connects(net, 3, 2) and not _connects(net, 2, 3)
        assert _connects(net, 1, 3) and _connects(net, 3, 1)
        assert _connects(net, None, 2)  # the load generator still reaches every node
        net.heal()
        assert all(_connects(net, a, b) for a, b in everyone)

        net.apply(one_way(3, nodes, outgoing=True))
        assert net.blocked() == {(3, 1), (3, 2)}
        assert not _routed(net, 3, 1) and not _routed(net, 3, 2)
        assert _routed(net, 1, 3) and _routed(net, 2, 3)  # what 3 hears still gets there
        assert not _connects(net, 3, 1)
        net.heal()
        assert _routed(net, 3, 1) and _connects(net, 3, 1)
    finally:
        for p in listeners:
            p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()


def test_without_root_a_namespace_run_fails_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(TortureError, match=r"creating network namespaces \(--netns\) needs root"):
        Netns().open()


SEED = 2
KINDS = (
    FaultKind.ISOLATE,
    FaultKind.SPLIT,
    FaultKind.BRIDGE,
    FaultKind.ONE_WAY,
    FaultKind.KILL_LEADER,
    FaultKind.MEMBER,
    FaultKind.TRANSFER,
)


def test_partitions_on_three_nodes(tmp_path: Path) -> None:
    planned = {f.kind for f in make_plan(SEED, 30.0, KINDS)}
    assert planned >= {FaultKind.ISOLATE, FaultKind.SPLIT, FaultKind.BRIDGE, FaultKind.ONE_WAY}
    before = namespaces()
    out = tmp_path / "run"
    lines: list[str] = []
    summary = run_torture(
        TortureConfig(
            out=out,
            nodes=3,
            duration=30.0,
            seed=SEED,
            netns=True,
            faults=KINDS,
            recovery_timeout=30.0,
        ),
        echo=lines.append,
    )
    assert summary.passed, "\n".join(lines[-80:])
    assert summary.meta["network"] == "netns"
    for kind in ("isolate", "split", "bridge", "one-way"):
        assert summary.faults.get(kind, 0) >= 1, summary.faults
        assert kind in summary.windows
    assert summary.ops_checked > 1000
    assert namespaces() <= before, "a namespace of the run is left"
    assert not mounts_under(str(tmp_path))


SHARDED_SEED = 8
SHARDED_KINDS = (
    FaultKind.ISOLATE,
    FaultKind.SPLIT,
    FaultKind.BRIDGE,
    FaultKind.ONE_WAY,
    FaultKind.KILL_LEADER,
    FaultKind.TRANSFER,
    FaultKind.RANGE_SPLIT,
)


def test_partitions_on_a_sharded_cluster(tmp_path: Path) -> None:
    # The partitions' victim is, half the time, the leader of the meta range or of a
    # range holding torture keys; forced splits and range leader transfers happen
    # during them.
    planned = {f.kind for f in make_plan(SHARDED_SEED, 25.0, SHARDED_KINDS)}
    assert planned >= set(SHARDED_KINDS) - {FaultKind.KILL_LEADER}
    before = namespaces()
    lines: list[str] = []
    summary = run_torture(
        TortureConfig(
            out=tmp_path / "run",
            nodes=3,
            duration=25.0,
            seed=SHARDED_SEED,
            netns=True,
            faults=SHARDED_KINDS,
            recovery_timeout=30.0,
            sharded=True,
        ),
        echo=lines.append,
    )
    assert summary.passed, "\n".join(lines[-80:])
    assert summary.meta["network"] == "netns" and summary.meta["sharded"] is True
    for kind in ("isolate", "split", "bridge", "one-way", "range-split", "transfer"):
        assert summary.faults.get(kind, 0) >= 1, summary.faults
    assert any("torture keys lie in" in h for h in summary.health), summary.health
    assert namespaces() <= before, "a namespace of the run is left"
