"""What a local cluster *is*, independent of whether it runs: ``cluster.json``.

A ``ClusterSpec`` names the cluster token, whether the cluster is sharded (founded with
``--sharded``: a meta range and ranges of keys, decided once), and, for every node, its
id, its client/peer address, its HTTP address and whether it joined later (was started
with ``--join``).
``LocalCluster`` writes it into the data directory before it starts any process, so
that starting again on the same directory brings the same cluster back: same ports,
same token, same node ids, each node on its own data.

Ports come from one of two places: a fixed base (node ``i`` uses ``base + i - 1`` for
peers and clients and ``http_base + i - 1`` for HTTP), or the kernel (bind port 0 on
loopback, read the port, close). The second may race with another process taking the
port before the node binds it; the node then fails to start with "address in use" and
the supervisor reports it. Nothing here starts a process.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from quorumkv.errors import ServerError

SPEC_FILE = "cluster.json"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of a local cluster: ids and addresses only, no process."""

    id: int
    addr: str
    """``host:port`` for peers and clients."""
    http: str
    """``host:port`` of the node's HTTP status server."""
    join: bool = False
    """Added after the cluster was formed: started with ``--join``."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or isinstance(self.id, bool) or self.id <= 0:
            raise ValueError(f"node id must be a positive integer, not {self.id!r}")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """A local cluster's identity: its token, its nodes in id order, the founding
    ``--peers`` list, and the port scheme nodes added later follow (``base_port`` None:
    ports the kernel picks).

    The server derives the cluster id from the token and the founding peer list and
    checks it at every restart, so a founding node is always started with
    ``founding_peers``, even after nodes were added or removed; a node that joined is
    started with ``--join`` and the current list.
    """

    token: str
    nodes: tuple[NodeSpec, ...]
    founding_peers: str
    base_port: int | None = None
    http_base_port: int | None = None
    sharded: bool | None = False
    """Founded with ``--sharded``; None: not recorded (a file written before this field
    existed), so whatever the caller asks is taken."""

    def __post_init__(self) -> None:
        if (self.base_port is None) != (self.http_base_port is None):
            raise ValueError("base_port and http_base_port must both be set or both None")

    def node(self, node_id: int) -> NodeSpec:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def with_node(self, node: NodeSpec) -> ClusterSpec:
        rest = tuple(n for n in self.nodes if n.id != node.id)
        nodes = tuple(sorted((*rest, node), key=lambda n: n.id))
        return replace(self, nodes=nodes)

    def without_node(self, node_id: int) -> ClusterSpec:
        return replace(self, nodes=tuple(n for n in self.nodes if n.id != node_id))

    def next_node(self, host: str) -> NodeSpec:
        """A node to add: the next id, on ports of the cluster's scheme."""
        node_id = max(n.id for n in self.nodes) + 1
        if self.base_port is None:
            return free_node(host, node_id, join=True)
        assert self.http_base_port is not None
        return fixed_node(host, node_id, self.base_port, self.http_base_port, join=True)

    def peers_arg(self, node: NodeSpec) -> str:
        """The server's ``--peers`` value for ``node``: ``1=host:port,2=host:port,...``."""
        return _peers(self.nodes) if node.join else self.founding_peers

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "token": self.token,
            "founding_peers": self.founding_peers,
            "base_port": self.base_port,
            "http_base_port": self.http_base_port,
            "sharded": self.sharded,
            "nodes": [
                {"id": n.id, "addr": n.addr, "http": n.http, "join": n.join} for n in self.nodes
            ],
        }

    @staticmethod
    def from_json(doc: object, where: str) -> ClusterSpec:
        """Parse ``cluster.json``; a ``ServerError`` naming ``where`` if it is not one."""

        def bad(why: str) -> ServerError:
            return ServerError(f"{where} is not a quorumkv local cluster file: {why}")

        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        if doc.get("format") != _FORMAT:
            raise bad(f"format {doc.get('format')!r} is not {_FORMAT}")
        token, nodes, founding = doc.get("token"), doc.get("nodes"), doc.get("founding_peers")
        base, http_base = doc.get("base_port"), doc.get("http_base_port")
        if not isinstance(token, str) or not token:
            raise bad("no cluster token")
        if not isinstance(nodes, list) or not nodes:
            raise bad("no nodes")
        if not isinstance(founding, str) or not founding:
            raise bad("no founding_peers")
        if not (base is None or isinstance(base, int)) or not (
            http_base is None or isinstance(http_base, int)
        ):
            raise bad("base_port and http_base_port must be integers or null")
        if (base is None) != (http_base is None):
            raise bad("base_port and http_base_port must both be set or both null")
        sharded = doc.get("sharded")
        if not (sharded is None or isinstance(sharded, bool)):
            raise bad("sharded must be true, false or null")
        specs: list[NodeSpec] = []
        for n in nodes:
            if not isinstance(n, dict):
                raise bad(f"node {n!r} is not a JSON object")
            nid, addr, http = n.get("id"), n.get("addr"), n.get("http")
            if not isinstance(nid, int) or not isinstance(addr, str) or not isinstance(http, str):
                raise bad(f"node {n!r} needs an integer id and string addr and http")
            try:
                specs.append(NodeSpec(nid, addr, http, bool(n.get("join", False))))
            except ValueError as e:
                raise bad(str(e)) from None
        if len({n.id for n in specs}) != len(specs):
            raise bad("one node id appears twice")
        specs.sort(key=lambda n: n.id)
        return ClusterSpec(token, tuple(specs), founding, base, http_base, sharded)


def new_token() -> str:
    """A cluster token no other cluster will have (64 random bits)."""
    return f"qkv-{secrets.token_hex(8)}"


def read_spec(data_dir: str | os.PathLike[str]) -> ClusterSpec | None:
    """The cluster recorded in ``data_dir``, or None if there is none."""
    path = Path(data_dir) / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ServerError(f"{path} is not valid JSON: {e}") from None
    return ClusterSpec.from_json(doc, str(path))


def write_spec(data_dir: str | os.PathLike[str], spec: ClusterSpec) -> None:
    """Write ``cluster.json`` atomically (a temporary file, fsync, rename)."""
    path = Path(data_dir) / SPEC_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec.to_json(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports the kernel says are free on ``host`` right now.

    All sockets are held open until every port is chosen, so the ports are distinct;
    they are closed before returning, so another process may still take one.
    """
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def fixed_node(
    host: str, node_id: int, base_port: int, http_base_port: int, *, join: bool = False
) -> NodeSpec:
    """Node ``node_id`` under the fixed scheme: ``base + id - 1``, ``http_base + id - 1``."""
    port, http = base_port + node_id - 1, http_base_port + node_id - 1
    for p in (port, http):
        if not 0 < p < 65536:
            raise ServerError(f"port {p} of node {node_id} is out of range (1-65535)")
    return NodeSpec(node_id, _join(host, port), _join(host, http), join)


def free_node(host: str, node_id: int, *, join: bool = False) -> NodeSpec:
    """Node ``node_id`` on two ports the kernel picked."""
    port, http = free_ports(host, 2)
    return NodeSpec(node_id, _join(host, port), _join(host, http), join)


def new_spec(
    host: str,
    nodes: int,
    base_port: int | None,
    http_base_port: int | None,
    sharded: bool = False,
) -> ClusterSpec:
    """A new cluster of ``nodes`` nodes, ids 1..nodes, with a fresh token."""
    if nodes < 1:
        raise ValueError(f"a cluster needs at least one node, not {nodes}")
    if base_port is None:
        if http_base_port is not None:
            raise ValueError("http_base_port needs base_port")
        ports = free_ports(host, 2 * nodes)
        specs = tuple(
            NodeSpec(i, _join(host, ports[2 * i - 2]), _join(host, ports[2 * i - 1]))
            for i in range(1, nodes + 1)
        )
        return ClusterSpec(new_token(), specs, _peers(specs), sharded=sharded)
    http_base = base_port + 1000 if http_base_port is None else http_base_port
    specs = tuple(fixed_node(host, i, base_port, http_base) for i in range(1, nodes + 1))
    return ClusterSpec(new_token(), specs, _peers(specs), base_port, http_base, sharded)


def _peers(nodes: Iterable[NodeSpec]) -> str:
    return ",".join(f"{n.id}={n.addr}" for n in nodes)


def _join(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
