"""quorumkv.local: real quorumkv clusters on one machine, one OS process per node.

``LocalCluster`` launches ``python -m quorumkv.server`` per node on loopback, waits until
every node is healthy, and stops them again; it can kill, pause, resume, restart, add
and remove nodes. ``qkv up``, the ``quorumkv.raft`` facade, the real-process tests,
benchmarks and fault tests all build on it::

    from quorumkv.local import LocalCluster

    with LocalCluster(3) as cluster:            # a temporary directory, free ports
        with cluster.client() as client:
            client.put("hello", "world")
        cluster.kill(cluster.leader())          # SIGKILL the leader's process
        cluster.wait_healthy()                  # the other two elect a new one

A cluster lives in a data directory (``cluster.json``, ``node-<id>/``,
``node-<id>.log``); starting a ``LocalCluster`` on a directory that holds one brings that
cluster back with its ports, token and data.

What this package must never do: signal a process it did not spawn (by name, group or
guess), leave a process running or unreaped after ``stop`` or at interpreter exit, or
import the server (nodes are processes, reached over TCP and HTTP only).
"""

from quorumkv.local._cluster import LocalCluster
from quorumkv.local._http import node_health, node_status
from quorumkv.local._process import NodeProcess, pdeathsig_hook
from quorumkv.local._spec import SPEC_FILE, ClusterSpec, NodeSpec, free_ports, read_spec

__all__ = [
    "SPEC_FILE",
    "ClusterSpec",
    "LocalCluster",
    "NodeProcess",
    "NodeSpec",
    "free_ports",
    "node_health",
    "node_status",
    "pdeathsig_hook",
    "read_spec",
]
