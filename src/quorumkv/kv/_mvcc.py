"""``MVCCStore``: the replicated key-value state machine, kept in LMDB.

Theory of operation
-------------------
The driver hands ``apply`` a batch of committed log entries as ``(index, data)`` pairs.
The whole batch runs in ONE LMDB write transaction, which also stores the applied
index, the current and the compacted revision in the ``meta`` database. LMDB commits
atomically (and, with ``sync=True``, durably), so after any crash the engine holds
exactly the batches that committed, and ``applied_index()`` says where the log replay
must start: a restart replays only the log after it. A batch that raised (a broken
invariant, or a full map) is rolled back entirely; the store keeps its previous state.

Each entry's data is a command (``encode_command``): client id, sequence number and
request. As in ``quorumkv.sim``'s toy machine, the ``sessions`` database keeps each
client's last sequence number and encoded result (8 bytes of seq, then the result), in
the same transaction; a retried command is answered from there and changes nothing
(exactly-once, thesis 6.3). Empty
data (Raft's no-op and configuration entries) only advances the applied index; entries
at or below the applied index are skipped (``None``), so replaying a log from an older
point is harmless.

Records are stored by revision; which revision of a key to read comes from the
in-memory ``KeyIndex`` (``_index``), rebuilt by one pass over the records when the store
opens (about 1 s per million live revisions). ``apply`` journals its index changes and
rolls them back if the engine transaction aborts, so index and engine never disagree.

Reads (``range``, ``get``) look the key up in the index and read the records in an
LMDB read transaction; they run on the thread that applies (the index is not locked),
see the last applied batch, and never block the writer. ``snapshot`` streams the three
databases from a single read transaction (any thread may consume it), so writes go on
while a follower is fed; ``restore`` rebuilds a store from those chunks in a fresh
directory and swaps it in. The stream is ordered records, not LMDB's file, so it does
not depend on the page size or the engine version of either side.

The executor (``_exec``) owns the data layout; this module owns the environment,
batching, sessions, and snapshots. It must never apply a batch partially, never move
the applied index without the data it covers, and never import the Raft core.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb

from quorumkv.kv._codec import (
    Result,
    decode_command,
    decode_result,
    encode_result,
    pack,
    unpack,
)
from quorumkv.kv._errors import KVError, SnapshotError, StoreFullError
from quorumkv.kv._exec import Dbs, Executor, read_range
from quorumkv.kv._index import KeyIndex, rev_from_key
from quorumkv.kv._types import KeyValue, RangeRequest, RangeResponse

DEFAULT_MAP_SIZE = 64 << 30
"""Address space reserved for the engine (64 GiB). Only pages in use take disk or RAM."""

_U64 = struct.Struct(">Q")
_FORMAT = 2
"""1 kept the key index in an LMDB database (``index``) and a session as msgpack
``[seq, result]``; 2 keeps the index in memory and a session as 8 big-endian bytes of
seq followed by the encoded result. A format 1 store is upgraded in place when opened."""
_SNAP_MAGIC = "quorumkv-mvcc-snapshot"
_SNAP_CHUNK = 1 << 20
_DB_NAMES = ("rev", "meta", "sessions")
_META_APPLIED, _META_REVISION, _META_COMPACTED, _META_FORMAT = (
    b"applied",
    b"revision",
    b"compacted",
    b"format",
)


def _upgrade_from_1(env: Any, txn: Any, dbs: Dbs) -> None:
    """Format 1 -> 2, in the opening transaction: drop the index database and rewrite
    every session record."""
    txn.drop(env.open_db(b"index", txn=txn, dupsort=True), delete=True)
    sessions = [(bytes(k), unpack(v)) for k, v in txn.cursor(db=dbs.sessions).iternext()]
    for k, (seq, result) in sessions:
        txn.put(k, _U64.pack(seq) + result, db=dbs.sessions)
    txn.put(_META_FORMAT, _U64.pack(_FORMAT), db=dbs.meta)


def _index_records(txn: Any, rev_db: Any) -> Iterator[tuple[bytes, int]]:
    """``(key, revision)`` of every stored record, in revision order."""
    for k, v in txn.cursor(db=rev_db).iternext():
        doc = unpack(v)
        yield doc[0], rev_from_key(bytes(k), bool(doc[6]))


def _u64(data: bytes | None) -> int:
    assert data is not None and len(data) == 8, f"bad meta value {data!r}"
    return int(_U64.unpack(data)[0])


class MVCCStore:
    """etcd's data model on LMDB at ``path`` (a directory, created if missing).

    Not thread-safe: one thread calls ``apply`` and reads; ``snapshot`` chunks may be
    consumed on any thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
        metasync: bool = True,
    ) -> None:
        """``sync=False`` (LMDB's NOSYNC) can corrupt the store on a power loss;
        ``metasync=False`` only risks losing the last transaction, which a log replay
        restores: the right choice under a WAL."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._env: Any = lmdb.open(
            str(self.path), map_size=map_size, max_dbs=len(_DB_NAMES) + 1, sync=sync,
            metasync=metasync, readahead=False, meminit=False,
        )  # fmt: skip
        with self._env.begin(write=True) as txn:
            handles = [self._env.open_db(name.encode(), txn=txn) for name in _DB_NAMES]
            self._dbs = Dbs(*handles)
            fmt = txn.get(_META_FORMAT, db=self._dbs.meta)
            if fmt is None:
                txn.put(_META_FORMAT, _U64.pack(_FORMAT), db=self._dbs.meta)
                txn.put(_META_APPLIED, _U64.pack(0), db=self._dbs.meta)
                txn.put(_META_REVISION, _U64.pack(1), db=self._dbs.meta)  # etcd starts at 1
                txn.put(_META_COMPACTED, _U64.pack(0), db=self._dbs.meta)
            elif _u64(fmt) == 1:
                _upgrade_from_1(self._env, txn, self._dbs)
            elif _u64(fmt) != _FORMAT:
                raise KVError(f"{self.path}: unknown store format {_u64(fmt)}")
            self._applied = _u64(txn.get(_META_APPLIED, db=self._dbs.meta))
            self._revision = _u64(txn.get(_META_REVISION, db=self._dbs.meta))
            self._compacted = _u64(txn.get(_META_COMPACTED, db=self._dbs.meta))
            self._index = KeyIndex.rebuild(_index_records(txn, self._dbs.rev))

    # -- state ---------------------------------------------------------------------------

    def applied_index(self) -> int:
        """The last log index whose effects are in the engine."""
        return self._applied

    def revision(self) -> int:
        return self._revision

    def compacted_revision(self) -> int:
        return self._compacted

    def stats(self) -> dict[str, int]:
        """Records per database (``rev`` counts stored revisions), the revisions and
        the keys the index holds, and the bytes of the LMDB file in use."""
        with self._env.begin() as txn:
            out = {n: int(txn.stat(getattr(self._dbs, n))["entries"]) for n in _DB_NAMES}
        out["index"] = self._index.revisions()
        out["keys"] = len(self._index)
        info, stat = self._env.info(), self._env.stat()
        out["used_bytes"] = int((info["last_pgno"] + 1) * stat["psize"])
        return out

    def sync(self) -> None:
        """Make every applied batch durable. A store opened with ``sync=False`` (its
        log is the durable record) calls this before the log under it is dropped."""
        self._env.sync(True)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> MVCCStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------

    def apply(
        self,
        entries: Sequence[tuple[int, bytes]],
        *,
        encoded: bool = False,
        before_commit: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        """Apply committed entries, in index order, in one engine transaction; one
        result per entry: its response, the ``KVError`` it was refused with, or None
        (no command, an old index, or a stale retry). With ``encoded``, each result
        that is not None comes as ``encode_result`` of it, ready to send (a retry
        answered from its session is then never decoded). ``before_commit(results)``
        runs once every entry is applied, before the engine commits (if it raises,
        nothing is applied). Raises ``StoreFullError`` (nothing applied) when the map
        is full."""
        results: list[Result | None] = []
        applied = self._applied
        self._index.begin()
        try:
            with self._env.begin(write=True) as txn:
                ex = Executor(txn, self._dbs, self._index, self._revision, self._compacted)
                for index, data in entries:
                    if index <= applied:
                        results.append(None)
                        continue
                    applied = index
                    results.append(self._apply_one(txn, ex, data, encoded) if data else None)
                meta = self._dbs.meta
                txn.put(_META_APPLIED, _U64.pack(applied), db=meta)
                txn.put(_META_REVISION, _U64.pack(ex.current), db=meta)
                txn.put(_META_COMPACTED, _U64.pack(ex.compacted), db=meta)
                if before_commit is not None:
                    before_commit(results)
        except lmdb.MapFullError:
            self._index.rollback()
            raise StoreFullError(
                f"{self.path}: LMDB map is full; reopen with a larger "
                f"map_size (now {self._env.info()['map_size']})"
            ) from None
        except BaseException:
            self._index.rollback()
            raise
        self._index.commit()
        self._applied, self._revision, self._compacted = applied, ex.current, ex.compacted
        return results

    def _apply_one(self, txn: Any, ex: Executor, data: bytes, encoded: bool) -> Any:
        try:
            cmd = decode_command(data)
        except KVError as e:
            return encode_result(e) if encoded else e
        session = _U64.pack(cmd.client)
        if cmd.client:
            last = txn.get(session, db=self._dbs.sessions)
            if last is not None:
                seq = _U64.unpack_from(last)[0]
                if cmd.seq < seq:
                    return None  # the client has moved on; nobody waits for this answer
                if cmd.seq == seq:
                    stored = bytes(last[8:])
                    return stored if encoded else decode_result(stored)
        result: Result
        try:
            result = ex.run(cmd.request)
        except KVError as e:
            result = e
        if not cmd.client:
            return encode_result(result) if encoded else result
        enc = encode_result(result)
        txn.put(session, _U64.pack(cmd.seq) + enc, db=self._dbs.sessions)
        return enc if encoded else result

    # -- reads -------------------------------------------------------------------------------

    def range(self, req: RangeRequest) -> RangeResponse:
        """Serve a read from the last applied state (linearizable when the caller waited
        for a ReadIndex first). Raises ``CompactedError`` or ``FutureRevisionError``."""
        current = self._revision  # the committed state's: reads run on the applying thread
        with self._env.begin() as txn:
            return read_range(txn, self._dbs, self._index, req, current, self._compacted, current)

    def get(self, key: bytes, revision: int = 0) -> KeyValue | None:
        kvs = self.range(RangeRequest(key, revision=revision)).kvs
        return kvs[0] if kvs else None

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> Iterator[bytes]:
        """Chunks (about 1 MiB each) of a consistent copy of the whole state, taken in
        one read transaction: writes continue while the chunks are consumed. The first
        chunk names the applied index (``snapshot_index``). Holding the iterator open
        keeps old pages alive, so consume it promptly."""
        txn = self._env.begin()
        try:
            meta = self._dbs.meta
            head = [_SNAP_MAGIC, _FORMAT] + [
                _u64(txn.get(k, db=meta)) for k in (_META_APPLIED, _META_REVISION, _META_COMPACTED)
            ]
            crc = 0
            records = 0
            first = pack(head)
            crc = zlib.crc32(first, crc)
            yield first
            for code, name in enumerate(_DB_NAMES):
                batch: list[bytes] = []
                size = 0
                for k, v in txn.cursor(db=getattr(self._dbs, name)).iternext():
                    batch += (k, v)
                    size += len(k) + len(v) + 8
                    records += 1
                    if size >= _SNAP_CHUNK:
                        chunk = pack([code, batch])
                        crc = zlib.crc32(chunk, crc)
                        yield chunk
                        batch, size = [], 0
                if batch:
                    chunk = pack([code, batch])
                    crc = zlib.crc32(chunk, crc)
                    yield chunk
            yield pack(["end", records, crc])
        finally:
            txn.abort()

    @classmethod
    def restore(
        cls,
        path: str | os.PathLike[str],
        chunks: Iterable[bytes],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
    ) -> MVCCStore:
        """Build a store at ``path`` from ``snapshot`` chunks, replacing whatever was
        there only once the whole snapshot has been written and verified. Close any
        store open at ``path`` first. Raises ``SnapshotError``; then ``path`` is intact."""
        target = Path(path)
        staging = target.with_name(target.name + ".restoring")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _write_snapshot(staging, chunks, map_size, sync)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        old = target.with_name(target.name + ".replaced")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
        _fsync_dir(target.parent)  # the renames must survive a power loss too
        shutil.rmtree(old, ignore_errors=True)
        return cls(target, map_size=map_size, sync=sync)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def snapshot_index(first_chunk: bytes) -> int:
    """The applied index a snapshot covers, read from its first chunk."""
    head = unpack(first_chunk)
    if not isinstance(head, list) or head[:2] != [_SNAP_MAGIC, _FORMAT]:
        raise SnapshotError("not a quorumkv MVCC snapshot of a known format")
    return int(head[2])


def _write_snapshot(staging: Path, chunks: Iterable[bytes], map_size: int, sync: bool) -> None:
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        raise SnapshotError("empty snapshot")
    snapshot_index(first)
    crc = zlib.crc32(first)
    records = 0
    store = MVCCStore(staging, map_size=map_size, sync=sync)
    env, dbs = store._env, store._dbs
    done = False
    last_code = 0
    try:
        with env.begin(write=True) as txn:
            txn.drop(dbs.meta, delete=False)
            for chunk in it:
                if done:
                    raise SnapshotError("data after the end of the snapshot")
                try:
                    doc = unpack(chunk)
                except (ValueError, TypeError) as e:
                    raise SnapshotError(f"undecodable snapshot chunk: {e!r}") from None
                if doc[0] == "end":
                    if doc[1:] != [records, crc]:
                        raise SnapshotError(
                            f"snapshot damaged: {records} records, crc {crc}; "
                            f"the sender counted {doc[1]}, crc {doc[2]}"
                        )
                    done = True
                    continue
                crc = zlib.crc32(chunk, crc)
                code, flat = doc
                if not isinstance(code, int) or not last_code <= code < len(_DB_NAMES):
                    raise SnapshotError(f"snapshot chunk for unknown database {code!r}")
                last_code = code
                pairs = list(zip(flat[::2], flat[1::2], strict=True))
                records += len(pairs)
                cur = txn.cursor(db=getattr(dbs, _DB_NAMES[code]))
                _, added = cur.putmulti(pairs, append=True)
                if added != len(pairs):
                    raise SnapshotError("snapshot records out of order or repeated")
            if not done:
                raise SnapshotError("snapshot ended early (no end record)")
        if sync:
            env.sync(True)
    finally:
        store.close()
