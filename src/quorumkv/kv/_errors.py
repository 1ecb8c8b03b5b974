"""Re-exports this package's errors, which live in the one tree in ``quorumkv.errors``."""

from quorumkv.errors import (
    CompactedError,
    DuplicateKeyError,
    FutureRevisionError,
    KVError,
    KVLimitError,
    MalformedRequestError,
    OutOfRangeError,
    SnapshotError,
    StaleStampError,
    StoreFullError,
)

__all__ = [
    "CompactedError",
    "DuplicateKeyError",
    "FutureRevisionError",
    "KVError",
    "KVLimitError",
    "MalformedRequestError",
    "OutOfRangeError",
    "SnapshotError",
    "StaleStampError",
    "StoreFullError",
]
