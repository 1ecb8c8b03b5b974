"""The state machines a replica applies its group's committed entries to.

Theory of operation
-------------------
A ``Replica`` drives one Raft group; what its entries mean is its machine's business.
Every machine on a node lives in the node's one LMDB ``Engine`` (``quorumkv.kv``), so one
environment serves every group, and each machine's applied index moves in the same
engine transaction as the effects of the entries it covers. Two kinds:

``KVMachine``
    A range of keys (``kv.RangeStore``): etcd's data model over ``[start, end)``. An
    unsharded cluster has one, group 1, holding the whole keyspace and numbering its own
    revisions. In a sharded cluster every range's writes carry revision stamps from the
    meta range's allocator (``stamped``), and the range's descriptor (bounds, replicas,
    epoch: ``shard.RangeDescriptor``) is kept with its data (``desc``).
``MetaMachine``
    The meta range of a sharded cluster (group 1): the directory (``shard.Directory``)
    and the cluster's revision allocator, held in memory and written to the engine as
    one blob every ``PERSIST_EVERY`` entries and whenever ``sync`` is called (before the
    log under it is compacted, and when the node stops). Between two writes the WAL is
    the durable record: a restart replays the meta entries after the blob's applied
    index, and their results are the same. (Writing the blob per batch cost an engine
    commit, with its fdatasync, per revision allocation: 15% of every node's time with
    three ranges under load.) An entry is a directory command (``shard.encode_command``), whose
    result or refusal goes back to the proposer, or an allocation (``alloc_entry(n)``),
    whose result is the first of ``n`` fresh revisions. Allocations are entries, not a
    leader's memory, so revisions are handed out in log order: a write that completed
    before another began always holds the smaller revision, across every range and
    every change of meta leader, with no lease or clock involved.

A replica created on a node to receive a range or the meta range it does not hold yet
(a replica move, a node joining) starts with a machine that is *pending*: it holds
nothing, its applied index is 0, and the first snapshot it restores makes it whole
(``KVMachine.pending``; a ``MetaMachine`` whose engine holds no state for its group).

Both offer what a replica needs: ``applied_index``, ``apply`` (one engine transaction a
call; results in entry order; ``before_commit`` answers writers before the commit),
``snapshot`` (chunks; the first names the applied index, read by ``snapshot_index``),
``restore`` (chunks, installed atomically on the caller's thread), ``sync``, and what
``/status`` shows.

This module must never touch the Raft core, the WAL or the network.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from quorumkv.kv import Engine, RangeRequest, RangeResponse, RangeStore, snapshot_index
from quorumkv.net import pack, unpack
from quorumkv.shard import Directory, RangeDescriptor, ShardError

ALLOC_PREFIX = b"\xc1\x03"
"""A meta range entry that allocates revisions: the prefix, then the count as a u64.
(0xc1 never starts a msgpack document, so no directory command begins with it.)"""
_U64 = struct.Struct(">Q")
_META_MAGIC = "quorumkv-meta-snapshot"
PERSIST_EVERY = 1000
"""Meta entries applied between two writes of the meta range's state to the engine."""
FIRST_REVISION = 2
"""The allocator's first revision: a range starts at revision 1 (etcd's empty store), so
every stamp must exceed it."""


def alloc_entry(count: int) -> bytes:
    return ALLOC_PREFIX + _U64.pack(count)


def encode_desc(desc: RangeDescriptor) -> bytes:
    return pack(desc.to_wire())


def decode_desc(data: bytes) -> RangeDescriptor | None:
    return RangeDescriptor.from_wire(unpack(data)) if data else None


class KVMachine:
    """A range of keys, kept in the node's engine."""

    __slots__ = ("_desc", "_desc_raw", "_rs", "engine", "range_id")

    def __init__(self, engine: Engine, rs: RangeStore | None, range_id: int = 0) -> None:
        self.engine = engine
        self._rs = rs
        self.range_id = rs.range_id if rs is not None else range_id
        self._desc_raw: bytes | None = None
        self._desc: RangeDescriptor | None = None

    @classmethod
    def pending(cls, engine: Engine, range_id: int) -> KVMachine:
        """Range ``range_id``, not held yet: its first snapshot brings it."""
        return cls(engine, None, range_id)

    @property
    def is_pending(self) -> bool:
        return self._rs is None

    @property
    def rs(self) -> RangeStore:
        if self._rs is None:
            raise ShardError(f"range {self.range_id} is not on this node yet (no snapshot)")
        return self._rs

    @property
    def stamped(self) -> bool:
        return True if self._rs is None else bool(self._rs.stamped)

    @property
    def desc(self) -> RangeDescriptor | None:
        """The range's descriptor (sharded clusters; None for the unsharded group and
        a pending range)."""
        if self._rs is None:
            return None
        raw = self._rs.desc
        if raw is not self._desc_raw:
            # Decoded once per change: housekeeping reads it for every range each second.
            self._desc, self._desc_raw = decode_desc(raw), raw
        return self._desc

    def applied_index(self) -> int:
        return 0 if self._rs is None else self._rs.applied_index()

    def revision(self) -> int:
        return 0 if self._rs is None else self._rs.revision()

    def compacted_revision(self) -> int:
        return 0 if self._rs is None else self._rs.compacted_revision()

    def apply(
        self,
        entries: Sequence[tuple[int, bytes]],
        *,
        before_commit: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        return self.rs.apply(entries, encoded=True, before_commit=before_commit)

    def read(self, req: RangeRequest, settled_through: int = 0) -> RangeResponse:
        return self.rs.range(req, settled_through)

    def snapshot(self) -> Iterator[bytes]:
        return self.rs.snapshot()

    @staticmethod
    def snapshot_index(first: bytes) -> int:
        return snapshot_index(first)

    def restore(self, chunks: Iterator[bytes]) -> None:
        self._rs = self.engine.restore_range(self.range_id, chunks)

    def drop(self) -> None:
        """Delete the range's data from the engine (the replica was moved away)."""
        if self._rs is not None:
            self.engine.drop_range(self.range_id)
            self._rs = None

    def sync(self) -> None:
        self.engine.sync()

    def keys(self) -> int:
        return 0 if self._rs is None else self._rs.key_count()

    def size_bytes(self) -> int:
        """The bytes of the range's records (``RangeStore.size_bytes``)."""
        return 0 if self._rs is None else self._rs.size_bytes()

    def middle_key(self) -> bytes | None:
        """The key with as many keys below it as above: where a split halves the range."""
        return None if self._rs is None else self._rs.middle_key()

    def db_bytes(self) -> int:
        try:
            return int(self.engine.stats()["used_bytes"])
        except Exception:
            return 0

    def describe(self) -> str:
        return f"range {self.range_id} of the engine in {self.engine.path}"


class MetaMachine:
    """The meta range: the directory and the revision allocator."""

    __slots__ = (
        "_applied", "_pending", "_persisted", "directory", "engine", "group", "next_revision",
    )  # fmt: skip

    def __init__(self, engine: Engine, group: int) -> None:
        self.engine = engine
        self.group = group
        state = engine.get_state(group)
        self._pending = state is None
        if state is None:  # pending: a joining node's meta replica, before its snapshot
            self._applied = self._persisted = 0
            self.next_revision, self.directory = FIRST_REVISION, Directory()
            return
        self._applied, blob = state
        self._persisted = self._applied
        self.next_revision, self.directory = _decode_meta(blob)

    @property
    def is_pending(self) -> bool:
        return self._pending

    @staticmethod
    def initial_state(directory: Directory) -> bytes:
        return pack([FIRST_REVISION, directory.to_bytes()])

    stamped = False
    desc = None

    def applied_index(self) -> int:
        return self._applied

    def revision(self) -> int:
        return self.next_revision - 1

    def compacted_revision(self) -> int:
        return 0

    def apply(
        self,
        entries: Sequence[tuple[int, bytes]],
        *,
        before_commit: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        """Results: a directory command's result or its ``ShardError``; an allocation's
        first revision; None for entries without data or at old indices."""
        results: list[Any] = []
        applied = self._applied
        for index, data in entries:
            if index <= applied:
                results.append(None)
                continue
            applied = index
            if not data:
                results.append(None)
            elif data[:2] == ALLOC_PREFIX:
                (count,) = _U64.unpack_from(data, 2)
                results.append(self.next_revision)
                self.next_revision += count
            else:
                results.append(self.directory.apply_entry(data))
        if before_commit is not None:
            before_commit(results)
        self._applied = applied
        if applied - self._persisted >= PERSIST_EVERY:
            self._persist()
        return results

    def _persist(self) -> None:
        self.engine.put_state(self.group, self._applied, self._blob())
        self._persisted = self._applied

    def _blob(self) -> bytes:
        return pack([self.next_revision, self.directory.to_bytes()])

    def snapshot(self) -> Iterator[bytes]:
        head = pack([_META_MAGIC, self._applied])
        body = self._blob()
        return iter((head, body))

    @staticmethod
    def snapshot_index(first: bytes) -> int:
        doc = unpack(first)
        if not isinstance(doc, list) or len(doc) != 2 or doc[0] != _META_MAGIC:
            raise ShardError("not a meta range snapshot")
        return int(doc[1])

    def restore(self, chunks: Iterator[bytes]) -> None:
        parts = list(chunks)
        if len(parts) != 2:
            raise ShardError(f"a meta range snapshot has 2 chunks, not {len(parts)}")
        index = self.snapshot_index(parts[0])
        next_revision, directory = _decode_meta(parts[1])
        self.engine.put_state(self.group, index, parts[1])
        self._applied, self.next_revision, self.directory = index, next_revision, directory
        self._persisted = index
        self._pending = False

    def sync(self) -> None:
        """Write the state to the engine and make it durable."""
        if self._applied != self._persisted:
            self._persist()
        self.engine.sync()

    def keys(self) -> int:
        return 0

    def size_bytes(self) -> int:
        return 0

    def db_bytes(self) -> int:
        try:
            return int(self.engine.stats()["used_bytes"])
        except Exception:
            return 0

    def describe(self) -> str:
        return f"the meta range in the engine in {self.engine.path}"


def _decode_meta(blob: bytes) -> tuple[int, Directory]:
    doc = unpack(blob)
    if not isinstance(doc, list) or len(doc) != 2:
        raise ShardError("the meta range's state does not decode")
    return int(doc[0]), Directory.from_bytes(doc[1])


Machine = KVMachine | MetaMachine
