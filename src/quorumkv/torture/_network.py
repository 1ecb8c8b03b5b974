"""Where the nodes of a torture run live on the network, and how it is cut.

Two networks share one interface (``Network``): the addresses of a node, the command
prefix that starts it, partitions, healing, and teardown.

``Loopback``: every node on 127.0.0.1 with ports the kernel picks. Nodes run as plain
processes; no partition is possible (``apply`` raises), only process and disk faults.

``Netns``: one network namespace per node, named ``qkvt-<run>-n<id>`` (``<run>`` is
random per run, so runs never share anything), each joined by a veth pair to one bridge
``qt<run>br`` in the root namespace, on a private /24 of 10.213.0.0/16 not routed
anywhere else on this machine. Node ``i`` is ``10.213.X.i`` (ports 7001 for peers and
clients, 8001 for HTTP) and runs under ``ip netns exec`` (which execs, so the pid the
supervisor signals is the node's own). The bridge holds ``10.213.X.254``, so the load
generator and the supervisor, in the root namespace, reach every node directly.

A partition is a set of blocked directed pairs (``_partition``); ``(a, b)`` becomes
``ip route add blackhole <b>/32`` inside a's namespace: what a sends to b is dropped
(new connections fail at once, established ones stall), and nothing else changes,
without iptables. Traffic between the root namespace and the nodes is never cut.
``heal`` deletes every route it added. Slow links are not possible (no ``tc netem``).

``close`` removes everything the run created (links, bridge, namespaces) even after a
failure, once the supervisor has stopped the processes (a namespace lives on while a
process is in it). This module must never touch a namespace, link or route it did not
create.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from typing import Protocol

from quorumkv.local import free_ports
from quorumkv.torture._partition import Partition
from quorumkv.torture._system import TortureError, capture, require_root, run

PEER_PORT = 7001
HTTP_PORT = 8001
_SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
_BRIDGE_HOST = 254


class Network(Protocol):
    """What the runner needs of a network (see the module docstring)."""

    name: str
    partitions: bool
    """Whether ``apply`` can cut links."""

    def open(self) -> None: ...
    def add_node(self, node_id: int) -> tuple[str, str]:
        """Prepare a place for ``node_id``; its ``(addr, http)`` as ``host:port``."""
        ...

    def prefix(self, node_id: int) -> list[str]:
        """The argv prefix that starts a process of ``node_id`` where it lives."""
        ...

    def apply(self, partition: Partition) -> None: ...
    def heal(self) -> None: ...
    def close(self) -> None: ...


class Loopback:
    """Every node on 127.0.0.1; no partitions."""

    name = "loopback"
    partitions = False

    def open(self) -> None:
        pass

    def add_node(self, node_id: int) -> tuple[str, str]:
        port, http = free_ports("127.0.0.1", 2)
        return f"127.0.0.1:{port}", f"127.0.0.1:{http}"

    def prefix(self, node_id: int) -> list[str]:
        return []

    def apply(self, partition: Partition) -> None:
        raise TortureError("partitions need network namespaces (--netns); loopback has none")

    def heal(self) -> None:
        pass

    def close(self) -> None:
        pass


class Netns:
    """One namespace per node on a private bridge (see the module docstring)."""

    name = "netns"
    partitions = True

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id or secrets.token_hex(3)
        if not (self.run_id.isalnum() and len(self.run_id) <= 6):
            raise ValueError(f"run id must be at most 6 letters or digits, not {self.run_id!r}")
        self.bridge = f"qt{self.run_id}br"
        self.subnet: ipaddress.IPv4Network | None = None
        self._nodes: list[int] = []
        self._routes: set[tuple[int, int]] = set()
        self._opened = False

    def namespace(self, node_id: int) -> str:
        return f"qkvt-{self.run_id}-n{node_id}"

    def _veth(self, node_id: int) -> str:
        return f"qt{self.run_id}v{node_id}"

    def ip_of(self, node_id: int) -> str:
        if self.subnet is None:
            raise RuntimeError("the network is not open")
        return str(self.subnet.network_address + node_id)

    def open(self) -> None:
        """Create the bridge on a free /24; ``TortureError`` if not root."""
        require_root("creating network namespaces (--netns)")
        self.subnet = _free_subnet()
        self._opened = True
        gateway = f"{self.subnet.network_address + _BRIDGE_HOST}/{self.subnet.prefixlen}"
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", gateway, "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

    def add_node(self, node_id: int) -> tuple[str, str]:
        if not 1 <= node_id < _BRIDGE_HOST:
            raise ValueError(f"node id {node_id} does not fit in the run's /24")
        ns, veth = self.namespace(node_id), self._veth(node_id)
        assert self.subnet is not None
        address = f"{self.ip_of(node_id)}/{self.subnet.prefixlen}"
        self._nodes.append(node_id)
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", veth, "master", self.bridge])
        run(["ip", "link", "set", veth, "up"])
        run(["ip", "-n", ns, "addr", "add", address, "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        host = self.ip_of(node_id)
        return f"{host}:{PEER_PORT}", f"{host}:{HTTP_PORT}"

    def prefix(self, node_id: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node_id)]

    def apply(self, partition: Partition) -> None:
        """Blackhole every blocked pair (``(a, b)``: in a's namespace, route to b)."""
        for src, dst in sorted(partition.blocked):
            if (src, dst) in self._routes:
                continue
            run(["ip", "-n", self.namespace(src), "route", "add", "blackhole",
                 f"{self.ip_of(dst)}/32"])  # fmt: skip
            self._routes.add((src, dst))

    def heal(self) -> None:
        """Delete every route ``apply`` added."""
        problems = []
        for src, dst in sorted(self._routes):
            status, err = run(
                ["ip", "-n", self.namespace(src), "route", "del", "blackhole",
                 f"{self.ip_of(dst)}/32"],
                check=False,
            )  # fmt: skip
            if status != 0:
                problems.append(f"{src}->{dst}: {err}")
        self._routes.clear()
        if problems:
            raise TortureError("could not remove partition routes: " + "; ".join(problems))

    def blocked(self) -> frozenset[tuple[int, int]]:
        return frozenset(self._routes)

    def close(self) -> None:
        """Delete the links, the bridge and the namespaces this run made. Call after
        every process in them has exited."""
        if not self._opened:
            return
        problems = []
        for node_id in self._nodes:
            for argv in (
                ["ip", "link", "del", self._veth(node_id)],
                ["ip", "netns", "del", self.namespace(node_id)],
            ):
                status, err = run(argv, check=False)
                if status != 0 and "Cannot find" not in err and "No such" not in err:
                    problems.append(f"{' '.join(argv)}: {err}")
        status, err = run(["ip", "link", "del", self.bridge], check=False)
        if status != 0 and "Cannot find" not in err:
            problems.append(f"ip link del {self.bridge}: {err}")
        self._nodes.clear()
        self._routes.clear()
        self._opened = False
        left = leftovers(self.run_id)
        if left:
            problems.append(f"still present: {', '.join(left)}")
        if problems:
            raise TortureError("network teardown incomplete: " + "; ".join(problems))


def leftovers(run_id: str) -> list[str]:
    """Namespaces and links of run ``run_id`` that still exist."""
    out = [
        line.split()[0]
        for line in capture(["ip", "netns", "list"]).splitlines()
        if line.split() and line.split()[0].startswith(f"qkvt-{run_id}-")
    ]
    for line in capture(["ip", "-o", "link", "show"]).splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(f"qt{run_id}"):
                out.append(name)
    return out


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.213.0.0/16 that no route or address of this namespace overlaps."""
    used: list[ipaddress.IPv4Network] = []
    for doc in json.loads(capture(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]"):
        dst = doc.get("dst")
        if isinstance(dst, str) and dst != "default":
            try:
                used.append(ipaddress.IPv4Network(dst, strict=False))
            except ValueError:
                continue
    candidates = list(_SUPERNET.subnets(new_prefix=24))[1:-1]
    secrets.SystemRandom().shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used):
            return net
    raise TortureError("no free /24 left in 10.213.0.0/16 for a torture run's bridge")
