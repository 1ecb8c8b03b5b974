"""``RangeStore``: one range of keys of an ``Engine``, etcd's data model over ``[start, end)``.

Theory of operation
-------------------
The driver hands ``apply`` a batch of committed log entries as ``(index, data)`` pairs.
The whole batch runs in ONE write transaction of the node's engine, which also stores
the range's applied index and current and compacted revisions, so after any crash the
range holds exactly the batches that committed, and ``applied_index()`` says where the
log replay must start. A batch that raised (a broken invariant, a full map) is rolled
back entirely, index included (its journal).

Each entry's data is a command (``encode_command``): client id, sequence number and
request, possibly wrapped in a revision stamp (``stamp_command``). The range's sessions
keep each client's last sequence number and encoded result, in the same transaction; a
retried command is answered from there and changes nothing (exactly-once, thesis 6.3).
Empty data (Raft's no-ops, configuration entries) only moves the applied index; entries
at or below it are skipped (None), so replaying an older part of the log is harmless.

Three refusals leave no session behind, so that the client's retry of the same sequence
number runs for real where it belongs:

* a key outside ``[start, end)`` (the range split or moved since the client routed the
  request): ``OutOfRangeError``, checked for every key a request touches, nested txns
  included; skipped entirely for a range that is the whole keyspace;
* a stamp not above the range's current revision: ``StaleStampError``;
* a stamped command on an unstamped range, or an unstamped one on a stamped range
  (whose revisions must all come from the allocator, or two ranges' records could
  collide): ``MalformedRequestError``.

Reads (``range``, ``get``) come from the in-memory ``KeyIndex`` and the records, see the
last applied batch, and refuse keys outside the bounds the same way. ``split`` cuts the
range in two without copying a record. ``snapshot`` streams the range (its records as
its index held them when called, read in one read transaction opened then, its
sessions and metadata); ``install_range`` puts such a stream in place of a range in one
write transaction, committed only once the stream verifies.

This module must never commit part of a batch, move the applied index without the data
it covers, touch another range's records or sessions, or import the Raft core.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lmdb

from quorumkv.errors import OutOfRangeError, StaleStampError
from quorumkv.kv._codec import Result, decode_command, decode_result, encode_result, pack, unpack
from quorumkv.kv._errors import KVError, MalformedRequestError, SnapshotError, StoreFullError
from quorumkv.kv._exec import Executor, read_range
from quorumkv.kv._index import KeyIndex, rev_from_key, rev_key
from quorumkv.kv._types import (
    ALL_KEYS,
    DeleteRangeRequest,
    KeyValue,
    PutRequest,
    RangeRequest,
    RangeResponse,
    Request,
    TxnRequest,
)

if TYPE_CHECKING:
    from quorumkv.kv._engine import Engine

_U64 = struct.Struct(">Q")
STAMP_PREFIX = b"\xc1\x01"
"""A stamped command: the prefix, the revision as a u64, then the command. 0xc1 is the
one byte msgpack never uses, so it cannot begin a plain command."""
ADMIN_PREFIX = b"\xc1\x02"
"""An entry the server applies itself (a split); never a command of this machine."""
_SNAP_MAGIC = "quorumkv-range-snapshot"
_SNAP_FORMAT = 3
_SNAP_CHUNK = 1 << 20
_RECORDS, _SESSIONS = 0, 1


def stamp_command(revision: int, data: bytes) -> bytes:
    """``data`` (an encoded command) to be applied at main revision ``revision``."""
    return STAMP_PREFIX + _U64.pack(revision) + data


def _below_end(key: bytes, end: bytes) -> bool:
    return not end or key < end


def outside(req: Request, start: bytes, end: bytes) -> bytes | None:
    """The first key ``req`` touches outside ``[start, end)``, or None."""
    if type(req) is PutRequest:
        key = req.key
        return None if start <= key and _below_end(key, end) else key
    if isinstance(req, RangeRequest | DeleteRangeRequest):
        key, range_end = req.key, req.range_end
        if not (start <= key and _below_end(key, end)):
            return key
        if not range_end:
            return None
        if range_end == ALL_KEYS:
            return end or None
        return None if not end or range_end <= end else range_end
    if isinstance(req, TxnRequest):
        for c in req.compare:
            if not (start <= c.key and _below_end(c.key, end)):
                return c.key
        for op in (*req.success, *req.failure):
            bad = outside(op, start, end)
            if bad is not None:
                return bad
    return None  # a compaction touches no key


class RangeStore:
    """One range of keys in an engine. Build with ``Engine.create_range`` (or it comes
    from ``Engine.range``, ``split``, ``Engine.restore_range``)."""

    __slots__ = (
        "_applied",
        "_compacted",
        "_index",
        "_revision",
        "_sessions",
        "_whole",
        "desc",
        "end",
        "engine",
        "range_id",
        "stamped",
        "start",
    )

    def __init__(
        self,
        engine: Engine,
        range_id: int,
        start: bytes,
        end: bytes,
        *,
        desc: bytes,
        stamped: bool,
        applied: int,
        revision: int,
        compacted: int,
        index: KeyIndex,
    ) -> None:
        self.engine = engine
        self.range_id = range_id
        self.start = start
        self.end = end
        self.desc = desc
        """The server's descriptor of this range (opaque here)."""
        self.stamped = stamped
        self._applied = applied
        self._revision = revision
        self._compacted = compacted
        self._index = index
        self._whole = not start and not end
        self._sessions = _U64.pack(range_id)

    # -- state ---------------------------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied

    def revision(self) -> int:
        return self._revision

    def compacted_revision(self) -> int:
        return self._compacted

    def key_count(self) -> int:
        """Keys with a surviving revision (deleted keys count until compacted)."""
        return len(self._index)

    def middle_key(self) -> bytes | None:
        """The key with as many keys below it as above; None with fewer than 2 keys."""
        return self._index.middle_key()

    def stats(self) -> dict[str, int]:
        """This range's records (``rev``), index revisions and keys, sessions, and the
        bytes of the whole engine file in use."""
        with self.engine.env.begin() as txn:
            cur = txn.cursor(db=self.engine.dbs.sessions)
            sessions = 0
            ok = cur.set_range(self._sessions)
            while ok and bytes(cur.key()).startswith(self._sessions):
                sessions += 1
                ok = cur.next()
        used = self.engine.stats()["used_bytes"]
        n = self._index.revisions()
        return {"rev": n, "index": n, "keys": len(self._index), "sessions": sessions,
                "used_bytes": used}  # fmt: skip

    def sync(self) -> None:
        self.engine.sync()

    # -- metadata --------------------------------------------------------------------

    def _key(self, name: bytes) -> bytes:
        return b"r" + self._sessions + name

    def write_meta(self, txn: Any) -> None:
        meta = self.engine.dbs.meta
        put = txn.put
        put(self._key(b"kind"), b"kv", db=meta)
        put(self._key(b"applied"), _U64.pack(self._applied), db=meta)
        put(self._key(b"revision"), _U64.pack(self._revision), db=meta)
        put(self._key(b"compacted"), _U64.pack(self._compacted), db=meta)
        put(self._key(b"start"), self.start, db=meta)
        put(self._key(b"end"), self.end, db=meta)
        put(self._key(b"stamped"), b"\x01" if self.stamped else b"\x00", db=meta)
        put(self._key(b"desc"), self.desc, db=meta)

    def delete_all(self, txn: Any) -> None:
        """Delete this range's records, sessions and metadata (inside ``txn``)."""
        dbs = self.engine.dbs
        for rev in self._index.all_revs():
            txn.delete(rev_key(rev), db=dbs.rev)
        for db, prefix in ((dbs.sessions, self._sessions), (dbs.meta, b"r" + self._sessions)):
            cur = txn.cursor(db=db)
            ok = cur.set_range(prefix)
            while ok and bytes(cur.key()).startswith(prefix):
                ok = cur.delete()

    def replace_with(self, new: RangeStore) -> None:
        """Take ``new``'s state (an installed snapshot), keeping this object."""
        for name in RangeStore.__slots__:
            setattr(self, name, getattr(new, name))

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
        env, dbs = self.engine.env, self.engine.dbs
        index = self._index
        index.begin()
        try:
            with env.begin(write=True) as txn:
                ex = Executor(txn, dbs, index, self._revision, self._compacted, not self.stamped)
                for i, data in entries:
                    if i <= applied:
                        results.append(None)
                        continue
                    applied = i
                    results.append(self._apply_one(txn, ex, data, encoded) if data else None)
                meta = dbs.meta
                txn.put(self._key(b"applied"), _U64.pack(applied), db=meta)
                txn.put(self._key(b"revision"), _U64.pack(ex.current), db=meta)
                txn.put(self._key(b"compacted"), _U64.pack(ex.compacted), db=meta)
                if before_commit is not None:
                    before_commit(results)
        except lmdb.MapFullError:
            index.rollback()
            raise StoreFullError(
                f"{self.engine.path}: LMDB map is full; reopen with a larger "
                f"map_size (now {env.info()['map_size']})"
            ) from None
        except BaseException:
            index.rollback()
            raise
        index.commit()
        self._applied, self._revision, self._compacted = applied, ex.current, ex.compacted
        return results

    def _refuse(self, err: KVError, encoded: bool) -> Any:
        return encode_result(err) if encoded else err

    def _apply_one(self, txn: Any, ex: Executor, data: bytes, encoded: bool) -> Any:
        stamp = 0
        if data[0] == 0xC1:
            if data[:2] != STAMP_PREFIX or len(data) < 10:
                return self._refuse(MalformedRequestError("not a key-value command"), encoded)
            (stamp,) = _U64.unpack_from(data, 2)
            data = data[10:]
        if bool(stamp) != self.stamped:
            why = (
                "unstamped write on a stamped" if self.stamped else "stamped write on an unstamped"
            )
            return self._refuse(MalformedRequestError(f"{why} range"), encoded)
        try:
            cmd = decode_command(data)
        except KVError as e:
            return self._refuse(e, encoded)
        sessions = self.engine.dbs.sessions
        session = self._sessions + _U64.pack(cmd.client)
        if cmd.client:
            last = txn.get(session, db=sessions)
            if last is not None:
                seq = _U64.unpack_from(last)[0]
                if cmd.seq < seq:
                    return None  # the client has moved on; nobody waits for this answer
                if cmd.seq == seq:
                    stored = bytes(last[8:])
                    return stored if encoded else decode_result(stored)
        if stamp and stamp <= ex.current:
            return self._refuse(StaleStampError(stamp, ex.current), encoded)
        if not self._whole:
            bad = outside(cmd.request, self.start, self.end)
            if bad is not None:
                err = OutOfRangeError(self.range_id, bad, self.start, self.end)
                return self._refuse(err, encoded)
        result: Result
        ex.stamp = stamp
        try:
            result = ex.run(cmd.request)
        except KVError as e:
            result = e
        finally:
            ex.stamp = 0
        if not cmd.client:
            return encode_result(result) if encoded else result
        enc = encode_result(result)
        txn.put(session, _U64.pack(cmd.seq) + enc, db=sessions)
        return enc if encoded else result

    def set_desc(self, index: int, desc: bytes) -> None:
        """Record a new descriptor at applied index ``index`` (a replica change)."""
        meta = self.engine.dbs.meta
        with self.engine.env.begin(write=True) as txn:
            txn.put(self._key(b"desc"), desc, db=meta)
            txn.put(self._key(b"applied"), _U64.pack(max(index, self._applied)), db=meta)
        self.desc = desc
        self._applied = max(index, self._applied)

    def split(
        self,
        index: int,
        split_key: bytes,
        child_id: int,
        *,
        desc_left: bytes,
        desc_right: bytes,
        child_applied: int,
    ) -> RangeStore:
        """Cut this range at ``split_key``: it keeps ``[start, split_key)`` and its
        applied index becomes ``index``; a new range ``child_id`` takes the rest, with
        the same revisions, this range's sessions (a write retried across the split is
        still answered once) and applied index ``child_applied``. One transaction; no
        record is copied: only the in-memory index is cut."""
        engine = self.engine
        if not self.stamped:
            raise KVError(f"range {self.range_id} is unstamped: only stamped ranges split")
        if not (self.start < split_key and _below_end(split_key, self.end)):
            raise KVError(f"range {self.range_id} cannot split at {split_key!r}")
        if child_id in engine.ranges() or engine.get_state(child_id) is not None:
            raise KVError(f"range {child_id} exists already")
        child = RangeStore(
            engine, child_id, split_key, self.end, desc=desc_right, stamped=True,
            applied=child_applied, revision=self._revision, compacted=self._compacted,
            index=KeyIndex(),
        )  # fmt: skip
        dbs = engine.dbs
        with engine.env.begin(write=True) as txn:
            child.write_meta(txn)
            cur = txn.cursor(db=dbs.sessions)
            copies = []
            ok = cur.set_range(self._sessions)
            while ok and bytes(cur.key()).startswith(self._sessions):
                copies.append((child._sessions + bytes(cur.key())[8:], bytes(cur.value())))
                ok = cur.next()
            for k, v in copies:
                txn.put(k, v, db=dbs.sessions)
            meta = dbs.meta
            txn.put(self._key(b"end"), split_key, db=meta)
            txn.put(self._key(b"desc"), desc_left, db=meta)
            txn.put(self._key(b"applied"), _U64.pack(index), db=meta)
        child._index = self._index.split_off(split_key)
        self.end, self.desc, self._applied = split_key, desc_left, index
        self._whole = False
        engine.adopt(child)
        return child

    # -- reads -------------------------------------------------------------------------------

    def range(self, req: RangeRequest) -> RangeResponse:
        """Serve a read from the last applied state (linearizable when the caller waited
        for a ReadIndex first). Raises ``CompactedError``, ``FutureRevisionError`` or
        ``OutOfRangeError``."""
        if not self._whole:
            bad = outside(req, self.start, self.end)
            if bad is not None:
                raise OutOfRangeError(self.range_id, bad, self.start, self.end)
        current = self._revision
        engine = self.engine
        with engine.env.begin() as txn:
            return read_range(txn, engine.dbs, self._index, req, current, self._compacted, current)

    def get(self, key: bytes, revision: int = 0) -> KeyValue | None:
        kvs = self.range(RangeRequest(key, revision=revision)).kvs
        return kvs[0] if kvs else None

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> Iterator[bytes]:
        """Chunks (about 1 MiB each) of this range as it is now: the revisions its index
        holds are taken, and a read transaction opened, in this call; the chunks may be
        consumed later, on any thread, while writes go on. The first chunk names the
        applied index (``snapshot_index``)."""
        engine = self.engine
        revs = sorted(self._index.all_revs())
        txn = engine.env.begin()
        head = [
            _SNAP_MAGIC, _SNAP_FORMAT, self._applied, self._revision, self._compacted,
            self.start, self.end, self.desc, self.stamped,
        ]  # fmt: skip
        return _stream(txn, engine.dbs, head, revs, self._sessions)


def _stream(txn: Any, dbs: Any, head: list[Any], revs: list[int], prefix: bytes) -> Iterator[bytes]:
    try:
        first = pack(head)
        crc = zlib.crc32(first)
        records = 0
        yield first
        batch: list[bytes] = []
        size = 0

        def flush(code: int) -> bytes:
            nonlocal crc, batch, size
            chunk = pack([code, batch])
            crc = zlib.crc32(chunk, crc)
            batch, size = [], 0
            return chunk

        for rev in revs:
            k = rev_key(rev)
            v = txn.get(k, db=dbs.rev)
            assert v is not None, f"the index points at a missing revision {k.hex()}"
            batch += (k, bytes(v))
            size += len(v) + 24
            records += 1
            if size >= _SNAP_CHUNK:
                yield flush(_RECORDS)
        if batch:
            yield flush(_RECORDS)
        cur = txn.cursor(db=dbs.sessions)
        ok = cur.set_range(prefix)
        while ok and bytes(cur.key()).startswith(prefix):
            v = bytes(cur.value())
            batch += (bytes(cur.key())[8:], v)
            size += len(v) + 16
            records += 1
            if size >= _SNAP_CHUNK:
                yield flush(_SESSIONS)
            ok = cur.next()
        if batch:
            yield flush(_SESSIONS)
        yield pack(["end", records, crc])
    finally:
        txn.abort()


def snapshot_index(first_chunk: bytes) -> int:
    """The applied index a snapshot covers, read from its first chunk."""
    head = unpack(first_chunk)
    if not isinstance(head, list) or head[:2] != [_SNAP_MAGIC, _SNAP_FORMAT]:
        raise SnapshotError("not a quorumkv range snapshot of a known format")
    return int(head[2])


def install_range(
    engine: Engine,
    txn: Any,
    range_id: int,
    old: RangeStore | None,
    chunks: Iterable[bytes],
    others: list[RangeStore],
) -> RangeStore:
    """Inside ``txn``: replace range ``range_id`` (``old``, if held) by the snapshot in
    ``chunks``; the new ``RangeStore``, not yet registered. Raises ``SnapshotError`` (the
    caller's transaction then aborts, so nothing changed)."""
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        raise SnapshotError("empty snapshot")
    snapshot_index(first)
    try:
        _, _, applied, revision, compacted, start, end, desc, stamped = unpack(first)
    except (TypeError, ValueError) as e:
        raise SnapshotError(f"bad snapshot head: {e!r}") from None
    for other in others:
        if (not other.end or start < other.end) and (not end or other.start < end):
            raise SnapshotError(f"snapshot bounds overlap range {other.range_id}")
    if old is not None:
        old.delete_all(txn)
    dbs = engine.dbs
    crc = zlib.crc32(first)
    records = 0
    pairs: list[tuple[bytes, int]] = []
    prefix = _U64.pack(range_id)
    done = False
    last = _RECORDS
    for chunk in it:
        if done:
            raise SnapshotError("data after the end of the snapshot")
        try:
            doc = unpack(chunk)
        except (ValueError, TypeError) as e:
            raise SnapshotError(f"undecodable snapshot chunk: {e!r}") from None
        if not isinstance(doc, list) or len(doc) < 2:
            raise SnapshotError("malformed snapshot chunk")
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
        if code not in (_RECORDS, _SESSIONS) or code < last:
            raise SnapshotError(f"snapshot chunk for unknown or misplaced part {code!r}")
        last = code
        items = list(zip(flat[::2], flat[1::2], strict=True))
        records += len(items)
        if code == _RECORDS:
            for k, v in items:
                if not txn.put(k, v, db=dbs.rev, overwrite=False):
                    raise SnapshotError(f"snapshot record {bytes(k).hex()} exists already")
                rec = unpack(v)
                pairs.append((rec[0], rev_from_key(bytes(k), bool(rec[6]))))
        else:
            for k, v in items:
                txn.put(prefix + k, v, db=dbs.sessions)
    if not done:
        raise SnapshotError("snapshot ended early (no end record)")
    pairs.sort(key=lambda p: p[1])
    new = RangeStore(
        engine, range_id, start, end, desc=desc, stamped=bool(stamped), applied=applied,
        revision=revision, compacted=compacted, index=KeyIndex.rebuild(pairs),
    )  # fmt: skip
    new.write_meta(txn)
    return new
