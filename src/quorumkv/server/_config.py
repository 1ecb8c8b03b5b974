"""A node's configuration: flags, an optional TOML file, and the data directory's identity.

Theory of operation
-------------------
``parse_config(argv)`` reads the flags; ``--config FILE`` names a TOML file whose keys
are the flags' long names (``data-dir`` or ``data_dir``); flags given on the command
line win over the file. Everything is checked here, so a node that starts has a
coherent configuration and a bad one stops with one ``ServerError`` line.

The cluster id is derived, like etcd's, from ``--cluster-token`` and the founding
``--peers`` list, so every founding member computes the same id without talking. It is
written to ``<data-dir>/node.json`` with the node id when the node is first created;
a restart checks both, so a data dir from another cluster or another node is refused
with a message that says which. A node started with ``--join`` takes the id of the
cluster that first contacts it.

This module must never open a socket or start the node.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quorumkv.errors import ServerError
from quorumkv.net import parse_address

NODE_FILE = "node.json"
_FORMAT = 1


@dataclass(frozen=True)
class ServerConfig:
    node_id: int
    data_dir: Path
    listen: str
    peers: dict[int, str]
    http: str = ""
    join: bool = False
    sharded: bool = False
    """Bootstrap a sharded cluster (a meta range and ranges of keys) instead of one group
    holding the whole keyspace. Decided once, when the cluster is founded."""
    split_keys: int = 1_000_000
    """Sharded: split a range once it holds this many keys."""
    split_bytes: int = 64 * 1024 * 1024
    """Sharded: split a range once its records take this many bytes (the planner's
    default, ``shard.PlacementConfig.split_bytes``: 64 MiB)."""
    hot_write_ops: float = 2500.0
    """Sharded: split a range whose write rate stays above this many per second."""
    down_after_s: float = 30.0
    """Sharded: a node silent this long is down; its replicas are made again elsewhere."""
    cluster_token: str = "quorumkv"
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_entries: int = 10_000
    """Compact the log once this many entries were applied since the last snapshot."""
    catchup_entries: int = 5_000
    """Entries kept behind a compaction so a slightly slow follower catches up by log."""
    max_pending: int = 20_000
    """Proposals accepted but not yet applied, beyond which writes get ERR_TOO_MANY."""
    request_timeout_s: float = 5.0
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cluster_id(self) -> int:
        return cluster_id(self.cluster_token, self.peers)

    @property
    def election_timeout_s(self) -> float:
        return self.tick_ms * self.election_ticks / 1000


def cluster_id(token: str, peers: dict[int, str]) -> int:
    """A 63-bit id from the token and the founding members (never 0)."""
    text = token + "|" + ",".join(f"{i}={peers[i]}" for i in sorted(peers))
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
    return value or 1


def parse_peers(text: str) -> dict[int, str]:
    """``"1=host:port,2=host:port"`` → ``{1: "host:port", ...}``."""
    peers: dict[int, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ident, sep, addr = part.partition("=")
        if not sep or not ident.strip().isdigit() or int(ident) <= 0:
            raise ServerError(f"--peers: {part!r} is not ID=HOST:PORT with a positive ID")
        try:
            parse_address(addr.strip())
        except ValueError as e:
            raise ServerError(f"--peers: {e}") from None
        node = int(ident)
        if node in peers:
            raise ServerError(f"--peers: node {node} is listed twice")
        peers[node] = addr.strip()
    return peers


_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gib": 1024**3}  # fmt: skip


def parse_bytes(text: str) -> int:
    """A size in bytes: ``65536``, ``512KiB``, ``64MiB``, ``1GiB`` (K, M, G: the same
    powers of 1024; case ignored). ``argparse.ArgumentTypeError`` if it is none."""
    s = str(text).strip()
    digits = len(s) - len(s.lstrip("0123456789"))
    unit = s[digits:].strip().lower()
    if not digits or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes (such as 65536, 512KiB or 64MiB)"
        )
    return int(s[:digits]) * _UNITS[unit]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qkv server",
        description="Run one quorumkv node. One --listen address serves peers and clients.",
    )
    p.add_argument("--config", help="a TOML file of these options (flags win over it)")
    p.add_argument("--id", type=int, help="this node's id (a positive integer)")
    p.add_argument("--data-dir", help="where this node keeps its log and data")
    p.add_argument("--listen", help="HOST:PORT for peers and clients")
    p.add_argument("--http", help="HOST:PORT for /health, /status and /metrics")
    p.add_argument("--peers", help="the founding members: ID=HOST:PORT,... (this node included)")
    p.add_argument(
        "--join",
        action="store_true",
        default=None,
        help="start empty and wait to be added to a running cluster (qkv member add)",
    )
    p.add_argument(
        "--sharded",
        action="store_true",
        default=None,
        help="found a sharded cluster: a meta range and ranges of keys that split (default: "
        "one Raft group holds every key)",
    )
    p.add_argument("--split-keys", type=int, help="sharded: split ranges at this many keys (1e6)")
    p.add_argument(
        "--split-bytes",
        type=parse_bytes,
        metavar="SIZE",
        help="sharded: split ranges whose records take this many bytes, e.g. 65536, 512KiB, "
        "64MiB (64MiB)",
    )
    p.add_argument(
        "--hot-write-ops",
        type=float,
        help="sharded: split ranges whose writes/s stay above this (2500)",
    )
    p.add_argument(
        "--down-after",
        type=float,
        help="sharded: seconds without a heartbeat after which a node is down and its "
        "replicas are made again on the others (30)",
    )
    p.add_argument("--cluster-token", help="distinguishes clusters with the same peer list")
    p.add_argument("--tick-ms", type=int, help="milliseconds per Raft tick (default 50)")
    p.add_argument("--election-ticks", type=int, help="ticks per election timeout (10)")
    p.add_argument("--snapshot-entries", type=int, help="entries between snapshots (10000)")
    p.add_argument("--catchup-entries", type=int, help="entries kept after a snapshot (5000)")
    p.add_argument("--max-pending", type=int, help="unapplied proposals before refusing (20000)")
    p.add_argument("--request-timeout", type=float, help="seconds a request may wait (5)")
    p.add_argument("--log-level", help="debug, info, warning or error (info)")
    return p


_KEYS = {
    "id": ("node_id", int),
    "data_dir": ("data_dir", str),
    "listen": ("listen", str),
    "http": ("http", str),
    "peers": ("peers", str),
    "join": ("join", bool),
    "sharded": ("sharded", bool),
    "split_keys": ("split_keys", int),
    "split_bytes": ("split_bytes", int),
    "hot_write_ops": ("hot_write_ops", float),
    "down_after": ("down_after_s", float),
    "cluster_token": ("cluster_token", str),
    "tick_ms": ("tick_ms", int),
    "election_ticks": ("election_ticks", int),
    "snapshot_entries": ("snapshot_entries", int),
    "catchup_entries": ("catchup_entries", int),
    "max_pending": ("max_pending", int),
    "request_timeout": ("request_timeout_s", float),
    "log_level": ("log_level", str),
}


def _from_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ServerError(f"--config: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ServerError(f"--config: {path} is not valid TOML: {e}") from None
    out: dict[str, Any] = {}
    for raw_key, value in doc.items():
        key = raw_key.replace("-", "_")
        if key not in _KEYS:
            raise ServerError(f"--config: unknown option {raw_key!r} in {path}")
        _, kind = _KEYS[key]
        if key == "peers" and isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        if kind is float and isinstance(value, int):
            value = float(value)
        if key == "split_bytes" and isinstance(value, str):
            try:
                value = parse_bytes(value)
            except argparse.ArgumentTypeError as e:
                raise ServerError(f"--config: {raw_key}: {e}") from None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ServerError(f"--config: {raw_key} must be {kind.__name__}, not {value!r}")
        out[key] = value
    return out


def parse_config(argv: list[str] | None) -> ServerConfig:
    """Flags (and the TOML file they name) → a checked ``ServerConfig``."""
    ns = build_parser().parse_args(argv)
    values: dict[str, Any] = _from_file(ns.config) if ns.config else {}
    for key in _KEYS:
        v = getattr(ns, key, None)
        if v is not None:
            values[key] = v
    missing = [f"--{k.replace('_', '-')}" for k in ("id", "data_dir", "listen") if k not in values]
    if missing:
        raise ServerError(f"missing {', '.join(missing)} (see qkv server --help)")
    node_id = values["id"]
    if node_id <= 0:
        raise ServerError(f"--id must be a positive integer, not {node_id}")
    try:
        host, _ = parse_address(values["listen"])
        if values.get("http"):
            parse_address(values["http"])
    except ValueError as e:
        raise ServerError(str(e)) from None
    if host in ("0.0.0.0", "::", ""):
        # The listen address is also the one peers are told to dial (no separate
        # advertised address yet), so it must be reachable as written.
        raise ServerError(
            f"--listen {values['listen']}: a wildcard address cannot be dialled by peers; "
            "give this node's own address"
        )
    peers = parse_peers(values.get("peers", ""))
    join = bool(values.get("join", False))
    if not peers:
        peers = {node_id: values["listen"]}
    if node_id not in peers and not join:
        raise ServerError(f"--peers does not list this node ({node_id}); use --join to join")
    peers.setdefault(node_id, values["listen"])
    kwargs = {name: values[key] for key, (name, _) in _KEYS.items() if key in values}
    kwargs.update(node_id=node_id, data_dir=Path(values["data_dir"]), peers=peers)
    cfg = ServerConfig(**kwargs)
    positive = ("tick_ms", "election_ticks", "snapshot_entries", "max_pending", "split_keys",
                "split_bytes")  # fmt: skip
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ServerError(f"--{name.replace('_', '-')} must be positive")
    if cfg.election_ticks <= cfg.heartbeat_ticks:
        raise ServerError("--election-ticks must be at least 2")
    if cfg.hot_write_ops <= 0:
        raise ServerError("--hot-write-ops must be positive")
    if cfg.down_after_s <= 0:
        raise ServerError("--down-after must be positive")
    if cfg.catchup_entries < 0 or cfg.request_timeout_s <= 0:
        raise ServerError("--catchup-entries must be >= 0 and --request-timeout > 0")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ServerError(f"--log-level {cfg.log_level!r}: use debug, info, warning or error")
    return cfg


# -- the data directory's identity ----------------------------------------------------


def read_identity(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / NODE_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ServerError(f"{path} is unreadable ({e}); is this a quorumkv data dir?") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ServerError(f"{path} is not a quorumkv node file of format {_FORMAT}")
    return doc


def write_identity(data_dir: Path, node_id: int, cluster: int, sharded: bool = False) -> None:
    """Write ``node.json`` atomically and durably."""
    path = data_dir / NODE_FILE
    tmp = path.with_suffix(".tmp")
    doc: dict[str, Any] = {"format": _FORMAT, "node_id": node_id, "cluster_id": f"{cluster:016x}"}
    if sharded:
        doc["sharded"] = True
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_identity(cfg: ServerConfig, doc: dict[str, Any]) -> int:
    """The cluster id stored in the data dir, after checking it matches the flags."""
    if doc.get("node_id") != cfg.node_id:
        raise ServerError(
            f"data dir {cfg.data_dir} belongs to node {doc.get('node_id')}, "
            f"not node {cfg.node_id}: pass --id {doc.get('node_id')} or another --data-dir"
        )
    stored = int(str(doc.get("cluster_id", "0")), 16)
    if not cfg.join and stored != cfg.cluster_id:
        raise ServerError(
            f"data dir {cfg.data_dir} belongs to cluster {stored:016x}, but these flags "
            f"(--peers and --cluster-token) describe cluster {cfg.cluster_id:016x}: use the "
            "flags the cluster was created with, or a fresh --data-dir"
        )
    if cfg.sharded and not doc.get("sharded"):
        raise ServerError(
            f"data dir {cfg.data_dir} holds an unsharded cluster; --sharded is decided when "
            "a cluster is founded: drop the flag, or use a fresh --data-dir"
        )
    return stored
