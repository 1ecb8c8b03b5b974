"""quorumkv.shard: the pure core of sharding (multi-Raft ranges).

What it owns
------------
* the range model (``_range``): ``RangeDescriptor`` — a ``[start, end)`` slice of the
  keyspace, its replicas (voters and learners), its ``Epoch`` (``conf_ver`` counts replica
  changes, ``version`` counts splits) and a leader hint; ``RangeStats``, what a range's
  leader reports. A range is one Raft group: ``RangeId`` is ``GroupId``;
* the directory (``_directory``, ``_commands``): the state machine of the meta range —
  ranges tiling the keyspace, the node registry, the range id allocator — changed only by
  deterministic commands that travel in Raft log entries, each range change guarded by a
  compare-and-swap on the epoch;
* routing (``_routing``): the ``RangeCache`` clients and nodes keep, ``route_is_current``
  for a node checking a request's route, and ``WrongRange``, the answer that tells a
  client where to go;
* placement decisions (``_placement``, ``_operations``): ``plan()``, a pure function from
  the directory, range stats and the time to the next splits, replica moves (learner,
  promote, remove) and leader transfers.

What it must never do
---------------------
I/O of any kind, read a clock, sleep, draw from the global random generator, start
threads or tasks, or import ``quorumkv.server``, ``client`` or ``sim``: time and every
measurement come in as arguments, and decisions go out as data. It may import
``consensus`` (ids), ``net`` (msgpack helpers) and ``errors``. Hosting many groups on a
node, carrying operations out and answering clients belong to the layers above.
"""

from quorumkv.shard._commands import (
    Bootstrap,
    ChangeReplicas,
    Command,
    Heartbeat,
    HeartbeatResult,
    NodeInfo,
    NodeState,
    RegisterNode,
    Result,
    SetLeaderHint,
    SetNodeState,
    SplitRange,
    command_from_wire,
    decode_command,
    encode_command,
)
from quorumkv.shard._directory import REMOVED_REFUSAL, Directory
from quorumkv.shard._errors import (
    MalformedShardDataError,
    ShardCommandError,
    ShardError,
    StaleEpochError,
    UnknownRangeError,
)
from quorumkv.shard._operations import (
    AddLearner,
    Operation,
    PlacementConfig,
    Promote,
    RemoveReplica,
    Split,
    TransferLeader,
)
from quorumkv.shard._placement import NodeLoad, node_loads, plan
from quorumkv.shard._range import (
    KEYSPACE_END,
    KEYSPACE_START,
    Epoch,
    RangeDescriptor,
    RangeId,
    RangeStats,
    Replica,
)
from quorumkv.shard._routing import RangeCache, WrongRange, route_is_current

__all__ = [
    "KEYSPACE_END",
    "KEYSPACE_START",
    "REMOVED_REFUSAL",
    "AddLearner",
    "Bootstrap",
    "ChangeReplicas",
    "Command",
    "Directory",
    "Epoch",
    "Heartbeat",
    "HeartbeatResult",
    "MalformedShardDataError",
    "NodeInfo",
    "NodeLoad",
    "NodeState",
    "Operation",
    "PlacementConfig",
    "Promote",
    "RangeCache",
    "RangeDescriptor",
    "RangeId",
    "RangeStats",
    "RegisterNode",
    "RemoveReplica",
    "Replica",
    "Result",
    "SetLeaderHint",
    "SetNodeState",
    "ShardCommandError",
    "ShardError",
    "Split",
    "SplitRange",
    "StaleEpochError",
    "TransferLeader",
    "UnknownRangeError",
    "WrongRange",
    "command_from_wire",
    "decode_command",
    "encode_command",
    "node_loads",
    "plan",
    "route_is_current",
]
