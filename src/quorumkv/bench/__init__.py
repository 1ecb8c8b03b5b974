"""quorumkv.bench: ``qkv bench compare``, quorumkv side by side with etcd and PySyncObj.

Not a test: it starts real 3-node clusters of each system on loopback, one system at
a time, drives them with the same load, and reports throughput, latency, failover and
memory (see ``_compare`` for the theory of operation)::

    from quorumkv.bench import CompareConfig, run_compare

    doc = run_compare(CompareConfig(out_dir=Path("bench-results/x"), duration=2, rounds=1))

Modules, bottom up: ``_procs`` (child processes by pid, memory, disk), ``_etcdproto``
(etcd's KV API compiled at bench time), ``_load`` (the generator process),
``_etcd``, ``_pysyncobj_node`` and ``_pysyncobj`` (the other systems' clusters),
``_systems`` (the three behind one interface), ``_report`` (medians, tables, files),
``_install`` (what is missing and how to get it), ``_compare`` (the run).

What this package must never do: be imported by quorumkv itself or by the test suite's
real-cluster tests; import its optional dependencies (grpc, PySyncObj) at import
time; signal a process it did not spawn; or leave one running.
"""

from quorumkv.bench._compare import CompareConfig, report_text, run_compare
from quorumkv.bench._install import install, install_hint, missing
from quorumkv.bench._systems import SYSTEMS

__all__ = [
    "SYSTEMS",
    "CompareConfig",
    "install",
    "install_hint",
    "missing",
    "report_text",
    "run_compare",
]
