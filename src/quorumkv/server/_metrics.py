"""``Metrics``: one node's Prometheus instruments, in a registry of its own.

Theory of operation
-------------------
Each node builds one ``Metrics``. It owns a private ``CollectorRegistry`` (never
``prometheus_client``'s global one: a test process may hold several nodes, and each must
export only its own numbers) and, in attributes, every instrument the server updates:

======================  ===========================================  ==================
attribute               exposed as                                   counts / measures
======================  ===========================================  ==================
``proposals``           ``quorumkv_proposals_total``                 entries proposed as leader
``proposals_refused``   ``quorumkv_proposals_refused_total``         backpressure refusals
``applied_entries``     ``quorumkv_applied_entries_total``           entries applied
``reads``               ``quorumkv_reads_total``                     linearizable reads served
``reads_by_role``       ``quorumkv_reads_by_role_total{role}``       the same, by the role of the
                                                                     replica that served them
                                                                     (``READ_ROLES``)
``elections``           ``quorumkv_elections_total``                 campaigns started here
``leader_changes``      ``quorumkv_leader_changes_total``            leader changes seen
``snapshots_sent``      ``quorumkv_snapshots_sent_total``            snapshots sent to peers
``snapshots_received``  ``quorumkv_snapshots_received_total``        snapshots installed from peers
``splits``              ``quorumkv_splits_total``                    range splits applied here
``replica_changes``     ``quorumkv_replica_changes_total``           replica changes led here
``peer_bytes_in``       ``quorumkv_peer_received_bytes_total``       bytes read from peers
``peer_bytes_out``      ``quorumkv_peer_sent_bytes_total``           bytes written to peers
``client_bytes_in``     ``quorumkv_client_received_bytes_total``     bytes read from clients
``client_bytes_out``    ``quorumkv_client_sent_bytes_total``         bytes written to clients
``client_requests``     ``quorumkv_client_requests_total{op}``       requests, by ``CLIENT_OPS``
``client_errors``       ``quorumkv_client_errors_total{code}``       error answers, by
                                                                     ``CLIENT_ERROR_CODES``
``gauge_errors``        ``quorumkv_gauge_callback_errors_total``     failed gauge callbacks
``fsync_seconds``       ``quorumkv_wal_fsync_seconds``               one WAL fsync
``apply_seconds``       ``quorumkv_apply_seconds``                   one apply batch
``commit_seconds``      ``quorumkv_commit_seconds``                  propose -> applied (leader,
                                                                     oldest write a batch)
``ready_seconds``       ``quorumkv_ready_seconds``                   one full Ready cycle
``batch_entries``       ``quorumkv_apply_batch_entries``             entries per apply batch
``gc_seconds``          ``quorumkv_gc_seconds``                      one pass of Python's cyclic
                                                                     garbage collector
======================  ===========================================  ==================

The labelled counters are read-only mappings from label value to a pre-bound child
(``metrics.client_requests["write"].inc()``), created up front, so every series exports
0 from the first scrape and the hot path does no label lookup. An unknown label value is
a ``KeyError``: a typo must not mint a new series.

Gauges are not stored. The ``gauges`` callback given to the constructor is called at
scrape time and each ``name: value`` it returns is exported as ``quorumkv_<name>``; the
server is expected to return those of ``GAUGE_HELP`` (``term``, ``is_leader``,
``commit_index``, ``applied_index``, ``last_index``, ``pending_proposals``, ``members``,
``db_bytes``), and any other well-formed name is exported with a generic help text. If the
callback raises, the scrape goes on without gauges; a name that is malformed or clashes
with an instrument above, or a value that is not a number, is skipped. Each such failure
adds one to ``gauge_errors`` and is logged.

The callback runs in the thread that calls ``render`` (the server's event loop), so it
must be quick and read only state that thread may read. Instruments are thread-safe.

This module owns names, help texts, buckets and the exposition. It must never touch the
global registry, never block or do I/O, and never raise out of ``render`` because of what
the gauge callback did.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

log = logging.getLogger("quorumkv.server.metrics")

PREFIX = "quorumkv_"
"""Every metric this module exports starts with it."""

CLIENT_OPS = ("write", "read", "status", "member", "transfer", "ranges", "split", "meta")
"""Values of the ``op`` label of ``client_requests``."""

CLIENT_ERROR_CODES = (
    "not_leader",
    "unavailable",
    "timeout",
    "too_many",
    "shutting_down",
    "bad_request",
    "membership",
    "wrong_range",
)
"""Values of the ``code`` label of ``client_errors``."""

READ_ROLES = ("leader", "follower", "learner")
"""Values of the ``role`` label of ``reads_by_role``: what the replica that answered a
linearizable read was when it served it (a follower or a learner asked the leader for
the read index, then waited until it had applied up to it)."""

LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Upper bounds (seconds) of the latency histograms: 50 µs to 5 s, 1-2.5-5 per decade."""

BATCH_BUCKETS = tuple(float(1 << i) for i in range(13))
"""Upper bounds of ``batch_entries``: 1, 2, 4, ... 4096 entries."""

GAUGE_HELP: Mapping[str, str] = MappingProxyType(
    {
        "term": "Current Raft term of this node.",
        "is_leader": "1 if this node is the leader, else 0.",
        "commit_index": "Highest log index known to be committed.",
        "applied_index": "Highest log index applied to the state machine.",
        "last_index": "Index of the last entry in this node's log.",
        "pending_proposals": "Proposals accepted here and not yet applied.",
        "members": "Voting members in the current configuration.",
        "db_bytes": "Size of the state machine's database, in bytes.",
        "ranges": "Ranges of keys this node holds a replica of (sharded).",
        "ranges_led": "Ranges of keys this node leads (sharded).",
        "ranges_quiet": "Ranges of keys quiesced here: not ticked until woken (sharded).",
    }
)
"""The gauges the server reports (names without ``PREFIX``) and their help texts."""

_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SERIES_SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count")

GaugeSource = Callable[[], Mapping[str, float]]
"""Returns the gauges' current values, keyed by name without ``PREFIX``."""


class Metrics:
    """The instruments of one node (see the module docstring for the full table).

    ``gauges`` is called once per ``render``; it must not block. Instruments are plain
    ``prometheus_client`` objects: call ``inc(n)`` / ``observe(x)`` once per batch.
    """

    def __init__(self, gauges: GaugeSource) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._names: set[str] = set()
        # Registered first, so a failure it counts shows in the same scrape's counter.
        self._registry.register(_GaugeCollector(gauges, self))

        self.proposals = self._counter("proposals", "Entries proposed by this node as leader.")
        self.proposals_refused = self._counter(
            "proposals_refused", "Proposals refused by backpressure."
        )
        self.applied_entries = self._counter(
            "applied_entries", "Entries applied to the state machine."
        )
        self.reads = self._counter("reads", "Linearizable reads served.")
        self.reads_by_role = self._labelled(
            "reads_by_role",
            "Linearizable reads served, by the role of the replica that served them.",
            "role",
            READ_ROLES,
        )
        self.elections = self._counter("elections", "Campaigns this node started.")
        self.leader_changes = self._counter(
            "leader_changes", "Times this node saw the leader change."
        )
        self.snapshots_sent = self._counter("snapshots_sent", "Snapshots sent to peers.")
        self.snapshots_received = self._counter(
            "snapshots_received", "Snapshots received from peers and installed."
        )
        self.splits = self._counter("splits", "Range splits this node applied (sharded).")
        self.replica_changes = self._counter(
            "replica_changes",
            "Replica changes (add a learner, promote, remove) this node made as a group's "
            "leader (sharded).",
        )
        self.peer_bytes_in = self._counter("peer_received_bytes", "Bytes read from peers.")
        self.peer_bytes_out = self._counter("peer_sent_bytes", "Bytes written to peers.")
        self.client_bytes_in = self._counter("client_received_bytes", "Bytes read from clients.")
        self.client_bytes_out = self._counter("client_sent_bytes", "Bytes written to clients.")
        self.client_requests = self._labelled(
            "client_requests", "Client requests received, by operation.", "op", CLIENT_OPS
        )
        self.client_errors = self._labelled(
            "client_errors", "Error answers sent to clients, by code.", "code", CLIENT_ERROR_CODES
        )
        self.gauge_errors = self._counter(
            "gauge_callback_errors", "Gauge callback failures and skipped gauge values."
        )

        self.fsync_seconds = self._histogram(
            "wal_fsync_seconds", "Duration of one WAL fsync.", LATENCY_BUCKETS
        )
        self.apply_seconds = self._histogram(
            "apply_seconds", "Duration of one apply batch.", LATENCY_BUCKETS
        )
        self.commit_seconds = self._histogram(
            "commit_seconds",
            "From proposal to applied on the leader, for the oldest write of each batch.",
            LATENCY_BUCKETS,
        )
        self.ready_seconds = self._histogram(
            "ready_seconds", "Duration of one full Ready cycle.", LATENCY_BUCKETS
        )
        self.batch_entries = self._histogram(
            "apply_batch_entries", "Entries per apply batch.", BATCH_BUCKETS
        )
        self.gc_seconds = self._histogram(
            "gc_seconds", "Duration of one pass of the cyclic garbage collector.", LATENCY_BUCKETS
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text of every metric, and its HTTP content type."""
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    def owns(self, name: str) -> bool:
        """Whether ``name`` (a full series name) belongs to one of the instruments."""
        return name in self._names

    def _reserve(self, name: str) -> str:
        full = PREFIX + name
        self._names.update(full + suffix for suffix in _SERIES_SUFFIXES)
        return full

    def _counter(self, name: str, doc: str) -> Counter:
        return Counter(self._reserve(name), doc, registry=self._registry)

    def _labelled(
        self, name: str, doc: str, label: str, values: tuple[str, ...]
    ) -> Mapping[str, Counter]:
        parent = Counter(self._reserve(name), doc, [label], registry=self._registry)
        return MappingProxyType({value: parent.labels(value) for value in values})

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(self._reserve(name), doc, buckets=buckets, registry=self._registry)


class _GaugeCollector:
    """Turns the gauge callback's mapping into gauge families, at scrape time."""

    def __init__(self, source: GaugeSource, metrics: Metrics) -> None:
        self._source = source
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # The names are only known at scrape time; describing none keeps the registry
        # from calling the callback at registration, before the node is up.
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            values = dict(self._source())
        except Exception:
            log.exception("gauge callback failed; scrape goes on without gauges")
            self._metrics.gauge_errors.inc()
            return
        for key, raw in sorted(values.items(), key=lambda kv: str(kv[0])):
            family = self._family(key, raw)
            if family is None:
                self._metrics.gauge_errors.inc()
            else:
                yield family

    def _family(self, key: object, raw: object) -> GaugeMetricFamily | None:
        if not isinstance(key, str) or _NAME_RE.fullmatch(key) is None:
            log.warning("gauge callback gave a malformed name %r; skipped", key)
            return None
        name = PREFIX + key
        if self._metrics.owns(name):
            log.warning("gauge %s clashes with an instrument; skipped", name)
            return None
        if not isinstance(raw, int | float):
            log.warning("gauge %s has a non-numeric value %r; skipped", name, raw)
            return None
        try:
            value = float(raw)
        except OverflowError:
            log.warning("gauge %s is too large for a float; skipped", name)
            return None
        return GaugeMetricFamily(name, GAUGE_HELP.get(key, f"quorumkv gauge {key}."), value)
