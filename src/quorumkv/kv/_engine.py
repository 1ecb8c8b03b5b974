"""``Engine``: one LMDB environment per node, holding the state of every group it hosts.

Theory of operation
-------------------
A node of a sharded cluster hosts many Raft groups. They share ONE environment, so a
node never opens an environment per group, and a split copies no data: every range's
records live in one ``rev`` database keyed by revision, and a range is its bounds, its
own in-memory ``KeyIndex`` (``_index``) and a few metadata values. Splitting a range
cuts its index at the split key and writes the metadata of both halves.

Databases (format 3):

``rev``
    records by revision, as ``_exec`` describes. In a sharded cluster revisions come
    stamped from the meta range's allocator and are unique cluster-wide, so the records
    of different ranges never collide (their revisions interleave, so a stamped range
    puts its records in place rather than appending them).
``meta``
    ``b"format"``, and per group ``b"r" + u64 id + name``: ``kind`` (``kv`` or
    ``state``), ``applied``; for a range of keys ``revision``, ``compacted``, ``start``,
    ``end`` (empty: the end of the keyspace), ``stamped`` and ``desc`` (an opaque
    descriptor the server owns); for a group that is not a range of keys (the meta
    range) its whole state as one ``state`` blob.
``sessions``
    ``u64 range id + u64 client id`` -> 8 bytes of sequence number, then the encoded
    result (exactly-once per range; a split copies its parent's sessions).

Opening rebuilds every range's index in ONE pass over ``rev``: each record goes to the
range whose bounds hold its key (a bisection over the sorted starts); a record no range
holds (which no operation leaves) is counted (``orphans``), logged and deleted in the
opening transaction. A format 1 or 2 store (one state machine, no ranges) becomes range
1 with the whole keyspace, unstamped, in place.

Several ranges of keys may share an engine only if all of them are stamped: a range
that numbers its own revisions (``MVCCStore``, an unsharded node) would write the same
revisions as its neighbours. ``create_range`` and ``restore_range`` refuse otherwise,
and only a stamped range splits.

``restore_range`` installs a snapshot (``_snap``) in ONE write transaction on the
caller's thread, so a big one stalls every other writer of the node meanwhile; it
keeps the ``RangeStore`` object of a range it replaces (its state is swapped in after
the commit), so the server's holders of it stay valid.

``RangeStore`` (``_range``) is one range's view: its reads, its applies, its split and
snapshots. This module owns the environment, the per-group metadata layout, opening and
upgrading, and installing or dropping a range whole. It must never decide what a command
means (``_range`` and ``_exec`` do) and never let two ranges' records, sessions or
metadata mix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from quorumkv.kv._codec import unpack
from quorumkv.kv._errors import KVError, SnapshotError
from quorumkv.kv._exec import Dbs
from quorumkv.kv._index import KeyIndex, append_rev, rev_from_key
from quorumkv.kv._range import RangeStore
from quorumkv.kv._snap import install, read_head

log = logging.getLogger("quorumkv.kv")

DEFAULT_MAP_SIZE = 64 << 30
"""Address space reserved for the engine (64 GiB). Only pages in use take disk or RAM."""

_U64 = struct.Struct(">Q")
FORMAT = 3
"""1 kept the key index in LMDB; 2 kept it in memory, one state machine per
environment; 3 holds many groups, their metadata and sessions under their ids."""
_DB_NAMES = ("rev", "meta", "sessions")
_FORMAT_KEY = b"format"
KIND_KV, KIND_STATE = b"kv", b"state"


def meta_key(group: int, name: bytes) -> bytes:
    return b"r" + _U64.pack(group) + name


def session_prefix(group: int) -> bytes:
    return _U64.pack(group)


def u64(data: Any) -> int:
    assert data is not None and len(data) == 8, f"bad meta value {data!r}"
    return int(_U64.unpack(bytes(data))[0])


def _upgrade_from_1(env: Any, txn: Any, dbs: Dbs) -> None:
    """Format 1 -> 2: drop the index database, rewrite every session record."""
    txn.drop(env.open_db(b"index", txn=txn, dupsort=True), delete=True)
    sessions = [(bytes(k), unpack(v)) for k, v in txn.cursor(db=dbs.sessions).iternext()]
    for k, (seq, result) in sessions:
        txn.put(k, _U64.pack(seq) + result, db=dbs.sessions)


def _upgrade_from_2(txn: Any, dbs: Dbs) -> None:
    """Format 2 -> 3: the one state machine becomes range 1, the whole keyspace."""
    meta = dbs.meta
    values = {}
    for name in (b"applied", b"revision", b"compacted"):
        values[name] = txn.get(name, db=meta) or _U64.pack(0 if name != b"revision" else 1)
        txn.delete(name, db=meta)
    for name, v in values.items():
        txn.put(meta_key(1, name), v, db=meta)
    txn.put(meta_key(1, b"kind"), KIND_KV, db=meta)
    txn.put(meta_key(1, b"start"), b"", db=meta)
    txn.put(meta_key(1, b"end"), b"", db=meta)
    txn.put(meta_key(1, b"stamped"), b"\x00", db=meta)
    txn.put(meta_key(1, b"desc"), b"", db=meta)
    old = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=dbs.sessions).iternext()]
    for k, _ in old:
        txn.delete(k, db=dbs.sessions)
    prefix = session_prefix(1)
    for k, v in old:
        txn.put(prefix + k, v, db=dbs.sessions)


def _read_groups(txn: Any, meta: Any) -> dict[int, dict[bytes, bytes]]:
    groups: dict[int, dict[bytes, bytes]] = {}
    cur = txn.cursor(db=meta)
    ok = cur.set_range(b"r")
    while ok:
        k = bytes(cur.key())
        if not k.startswith(b"r") or len(k) < 9:
            break
        groups.setdefault(u64(k[1:9]), {})[k[9:]] = bytes(cur.value())
        ok = cur.next()
    return groups


class Engine:
    """The node's one LMDB environment at ``path`` (a directory, created if missing).

    Not thread-safe: one thread applies and reads; snapshot chunks may be consumed on
    any thread.
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
        self.env: Any = lmdb.open(
            str(self.path), map_size=map_size, max_dbs=len(_DB_NAMES) + 1, sync=sync,
            metasync=metasync, readahead=False, meminit=False,
        )  # fmt: skip
        self._ranges: dict[int, RangeStore] = {}
        self._states: dict[int, tuple[int, bytes]] = {}
        self.round: Any = None
        """The write transaction of the open round (``begin_round``), or None."""
        self.pending: dict[int, tuple[Callable[[], None], Callable[[], None]]] = {}
        """Per range applied in the open round: what to do once it commits, and what to
        undo if it aborts."""
        self.round_entries = 0
        """Entries applied in the open round (``RangeStore.apply`` counts them)."""
        self.broken: BaseException | None = None
        """Why a round's commit failed: the engine then refuses every new round."""
        self.orphans = 0
        """Records that no range held when the engine opened (deleted then)."""
        self.remembered: dict[bytes, tuple[int, int, int]] = {}
        """What every range's index remembers of its newest records (``KeyIndex``)."""
        try:
            self._open()
        except BaseException:
            self.env.close()  # never left open: a second open in this process would break
            raise  # LMDB's locks

    def _open(self) -> None:
        with self.env.begin(write=True) as txn:
            self.dbs = Dbs(*(self.env.open_db(n.encode(), txn=txn) for n in _DB_NAMES))
            fmt = txn.get(_FORMAT_KEY, db=self.dbs.meta)
            if fmt is None:
                # Fresh, or format 0 (a store of the first layout had no format key but
                # an applied index): both are treated by what they hold.
                if txn.get(b"applied", db=self.dbs.meta) is not None:
                    _upgrade_from_2(txn, self.dbs)
            elif u64(fmt) == 1:
                _upgrade_from_1(self.env, txn, self.dbs)
                _upgrade_from_2(txn, self.dbs)
            elif u64(fmt) == 2:
                _upgrade_from_2(txn, self.dbs)
            elif u64(fmt) != FORMAT:
                raise KVError(f"{self.path}: unknown store format {u64(fmt)}")
            txn.put(_FORMAT_KEY, _U64.pack(FORMAT), db=self.dbs.meta)
            self._open_groups(txn)

    def _open_groups(self, txn: Any) -> None:
        kv: list[tuple[bytes, int, dict[bytes, bytes]]] = []
        for gid, values in sorted(_read_groups(txn, self.dbs.meta).items()):
            kind = values.get(b"kind")
            if kind == KIND_STATE:
                self._states[gid] = (u64(values[b"applied"]), values.get(b"state", b""))
            elif kind == KIND_KV:
                kv.append((values[b"start"], gid, values))
            else:
                raise KVError(f"{self.path}: group {gid} has unknown kind {kind!r}")
        kv.sort()
        starts = [s for s, _, _ in kv]
        ends = [v[b"end"] for _, _, v in kv]
        maps: list[dict[bytes, Any]] = [{} for _ in kv]
        counts = [0] * len(kv)
        sizes = [0] * len(kv)
        orphans: list[bytes] = []
        whole = len(kv) == 1 and not starts[0] and not ends[0]
        for k, v in txn.cursor(db=self.dbs.rev).iternext():
            # As ``KeyIndex.rebuild``, into the map of the range that holds the key.
            doc = unpack(v)
            key = doc[0]
            if whole:
                i = 0
            else:
                i = bisect_right(starts, key) - 1
                if i < 0 or (ends[i] and key >= ends[i]):
                    orphans.append(bytes(k))
                    continue
            counts[i] += 1
            sizes[i] += len(k) + len(v)
            append_rev(maps[i], key, rev_from_key(bytes(k), bool(doc[6])))
        self.orphans = len(orphans)
        if orphans:
            log.warning("%s: %d records belong to no range; deleted", self.path, len(orphans))
            for k in orphans:
                txn.delete(k, db=self.dbs.rev)
        for (start, gid, values), revs, n, nbytes in zip(kv, maps, counts, sizes, strict=True):
            self._ranges[gid] = RangeStore(
                self,
                gid,
                start,
                values[b"end"],
                desc=values.get(b"desc", b""),
                stamped=values.get(b"stamped", b"\x00") == b"\x01",
                applied=u64(values[b"applied"]),
                revision=u64(values[b"revision"]),
                compacted=u64(values[b"compacted"]),
                index=KeyIndex.from_revs(revs, n, nbytes),
            )

    # -- rounds ----------------------------------------------------------------------

    def begin_round(self) -> None:
        """Open one write transaction that every ``RangeStore.apply`` and ``put_state``
        joins until ``end_round``, or join the one open already: one commit, and one
        fdatasync, for every group and every drive round of the node up to then (as
        the WAL's one fsync covers every group). A node under a WAL may leave the round
        open across drive rounds and commit it on a timer, as etcd batches its backend
        commits: what is applied but not committed is in the log, and ``sync`` (which a
        log compaction calls first) commits it. Reads meanwhile see the round's writes
        (``reading``). Operations with transactions of their own (a split, an install,
        a new range, a snapshot) commit the round so far first."""
        if self.round is None:
            if self.broken is not None:
                raise KVError(f"{self.path}: a commit failed ({self.broken}); reopen the store")
            self.round = self.env.begin(write=True)
            self.round_entries = 0

    def end_round(self) -> None:
        """Commit the open round (nothing to do without one); then settle every range
        applied in it. If the commit fails, they are undone and the error raised."""
        txn, self.round = self.round, None
        if txn is None:
            return
        pending, self.pending = self.pending, {}
        try:
            txn.commit()
        except BaseException as e:
            for _, undo in pending.values():
                undo()
            # Applies were answered before this commit; the engine cannot go on from
            # a state its owner has moved past, so it refuses all from now on.
            self.broken = e
            raise
        for finish, _ in pending.values():
            finish()

    def abort_round(self) -> None:
        """Abort the open round: nothing of it reaches the engine or the indexes."""
        txn, self.round = self.round, None
        pending, self.pending = self.pending, {}
        if txn is not None:
            txn.abort()
        for _, undo in pending.values():
            undo()

    @contextlib.contextmanager
    def outside_round(self) -> Iterator[None]:
        """Commit the open round's work so far, run the body (which opens transactions
        of its own), then open a new round if one was open."""
        was = self.round is not None
        if was:
            self.end_round()
        try:
            yield
        finally:
            if was:
                self.begin_round()

    @contextlib.contextmanager
    def writing(self) -> Iterator[Any]:
        """The open round's transaction (committed with it), or one of its own."""
        if self.round is not None:
            yield self.round
        else:
            with self.env.begin(write=True) as txn:
                yield txn

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """A transaction that sees every applied batch: the open round's, or a read one."""
        if self.round is not None:
            yield self.round
        else:
            with self.env.begin() as txn:
                yield txn

    # -- groups ----------------------------------------------------------------------

    def ranges(self) -> list[int]:
        """The ids of the ranges of keys held, in id order."""
        return sorted(self._ranges)

    def range(self, range_id: int) -> RangeStore:
        return self._ranges[range_id]

    def _conflict(self, range_id: int, start: bytes, end: bytes, stamped: bool) -> str | None:
        """Why range ``range_id`` cannot hold ``[start, end)`` next to the other ranges
        (None: it can)."""
        if end and end <= start:
            return f"range {range_id}: start {start!r} is not below end {end!r}"
        for other in self._ranges.values():
            if other.range_id == range_id:
                continue
            if (not other.end or start < other.end) and (not end or other.start < end):
                return f"range {range_id} [{start!r}, {end!r}) overlaps range {other.range_id}"
            if not (stamped and other.stamped):
                return (
                    "an engine holds several ranges of keys only if all of them are stamped "
                    "(their revisions come from one allocator, so their records never collide)"
                )
        return None

    def _check_bounds(self, range_id: int, start: bytes, end: bytes, stamped: bool) -> None:
        if range_id in self._ranges or range_id in self._states:
            raise KVError(f"{self.path}: group {range_id} exists already")
        why = self._conflict(range_id, start, end, stamped)
        if why is not None:
            raise KVError(why)

    def create_range(
        self,
        range_id: int,
        start: bytes,
        end: bytes,
        *,
        applied: int = 0,
        revision: int = 1,
        compacted: int = 0,
        desc: bytes = b"",
        stamped: bool = False,
    ) -> RangeStore:
        """A new, empty range of keys ``[start, end)`` (``end`` empty: to the end)."""
        self._check_bounds(range_id, start, end, stamped)
        rs = RangeStore(
            self, range_id, start, end, desc=desc, stamped=stamped, applied=applied,
            revision=revision, compacted=compacted, index=KeyIndex(),
        )  # fmt: skip
        with self.outside_round(), self.env.begin(write=True) as txn:
            rs.write_meta(txn)
        self._ranges[range_id] = rs
        return rs

    def adopt(self, rs: RangeStore) -> None:
        """Register a range made by ``RangeStore.split`` (its metadata is committed)."""
        assert rs.range_id not in self._ranges
        self._ranges[rs.range_id] = rs

    def drop_range(self, range_id: int) -> None:
        """Delete a range's records (found through its index), sessions and metadata,
        in one transaction. Its ``RangeStore`` refuses every call from then on. Raises
        ``KeyError`` for a range the engine does not hold."""
        rs = self._ranges[range_id]
        with self.outside_round(), self.env.begin(write=True) as txn:
            rs.delete_all(txn)
        del self._ranges[range_id]
        rs.dropped = True

    def restore_range(self, range_id: int, chunks: Iterable[bytes]) -> RangeStore:
        """Install a ``RangeStore.snapshot`` as range ``range_id``, atomically: one
        transaction replaces the range's records, sessions and metadata, and commits
        only if the whole stream verifies; then the range's index is swapped. The
        ``RangeStore`` object of an existing range is updated in place (holders of it
        stay valid). Runs on the caller's thread: a big snapshot holds the engine's one
        writer for its duration. Raises ``SnapshotError``; then nothing changed."""
        old = self._ranges.get(range_id)
        if old is None and range_id in self._states:
            raise SnapshotError(f"group {range_id} is not a range of keys")
        rest = iter(chunks)
        first = next(rest, None)
        if first is None:
            raise SnapshotError("empty snapshot")
        head = read_head(first)
        why = self._conflict(range_id, head.start, head.end, head.stamped)
        if why is not None:
            raise SnapshotError(f"the snapshot does not fit this engine: {why}")
        try:
            with self.outside_round(), self.env.begin(write=True) as txn:
                if old is not None:
                    old.delete_all(txn)
                index = install(txn, self.dbs, session_prefix(range_id), head, first, rest)
                new = RangeStore(
                    self, range_id, head.start, head.end, desc=head.desc, stamped=head.stamped,
                    applied=head.applied, revision=head.revision, compacted=head.compacted,
                    index=index,
                )  # fmt: skip
                new.write_meta(txn)
        except lmdb.MapFullError:
            raise SnapshotError(
                f"{self.path}: the LMDB map is full; reopen with a larger map_size "
                f"(now {self.env.info()['map_size']})"
            ) from None
        if old is None:
            self._ranges[range_id] = new
            return new
        old.replace_with(new)
        return old

    def put_state(self, group: int, applied: int, blob: bytes) -> None:
        """Store a group's whole state (one that is not a range of keys: the meta
        range) with its applied index, in one transaction."""
        if group in self._ranges:
            raise KVError(f"group {group} is a range of keys")
        meta = self.dbs.meta
        with self.writing() as txn:
            txn.put(meta_key(group, b"kind"), KIND_STATE, db=meta)
            txn.put(meta_key(group, b"applied"), _U64.pack(applied), db=meta)
            txn.put(meta_key(group, b"state"), blob, db=meta)
        self._states[group] = (applied, blob)

    def get_state(self, group: int) -> tuple[int, bytes] | None:
        return self._states.get(group)

    # -- the environment ---------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Records, metadata values and sessions of every group, and the bytes of the
        LMDB file in use."""
        with self.reading() as txn:
            out = {n: int(txn.stat(getattr(self.dbs, n))["entries"]) for n in _DB_NAMES}
        info, stat = self.env.info(), self.env.stat()
        out["used_bytes"] = int((info["last_pgno"] + 1) * stat["psize"])
        out["map_size"] = int(info["map_size"])
        return out

    def sync(self) -> None:
        """Make every committed transaction durable (a store opened with
        ``metasync=False`` calls this before the log under it is dropped), the open
        round's included."""
        self.end_round()
        self.env.sync(True)

    def close(self) -> None:
        self.abort_round()
        self.env.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
