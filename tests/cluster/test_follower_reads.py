"""Linearizable reads served by followers on real node processes (``read_from``): the
reads are counted by the followers' ``/metrics`` (not the leader's), and every read at
a follower sees the write acknowledged just before it, on an unsharded and a sharded
cluster."""

from __future__ import annotations

import urllib.request
from typing import Any

from cluster_helpers import wait_for
from prometheus_client.parser import text_string_to_metric_families

from quorumkv.local import LocalCluster

ROLES = ("leader", "follower", "learner")


def _reads_by_role(cluster: LocalCluster, node: int) -> dict[str, float]:
    url = cluster.nodes[node].http_url + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = dict.fromkeys(ROLES, 0.0)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "quorumkv_reads_by_role_total":
                out[s.labels["role"]] = s.value
    return out


def _served(cluster: LocalCluster) -> dict[int, dict[str, float]]:
    return {n: _reads_by_role(cluster, n) for n in cluster.nodes}


def _delta(
    before: dict[int, dict[str, float]], after: dict[int, dict[str, float]], role: str
) -> float:
    return sum(after[n][role] - before[n][role] for n in after)


def _settled(cl: Any) -> bool:
    leaders = [d.leader for d in cl.ranges()]
    return len(leaders) == 2 and all(leaders) and len(set(leaders)) == 2


def test_follower_reads_on_an_unsharded_cluster(make_cluster: Any) -> None:
    cluster = make_cluster(3)
    leader = cluster.leader()
    with (
        cluster.client(timeout=30) as writer,
        cluster.client(timeout=30, read_from="follower") as reader,
    ):
        writer.put("k", "0")
        assert reader.get("k").value == b"0"  # warmed up: voters known, links open
        before = _served(cluster)
        for i in range(1, 21):
            writer.put("k", str(i))  # acknowledged before the read starts
            got = reader.get("k")
            assert got is not None and got.value == str(i).encode(), (i, got)
        after = _served(cluster)
    # Every read was served by a follower: none by the leader.
    assert _delta(before, after, "follower") == 20
    assert after[leader]["leader"] == before[leader]["leader"]
    followers = [n for n in cluster.nodes if n != leader]
    assert all(after[n]["follower"] > before[n]["follower"] for n in followers)


def test_follower_reads_on_a_sharded_cluster(make_cluster: Any) -> None:
    cluster = make_cluster(3, extra_args=["--sharded"], tick_ms=20)
    with (
        cluster.client(timeout=30) as writer,
        cluster.client(timeout=30, read_from="follower") as reader,
    ):
        writer.split(b"m")
        # The placement driver moves one of the two leaders off the node that led the
        # parent; the reader then starts from the directory's settled leader hints.
        wait_for("each range's leader on a node of its own", lambda: _settled(writer))
        keys = (b"a", b"z")  # one in each range
        for key in keys:
            writer.put(key, b"0")
            assert reader.get(key).value == b"0"
        before = _served(cluster)
        for i in range(1, 11):
            for key in keys:
                writer.put(key, b"%d" % i)
                got = reader.get(key)
                assert got is not None and got.value == b"%d" % i, (key, i, got)
        scan = reader.range(b"a", b"\xff")
        assert [(kv.key, kv.value) for kv in scan.kvs] == [(b"a", b"10"), (b"z", b"10")]
        after = _served(cluster)
    assert _delta(before, after, "follower") == 2 * 10 + 2  # the scan read both ranges
    assert _delta(before, after, "leader") == 0
