"""How ``qkv`` shows things: tables, the cluster status, key-values, txn answers.

Pure functions from data to lines of text; they never print and never talk to a node,
so every rendering is tested without a cluster.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from quorumkv.cli._common import show
from quorumkv.kv import (
    DeleteRangeResponse,
    KeyValue,
    OpResponse,
    PutResponse,
    RangeResponse,
    TxnResponse,
)

STATUS_HEADERS = ("ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG", "HEALTH")
"""``LAG``: how far the node's applied index is behind the leader's commit index."""


RANGES_HEADERS = (
    "RANGE", "START", "END", "VERSION", "REPLICAS", "LEADER", "KEYS", "SIZE", "APPLIED"
)  # fmt: skip
"""``qkv ranges``: the directory's ranges, with what their leaders report (``-`` where
the leader did not answer, or its status does not say)."""
RANGES_PER_NODE_HEADERS = ("NODE", "RANGES", "LEADS", "LEADER OF")
"""``qkv status`` on a sharded cluster: per node, the ranges of keys it holds a replica
of, how many it leads, and which."""
META_NOTE = (
    "This cluster is sharded: ROLE, TERM, LEADER, COMMIT and APPLIED above are the meta "
    "range's (group 1). Each range of keys has a leader of its own ('qkv ranges'):"
)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last is not padded."""
    cells = [[str(c) for c in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + row[-1:]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def status_rows(
    statuses: Sequence[Mapping[str, Any]], health: Mapping[int, tuple[bool, str]] | None = None
) -> list[list[object]]:
    """One row per member for ``STATUS_HEADERS``.

    ``statuses`` are ``Client.cluster_status()`` dicts (an unreachable member is
    ``{"id", "addr", "error"}``); ``health`` maps a node id to what its ``/health``
    said. The lag is measured against the commit index of the leader of the highest
    term seen; a non-voting member shows as ``learner``.
    """
    health = health or {}
    leaders = [s for s in statuses if "error" not in s and s.get("role") == "leader"]
    leader = max(leaders, key=lambda s: int(s.get("term", 0)), default=None)
    leader_commit = None if leader is None else int(leader.get("commit", 0))
    learners = _learners(statuses)
    rows: list[list[object]] = []
    for s in sorted(statuses, key=lambda s: int(s.get("id", 0))):
        node, addr = int(s.get("id", 0)), s.get("addr") or s.get("listen")
        if "error" in s:
            rows.append([node, addr, "unreachable", *[None] * 5, s["error"]])
            continue
        role = str(s.get("role", "?"))
        if node in learners and role == "follower":
            role = "learner"
        applied = int(s.get("applied", 0))
        lag = None if leader_commit is None else max(0, leader_commit - applied)
        ok, reason = health.get(node, (None, ""))
        if ok is None:
            verdict = "-"
        else:
            verdict = "healthy" if ok else f"unhealthy: {reason}"
        rows.append(
            [
                node,
                addr,
                role,
                s.get("term"),
                s.get("leader") or "none",
                s.get("commit"),
                applied,
                lag,
                verdict,
            ]
        )
    return rows


def _learners(statuses: Sequence[Mapping[str, Any]]) -> set[int]:
    """Non-voting member ids, by the members list of the first status that has one
    (the leader's, if it answered)."""
    ordered = sorted(statuses, key=lambda s: s.get("role") != "leader")
    for s in ordered:
        members = s.get("members")
        if isinstance(members, list) and members:
            return {int(m["id"]) for m in members if isinstance(m, dict) and not m.get("voter")}
    return set()


def members_table(members: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [m.get("id"), m.get("addr"), "voter" if m.get("voter", True) else "learner"]
        for m in sorted(members, key=lambda m: int(m.get("id", 0)))
    ]
    return table(("ID", "ADDRESS", "ROLE"), rows)


def kv_lines(kvs: Iterable[KeyValue], *, keys_only: bool = False) -> list[str]:
    """etcdctl's layout: a key line, then its value line (unless ``keys_only``)."""
    lines: list[str] = []
    for kv in kvs:
        lines.append(show(kv.key))
        if not keys_only:
            lines.append(show(kv.value))
    return lines


def kv_json(kv: KeyValue) -> dict[str, Any]:
    """A key-value as JSON: ``key`` and ``value`` as text when they are UTF-8, else
    ``key_base64`` / ``value_base64`` instead; then the revisions, version and lease."""
    doc: dict[str, Any] = {}
    for name, data in (("key", kv.key), ("value", kv.value)):
        try:
            doc[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            doc[f"{name}_base64"] = base64.b64encode(data).decode("ascii")
    doc.update(
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )
    return doc


def txn_lines(resp: TxnResponse) -> list[str]:
    """``SUCCESS`` or ``FAILURE`` (which branch ran), then each operation's answer:
    ``OK`` for a put, the key and value lines of a get, the count a del deleted."""
    lines = ["SUCCESS" if resp.succeeded else "FAILURE"]
    for r in resp.responses:
        lines.extend(op_lines(r))
    return lines


def op_lines(resp: OpResponse) -> list[str]:
    if isinstance(resp, PutResponse):
        return ["OK"]
    if isinstance(resp, RangeResponse):
        return kv_lines(resp.kvs)
    if isinstance(resp, DeleteRangeResponse):
        return [str(resp.deleted)]
    return txn_lines(resp)


def _key_text(key: bytes, end: bool = False) -> str:
    if not key:
        return "(end)" if end else "(start)"
    return show(key)


def range_rows(descs: Sequence[Any], led: Sequence[Mapping[str, Any]]) -> list[list[object]]:
    """One row per range (``shard.RangeDescriptor``) for ``RANGES_HEADERS``; ``led`` is,
    per range, what its leader's status says of it (``leader``, ``keys``, ``bytes``,
    ``applied``); without it the leader is the directory's hint."""
    rows: list[list[object]] = []
    for d, info in zip(descs, led, strict=True):
        replicas = ",".join(f"{r.node_id}{'(learner)' if r.learner else ''}" for r in d.replicas)
        leader = info.get("leader") or (int(d.leader) or None)
        size = info.get("bytes")
        rows.append([d.range_id, _key_text(d.start), _key_text(d.end, True), d.epoch.version,
                     replicas, leader, info.get("keys"), None if size is None else _size(size),
                     info.get("applied")])  # fmt: skip
    return rows


def _size(n: int) -> str:
    """Bytes for a person: ``512 B``, ``1.5 KiB``, ``3.0 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def range_json(desc: Any) -> dict[str, Any]:
    """A range descriptor as JSON (keys as text, or base64 when not UTF-8)."""
    return {
        "range": desc.range_id,
        "start": show(desc.start),
        "end": show(desc.end),
        "conf_ver": desc.epoch.conf_ver,
        "version": desc.epoch.version,
        "replicas": [{"node": r.node_id, "learner": r.learner} for r in desc.replicas],
        "leader_hint": int(desc.leader) or None,
    }


def leaders_report(
    descs: Sequence[Any], statuses: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per range: what the node that leads it says of it in its status (``leader``,
    ``keys``, ``bytes``, ``applied``); ``{}`` when no reachable node leads it."""
    by_id: dict[int, dict[str, Any]] = {}
    for st in statuses:
        if "error" in st:
            continue
        for r in st.get("ranges") or ():
            if isinstance(r, Mapping) and r.get("role") == "leader" and "id" in r:
                info = {name: r.get(name) for name in ("keys", "bytes", "applied")}
                by_id[int(r["id"])] = {"leader": st.get("id"), **info}
    return [by_id.get(int(d.range_id), {}) for d in descs]


def ranges_per_node_rows(statuses: Sequence[Mapping[str, Any]]) -> list[list[object]]:
    """Per node of a sharded cluster, in id order, for ``RANGES_PER_NODE_HEADERS``: the
    ranges of keys it holds, how many it leads and their ids (an unreachable node: its
    error)."""
    rows: list[list[object]] = []
    for st in sorted(statuses, key=lambda s: int(s.get("id", 0))):
        if "error" in st:
            rows.append([st.get("id"), None, None, f"unreachable: {st['error']}"])
            continue
        ranges = [r for r in st.get("ranges") or () if isinstance(r, Mapping)]
        led = sorted(int(r["id"]) for r in ranges if r.get("role") == "leader" and "id" in r)
        rows.append([st.get("id"), len(ranges), len(led), ",".join(map(str, led)) or None])
    return rows
