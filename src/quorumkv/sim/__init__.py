"""quorumkv.sim: deterministic simulation of whole Raft clusters in one process.

One seed decides every event: clock ticks, message delays, drops and duplicates,
partitions, crashes that lose un-fsynced writes, pauses, membership changes, leader
transfers, and the operations of the clients. The real ``quorumkv.consensus`` core runs
unchanged under it; Raft's safety properties are checked at every step and the clients'
history is checked for linearizability at the end. ``qkv sim`` is its command line.

``ShardedCluster`` (``qkv sim --sharded``) runs many Raft groups per node, with range
splits, replica moves and range leader transfers among the faults, and checks at the
end that every range is whole.
"""

from ._cluster import FAULT_KINDS, Cluster, SimConfig, SimResult
from ._runner import Summary, run_many, run_seed
from ._sharded import SHARDED_FAULT_KINDS, ShardedCluster, ShardedConfig

__all__ = [
    "FAULT_KINDS",
    "SHARDED_FAULT_KINDS",
    "Cluster",
    "ShardedCluster",
    "ShardedConfig",
    "SimConfig",
    "SimResult",
    "Summary",
    "run_many",
    "run_seed",
]
