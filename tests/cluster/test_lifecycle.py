"""Graceful stop, backpressure and metrics on real node processes."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

from cluster_helpers import wait_for
from prometheus_client.parser import text_string_to_metric_families

from quorumkv.aio import Client as AsyncClient
from quorumkv.local import LocalCluster

MakeCluster = Callable[..., LocalCluster]


def _metrics(cluster: LocalCluster, node: int) -> dict[str, float]:
    url = cluster.nodes[node].http_url + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{label}}}" if label else "")] = s.value
    return out


def test_sigterm_on_the_leader_hands_leadership_over(make_cluster: MakeCluster) -> None:
    c = make_cluster(3)
    with c.client(timeout=20) as cl:
        cl.put("k", "v")
        old = c.leader()
        assert c.terminate(old) == 0  # a graceful stop exits 0
        assert "handed leadership over before stopping" in c.nodes[old].log_path.read_text()
        new = c.leader()
        assert new != old
        cl.put("k", "v2")
        assert cl.get("k").value == b"v2"  # type: ignore[union-attr]


def test_backpressure_refuses_then_the_client_retries(make_cluster: MakeCluster) -> None:
    c = make_cluster(3, extra_args=["--max-pending", "4"])

    async def burst() -> None:
        async with AsyncClient(c.endpoints, timeout=60) as cl:
            await asyncio.gather(*(cl.put(f"k{i}", "v") for i in range(400)))
            got = await cl.range("k", prefix=True, count_only=True)
            assert got.count == 400

    asyncio.run(burst())
    m = _metrics(c, c.leader())
    assert m["quorumkv_proposals_refused_total"] > 0, "no write was ever refused"
    assert m["quorumkv_client_errors_total{code=too_many}"] > 0
    assert m["quorumkv_is_leader"] == 1.0
    assert m["quorumkv_applied_entries_total"] >= 400
    assert m["quorumkv_wal_fsync_seconds_count"] > 0
    wait_for("every node to apply everything", lambda: all(
        (st := c.nodes[i].status()) is not None and st["applied"] == st["commit"]
        for i in c.nodes
    ))  # fmt: skip


def test_the_asyncio_client_runs_on_uvloop(make_cluster: MakeCluster) -> None:
    # Regression: the client asserted an asyncio.Transport, which uvloop's is not, and
    # every call failed with "no connection" (found by the benchmark).
    import uvloop

    c = make_cluster(3)

    async def body() -> bytes:
        async with AsyncClient(c.endpoints, timeout=20) as cl:
            await cl.put("k", "v")
            kv = await cl.get("k")
            assert kv is not None
            return kv.value

    assert uvloop.run(body()) == b"v"
