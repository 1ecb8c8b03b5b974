"""quorumkv.torture: Jepsen-style fault injection on real node processes, checked.

A torture run starts a cluster of 3 or 5 real node processes, drives it with at least
ten concurrent clients colliding on a few keys, injects faults drawn from a seed, heals
them, and then checks two things: the recorded history is linearizable (the
``quorumkv.sim`` checker, with a final read of every key added after recovery), and the
cluster became whole again by itself. ``qkv torture`` is its command line::

    from quorumkv.torture import TortureConfig, run_torture

    summary = run_torture(TortureConfig(out=Path("run-7"), seed=7, duration=60))
    summary.passed      # linearizable and healthy

Faults (``FaultKind``): kill -9 (a random node or the leader) and restart; SIGSTOP and
SIGCONT (longer than an election timeout); partitions (one node isolated, majority and
minority, a bridge, one-way loss), only with ``netns=True`` (one network namespace per
node, partitions as blackhole routes, see ``_network``); a node's tmpfs disk filled up
(root only); and, during those, membership changes and leader transfers. Slow links
are not injected: there is no ``tc netem`` here to delay packets.

``sharded=True`` (``qkv torture --sharded``) runs a sharded cluster instead: the
colliding keys are spread over ranges (several Raft groups), "the leader" of a fault is
the meta range's or that of a range holding torture keys, ``range-split`` events split
ranges under the load, ``member`` makes nodes join (ranges move to them), and the end
check covers every range (``_sharded``).

Modules, bottom up: ``_schedule`` (the plan from a seed), ``_partition`` (partition
shapes), ``_sharded`` (a sharded cluster's ranges as its nodes report them),
``_history`` (recording and outcomes), ``_analysis`` (checking, unavailability
windows, the summary), ``_system``, ``_disk`` and ``_network`` (the machine),
``_cluster`` (processes), ``_load`` (clients), ``_nemesis`` (faults), ``_runner``.

What this package must never do: signal a process it did not spawn, touch a namespace,
link, route or mount it did not create, leave any of them behind after a run (even a
failed one), send traffic anywhere but loopback or its own namespaces, or call a run
linearizable that the checker did not prove so.
"""

from quorumkv.torture._analysis import FaultInterval, Summary, Window, analyze, unavailability
from quorumkv.torture._cluster import TortureCluster
from quorumkv.torture._history import (
    FINAL_CLIENT,
    Outcome,
    Record,
    Recorder,
    classify,
    operations,
    read_history,
    write_history,
)
from quorumkv.torture._load import LoadConfig, Workload
from quorumkv.torture._network import Loopback, Netns, Network
from quorumkv.torture._partition import Partition, partition_for
from quorumkv.torture._runner import TortureConfig, run_torture
from quorumkv.torture._schedule import (
    FaultKind,
    PlannedFault,
    choose,
    default_kinds,
    make_plan,
    parse_kinds,
)
from quorumkv.torture._system import TortureError

__all__ = [
    "FINAL_CLIENT",
    "FaultInterval",
    "FaultKind",
    "LoadConfig",
    "Loopback",
    "Netns",
    "Network",
    "Outcome",
    "Partition",
    "PlannedFault",
    "Record",
    "Recorder",
    "Summary",
    "TortureCluster",
    "TortureConfig",
    "TortureError",
    "Window",
    "Workload",
    "analyze",
    "choose",
    "classify",
    "default_kinds",
    "make_plan",
    "operations",
    "parse_kinds",
    "partition_for",
    "read_history",
    "run_torture",
    "unavailability",
    "write_history",
]
