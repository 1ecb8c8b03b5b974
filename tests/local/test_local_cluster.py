"""LocalCluster: refusals that need no running cluster, then a few real 3-process runs.

Every e2e test stops what it started through ``LocalCluster.stop`` (the ``cluster``
fixture's finalizer or a ``with`` block), which signals and reaps the pids it spawned.
Conditions are polled with deadlines, never slept for.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from quorumkv.client import Client
from quorumkv.errors import ServerError
from quorumkv.local import LocalCluster
from quorumkv.local._cluster import _lock_dir
from quorumkv.local._spec import new_spec, write_spec

T = TypeVar("T")


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A started 3-node cluster on free ports in a temporary directory."""
    c = LocalCluster(3)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def eventually(fn: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Poll ``fn`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def read_from(endpoint: str, key: str) -> bytes | None:
    """The value of ``key`` as ``endpoint`` itself has applied it (a serializable read)."""
    with Client([endpoint], timeout=5.0) as c:
        kv = c.get(key, serializable=True)
    return None if kv is None else kv.value


def gone(pid: int) -> bool:
    """Whether no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- no running cluster needed ---------------------------------------------------------


def test_a_directory_that_is_not_a_cluster_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ServerError, match=r"not empty and holds no cluster\.json .*notes\.txt"):
        LocalCluster(3, tmp_path).start()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_explicit_settings_that_disagree_with_the_record_are_refused(tmp_path: Path) -> None:
    write_spec(tmp_path, new_spec("127.0.0.1", 3, 7001, None))
    with pytest.raises(ServerError, match="holds a cluster of 3 nodes, not 5"):
        LocalCluster(5, tmp_path).start()
    with pytest.raises(
        ServerError, match=r"holds a cluster on 127\.0\.0\.1:7001 .*leave the ports"
    ):
        LocalCluster(3, tmp_path, base_port=9001).start()


def test_sharding_is_decided_when_the_cluster_is_founded(tmp_path: Path) -> None:
    for name in ("u", "s"):
        (tmp_path / name).mkdir()
    write_spec(tmp_path / "u", new_spec("127.0.0.1", 3, None, None))
    with pytest.raises(ServerError, match="holds an unsharded cluster: sharding is decided"):
        LocalCluster(data_dir=tmp_path / "u", sharded=True).start()
    write_spec(tmp_path / "s", new_spec("127.0.0.1", 3, None, None, sharded=True))
    with pytest.raises(ServerError, match="holds a sharded cluster"):
        LocalCluster(data_dir=tmp_path / "s", sharded=False).start()
    # Before start a cluster says what was asked; cluster.json is read by start.
    assert not LocalCluster(data_dir=tmp_path / "s").sharded
    assert LocalCluster(sharded=True).sharded


def test_a_directory_in_use_is_refused(tmp_path: Path) -> None:
    with (
        _lock_dir(tmp_path),
        pytest.raises(ServerError, match=f"is in use by pid {os.getpid()}"),
    ):
        LocalCluster(3, tmp_path).start()


def test_a_node_that_cannot_start_fails_start_with_its_own_words() -> None:
    c = LocalCluster(1, extra_args=["--tick-ms", "0"])  # the server refuses this flag
    with pytest.raises(ServerError, match=r"node 1 exited 2: .*--tick-ms must be positive") as e:
        c.start(timeout=30)
    assert "(log: " in str(e.value)
    assert c.nodes == {}  # everything it started was stopped, the temporary dir removed


def test_a_new_cluster_that_never_came_up_leaves_only_its_logs(tmp_path: Path) -> None:
    for _ in range(2):  # and the next start may try again, with other settings
        with pytest.raises(ServerError, match="--tick-ms must be positive"):
            LocalCluster(1, tmp_path, extra_args=["--tick-ms", "0"]).start()
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "node-1.log"]


def test_nothing_is_known_before_start() -> None:
    with pytest.raises(RuntimeError, match="not been started"):
        _ = LocalCluster(3).endpoints


# -- real processes --------------------------------------------------------------------


def test_a_put_through_one_node_reaches_every_node(cluster: LocalCluster) -> None:
    first, *others = cluster.endpoints
    with Client([first]) as c:
        c.put("greeting", "hello")
    for ep in others:
        eventually(functools.partial(read_from, ep, "greeting"), f"the write at {ep}")
    pids = [p.pid for p in cluster.nodes.values()]
    data_dir = cluster.data_dir
    assert all(p is not None for p in pids)
    cluster.stop()
    assert all(gone(pid) for pid in pids if pid is not None)  # stopped and reaped
    assert not data_dir.exists()  # the temporary directory went with it


def test_faults_kill_pause_restart(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    cluster.kill(leader)
    assert not cluster.nodes[leader].alive
    follower = next(i for i in cluster.nodes if i != leader)
    cluster.pause(follower)
    assert cluster.nodes[follower].alive and cluster.nodes[follower].paused
    cluster.resume(follower)
    with cluster.client() as c:
        c.put("after", "failover")  # two of three nodes: still a quorum
    assert cluster.leader() != leader
    cluster.restart(leader)
    assert eventually(lambda: read_from(cluster.nodes[leader].addr, "after"), "catch-up") == (
        b"failover"
    )


def test_a_node_added_then_removed(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        c.put("k", "v")
        new = cluster.add_node()
        members = c.member_add(new, cluster.nodes[new].addr)
    assert new == 4 and {m["id"] for m in members} == {1, 2, 3, 4}
    cluster.wait_healthy([new])
    assert eventually(lambda: read_from(cluster.nodes[new].addr, "k"), "the new node") == b"v"
    cluster.remove_node(new)
    assert sorted(cluster.nodes) == [1, 2, 3]
    with cluster.client() as c:
        assert {m["id"] for m in c.members()} == {1, 2, 3}


def test_a_data_dir_brings_the_same_cluster_back(tmp_path: Path) -> None:
    with LocalCluster(3, tmp_path / "c") as first:
        endpoints, token = first.endpoints, first.token
        with first.client() as c:
            c.put("kept", "yes")
    with LocalCluster(data_dir=tmp_path / "c") as again:
        assert not again.created
        assert (again.endpoints, again.token) == (endpoints, token)
        with again.client() as c:
            kv = c.get("kept")
    assert kv is not None and kv.value == b"yes"


def test_a_sharded_data_dir_comes_back_sharded_without_being_told(tmp_path: Path) -> None:
    with LocalCluster(3, tmp_path / "c", sharded=True) as first:
        assert first.sharded and "--sharded" in first._argv(first.nodes[1])
        with first.client() as c:
            c.put("kept", "yes")
            c.split("k")
    with LocalCluster(data_dir=tmp_path / "c") as again:
        assert again.sharded and "--sharded" in again._argv(again.nodes[1])
        with again.client() as c:
            kv = c.get("kept")
            assert [d.start for d in c.ranges()] == [b"", b"k"]
    assert kv is not None and kv.value == b"yes"
