"""``qkv`` against real node processes: as a subprocess, and in-process for the rest.

Processes are stopped by pid: the cluster by ``LocalCluster.stop`` (the fixture), a
``qkv up`` by SIGTERM to the pid this test spawned (it then stops its own nodes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorumkv.cli import main
from quorumkv.local import LocalCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One 3-node cluster for this module's tests, stopped (by pid) after them."""
    c = LocalCluster(3)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def qkv(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quorumkv.cli", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_put_get_status_through_the_real_cli(cluster: LocalCluster) -> None:
    eps = ",".join(cluster.endpoints)
    put = qkv("put", "hello", "world", "--endpoints", eps)
    assert (put.returncode, put.stdout, put.stderr) == (0, "OK\n", "")
    got = qkv("get", "hello", "--endpoints", eps)
    assert (got.returncode, got.stdout) == (0, "world\n")
    missing = qkv("get", "no-such-key", "--endpoints", eps)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "qkv: error: key 'no-such-key' not found\n"

    status = qkv("status", "--endpoints", eps)
    assert status.returncode == 0, status.stderr
    header, *rows = status.stdout.splitlines()
    assert header.split() == ["ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED",
                              "LAG", "HEALTH"]  # fmt: skip
    assert [r.split()[1] for r in rows] == cluster.endpoints
    assert sorted(r.split()[2] for r in rows) == ["follower", "follower", "leader"]


def run(capsys: pytest.CaptureFixture[str], cluster: LocalCluster, *argv: str) -> list[str]:
    rc = main([*argv, "--endpoints", ",".join(cluster.endpoints)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out.splitlines()


def test_range_del_txn_member_and_leader(
    capsys: pytest.CaptureFixture[str], cluster: LocalCluster
) -> None:
    for k, v in [("app/a", "1"), ("app/b", "2"), ("app/c", "3"), ("other", "x")]:
        run(capsys, cluster, "put", k, v)
    assert run(capsys, cluster, "range", "app/", "--prefix") == ["app/a", "1", "app/b", "2",
                                                                  "app/c", "3"]  # fmt: skip
    assert run(capsys, cluster, "range", "app/a", "app/c", "--keys-only") == ["app/a", "app/b"]
    assert run(capsys, cluster, "range", "app/", "--prefix", "--count") == ["3"]
    assert run(capsys, cluster, "del", "app/", "--prefix") == ["3"]

    txn = ["txn", "--if", "value(other) = x", "--then", "put other y", "--then", "get other",
           "--else", "get other"]  # fmt: skip
    assert run(capsys, cluster, *txn) == ["SUCCESS", "OK", "other", "y"]
    assert run(capsys, cluster, *txn) == ["FAILURE", "other", "y"]

    assert run(capsys, cluster, "member", "list")[1:] == [
        f"{i}   {ep}  voter" for i, ep in enumerate(cluster.endpoints, 1)
    ]
    old = cluster.leader()
    run(capsys, cluster, "leader", "transfer")
    deadline = time.monotonic() + 15
    while cluster.leader() == old:
        assert time.monotonic() < deadline, "leadership did not move"
        time.sleep(0.05)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test spawns; any still running at the end get SIGKILL, by pid."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def up(data_dir: Path, spawned: list[subprocess.Popen[str]], log: Path, *extra: str) -> list[str]:
    """Start ``qkv up`` and wait for its banner; the client endpoints it printed."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quorumkv.cli", "up", "--data-dir", str(data_dir),
             "--base-port", "0", *extra],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    spawned.append(proc)
    deadline = time.monotonic() + 60
    while "Ctrl-C stops every node" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    line = next(x for x in log.read_text().splitlines() if x.startswith("client endpoints: "))
    return line.removeprefix("client endpoints: ").split(",")


def stop_up(proc: subprocess.Popen[str], log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    return log.read_text()


def test_qkv_up_runs_until_sigterm_and_comes_back_with_its_data(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "data"
    eps = up(data, spawned, tmp_path / "up1.log")
    assert "started a new 3-node cluster" in (tmp_path / "up1.log").read_text()
    assert qkv("put", "kept", "across restarts", "--endpoints", ",".join(eps)).returncode == 0
    text = stop_up(spawned[0], tmp_path / "up1.log")
    assert "qkv: stopped (node 1 exit 0, node 2 exit 0, node 3 exit 0); data kept in" in text

    again = up(data, spawned, tmp_path / "up2.log")
    assert again == eps  # the same ports, from cluster.json
    assert "brought back the 3-node cluster" in (tmp_path / "up2.log").read_text()
    got = qkv("get", "kept", "--endpoints", ",".join(again))
    assert (got.returncode, got.stdout) == (0, "across restarts\n")
    stop_up(spawned[1], tmp_path / "up2.log")
    assert sorted(os.listdir(data)) == [".lock", "cluster.json", "node-1", "node-1.log",
                                        "node-2", "node-2.log", "node-3", "node-3.log"]  # fmt: skip


def test_ranges_split_and_status_on_a_sharded_cluster() -> None:
    c = LocalCluster(3, sharded=True)
    try:
        c.start()
        eps = ",".join(c.endpoints)
        for key in ("apple", "kiwi", "pear"):
            assert qkv("put", key, "1", "--endpoints", eps).returncode == 0
        split = qkv("split", "kiwi", "--endpoints", eps)
        assert split.returncode == 0, split.stderr
        head, left, right = split.stdout.splitlines()
        assert head.split()[:5] == ["RANGE", "START", "END", "VERSION", "REPLICAS"]
        assert left.split()[1:4] == ["(start)", "kiwi", "2"]
        assert right.split()[1:4] == ["kiwi", "(end)", "2"]
        again = qkv("split", "kiwi", "--endpoints", eps)
        assert again.returncode == 1 and "cannot split" in again.stderr
        ranges = qkv("ranges", "--endpoints", eps)
        assert ranges.returncode == 0, ranges.stderr
        rows = [r.split() for r in ranges.stdout.splitlines()[1:]]
        assert [r[1:3] for r in rows] == [["(start)", "kiwi"], ["kiwi", "(end)"]]
        status = qkv("status", "--endpoints", eps)
        assert status.returncode == 0, status.stderr
        assert "NODE  RANGES  LEADS" in status.stdout
        unsharded = qkv("ranges", "--endpoints", ",".join(c.endpoints[:1]))
        assert unsharded.returncode == 0  # still the sharded cluster: one endpoint will do
    finally:
        c.stop()


def test_qkv_up_sharded_founds_a_sharded_cluster_that_comes_back_sharded(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "data"
    eps = ",".join(up(data, spawned, tmp_path / "up1.log", "--sharded", "--nodes", "1"))
    assert "qkv split hello" in (tmp_path / "up1.log").read_text()
    assert qkv("put", "kept", "yes", "--endpoints", eps).returncode == 0
    split = qkv("split", "k", "--endpoints", eps)
    assert split.returncode == 0, split.stderr
    stop_up(spawned[0], tmp_path / "up1.log")
    again = ",".join(up(data, spawned, tmp_path / "up2.log"))  # no --sharded: from cluster.json
    assert "qkv split hello" in (tmp_path / "up2.log").read_text()
    ranges = qkv("ranges", "--endpoints", again)
    assert ranges.returncode == 0, ranges.stderr
    assert [r.split()[1:3] for r in ranges.stdout.splitlines()[1:]] == [
        ["(start)", "k"], ["k", "(end)"]]  # fmt: skip
    got = qkv("get", "kept", "--endpoints", again)
    assert (got.returncode, got.stdout) == (0, "yes\n")
    stop_up(spawned[1], tmp_path / "up2.log")
