"""The seed request's example, its Raft half, run for real (three node processes).

The seed wrote ``import raft``; here that is ``from quorumkv import raft``. The whole
example, with its sharding half, is ``seed_sharding.py``.

    python examples/seed_raft.py
"""

from quorumkv import raft

# Create a Raft cluster of 3 nodes and start it
raft_cluster = raft.Cluster(nodes=3)
raft_cluster.start()

# Store a record through Raft: acknowledged once a majority has it on disk
raft_cluster.update_data("user:1", {"name": "Alice", "age": 30})

# Read it back, linearizably
user_data = raft_cluster.get_data("user:1")
print(user_data)

raft_cluster.stop()
