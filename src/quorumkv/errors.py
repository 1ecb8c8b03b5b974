"""Every error quorumkv raises on purpose, in one tree.

::

    QuorumKVError
    ├── RaftError                  the consensus core refused something
    │   ├── ProposalDropped        a proposal or read could not be accepted here, now
    │   ├── ConfChangeError        a membership change that cannot apply
    │   ├── MessageRejected        a peer sent a message that is malformed or not ours
    │   └── RaftUsageError         the driver broke the core's contract (a bug)
    ├── StorageError               the WAL or snapshot store cannot go on
    │   ├── CorruptWALError        damaged records before valid ones: names file, offset
    │   └── CorruptSnapshotError   a snapshot file fails its checksum: names the file
    ├── KVError                    the state machine refused a request
    │   ├── KVLimitError           a key, value, request or txn over a documented limit
    │   ├── MalformedRequestError  a request or log command that does not decode
    │   ├── DuplicateKeyError      a txn that writes one key twice
    │   ├── CompactedError         a read at a revision already compacted away
    │   ├── FutureRevisionError    a read at a revision not yet reached
    │   ├── StoreFullError         the engine's map is full; the batch rolled back
    │   ├── OutOfRangeError        a key outside the range it was sent to (sharded)
    │   ├── StaleStampError        a revision stamp not above the range's revision
    │   └── SnapshotError          a state machine snapshot that cannot be restored
    ├── ClientError                a request through the client did not succeed
    │   ├── ProtocolError          the endpoint is not a quorumkv node we can speak to
    │   ├── NotLeaderError         no node accepted the request as leader, after retries
    │   ├── UnavailableError       no node reachable, or no leader elected, after retries
    │   ├── RequestTimeoutError    no answer in time: the request MAY have been applied
    │   ├── TooManyRequestsError   the leader is overloaded and refused new work
    │   ├── CompareFailedError     a compare-and-swap found a different value
    │   ├── CrossRangeError        a transaction whose keys lie in several ranges
    │   └── MembershipError        a membership change was refused
    ├── ServerError                a node cannot start or go on (bad config, data dir)
    └── SimulationError            the simulator found a violated invariant

Each says when it is raised and whether retrying can help. Broken *internal* invariants
are not in this tree: they raise ``AssertionError`` and must stop the process.
"""

from __future__ import annotations


class QuorumKVError(Exception):
    """Base of every error quorumkv raises on purpose."""


class RaftError(QuorumKVError):
    """The consensus core refused an input."""


class ProposalDropped(RaftError):
    """Raised when a proposal, read or transfer cannot be accepted by this node now:
    it is not the leader, a leader transfer is in progress, or a membership change is
    still pending. Retrying can help: at ``leader`` if it is known (non-zero), or later.
    """

    def __init__(self, reason: str, leader: int = 0) -> None:
        hint = f" (leader is {leader})" if leader else ""
        super().__init__(f"{reason}{hint}")
        self.reason = reason
        self.leader = leader


class ConfChangeError(RaftError):
    """Raised when a membership change cannot apply to the current configuration (for
    example entering a joint configuration twice). Retrying the same change cannot help.
    """


class MessageRejected(RaftError):
    """Raised by ``step`` for a message that is malformed, addressed to another node or
    group, or of a type a peer may not send. The node's state is unchanged; the driver
    should log it and may drop the connection. Retrying cannot help.
    """


class RaftUsageError(RaftError):
    """Raised when the driver breaks the core's contract, such as asking for a new
    Ready before advancing the last one. A bug in the caller; retrying cannot help."""


class ClientError(QuorumKVError):
    """A request made through ``quorumkv.Client`` or ``quorumkv.aio.Client`` did not
    succeed. Errors of the state machine itself (limits, compaction) are ``KVError``s."""


class ProtocolError(ClientError):
    """The endpoint refused the handshake or does not speak quorumkv's protocol (wrong
    port, wrong version, another cluster). Retrying cannot help."""


class NotLeaderError(ClientError):
    """Every attempt reached a node that was not the leader, and the redirects did not
    lead to one before the deadline. Retrying later can help (an election may be on)."""

    def __init__(self, message: str, leader: int = 0) -> None:
        super().__init__(message)
        self.leader = leader


class UnavailableError(ClientError):
    """No endpoint could be reached, or the reachable ones have no leader (lost quorum),
    until the deadline. The attempts that got this answer applied nothing; if an earlier
    attempt of the same call was answered "outcome unknown", the call raises
    ``RequestTimeoutError`` instead. Retrying later can help."""


class RequestTimeoutError(ClientError):
    """No answer before the deadline, or the last answer said the outcome is unknown
    (the leader lost its leadership after proposing the write). A write may have been
    applied. Within one call, the client's own retries reuse the write's session and
    sequence number, so the state machine applies it at most once; a NEW call after this
    error is a new write (read the key first if applying it twice would matter)."""


class TooManyRequestsError(ClientError):
    """The leader's queue of unapplied proposals is full (backpressure); nothing was
    applied. Retrying after a pause can help."""


class CompareFailedError(ClientError):
    """``compare_and_swap`` found a value other than the expected one; nothing changed.
    ``actual`` is the value found (None if the key does not exist)."""

    def __init__(self, key: bytes, actual: bytes | None) -> None:
        super().__init__(f"compare failed on key {key!r}: found {actual!r}")
        self.key = key
        self.actual = actual


class CrossRangeError(ClientError):
    """A transaction names keys of more than one range of a sharded cluster. Until
    distributed transactions are built, a transaction is atomic only inside one range:
    keep its keys together (a common prefix usually is) or split it yourself."""

    def __init__(self, ranges: list[tuple[int, bytes, bytes]]) -> None:
        named = ", ".join(f"{rid} [{s!r}, {e!r})" for rid, s, e in ranges)
        super().__init__(
            f"the transaction spans {len(ranges)} ranges ({named}); transactions across "
            "ranges are not supported yet"
        )
        self.ranges = ranges


class MembershipError(ClientError):
    """A membership change was refused: unknown node, a change already in progress, or
    one that would remove the last voter. The message says which."""


class ServerError(QuorumKVError):
    """A node cannot start or go on: a bad configuration, a data directory that belongs
    to another cluster or node, an address in use. The message says what to change."""


class SimulationError(QuorumKVError):
    """Raised by the simulator when a safety invariant is violated; its message names
    the invariant, the seed and the command that replays it."""


class StorageError(QuorumKVError):
    """Raised when the node's storage cannot do what was asked: an fsync or write failed
    (after which the WAL refuses further writes, since what reached the disk is unknown),
    or the caller broke the storage contract. Retrying the same call cannot help; the node
    must stop and restart, which recovers from what is durable."""


class CorruptWALError(StorageError):
    """Raised at start when a WAL record fails its checksum (or cannot be framed) and valid
    records follow it, or it sits in a segment that is not the last. That is damage to
    data that was once fsynced, not a torn write: the node must not start, or it could
    silently forget committed entries. The message names the file and the byte offset.
    Retrying cannot help; an operator must repair the disk or rebuild the replica."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"corrupt WAL record in {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class CorruptSnapshotError(StorageError):
    """Raised when a snapshot file fails its checksum, is truncated, or is missing although
    the WAL names it. The message names the file. Retrying cannot help; the replica must
    get a fresh snapshot from its group's leader."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"corrupt snapshot {path}: {reason}")
        self.path = path
        self.reason = reason


class KVError(QuorumKVError):
    """The key-value state machine refused a request."""


class KVLimitError(KVError):
    """Raised when building or decoding a request that breaks a limit of
    ``quorumkv.kv.Limits`` (key size, value size, request size, operations per
    transaction). The message names the limit and by how much it was exceeded.
    Retrying the same request cannot help; split it or shrink it.
    """

    def __init__(self, limit: str, allowed: int, actual: int, unit: str = "bytes") -> None:
        super().__init__(
            f"{limit} is {actual} {unit}, over the limit of {allowed} {unit} "
            f"by {actual - allowed} {unit}"
        )
        self.limit = limit
        self.allowed = allowed
        self.actual = actual
        self.unit = unit


class MalformedRequestError(KVError):
    """Raised when a request is not well formed (an empty key, a wrong type, an unknown
    operation) or a log command cannot be decoded. Retrying cannot help."""


class DuplicateKeyError(KVError):
    """Raised when a transaction could write one key twice on one path: two puts of the
    same key, or a put of a key that a delete-range of the same txn covers. etcd rejects
    these with "duplicate key given in txn request"; so do we. Retrying cannot help."""

    def __init__(self, key: bytes) -> None:
        super().__init__(f"duplicate key given in txn request: {key!r}")
        self.key = key


class CompactedError(KVError):
    """Raised when a read (or a compaction) asks for a revision at or below which
    history has been compacted away. Retrying at a newer revision helps; the same
    request will always fail."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(
            f"required revision {requested} has been compacted (compacted revision {compacted})"
        )
        self.requested = requested
        self.compacted = compacted


class FutureRevisionError(KVError):
    """Raised when a read (or a compaction) names a revision newer than the current one
    on this replica. Retrying later can help once this replica has caught up."""

    def __init__(self, requested: int, current: int) -> None:
        super().__init__(
            f"required revision {requested} is a future revision (current revision {current})"
        )
        self.requested = requested
        self.current = current


class StoreFullError(KVError):
    """Raised by ``apply`` when the LMDB map (``map_size``) is full. The whole batch was
    rolled back and the applied index did not move. Retrying helps only after reopening
    the store with a larger ``map_size`` (or compacting)."""


class OutOfRangeError(KVError):
    """A sharded cluster's range refused a request naming a key outside its bounds: the
    key's range split off or moved since the client routed the request. Nothing was
    done and no session recorded it: refresh the range cache and retry, with the same
    sequence number, at the range that holds the key now."""

    def __init__(self, range_id: int, key: bytes, start: bytes, end: bytes) -> None:
        super().__init__(
            f"key {key!r} is outside range {range_id} [{start!r}, {end!r}) "
            "(it split or moved); refresh the range cache and retry"
        )
        self.range_id = range_id
        self.key = key
        self.start = start
        self.end = end


class StaleStampError(KVError):
    """A sharded cluster's range refused a write whose revision stamp (from the meta
    range's revision allocator) does not exceed the range's current revision, which can
    happen only across a change of leader. Nothing was done and no session recorded
    it; retrying helps."""

    def __init__(self, stamp: int, current: int) -> None:
        super().__init__(
            f"revision stamp {stamp} is not above the range's current revision {current}; retry"
        )
        self.stamp = stamp
        self.current = current


class SnapshotError(KVError):
    """Raised by ``restore`` when the chunks are damaged, out of order, incomplete or of
    an unknown format. Nothing was installed. Retrying with a fresh snapshot helps."""
