"""The engine around its ranges: per-range compaction, snapshots taken when asked and
installed whole or not at all, dropping, records that no range holds, admin entries,
descriptors, refused splits, and ``MVCCStore.restore`` beside an open store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest

from quorumkv.errors import OutOfRangeError
from quorumkv.kv import (
    ADMIN_PREFIX,
    ALL_KEYS,
    Command,
    CompactedError,
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    Engine,
    KeyValue,
    KVError,
    MalformedRequestError,
    MVCCStore,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeStore,
    SnapshotError,
    encode_command,
    snapshot_index,
    stamp_command,
)
from quorumkv.kv import _index as index_module
from quorumkv.kv._codec import pack, unpack

MAP = 1 << 30


class Alloc:
    """One revision allocator and one log index per range, as a node's ranges see them."""

    def __init__(self) -> None:
        self.rev = 1
        self.index: dict[int, int] = {}

    def apply(self, rs: RangeStore, req: Any, client: int = 0, seq: int = 0) -> Any:
        self.rev += 1
        i = self.index[rs.range_id] = max(self.index.get(rs.range_id, 0), rs.applied_index()) + 1
        data = stamp_command(self.rev, encode_command(Command(client, seq, req)))
        (res,) = rs.apply([(i, data)])
        return res


def _two(path: Path) -> tuple[Engine, RangeStore, RangeStore]:
    e = Engine(path, map_size=MAP, sync=False)
    return (
        e,
        e.create_range(2, b"", b"m", stamped=True, desc=b"L"),
        e.create_range(3, b"m", b"", stamped=True, desc=b"R"),
    )


def _history(rs: RangeStore) -> list[Any]:
    """Every read of the whole range at every revision it can still serve."""
    out: list[Any] = []
    for rev in range(max(rs.compacted_revision(), 1), rs.revision() + 1):
        try:
            res = rs.range(RangeRequest(rs.start or b"\x00", rs.end or ALL_KEYS, revision=rev))
        except CompactedError:
            out.append(("compacted", rev))
            continue
        out.append([(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
                    for kv in res.kvs])  # fmt: skip
    return out


def _state(rs: RangeStore) -> tuple[Any, ...]:
    return (
        rs.start, rs.end, rs.desc, rs.stamped, rs.applied_index(), rs.revision(),
        rs.compacted_revision(), _history(rs), rs.stats()["sessions"], rs.stats()["rev"],
    )  # fmt: skip


def test_compacting_one_range_leaves_the_others_history(tmp_path: Path) -> None:
    e, left, right = _two(tmp_path / "kv")
    a = Alloc()
    for i in range(30):  # interleaved: the two ranges' records alternate in ``rev``
        a.apply(left, PutRequest(b"k%d" % (i % 3), b"%d" % i))
        a.apply(right, PutRequest(b"q%d" % (i % 3), b"%d" % i))
    a.apply(left, DeleteRangeRequest(b"k0"))
    right_before = _history(right)
    assert a.apply(left, CompactionRequest(left.revision())) == CompactionResponse(left.revision())
    # the left keeps k1 and k2 once each (k0's tombstone goes); the right keeps all 30
    assert left.stats()["rev"] == 2 and right.stats()["rev"] == 30
    assert e.stats()["rev"] == 32
    assert _history(right) == right_before
    with pytest.raises(CompactedError):
        left.get(b"k1", revision=10)
    e.close()
    e = Engine(tmp_path / "kv", map_size=MAP)
    assert _history(e.range(3)) == right_before and e.range(2).stats()["rev"] == 2
    e.close()


def test_a_snapshot_is_the_range_when_asked_however_late_it_is_read(tmp_path: Path) -> None:
    e, left, right = _two(tmp_path / "a")
    a = Alloc()
    for i in range(200):
        a.apply(left, PutRequest(b"k%03d" % (i % 50), b"x" * 20_000), client=5, seq=i + 1)
        a.apply(right, PutRequest(b"z%d" % i, b"w"))
    a.apply(left, CompactionRequest(left.revision() - 100))
    want = _state(left)
    chunks = left.snapshot()  # taken now...
    for i in range(60):  # ...and read after the range has moved on, history compacted
        a.apply(left, PutRequest(b"k%03d" % (i % 50), b"later"), client=5, seq=201 + i)
    a.apply(left, DeleteRangeRequest(b"k", b"l"))
    a.apply(left, CompactionRequest(left.revision()))
    parts = list(chunks)
    assert len(parts) > 4 and snapshot_index(parts[0]) == want[4]
    other = Engine(tmp_path / "b", map_size=MAP)
    got = other.restore_range(2, parts)
    assert _state(got) == want
    # The session came along: the writer's last write then is answered, not applied.
    (again,) = got.apply([(got.applied_index() + 1, stamp_command(10**6, encode_command(
        Command(5, 200, PutRequest(b"k049", b"x" * 20_000)))))])  # fmt: skip
    assert isinstance(again, PutResponse) and got.revision() == want[5]
    other.close()
    e.close()


def _flip(chunk: bytes) -> bytes:
    return chunk[:-1] + bytes([chunk[-1] ^ 1])


def _records_doc(parts: list[bytes]) -> tuple[int, list[Any]]:
    for i, p in enumerate(parts):
        doc = unpack(p)
        if isinstance(doc, list) and doc[0] == 0:
            return i, doc
    raise AssertionError("no record chunk")


def _reseal(parts: list[bytes]) -> list[bytes]:
    """``parts`` with an end record that matches them (damage the checksum cannot see)."""
    import zlib

    crc, n = 0, 0
    for p in parts[:-1]:
        crc = zlib.crc32(p, crc)
        doc = unpack(p)
        if isinstance(doc, list) and doc[0] in (0, 1) and len(doc) == 2:
            n += len(doc[1]) // 2
    return [*parts[:-1], pack(["end", n, crc])]


def _swap_records(parts: list[bytes]) -> list[bytes]:
    i, doc = _records_doc(parts)
    flat = doc[1]
    flat[0:2], flat[2:4] = flat[2:4], flat[0:2]
    return _reseal([*parts[:i], pack(doc), *parts[i + 1 :]])


def _record_outside(parts: list[bytes]) -> list[bytes]:
    i, doc = _records_doc(parts)
    rec = unpack(doc[1][1])
    rec[0] = b"zzz"  # the right range's key, in the left range's snapshot
    doc[1][1] = pack(rec)
    return _reseal([*parts[:i], pack(doc), *parts[i + 1 :]])


def _head(parts: list[bytes], **change: Any) -> list[bytes]:
    head = unpack(parts[0])
    names = ["magic", "format", "applied", "revision", "compacted", "start", "end", "desc"]
    for k, v in change.items():
        head[names.index(k)] = v
    return _reseal([pack(head), *parts[1:]])


DAMAGE: list[tuple[str, Callable[[list[bytes]], list[bytes]], str]] = [
    ("flipped byte", lambda p: [p[0], _flip(p[1]), *p[2:]], "damaged|undecodable"),
    ("truncated chunk", lambda p: [p[0], p[1][: len(p[1]) // 2], *p[2:]], "undecodable"),
    ("no end record", lambda p: p[:-1], "ended early"),
    ("lost chunk", lambda p: [p[0], *p[2:]], "damaged"),
    ("data after the end", lambda p: [*p, p[1]], "after the end"),
    ("empty", lambda p: [], "empty"),
    ("parts out of order", lambda p: _reseal([p[0], p[-2], *p[1:-2], p[-1]]), "misplaced"),
    ("records out of order", _swap_records, "out of order"),
    ("a record outside the bounds", _record_outside, "outside its range"),
    ("unknown format", lambda p: _head(p, format=2), "known format"),
    ("bounds over the right range", lambda p: _head(p, end=b"n"), "overlaps range 3"),
    ("a head of the wrong shape", lambda p: _head(p, desc=7), "malformed snapshot head"),
]


@pytest.mark.parametrize(("what", "damage", "why"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_failed_restore_leaves_the_range_as_it_was(
    tmp_path: Path, what: str, damage: Callable[[list[bytes]], list[bytes]], why: str
) -> None:
    src, left, _ = _two(tmp_path / "src")
    a = Alloc()
    for i in range(40):
        a.apply(left, PutRequest(b"k%02d" % i, b"x" * 60_000), client=1, seq=i + 1)
    parts = list(left.snapshot())
    assert len(parts) > 3
    src.close()
    e, mine, _ = _two(tmp_path / "dst")
    b = Alloc()
    b.rev = 10_000  # far from the source's revisions: no collision to blame
    b.apply(mine, PutRequest(b"mine", b"1"), client=1, seq=1)
    b.apply(mine, PutRequest(b"mine", b"2"), client=2, seq=1)
    before = _state(mine)
    with pytest.raises(SnapshotError, match=why):
        e.restore_range(2, damage(parts))
    assert _state(e.range(2)) == before and e.range(2) is mine
    e.close()
    e = Engine(tmp_path / "dst", map_size=MAP)
    assert _state(e.range(2)) == before and e.orphans == 0
    assert e.restore_range(2, parts).stats()["rev"] == 40  # the undamaged stream installs
    e.close()


def test_a_restore_colliding_with_another_ranges_record_changes_nothing(tmp_path: Path) -> None:
    src, left, _ = _two(tmp_path / "src")
    Alloc().apply(left, PutRequest(b"a", b"1"))  # revision 2
    parts = list(left.snapshot())
    src.close()
    e, _, right = _two(tmp_path / "dst")
    Alloc().apply(right, PutRequest(b"z", b"1"))  # revision 2 too: an allocator was broken
    with pytest.raises(SnapshotError, match="another range's revision"):
        e.restore_range(2, parts)
    assert e.range(2).key_count() == 0 and right.get(b"z") is not None
    e.drop_range(3)
    solo = Engine(tmp_path / "solo", map_size=MAP)
    unstamped = list(solo.create_range(1, b"x", b"y").snapshot())
    solo.close()
    with pytest.raises(SnapshotError, match="stamped"):  # an unstamped range among others
        e.restore_range(4, unstamped)
    assert e.ranges() == [2]
    e.close()


def test_drop_range_takes_its_records_sessions_and_metadata(tmp_path: Path) -> None:
    e, left, right = _two(tmp_path / "kv")
    a = Alloc()
    for i in range(10):
        a.apply(left, PutRequest(b"k%d" % i, b"v"), client=3, seq=i + 1)
        a.apply(right, PutRequest(b"q%d" % i, b"v"), client=3, seq=i + 1)
    keep = _state(right)
    meta_before = e.stats()["meta"]
    e.drop_range(2)
    assert e.ranges() == [3] and e.stats()["rev"] == 10 and e.stats()["sessions"] == 1
    assert e.stats()["meta"] == meta_before - 8
    with pytest.raises(KVError, match="dropped"):
        left.apply([(99, b"")])
    with pytest.raises(KVError, match="dropped"):
        left.get(b"k1")
    with pytest.raises(KeyError):
        e.drop_range(2)
    with pytest.raises(KeyError):
        e.range(2)
    e.close()
    e = Engine(tmp_path / "kv", map_size=MAP)
    assert e.ranges() == [3] and _state(e.range(3)) == keep and e.orphans == 0
    again = e.create_range(2, b"", b"m", stamped=True)  # the id and the bounds are free again
    assert again.key_count() == 0 and again.stats()["sessions"] == 0
    e.close()


def test_records_no_range_holds_are_deleted_when_the_engine_opens(tmp_path: Path) -> None:
    e = Engine(tmp_path / "kv", map_size=MAP)
    rs = e.create_range(2, b"", b"m", stamped=True)
    Alloc().apply(rs, PutRequest(b"a", b"1"))
    e.close()
    env = lmdb.open(str(tmp_path / "kv"), max_dbs=8, map_size=MAP)
    with env.begin(write=True) as txn:
        db = env.open_db(b"rev", txn=txn)
        record = pack([b"zz", b"lost", 7, 7, 1, 0, False])
        txn.put((7).to_bytes(8, "big") + bytes(8), record, db=db)
    env.close()
    e = Engine(tmp_path / "kv", map_size=MAP)
    assert e.orphans == 1 and e.stats()["rev"] == 1
    assert e.range(2).get(b"a") is not None
    e.close()
    e = Engine(tmp_path / "kv", map_size=MAP)
    assert e.orphans == 0
    e.close()


def test_admin_and_other_0xc1_entries_are_refused_and_move_the_applied_index(
    tmp_path: Path,
) -> None:
    with MVCCStore(tmp_path / "kv", map_size=MAP) as store:
        put = encode_command(Command(4, 1, PutRequest(b"a", b"1")))
        entries = [(1, ADMIN_PREFIX + pack(["split"])), (2, b"\xc1\x03" + bytes(8)), (3, put)]
        res = store.apply(entries)
        assert isinstance(res[0], MalformedRequestError) and "c102" in str(res[0])
        assert isinstance(res[1], MalformedRequestError)
        assert res[2] == PutResponse(2)
        assert store.applied_index() == 3 and store.revision() == 2


def test_bounds_of_reads_and_ends(tmp_path: Path) -> None:
    e, left, right = _two(tmp_path / "kv")
    Alloc().apply(left, PutRequest(b"a", b"1"))
    assert left.range(RangeRequest(b"a", b"m")).count == 1  # up to the end: inside
    assert left.range(RangeRequest.prefix(b"l")).count == 0  # [l, m): inside
    assert right.range(RangeRequest(b"m", ALL_KEYS)).count == 0  # the last range: inside
    for req, bad in [
        (RangeRequest(b"a", b"m\x00"), b"m"),  # the first key it reads beyond the end
        (RangeRequest(b"a", ALL_KEYS), b"m"),
        (RangeRequest(b"m"), b"m"),
        (RangeRequest(b"l", b"n"), b"m"),
        (RangeRequest.prefix(b""), b"m"),
    ]:
        with pytest.raises(OutOfRangeError) as info:
            left.range(req)
        assert (info.value.key, info.value.range_id, info.value.end) == (bad, 2, b"m")
    with pytest.raises(OutOfRangeError):
        right.range(RangeRequest(b"l", b"n"))
    e.close()


def test_set_desc_moves_the_applied_index_with_it(tmp_path: Path) -> None:
    e, left, _ = _two(tmp_path / "kv")
    left.set_desc(5, b"L2")
    assert (left.desc, left.applied_index()) == (b"L2", 5)
    left.set_desc(3, b"L3")  # an older index: the descriptor changes, the index does not
    assert (left.desc, left.applied_index()) == (b"L3", 5)
    e.close()
    e = Engine(tmp_path / "kv", map_size=MAP)
    assert (e.range(2).desc, e.range(2).applied_index()) == (b"L3", 5)
    e.close()


def test_refused_splits_change_nothing(tmp_path: Path) -> None:
    e, left, _ = _two(tmp_path / "kv")
    e.put_state(9, 1, b"meta")
    Alloc().apply(left, PutRequest(b"b", b"1"))
    before = _state(left)
    for child, index, key, why in [
        (3, 5, b"c", "exists"),
        (9, 5, b"c", "exists"),
        (4, 1, b"c", "applied already"),
        (4, 5, b"", "cannot split"),
        (4, 5, b"m", "cannot split"),
    ]:
        with pytest.raises(KVError, match=why):
            left.split(index, key, child, desc_left=b"", desc_right=b"", child_applied=1)
        assert _state(left) == before and e.ranges() == [2, 3]
    with MVCCStore(tmp_path / "solo", map_size=MAP) as store, pytest.raises(KVError, match="unst"):
        store.rs.split(1, b"m", 2, desc_left=b"", desc_right=b"", child_applied=1)
    with pytest.raises(KVError, match="exists"):
        e.create_range(9, b"x", b"y", stamped=True)
    e.close()


def test_reopening_rebuilds_every_ranges_index_in_one_pass(tmp_path: Path) -> None:
    e = Engine(tmp_path / "kv", map_size=MAP)
    bounds = [(b"", b"d"), (b"d", b"h"), (b"h", b"p"), (b"t", b"")]  # [p, t) is held by none
    ranges = [e.create_range(10 + i, s, t, stamped=True) for i, (s, t) in enumerate(bounds)]
    a = Alloc()
    for i in range(400):
        rs = ranges[i % 4]
        key = (rs.start or b"a") + b"%03d" % (i % 37)
        if i % 9 == 0:
            a.apply(rs, DeleteRangeRequest(key))
        else:
            a.apply(rs, PutRequest(key, b"%d" % i))
    want = [_state(rs) for rs in ranges]
    e.close()
    e = Engine(tmp_path / "kv", map_size=MAP)
    assert [_state(e.range(10 + i)) for i in range(4)] == want and e.orphans == 0
    e.close()


def test_mvcc_restore_beside_a_store_still_open_at_the_path(tmp_path: Path) -> None:
    """What the unsharded server did: restore at the path of its open store, then close
    the old one and use the new one."""
    src = MVCCStore(tmp_path / "src", map_size=MAP)
    src.apply([(i, encode_command(Command(1, i, PutRequest(b"k%d" % i, b"v")))) for i in
               range(1, 50)])  # fmt: skip
    parts = list(src.snapshot())
    old = MVCCStore(tmp_path / "kv", map_size=MAP)
    old.apply([(1, encode_command(Command(0, 0, PutRequest(b"old", b"1"))))])
    new = MVCCStore.restore(tmp_path / "kv", parts, map_size=MAP)
    old.close()
    assert new.get(b"old") is None and new.get(b"k7") is not None
    assert new.applied_index() == 49 and new.stats()["sessions"] == 1
    new.close()
    with MVCCStore(tmp_path / "kv", map_size=MAP) as again:
        assert again.range(RangeRequest(b"k", b"l", count_only=True)).count == 49
    src.close()


def test_a_stamp_another_range_used_stops_the_batch_and_rolls_it_back(tmp_path: Path) -> None:
    """Two ranges given the same revision (a broken allocator) would overwrite each
    other's records: the second write raises, and its whole batch is undone."""
    e, left, right = _two(tmp_path / "kv")
    a = Alloc()
    a.rev = 9
    a.apply(left, PutRequest(b"a", b"1"))  # revision 10
    before = _state(right)
    batch = [
        (1, stamp_command(5, encode_command(Command(1, 1, PutRequest(b"x", b"1"))))),
        (2, stamp_command(10, encode_command(Command(1, 2, PutRequest(b"y", b"1"))))),
    ]
    with pytest.raises(AssertionError, match="stored already"):
        right.apply(batch)
    assert _state(right) == before and right.key_count() == 0
    assert left.get(b"a") is not None and e.stats()["rev"] == 1
    e.close()


def test_an_engine_of_an_unknown_format_or_shape_is_refused(tmp_path: Path) -> None:
    e, _, _ = _two(tmp_path / "kv")
    e.close()
    with pytest.raises(KVError, match=r"overlaps|stamped"):  # two ranges: not one store
        MVCCStore(tmp_path / "kv", map_size=MAP)
    env = lmdb.open(str(tmp_path / "kv"), max_dbs=8, map_size=MAP)
    with env.begin(write=True) as txn:
        txn.put(b"format", (9).to_bytes(8, "big"), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(KVError, match="unknown store format 9"):
        Engine(tmp_path / "kv", map_size=MAP)


def test_the_ranges_of_an_engine_remember_records_in_one_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "REMEMBERED_KEYS", 3)
    e, left, right = _two(tmp_path / "kv")
    a = Alloc()
    for i in range(3):
        for rs, key in ((left, b"a"), (left, b"b"), (right, b"x"), (right, b"y")):
            a.apply(rs, PutRequest(key, b"%d" % i))
            assert len(e.remembered) <= 3  # the node's bound, not each range's
    for rs, key in ((left, b"a"), (left, b"b"), (right, b"x"), (right, b"y")):
        kv = rs.get(key)
        assert kv is not None and (kv.value, kv.version) == (b"2", 3)
    # the right half of a split remembers into the same memory
    created = right.get(b"y").create_revision  # type: ignore[union-attr]
    at = a.index[right.range_id] = right.applied_index() + 1
    child = right.split(at, b"y", 9, desc_left=b"R", desc_right=b"R2", child_applied=at)
    a.apply(child, PutRequest(b"y", b"3"))
    assert e.remembered[b"y"][1:] == (created, 4)
    assert child.get(b"y") == KeyValue(b"y", b"3", created, a.rev, 4)


def test_a_restore_in_place_forgets_the_seqs_the_range_remembered(tmp_path: Path) -> None:
    def put(rs: RangeStore, index: int, seq: int, value: bytes) -> Any:
        cmd = encode_command(Command(7, seq, PutRequest(b"k", value)))
        return rs.apply([(index, cmd)])[0]

    src = Engine(tmp_path / "src", map_size=MAP, sync=False).create_range(1, b"", b"")
    for seq in (1, 2, 3):
        put(src, seq, seq, b"%d" % seq)
    dst = Engine(tmp_path / "dst", map_size=MAP, sync=False).create_range(1, b"", b"")
    put(dst, 1, 1, b"1")  # dst remembers seq 1 for client 7
    assert dst.engine.restore_range(1, list(src.snapshot())) is dst
    # the log goes on with a retry of seq 3: answered from the restored session
    assert put(dst, 4, 3, b"3") == PutResponse(4)
    assert dst.get(b"k") == KeyValue(b"k", b"3", 2, 4, 3)
