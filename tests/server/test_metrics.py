"""``Metrics``: instruments, labels, buckets and callback gauges, read back by parsing."""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping

import pytest
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from quorumkv.server._main import GC_THRESHOLD, _collector
from quorumkv.server._metrics import (
    BATCH_BUCKETS,
    CLIENT_ERROR_CODES,
    CLIENT_OPS,
    GAUGE_HELP,
    LATENCY_BUCKETS,
    Metrics,
)

COUNTERS = {
    "proposals": "quorumkv_proposals",
    "proposals_refused": "quorumkv_proposals_refused",
    "applied_entries": "quorumkv_applied_entries",
    "reads": "quorumkv_reads",
    "elections": "quorumkv_elections",
    "leader_changes": "quorumkv_leader_changes",
    "snapshots_sent": "quorumkv_snapshots_sent",
    "snapshots_received": "quorumkv_snapshots_received",
    "peer_bytes_in": "quorumkv_peer_received_bytes",
    "peer_bytes_out": "quorumkv_peer_sent_bytes",
    "client_bytes_in": "quorumkv_client_received_bytes",
    "client_bytes_out": "quorumkv_client_sent_bytes",
    "gauge_errors": "quorumkv_gauge_callback_errors",
}
HISTOGRAMS = {
    "fsync_seconds": "quorumkv_wal_fsync_seconds",
    "apply_seconds": "quorumkv_apply_seconds",
    "commit_seconds": "quorumkv_commit_seconds",
    "ready_seconds": "quorumkv_ready_seconds",
    "batch_entries": "quorumkv_apply_batch_entries",
    "gc_seconds": "quorumkv_gc_seconds",
}


def scrape(metrics: Metrics) -> dict[str, Metric]:
    body, content_type = metrics.render()
    assert content_type == CONTENT_TYPE_LATEST
    return {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}


def value(families: Mapping[str, Metric], sample: str, **labels: str) -> float:
    """The value of the one sample named ``sample`` with exactly ``labels``."""
    found = [
        s.value
        for f in families.values()
        for s in f.samples
        if s.name == sample and s.labels == labels
    ]
    assert len(found) == 1, f"{sample}{labels}: {found}"
    return found[0]


def no_gauges() -> dict[str, float]:
    return {}


def test_every_instrument_exists_and_starts_at_zero() -> None:
    metrics = Metrics(no_gauges)
    families = scrape(metrics)
    for attr, name in COUNTERS.items():
        assert isinstance(getattr(metrics, attr), Counter), attr
        assert families[name].type == "counter"
        assert value(families, name + "_total") == 0
    for attr, name in HISTOGRAMS.items():
        assert isinstance(getattr(metrics, attr), Histogram), attr
        assert families[name].type == "histogram"
        assert value(families, name + "_count") == 0
    assert all(name.startswith("quorumkv_") for name in families)


def test_counters_count() -> None:
    metrics = Metrics(no_gauges)
    metrics.proposals.inc(7)
    metrics.proposals.inc()
    metrics.peer_bytes_out.inc(4096)
    families = scrape(metrics)
    assert value(families, "quorumkv_proposals_total") == 8
    assert value(families, "quorumkv_peer_sent_bytes_total") == 4096
    assert value(families, "quorumkv_peer_received_bytes_total") == 0


def test_labelled_counters_are_prebound_for_every_value() -> None:
    metrics = Metrics(no_gauges)
    assert set(metrics.client_requests) == set(CLIENT_OPS)
    assert set(metrics.client_errors) == set(CLIENT_ERROR_CODES)
    metrics.client_requests["write"].inc(3)
    metrics.client_errors["not_leader"].inc()
    families = scrape(metrics)
    for op in CLIENT_OPS:
        want = 3 if op == "write" else 0
        assert value(families, "quorumkv_client_requests_total", op=op) == want
    for code in CLIENT_ERROR_CODES:
        want = 1 if code == "not_leader" else 0
        assert value(families, "quorumkv_client_errors_total", code=code) == want


def test_labelled_counters_refuse_unknown_values() -> None:
    metrics = Metrics(no_gauges)
    with pytest.raises(KeyError):
        metrics.client_requests["wirte"]
    with pytest.raises(TypeError):
        metrics.client_errors["new"] = metrics.proposals  # type: ignore[index]


def test_histograms_bucket_observations() -> None:
    metrics = Metrics(no_gauges)
    for seconds in (0.00004, 0.0003, 0.0003, 7.0):
        metrics.fsync_seconds.observe(seconds)
    metrics.batch_entries.observe(3)
    metrics.batch_entries.observe(5000)
    families = scrape(metrics)

    name = "quorumkv_wal_fsync_seconds"
    assert value(families, name + "_count") == 4
    assert value(families, name + "_sum") == pytest.approx(7.00064)
    assert value(families, name + "_bucket", le="5e-05") == 1
    assert value(families, name + "_bucket", le="0.00025") == 1
    assert value(families, name + "_bucket", le="0.0005") == 3
    assert value(families, name + "_bucket", le="5.0") == 3
    assert value(families, name + "_bucket", le="+Inf") == 4

    name = "quorumkv_apply_batch_entries"
    assert value(families, name + "_bucket", le="2.0") == 0
    assert value(families, name + "_bucket", le="4.0") == 1
    assert value(families, name + "_bucket", le="4096.0") == 1
    assert value(families, name + "_bucket", le="+Inf") == 2


def test_bucket_bounds() -> None:
    metrics = Metrics(no_gauges)
    families = scrape(metrics)

    def bounds(name: str) -> list[float]:
        return [float(s.labels["le"]) for s in families[name].samples if "le" in s.labels]

    assert bounds("quorumkv_commit_seconds") == [*LATENCY_BUCKETS, math.inf]
    assert LATENCY_BUCKETS[0] == 0.00005
    assert LATENCY_BUCKETS[-1] == 5.0
    assert bounds("quorumkv_apply_batch_entries") == [*BATCH_BUCKETS, math.inf]
    assert tuple(float(2**i) for i in range(13)) == BATCH_BUCKETS


def test_gauges_come_from_the_callback_at_scrape_time() -> None:
    state = {"term": 3.0, "is_leader": 1.0}
    calls: list[int] = []

    def gauges() -> dict[str, float]:
        calls.append(1)
        return dict(state)

    metrics = Metrics(gauges)
    assert calls == []  # not at construction: the node may not be up yet
    families = scrape(metrics)
    assert len(calls) == 1
    assert value(families, "quorumkv_term") == 3
    assert families["quorumkv_term"].type == "gauge"
    assert families["quorumkv_term"].documentation == GAUGE_HELP["term"]
    assert value(families, "quorumkv_is_leader") == 1

    state.update(term=4.0, is_leader=0.0, db_bytes=1 << 20, custom_thing=2.5)
    families = scrape(metrics)
    assert value(families, "quorumkv_term") == 4
    assert value(families, "quorumkv_is_leader") == 0
    assert value(families, "quorumkv_db_bytes") == 1 << 20
    assert value(families, "quorumkv_custom_thing") == 2.5
    assert value(families, "quorumkv_gauge_callback_errors_total") == 0


def test_gauge_names_are_documented() -> None:
    assert set(GAUGE_HELP) == {
        "term",
        "is_leader",
        "commit_index",
        "applied_index",
        "last_index",
        "pending_proposals",
        "members",
        "db_bytes",
        "ranges",
        "ranges_led",
        "ranges_quiet",
    }


def test_a_raising_callback_skips_gauges_and_is_counted() -> None:
    fail = [True]

    def gauges() -> dict[str, float]:
        if fail[0]:
            raise RuntimeError("node is shutting down")
        return {"term": 9.0}

    metrics = Metrics(gauges)
    metrics.reads.inc(2)
    families = scrape(metrics)
    assert "quorumkv_term" not in families
    assert value(families, "quorumkv_reads_total") == 2  # the rest is still there
    assert value(families, "quorumkv_gauge_callback_errors_total") == 1

    fail[0] = False
    families = scrape(metrics)
    assert value(families, "quorumkv_term") == 9
    assert value(families, "quorumkv_gauge_callback_errors_total") == 1


def test_bad_gauge_entries_are_skipped_and_counted() -> None:
    def gauges() -> Mapping[str, float]:
        bad: dict[object, object] = {
            "members": 3,
            "bad name": 1.0,  # not a metric name
            "proposals_total": 1.0,  # would clash with a counter's series
            "apply_seconds_bucket": 1.0,  # would clash with a histogram's series
            "last_index": "12",  # not a number
            "commit_index": 10**400,  # too large for a float
            7: 1.0,  # not a string
        }
        return bad  # type: ignore[return-value]

    metrics = Metrics(gauges)
    families = scrape(metrics)
    gauge_names = {n for n, f in families.items() if f.type == "gauge"}
    assert {"quorumkv_members"} <= gauge_names
    assert not {"quorumkv_last_index", "quorumkv_commit_index"} & gauge_names
    assert value(families, "quorumkv_members") == 3
    assert value(families, "quorumkv_proposals_total") == 0
    # The collector runs before the counter is rendered, so this scrape counts them.
    assert value(families, "quorumkv_gauge_callback_errors_total") == 6


def test_nodes_in_one_process_do_not_share_metrics() -> None:
    one, two = Metrics(lambda: {"term": 1.0}), Metrics(lambda: {"term": 2.0})
    one.elections.inc()
    first, second = scrape(one), scrape(two)
    assert value(first, "quorumkv_elections_total") == 1
    assert value(second, "quorumkv_elections_total") == 0
    assert value(first, "quorumkv_term") == 1
    assert value(second, "quorumkv_term") == 2
    assert REGISTRY.get_sample_value("quorumkv_elections_total") is None


def test_a_running_node_times_every_collector_pass_and_restores_the_collector() -> None:
    metrics = Metrics(no_gauges)
    before = (gc.get_threshold(), len(gc.callbacks), gc.get_freeze_count())
    with _collector(metrics):
        assert gc.get_threshold() == GC_THRESHOLD
        assert gc.get_freeze_count() > 0  # what was loaded is out of the collector's sight
        gc.collect()
        gc.collect(0)
    assert (gc.get_threshold(), len(gc.callbacks), gc.get_freeze_count()) == before
    families = scrape(metrics)
    assert value(families, "quorumkv_gc_seconds_count") >= 2
    assert value(families, "quorumkv_gc_seconds_sum") > 0
