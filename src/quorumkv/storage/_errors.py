"""Re-exports this package's errors, which live in the one tree in ``quorumkv.errors``."""

from quorumkv.errors import (
    CorruptSnapshotError,
    CorruptWALError,
    StorageError,
)

__all__ = [
    "CorruptSnapshotError",
    "CorruptWALError",
    "StorageError",
]
