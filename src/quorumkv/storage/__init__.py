"""quorumkv.storage: the durable storage of one node, shared by every Raft group on it.

What it owns
------------
* ``WAL``: one write-ahead log per node. Every record names its group; one fsync covers
  every group's entries and hard states written since the last one (group commit).
  Segmented files, a checksum per record, rotation, and deletion of segments that hold
  nothing live once groups compact. Recovery cuts a torn tail with a log line and stops
  with ``CorruptWALError`` (naming file and offset) on damage to durable data.
* ``SnapshotStore``: checksummed snapshot files, written to a temporary file, fsynced and
  renamed; streamed in chunks to a ``SnapshotReceiver``; old ones cleaned up.
* ``NodeStorage``: both together, behind the simulator's ``MemDisk`` interface with a
  group in every call.
* ``FileSystem``: ``OSFileSystem`` for real files and ``MemFileSystem``, which keeps
  bytes in memory and can ``crash()``, losing what was not fsynced and leaving torn
  writes, for the simulator and tests.

What it must never do
---------------------
Make a Raft decision, or acknowledge anything: it stores what the driver hands it, in the
order the ``quorumkv.consensus`` contract gives, and reports when that is durable. The driver
sends messages only after ``sync()`` returns. It never drops data it once made durable
without raising.
"""

from ._codec import decode_meta, encode_meta
from ._errors import CorruptSnapshotError, CorruptWALError, StorageError
from ._fs import AppendFile, FileSystem, MemFileSystem, OSFileSystem
from ._node_storage import NodeStorage
from ._snapshots import SnapshotReceiver, SnapshotStore
from ._wal import WAL, SyncStats

__all__ = [
    "WAL",
    "AppendFile",
    "CorruptSnapshotError",
    "CorruptWALError",
    "FileSystem",
    "MemFileSystem",
    "NodeStorage",
    "OSFileSystem",
    "SnapshotReceiver",
    "SnapshotStore",
    "StorageError",
    "SyncStats",
    "decode_meta",
    "encode_meta",
]
