"""The storage errors, to be moved into ``quorumkv.errors`` later.

::

    QuorumKVError
    └── StorageError               the node's durable storage cannot be trusted or used
        ├── CorruptWALError        a WAL record in the middle fails its checksum
        └── CorruptSnapshotError   a snapshot file fails its checksum or is missing

A torn tail at the end of the WAL is not an error: it is what a crash leaves behind, and
recovery cuts it off with a log line.
"""

from __future__ import annotations

from quorumkv.errors import QuorumKVError


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
