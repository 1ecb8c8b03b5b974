"""The errors the MVCC state machine raises on purpose.

::

    QuorumKVError
    └── KVError                    the state machine refused a request
        ├── KVLimitError           a key, value, request or txn is too large
        ├── MalformedRequestError  a request or log command that cannot mean anything
        ├── DuplicateKeyError      a txn writes one key twice (etcd's rule)
        ├── CompactedError         a read at a revision that compaction removed
        ├── FutureRevisionError    a read at a revision not yet written here
        ├── StoreFullError         the engine's map is full; nothing was applied
        └── SnapshotError          snapshot chunks that are damaged or incomplete

They will be merged into ``quorumkv.errors`` later; until then they live here and are
re-exported by ``quorumkv.kv``. Each docstring says when it is raised and whether a
retry can help. Broken internal invariants are not in this tree: they raise
``AssertionError`` and must stop the process.

Errors raised while *applying* a committed command are deterministic (every replica
raises the same one for the same log), so ``MVCCStore.apply`` returns them as that
command's result instead of raising; the batch goes on.
"""

from __future__ import annotations

from quorumkv.errors import QuorumKVError


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


class SnapshotError(KVError):
    """Raised by ``restore`` when the chunks are damaged, out of order, incomplete or of
    an unknown format. Nothing was installed. Retrying with a fresh snapshot helps."""
