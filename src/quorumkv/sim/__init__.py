"""quorumkv.sim: deterministic simulation of whole Raft clusters in one process.

One seed decides every event: clock ticks, message delays, drops and duplicates,
partitions, crashes that lose un-fsynced writes, pauses, membership changes, leader
transfers, and the operations of the clients. The real ``quorumkv.consensus`` core runs
unchanged under it; Raft's safety properties are checked at every step and the clients'
history is checked for linearizability at the end. ``qkv sim`` is its command line.
"""

from ._cluster import FAULT_KINDS, Cluster, SimConfig, SimResult
from ._runner import Summary, run_many, run_seed

__all__ = [
    "FAULT_KINDS",
    "Cluster",
    "SimConfig",
    "SimResult",
    "Summary",
    "run_many",
    "run_seed",
]
