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
The range also remembers, in memory, the last sequence number it applied for each
client seen lately (``_seqs``): a command with a higher one is new, and its session is
not read back. The memory is never above what the sessions hold (it is set with them,
starts empty for every opened, restored or split-off range, and is forgotten when a
batch rolls back), so it can only save a read, never skip a retry's answer.
Empty data (Raft's no-ops, configuration entries) only moves the applied index; entries
at or below it are skipped (None), so replaying an older part of the log is harmless.

Some refusals leave no session behind, so that the client's retry of the same sequence
number runs for real where it belongs:

* a key outside ``[start, end)`` (the range split or moved since the client routed the
  request): ``OutOfRangeError``, checked for every key a request touches (compares and
  operations of nested txns included); skipped entirely for a range that is the whole
  keyspace, which costs the unstamped hot path nothing;
* a stamp not above the range's current revision: ``StaleStampError``;
* a stamped command on an unstamped range, or an unstamped one on a stamped range
  (whose revisions must all come from the allocator, or two ranges' records could
  collide), and an entry of the server's own (``ADMIN_PREFIX``) or any other that
  begins with 0xc1 but is no stamp: ``MalformedRequestError``.

The first two are judged after the session lookup: a retry of a command that was
applied is answered from its session, wherever and however late it arrives.

Reads (``range``, ``get``) come from the in-memory ``KeyIndex`` and the records, see the
last applied batch, and refuse keys outside the bounds the same way. ``split`` cuts the
range in two without copying a record. ``snapshot`` streams the range (``_snap``: its
records as its index held them when called, read in one read transaction opened then,
and its sessions); ``Engine.restore_range`` installs such a stream.

This module must never commit part of a batch, move the applied index without the data
it covers, touch another range's records or sessions, or import the Raft core.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lmdb

from quorumkv.errors import OutOfRangeError, StaleStampError
from quorumkv.kv._codec import (
    Result,
    decode_entry,
    decode_result,
    encode_put_response,
    encode_result,
)
from quorumkv.kv._errors import KVError, MalformedRequestError, StoreFullError
from quorumkv.kv._exec import Executor, read_range
from quorumkv.kv._index import REV_KEY_BYTES, KeyIndex, rev_key
from quorumkv.kv._snap import SnapHead, stream
from quorumkv.kv._types import (
    ALL_KEYS,
    DeleteRangeRequest,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    Request,
    TxnRequest,
)

if TYPE_CHECKING:
    from quorumkv.kv._engine import Engine

SESSIONS_REMEMBERED = 1 << 16
"""The most clients whose last applied seq a range remembers; over it, it starts over."""
_U64 = struct.Struct(">Q")
STAMP_PREFIX = b"\xc1\x01"
"""A stamped command: the prefix, the revision as a u64, then the command. 0xc1 is the
one byte msgpack never uses, so it cannot begin a plain command."""
ADMIN_PREFIX = b"\xc1\x02"
"""An entry the server applies itself (a split); never a command of this machine."""


def stamp_command(revision: int, data: bytes) -> bytes:
    """``data`` (an encoded command) to be applied at main revision ``revision``."""
    return STAMP_PREFIX + _U64.pack(revision) + data


def _below_end(key: bytes, end: bytes) -> bool:
    return not end or key < end


def outside(req: Request, start: bytes, end: bytes) -> bytes | None:
    """The first key ``req`` touches outside ``[start, end)``, or None: its key, or for
    an interval that runs past ``end``, ``end`` itself (the first key beyond it)."""
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
        return None if not end or range_end <= end else end
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
        "_dbs",
        "_index",
        "_revision",
        "_seqs",
        "_sessions",
        "_whole",
        "desc",
        "dropped",
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
        index.share_memory(engine.remembered)
        self._whole = not start and not end
        """The whole keyspace: no bounds to check, and the only range of its engine."""
        self._sessions = _U64.pack(range_id)
        self._seqs: dict[int, int] = {}
        """Client id -> the last seq this range applied for it, for the clients seen
        lately (``SESSIONS_REMEMBERED`` at most): a write with a higher seq needs no read
        of its session. Forgotten when a batch rolls back."""
        self._dbs = engine.dbs
        self.dropped = False
        """Set by ``Engine.drop_range``: the object refuses every further call."""

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

    def size_bytes(self) -> int:
        """The bytes of this range's records (every surviving revision: its engine key
        and packed record), kept as they are written, compacted, split and loaded."""
        return self._index.size_bytes()

    def stats(self) -> dict[str, int]:
        """This range's records (``rev``), index revisions and keys, sessions, and the
        bytes of the whole engine file in use."""
        with self.engine.reading() as txn:
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

    def _check_live(self) -> None:
        if self.dropped:
            raise KVError(f"range {self.range_id} was dropped from its engine")

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
        self._check_live()
        engine = self.engine
        if engine.round is not None:
            return self._apply_in_round(engine.round, entries, encoded, before_commit)
        index = self._index
        index.begin()
        try:
            with engine.env.begin(write=True) as txn:
                results, applied, ex = self._run(txn, entries, encoded)
                if before_commit is not None:
                    before_commit(results)
        except lmdb.MapFullError:
            self._forget_batch()
            raise self._full() from None
        except BaseException:
            self._forget_batch()
            raise
        index.commit()
        self._applied, self._revision, self._compacted = applied, ex.current, ex.compacted
        return results

    def _forget_batch(self) -> None:
        """The batch's transaction aborted: undo its index changes, and forget the
        seqs remembered, which may name sessions the engine no longer has."""
        self._index.rollback()
        self._seqs.clear()

    def _apply_in_round(
        self,
        txn: Any,
        entries: Sequence[tuple[int, bytes]],
        encoded: bool,
        before_commit: Callable[[list[Any]], None] | None,
    ) -> list[Any]:
        """``apply`` inside the engine's open round (``Engine.begin_round``): the writes
        join the round's one transaction; the index's journal and this range's state
        are settled when the round commits, or undone if it aborts (which any failure
        here does, for every range in the round)."""
        engine = self.engine
        index = self._index
        if self.range_id not in engine.pending:
            index.begin()
            state = (self._applied, self._revision, self._compacted)

            def undo() -> None:
                self._forget_batch()
                self._applied, self._revision, self._compacted = state

            engine.pending[self.range_id] = (index.commit, undo)
        engine.round_entries += len(entries)
        try:
            results, applied, ex = self._run(txn, entries, encoded)
            if before_commit is not None:
                before_commit(results)
        except lmdb.MapFullError:
            engine.abort_round()
            raise self._full() from None
        except BaseException:
            engine.abort_round()
            raise
        self._applied, self._revision, self._compacted = applied, ex.current, ex.compacted
        return results

    def _run(
        self, txn: Any, entries: Sequence[tuple[int, bytes]], encoded: bool
    ) -> tuple[list[Any], int, Executor]:
        """Apply ``entries`` inside ``txn``: the results, the applied index, the executor
        (its revisions)."""
        results: list[Result | None] = []
        applied = self._applied
        dbs = self._dbs
        ex = Executor(
            txn, dbs, self._index, self._revision, self._compacted,
            append=not self.stamped, walk_index=not self._whole,
        )  # fmt: skip
        sessions = txn.cursor(db=dbs.sessions)  # a cursor's put parses no keywords
        for i, data in entries:
            if i <= applied:
                results.append(None)
                continue
            applied = i
            results.append(self._apply_one(sessions, ex, data, encoded) if data else None)
        meta = dbs.meta
        txn.put(self._key(b"applied"), _U64.pack(applied), db=meta)
        txn.put(self._key(b"revision"), _U64.pack(ex.current), db=meta)
        txn.put(self._key(b"compacted"), _U64.pack(ex.compacted), db=meta)
        return results, applied, ex

    def _full(self) -> StoreFullError:
        return StoreFullError(
            f"{self.engine.path}: LMDB map is full; reopen with a larger "
            f"map_size (now {self.engine.env.info()['map_size']})"
        )

    def _refuse(self, err: KVError, encoded: bool) -> Any:
        return encode_result(err) if encoded else err

    def _unwrap(self, data: bytes) -> tuple[int, bytes, KVError | None]:
        """The stamp and the command of an entry that is stamped, or meant for a stamped
        range, or begins with 0xc1; or why the entry is refused."""
        if data[:2] == STAMP_PREFIX and len(data) >= 10:
            (stamp,) = _U64.unpack_from(data, 2)
            if not self.stamped:
                why = f"a revision-stamped command on range {self.range_id}, which is unstamped"
            elif not stamp:
                why = "a revision stamp of 0"
            else:
                return stamp, data[10:], None
        elif data[0] == 0xC1:  # ADMIN_PREFIX (the server's own entries), or damage
            why = f"not a key-value command (it begins with {data[:2].hex()})"
        else:
            why = (
                f"an unstamped command on range {self.range_id}, whose writes must carry "
                "revision stamps"
            )
        return 0, data, MalformedRequestError(why)

    def _apply_one(self, sessions: Any, ex: Executor, data: bytes, encoded: bool) -> Any:
        """Apply one entry's command with ``ex``; ``sessions``: a cursor on the sessions."""
        # The hot path of an unstamped store: one byte and one flag checked, and
        # nothing of stamps or bounds beyond two falsy tests; a plain put is never
        # made a request or a response object (``decode_entry``, ``Executor.put``).
        stamp = 0
        if data[0] == 0xC1 or self.stamped:
            stamp, data, refused = self._unwrap(data)
            if refused is not None:
                return self._refuse(refused, encoded)
        try:
            cmd = decode_entry(data)
        except KVError as e:
            return self._refuse(e, encoded)
        if type(cmd) is tuple:
            client, seq, key, value, lease = cmd
            request: Request | None = None
        else:
            client, seq, request = cmd.client, cmd.seq, cmd.request  # type: ignore[union-attr]
        session = self._sessions + _U64.pack(client)
        seqs = self._seqs
        if client:
            known = seqs.get(client)
            # A seq above the last one applied for this client is new: no read needed.
            last = sessions.get(session) if known is None or seq <= known else None
            if last is not None:
                last_seq = _U64.unpack_from(last)[0]
                if seq < last_seq:
                    return None  # the client has moved on; nobody waits for this answer
                if seq == last_seq:
                    stored = bytes(last[8:])
                    return stored if encoded else decode_result(stored)
        if stamp and stamp <= ex.current:
            return self._refuse(StaleStampError(stamp, ex.current), encoded)
        if not self._whole:
            start, end = self.start, self.end
            if request is None:
                bad = None if start <= key and _below_end(key, end) else key
            else:
                bad = outside(request, start, end)
            if bad is not None:
                err = OutOfRangeError(self.range_id, bad, start, end)
                return self._refuse(err, encoded)
        enc: bytes
        result: Result
        if request is None:
            revision = ex.put(key, value, lease, stamp)
            if not client and not encoded:
                return PutResponse(revision)
            enc = encode_put_response(revision)
        else:
            try:
                result = ex.run(request, stamp)
            except KVError as e:
                result = e
            if not client and not encoded:
                return result
            enc = encode_result(result)
        if client:
            sessions.put(session, _U64.pack(seq) + enc)
            if len(seqs) >= SESSIONS_REMEMBERED and client not in seqs:
                seqs.clear()
            seqs[client] = seq
        if encoded:
            return enc
        return PutResponse(revision) if request is None else result

    def set_desc(self, index: int, desc: bytes) -> None:
        """Record a new descriptor and move the applied index to ``index`` (a replica
        change), in one transaction; an ``index`` at or below the applied index leaves
        the applied index where it is."""
        self._check_live()
        meta = self._dbs.meta
        with self.engine.outside_round(), self.engine.env.begin(write=True) as txn:
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
        record is copied: only the in-memory index is cut (and the moved records' sizes
        are read, for the halves' ``size_bytes``). Raises ``KVError`` (nothing
        changed) for a split key not strictly inside ``(start, end)``, a child id the
        engine holds, an ``index`` not above the applied index, or an unstamped range
        (the two halves would number their revisions alike: their records collide)."""
        self._check_live()
        engine = self.engine
        if not (self.start < split_key and _below_end(split_key, self.end)):
            raise KVError(f"range {self.range_id} cannot split at {split_key!r}")
        if not self.stamped:
            raise KVError(f"range {self.range_id} is unstamped: only stamped ranges split")
        if index <= self._applied:
            raise KVError(
                f"range {self.range_id}: a split at index {index}, which is applied already "
                f"(applied index {self._applied})"
            )
        if child_id in engine.ranges() or engine.get_state(child_id) is not None:
            raise KVError(f"range {child_id} exists already")
        child = RangeStore(
            engine, child_id, split_key, self.end, desc=desc_right, stamped=True,
            applied=child_applied, revision=self._revision, compacted=self._compacted,
            index=KeyIndex(),
        )  # fmt: skip
        dbs = engine.dbs
        with engine.outside_round(), engine.env.begin(write=True) as txn:
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
        with engine.reading() as txn:
            # The child's size: each record it takes is read (one lookup per revision
            # moved, as the cut itself is O(keys moved)), not copied.
            def size(rev: int) -> int:
                data = txn.get(rev_key(rev), db=dbs.rev)
                return 0 if data is None else REV_KEY_BYTES + len(data)

            child._index = self._index.split_off(split_key, size)
            child._index.share_memory(engine.remembered)
        self.end, self.desc, self._applied = split_key, desc_left, index
        self._whole = False
        engine.adopt(child)
        return child

    # -- reads -------------------------------------------------------------------------------

    def range(self, req: RangeRequest, settled_through: int = 0) -> RangeResponse:
        """Serve a read from the last applied state (linearizable when the caller waited
        for a ReadIndex first). Raises ``CompactedError``, ``FutureRevisionError`` or
        ``OutOfRangeError``. ``settled_through``: the caller knows that no write stamped
        at or below it can still come to this range, so reads up to it are served (the
        range as it is, at that revision) though the range's own revision is lower."""
        self._check_live()
        if not self._whole:
            bad = outside(req, self.start, self.end)
            if bad is not None:
                raise OutOfRangeError(self.range_id, bad, self.start, self.end)
        current = max(self._revision, settled_through)
        engine = self.engine
        with engine.reading() as txn:
            return read_range(txn, engine.dbs, self._index, req, current, self._compacted, current)

    def get(self, key: bytes, revision: int = 0) -> KeyValue | None:
        kvs = self.range(RangeRequest(key, revision=revision)).kvs
        return kvs[0] if kvs else None

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> Iterator[bytes]:
        """Chunks (about 1 MiB each) of this range as it is now: the revisions its index
        holds are taken, and a read transaction opened, in this call; the chunks may be
        consumed later, on any thread, while writes go on. The first chunk names the
        applied index (``snapshot_index``). Costs the caller one pass over the index
        (a copy of its revisions); the sorting and reading happen as chunks are taken."""
        self._check_live()
        engine = self.engine
        engine.end_round()  # the snapshot's read transaction sees committed data only
        revs = self._index.all_revs()
        txn = engine.env.begin()
        head = SnapHead(
            self._applied, self._revision, self._compacted, self.start, self.end, self.desc,
            self.stamped,
        )  # fmt: skip
        return stream(txn, self._dbs, head, revs, self._sessions)
