"""The replicated key-value state machine: etcd's data model (MVCC revisions, ranges,
transactions, compaction) kept in LMDB.

Feed committed log entries to ``MVCCStore.apply`` in batches; propose commands built
with ``encode_command(Command(client, seq, request))``. Reads go to ``MVCCStore.range``.
Raft snapshots are ``MVCCStore.snapshot()`` chunks, installed with ``MVCCStore.restore``.
A node of a sharded cluster keeps every group it hosts in one ``Engine``: a
``RangeStore`` per range of keys (bounds checked, revisions stamped by the cluster's
allocator with ``stamp_command``, split without copying data), and whole-state blobs for
the other groups (the meta range).
Limits are in ``LIMITS``; errors are the ``KVError`` tree in ``quorumkv.kv._errors``.

Not built yet: leases (a lease id is stored and compared, never checked or expired),
watches, compares over a key range, ``ignore_value``/``ignore_lease`` puts, range
filters on min/max revisions, and expiry of idle client sessions.
"""

from __future__ import annotations

from quorumkv.kv._codec import Result, decode_command, decode_result, encode_command, encode_result
from quorumkv.kv._engine import DEFAULT_MAP_SIZE, Engine
from quorumkv.kv._errors import (
    CompactedError,
    DuplicateKeyError,
    FutureRevisionError,
    KVError,
    KVLimitError,
    MalformedRequestError,
    SnapshotError,
    StoreFullError,
)
from quorumkv.kv._mvcc import MVCCStore
from quorumkv.kv._range import ADMIN_PREFIX, RangeStore, stamp_command
from quorumkv.kv._snap import snapshot_index
from quorumkv.kv._types import (
    ALL_KEYS,
    LIMITS,
    Command,
    CompactionRequest,
    CompactionResponse,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    Limits,
    Op,
    OpResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    Request,
    Response,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
    prefix_end,
)

__all__ = [
    "ADMIN_PREFIX",
    "ALL_KEYS",
    "DEFAULT_MAP_SIZE",
    "LIMITS",
    "Command",
    "CompactedError",
    "CompactionRequest",
    "CompactionResponse",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteRangeRequest",
    "DeleteRangeResponse",
    "DuplicateKeyError",
    "Engine",
    "FutureRevisionError",
    "KVError",
    "KVLimitError",
    "KeyValue",
    "Limits",
    "MVCCStore",
    "MalformedRequestError",
    "Op",
    "OpResponse",
    "PutRequest",
    "PutResponse",
    "RangeRequest",
    "RangeResponse",
    "RangeStore",
    "Request",
    "Response",
    "Result",
    "SnapshotError",
    "SortOrder",
    "SortTarget",
    "StoreFullError",
    "TxnRequest",
    "TxnResponse",
    "decode_command",
    "decode_result",
    "encode_command",
    "encode_result",
    "prefix_end",
    "snapshot_index",
    "stamp_command",
]
