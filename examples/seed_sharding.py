"""The seed request's whole example, run for real: its two imports become
``from quorumkv import raft, sharding``; nothing else changes but the last two lines,
which stop what the example started.

``raft.Cluster`` and ``sharding.Cluster`` here are two views of one deployment of three
node processes (a meta range and ranges of keys, each a Raft group): the record written
through the Raft view is read back through the sharding view.

    python examples/seed_sharding.py
"""

from quorumkv import raft, sharding

# Initialize the Raft cluster
raft_cluster = raft.Cluster(nodes=3)
raft_cluster.start()

# Initialize the sharding cluster
sharding_cluster = sharding.Cluster(nodes=3)
sharding_cluster.start()

# Submit a data update to the Raft cluster
raft_cluster.update_data("user:1", {"name": "Alice", "age": 30})

# Read the data from the sharding cluster
user_data = sharding_cluster.get_data("user:1")
print(user_data)

sharding_cluster.stop()
raft_cluster.stop()
