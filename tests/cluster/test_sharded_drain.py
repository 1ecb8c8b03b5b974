"""Removing a node from a sharded cluster for good, on real processes: removal is refused
while the node holds replicas; draining it (under write load) moves every replica and
leadership away, in the directory and in every range's own Raft configuration, and
demotes its meta range vote (the node keeps reading the directory) while it still runs;
once marked removed it stops by itself, its id is refused from then on, a drain that
could never finish is refused, and nothing acknowledged is lost."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from cluster_helpers import wait_for

from quorumkv.errors import ClientError, MembershipError

KEYS = 300


def _meta_voters(cluster: Any, nodes: list[int]) -> list[int]:
    """The meta range's voters as its leader reports them."""
    for n in nodes:
        st = cluster.nodes[n].status() or {}
        if st.get("role") == "leader":
            return sorted(int(m["id"]) for m in st.get("members", []) if m.get("voter"))
    return []


def _raft_members(cluster: Any, nodes: list[int]) -> dict[int, set[int]]:
    """Each range's voters and learners as its leader's Raft group has them."""
    out: dict[int, set[int]] = {}
    for n in nodes:
        for r in (cluster.nodes[n].status() or {}).get("ranges", []):
            if r["role"] == "leader":
                out[r["id"]] = set(r["voters"]) | set(r["learners"])
    return out


def _on(cl: Any, node: int) -> int:
    return sum(1 for d in cl.ranges() if d.replica(node) is not None)


def test_a_drained_node_is_emptied_removed_and_stops_by_itself(make_cluster: Any) -> None:
    cluster = make_cluster(4, sharded=True, tick_ms=20, election_ticks=10)
    acked: dict[bytes, bytes] = {}
    done = [0]
    halt = threading.Event()

    def writer() -> None:
        with cluster.client(timeout=30) as cl:
            i = 0
            while not halt.is_set():
                key, value = b"user/%04d" % (i % KEYS), b"v%d" % i
                try:
                    cl.put(key, value)
                except ClientError:
                    acked.pop(key, None)  # unknown outcome: nothing to check for it
                else:
                    acked[key] = value
                    done[0] += 1
                i += 1

    everyone, rest = [1, 2, 3, 4], [2, 3, 4]
    with cluster.client(timeout=30) as cl:
        for k in (b"user/0075", b"user/0150", b"user/0225"):
            cl.split(k)
        wait_for("the ranges on node 1", lambda: _on(cl, 1) > 0, timeout=60)
        # Node 1 founded the cluster: it holds a meta vote, which must move too.
        assert 1 in _meta_voters(cluster, everyone)
        with pytest.raises(MembershipError, match="drain it before removing it"):
            cl.set_node_state(1, "removed")
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            wait_for("some writes", lambda: done[0] > 50, timeout=60)
            cl.set_node_state(1, "draining")

            def drained() -> bool:
                groups = _raft_members(cluster, everyone)
                return (
                    _on(cl, 1) == 0
                    and len(groups) == len(cl.ranges())
                    and all(1 not in m for m in groups.values())
                    and _meta_voters(cluster, everyone) == rest
                )

            wait_for("node 1 to be drained", drained, timeout=180)
            assert cluster.nodes[1].alive  # draining never stops the node
            before = done[0]
            wait_for("writes to go on", lambda: done[0] >= before + 50, timeout=60)
            cluster.remove_node(1, timeout=120)  # drained already: mark removed, wait
        finally:
            halt.set()
            thread.join(timeout=60)
        nodes = {n["id"]: n for n in cl.nodes()}
        assert nodes[1]["state"] == "removed" and nodes[1]["replicas"] == 0
        for d in cl.ranges():
            assert sorted(int(v) for v in d.voters()) == rest, d.describe()
        got = cl.range(b"user/", prefix=True)
        found = {kv.key: kv.value for kv in got.kvs}
        lost = [k for k, v in acked.items() if found.get(k) != v]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
        with pytest.raises(MembershipError, match="cannot come back"):
            cl.set_node_state(1, "up")
        # Three nodes left, three replicas a range: a drain could never finish.
        with pytest.raises(MembershipError, match="would never finish"):
            cl.set_node_state(2, "draining")
    # remove_node found it gone (it stopped by itself) and forgot it.
    assert 1 not in cluster.nodes
    log = (cluster.data_dir / "node-1.log").read_text()
    assert "stopping: node 1 was removed from the cluster" in log, log[-2000:]
    assert "Traceback" not in log, log[-3000:]
