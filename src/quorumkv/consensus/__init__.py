"""quorumkv.consensus: the Raft consensus core, one group per ``RawNode``, with no I/O.

The core is a deterministic state machine. It never touches a socket, a file, a thread,
an event loop, a clock or the global random generator: time arrives as ``tick()``,
randomness from the ``rng`` it is given, and everything it wants done comes back as one
``Ready`` batch. This is etcd-io/raft's design, and what lets ``quorumkv.sim`` run whole
clusters deterministically from one seed.

The driver's duties, in order
-----------------------------
1. Start each node with ``RawNode(Config(id=..., group=...), state, rng)``. A founding
   member of a new group passes ``bootstrap_state(voters)``; a node joining an existing
   group passes ``RaftState()``; a restarting node passes what it loaded from disk:
   hard state, latest snapshot, the log entries after it, and its state machine's
   applied index.
2. Call ``tick()`` at a steady rate. Elections time out after ``election_tick`` ticks
   (randomized up to twice that); leaders send heartbeats every ``heartbeat_tick``.
3. Feed every message from a peer to ``step()``. A malformed message, or one for another
   node or group, raises ``MessageRejected`` and changes nothing.
4. Make requests: ``propose``/``propose_many`` (leader only; ``ProposalDropped`` names
   the leader otherwise), ``propose_conf_change``, ``read_index(ctx)``,
   ``transfer_leader(to)``.
5. When ``has_ready()``, take ``rd = ready()`` and, in this order:

   a. write ``rd.snapshot`` (if any), then ``rd.entries`` (replacing stored entries from
      ``rd.entries[0].index`` on), then ``rd.hard_state`` (if any); fsync when
      ``rd.must_sync``. Nothing in ``rd.messages`` may leave before this is durable:
      votes and acknowledgements promise what is on disk.
   b. send ``rd.messages``; report a peer that cannot be reached with
      ``report_unreachable``, and the outcome of a SNAP message with
      ``report_snapshot``.
   c. install ``rd.snapshot`` into the state machine, then apply ``rd.committed`` in
      order (a CONF_CHANGE entry needs nothing from the state machine).
   d. serve each read in ``rd.read_states`` once the state machine has applied its index.
   e. call ``advance(rd)``.

6. To bound the log, save a snapshot of the state machine at an applied index, durably,
   then call ``compact(index, data)``; the log up to ``index`` may then be deleted.

One ``RawNode`` is not thread-safe; a driver that uses threads serializes calls to it.
"""

from quorumkv.errors import ConfChangeError, MessageRejected, ProposalDropped, RaftUsageError

from ._confchange import (
    apply_conf_change,
    decode_conf_change,
    describe_conf_state,
    encode_conf_change,
)
from ._describe import describe_entries, describe_entry, describe_message, describe_ready
from ._raft import CAMPAIGN_TRANSFER, Config, Rand, ReadOnlyOption
from ._rawnode import EARLY_RETRIES, RaftState, RawNode, Status, bootstrap_state
from ._types import (
    NONE,
    Change,
    ChangeType,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    GroupId,
    HardState,
    Index,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    Term,
)

__all__ = [
    "CAMPAIGN_TRANSFER",
    "EARLY_RETRIES",
    "NONE",
    "Change",
    "ChangeType",
    "ConfChange",
    "ConfChangeError",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "GroupId",
    "HardState",
    "Index",
    "Message",
    "MessageRejected",
    "MessageType",
    "NodeId",
    "ProposalDropped",
    "RaftState",
    "RaftUsageError",
    "Rand",
    "RawNode",
    "ReadOnlyOption",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Status",
    "Term",
    "apply_conf_change",
    "bootstrap_state",
    "decode_conf_change",
    "describe_conf_state",
    "describe_entries",
    "describe_entry",
    "describe_message",
    "describe_ready",
    "encode_conf_change",
]
