"""The seed request's sharded example, for real: JSON records in ranges of keys.

::

    from quorumkv import sharding

    cluster = sharding.Cluster(nodes=3)
    cluster.start()
    cluster.update_data('user:1', {'name': 'Alice', 'age': 30})
    print(cluster.get_data('user:1'))        # {'name': 'Alice', 'age': 30}
    cluster.stop()

A sharded deployment (``qkv server --sharded``) is built from Raft groups: a meta range
holds the directory of ranges and hands out revisions, and the keys live in ranges,
each its own Raft group with its own leader. ``raft.Cluster`` addresses such a
deployment as one replicated store; ``sharding.Cluster`` is the same view plus the
ranges. In one process, both created without a ``data_dir`` and with the same number
of nodes are views of ONE deployment (see ``quorumkv.raft``): the seed writes through
one and reads through the other. A range splits when it grows past a number of keys
or stays hot (or when asked: ``split(key)``); a split copies no data. The cluster
spreads range leaders over the nodes, so writes to different ranges are led by
different nodes. The client routes every request to the range that holds its key, and
``update_data``/``get_data`` keep their guarantees: a write returns once a majority of
its range's replicas hold it on disk; a read is linearizable.

Today every range has a replica on each of the founding nodes (moving replicas to
nodes that join later is not built yet), and a transaction across ranges is refused
(``CrossRangeError``).

This module is the ``raft.Cluster`` facade plus the ranges; it must never hold data
itself or talk to the nodes except through ``quorumkv.Client``.
"""

from __future__ import annotations

from quorumkv import raft
from quorumkv.shard import RangeDescriptor

__all__ = ["Cluster"]


class Cluster(raft.Cluster):
    """A real sharded cluster of ``nodes`` node processes on this machine, holding JSON
    values by key. See the module docstring."""

    def ranges(self) -> list[RangeDescriptor]:
        """The ranges of keys, in key order: bounds, replicas, epoch, leader."""
        return self._connected().ranges()

    def split(self, key: str | bytes) -> tuple[RangeDescriptor, RangeDescriptor]:
        """Split the range holding ``key`` so that a new range starts at ``key``."""
        return self._connected().split(key)
