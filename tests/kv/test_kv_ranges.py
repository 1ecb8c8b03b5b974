"""Many ranges in one engine: bounds, revision stamps, splits, one range's snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quorumkv.errors import OutOfRangeError, StaleStampError
from quorumkv.kv import (
    ALL_KEYS,
    Command,
    CompactionRequest,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    Engine,
    KVError,
    MalformedRequestError,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeStore,
    SnapshotError,
    TxnRequest,
    encode_command,
    stamp_command,
)
from quorumkv.kv._codec import unpack

MAP = 1 << 30


def _cmd(client: int, seq: int, req: Any, stamp: int = 0) -> bytes:
    data = encode_command(Command(client, seq, req))
    return stamp_command(stamp, data) if stamp else data


class Two:
    """An engine with two stamped ranges, [b"", b"m") and [b"m", end), and one
    allocator of revisions for both."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = Engine(path, map_size=MAP)
        self.left = self.engine.create_range(2, b"", b"m", stamped=True, desc=b"L")
        self.right = self.engine.create_range(3, b"m", b"", stamped=True, desc=b"R")
        self.next_rev = 2
        self.index = {2: 0, 3: 0}

    def apply(self, rs: RangeStore, client: int, seq: int, req: Any, stamp: int = -1) -> Any:
        if stamp == -1:
            stamp, self.next_rev = self.next_rev, self.next_rev + 1
        self.index[rs.range_id] += 1
        (res,) = rs.apply([(self.index[rs.range_id], _cmd(client, seq, req, stamp))])
        return res

    def reopen(self) -> None:
        self.engine.close()
        self.engine = Engine(self.path, map_size=MAP)
        self.left, self.right = self.engine.range(2), self.engine.range(3)


def test_ranges_share_an_engine_but_not_sessions_or_revisions(tmp_path: Path) -> None:
    t = Two(tmp_path / "kv")
    a = t.apply(t.left, 9, 1, PutRequest(b"a", b"1"))
    z = t.apply(t.right, 9, 1, PutRequest(b"z", b"1"))  # same client and seq: other range
    assert isinstance(a, PutResponse) and isinstance(z, PutResponse)
    assert (a.revision, z.revision) == (2, 3)
    assert t.left.revision() == 2 and t.right.revision() == 3
    assert t.left.get(b"a") is not None and t.right.get(b"z") is not None
    t.reopen()
    assert [t.left.get(b"a").value, t.right.get(b"z").value] == [b"1", b"1"]  # type: ignore[union-attr]
    assert (t.left.key_count(), t.right.key_count()) == (1, 1)
    assert (t.left.desc, t.right.desc) == (b"L", b"R")
    t.engine.close()


@pytest.mark.parametrize(
    "req",
    [
        PutRequest(b"z", b"x"),
        DeleteRangeRequest(b"a", b"zz"),
        DeleteRangeRequest(b"a", ALL_KEYS),
        TxnRequest(success=(PutRequest(b"a", b"1"), PutRequest(b"q", b"1"))),
        TxnRequest(compare=(Compare(CompareTarget.VERSION, CompareOp.EQUAL, b"q", 0),)),
        TxnRequest(failure=(TxnRequest(success=(RangeRequest(b"zz"),)),)),
    ],
)
def test_a_key_outside_the_bounds_is_refused_and_the_retry_runs_where_it_belongs(
    tmp_path: Path, req: Any
) -> None:
    t = Two(tmp_path / "kv")
    res = t.apply(t.left, 5, 1, req)
    assert isinstance(res, OutOfRangeError) and res.range_id == 2
    assert t.left.key_count() == 0 and t.left.stats()["sessions"] == 0
    # Nothing was recorded: the same seq on the left runs once the request fits.
    ok = t.apply(t.left, 5, 1, PutRequest(b"b", b"1"))
    assert isinstance(ok, PutResponse)
    with pytest.raises(OutOfRangeError):
        t.left.range(RangeRequest(b"a", ALL_KEYS))
    with pytest.raises(OutOfRangeError):
        t.right.range(RangeRequest(b"a"))
    assert [kv.key for kv in t.left.range(RangeRequest(b"a", b"m")).kvs] == [b"b"]
    t.engine.close()


def test_stamps_must_climb_and_match_the_range(tmp_path: Path) -> None:
    t = Two(tmp_path / "kv")
    t.apply(t.left, 1, 1, PutRequest(b"a", b"1"), stamp=50)
    stale = t.apply(t.left, 1, 2, PutRequest(b"b", b"1"), stamp=40)
    assert isinstance(stale, StaleStampError) and (stale.stamp, stale.current) == (40, 50)
    ok = t.apply(t.left, 1, 2, PutRequest(b"b", b"1"), stamp=60)  # same seq: it runs now
    assert isinstance(ok, PutResponse) and ok.revision == 60
    assert isinstance(t.apply(t.left, 1, 3, PutRequest(b"c", b"1"), stamp=0), MalformedRequestError)
    solo = Engine(tmp_path / "solo", map_size=MAP)
    rs = solo.create_range(1, b"", b"")
    (res,) = rs.apply([(1, _cmd(1, 1, PutRequest(b"a", b"1"), stamp=7))])
    assert isinstance(res, MalformedRequestError) and rs.key_count() == 0
    # A read-only stamped txn leaves the revision where it was.
    t.apply(t.left, 1, 4, TxnRequest(success=(RangeRequest(b"a"),)), stamp=70)
    assert t.left.revision() == 60
    solo.close()
    t.engine.close()


def test_an_engine_refuses_overlapping_or_unstamped_neighbours(tmp_path: Path) -> None:
    t = Two(tmp_path / "kv")
    with pytest.raises(KVError, match="overlaps"):
        t.engine.create_range(4, b"k", b"n", stamped=True)
    with pytest.raises(KVError, match="exists"):
        t.engine.create_range(2, b"", b"a", stamped=True)
    t.engine.close()
    solo = Engine(tmp_path / "solo", map_size=MAP)
    solo.create_range(1, b"", b"m")
    with pytest.raises(KVError, match="stamped"):
        solo.create_range(2, b"m", b"")
    solo.close()


def test_a_split_cuts_the_index_keeps_the_data_and_copies_sessions(tmp_path: Path) -> None:
    t = Two(tmp_path / "kv")
    for i, key in enumerate([b"n", b"p", b"t", b"x"]):
        t.apply(t.right, 8, i + 1, PutRequest(key, b"v"))
    records = t.engine.stats()["rev"]
    child = t.right.split(10, b"s", 4, desc_left=b"R2", desc_right=b"C", child_applied=1)
    t.index[3] = 10
    assert t.engine.stats()["rev"] == records  # no record copied
    assert (t.right.end, t.right.desc, t.right.applied_index()) == (b"s", b"R2", 10)
    assert (child.start, child.end, child.desc, child.applied_index()) == (b"s", b"", b"C", 1)
    assert [kv.key for kv in t.right.range(RangeRequest(b"m", b"s")).kvs] == [b"n", b"p"]
    assert [kv.key for kv in child.range(RangeRequest(b"s", ALL_KEYS)).kvs] == [b"t", b"x"]
    assert child.revision() == t.right.revision()
    # The writer of x retries its last write at the child: answered from the copied
    # session, not applied again.
    (again,) = child.apply([(2, _cmd(8, 4, PutRequest(b"x", b"v"), stamp=999))])
    assert isinstance(again, PutResponse) and child.revision() == t.right.revision()
    assert isinstance(t.apply(t.right, 8, 5, PutRequest(b"t", b"w")), OutOfRangeError)
    with pytest.raises(KVError, match="cannot split"):
        t.right.split(11, b"z", 5, desc_left=b"", desc_right=b"", child_applied=1)
    t.reopen()
    child = t.engine.range(4)
    assert [kv.key for kv in child.range(RangeRequest(b"s", ALL_KEYS)).kvs] == [b"t", b"x"]
    assert t.right.key_count() == 2 and child.stats()["sessions"] == 1
    t.engine.close()


def _reads(rs: RangeStore) -> list[Any]:
    span = rs.range(RangeRequest(rs.start or b"\x00", rs.end or ALL_KEYS))
    return [(kv.key, kv.value, kv.mod_revision, kv.version) for kv in span.kvs]


def test_one_range_snapshot_restores_into_another_engine(tmp_path: Path) -> None:
    t = Two(tmp_path / "a")
    for i in range(300):
        t.apply(t.left, 3, i + 1, PutRequest(b"k%03d" % (i % 40), b"v%d" % i))
        t.apply(t.right, 4, i + 1, PutRequest(b"z%03d" % i, b"w"))
    t.apply(t.left, 3, 301, DeleteRangeRequest(b"k000", b"k010"))
    chunks = list(t.left.snapshot())
    other = Engine(tmp_path / "b", map_size=MAP)
    other.create_range(3, b"m", b"", stamped=True)
    restored = other.restore_range(2, chunks)
    assert _reads(restored) == _reads(t.left)
    assert (restored.applied_index(), restored.revision(), restored.desc) == (
        t.left.applied_index(),
        t.left.revision(),
        b"L",
    )
    # The client's session came along: its last write is answered, not applied again.
    (again,) = restored.apply([(9999, _cmd(3, 301, DeleteRangeRequest(b"k000", b"k010"), 9999))])
    assert again.deleted == 10 and restored.revision() == t.left.revision()
    # A damaged stream changes nothing, over an existing range too.
    before = _reads(restored)
    damaged = [*chunks[:1], chunks[1][:-1] + bytes([chunks[1][-1] ^ 1]), *chunks[2:]]
    for bad, why in [(damaged, "damaged|undecodable"), (chunks[:-1], "ended early")]:
        with pytest.raises(SnapshotError, match=why):
            other.restore_range(2, bad)
        assert _reads(other.range(2)) == before
    other.drop_range(2)
    assert other.ranges() == [3] and other.stats()["rev"] == 0
    other.close()
    t.engine.close()


def test_a_whole_state_blob_survives_reopening(tmp_path: Path) -> None:
    e = Engine(tmp_path / "kv", map_size=MAP)
    e.put_state(1, 7, b"directory")
    e.create_range(2, b"", b"", stamped=True)
    e.close()
    e = Engine(tmp_path / "kv", map_size=MAP)
    assert e.get_state(1) == (7, b"directory") and e.ranges() == [2]
    with pytest.raises(KVError):
        e.put_state(2, 1, b"")
    e.close()


def test_a_round_commits_every_range_at_once_and_an_abort_keeps_none(tmp_path: Path) -> None:
    t = Two(tmp_path / "kv")
    e = t.engine
    e.begin_round()
    t.apply(t.left, 1, 1, PutRequest(b"a", b"1"))
    t.apply(t.right, 2, 1, PutRequest(b"z", b"1"))
    t.apply(t.left, 1, 2, PutRequest(b"b", b"1"))  # a second batch of a range in one round
    assert t.left.get(b"b") is not None  # reads inside the round see its writes
    e.put_state(1, 5, b"meta")
    e.end_round()
    t.reopen()
    assert [t.left.key_count(), t.right.key_count()] == [2, 1]
    assert t.left.applied_index() == 2 and t.engine.get_state(1) == (5, b"meta")
    e = t.engine
    e.begin_round()
    t.apply(t.left, 1, 3, PutRequest(b"c", b"1"))
    t.apply(t.right, 2, 2, PutRequest(b"y", b"1"))
    e.abort_round()
    assert t.left.get(b"c") is None and t.right.get(b"y") is None
    assert (t.left.applied_index(), t.right.applied_index()) == (2, 1)
    t.reopen()
    assert t.left.get(b"c") is None and t.left.applied_index() == 2
    t.engine.close()


def test_a_split_inside_a_round_commits_the_round_so_far_first(tmp_path: Path) -> None:
    t = Two(tmp_path / "kv")
    e = t.engine
    e.begin_round()
    t.apply(t.right, 3, 1, PutRequest(b"t", b"1"))
    child = t.right.split(5, b"s", 4, desc_left=b"", desc_right=b"", child_applied=1)
    assert e.round is not None and child.get(b"t") is not None
    t.index[3] = 5
    t.apply(t.right, 3, 2, PutRequest(b"n", b"1"))
    e.end_round()
    t.reopen()
    assert t.engine.range(4).get(b"t") is not None and t.right.get(b"n") is not None
    t.engine.close()


def test_a_round_left_open_is_joined_and_committed_by_sync_or_a_snapshot(tmp_path: Path) -> None:
    t = Two(tmp_path / "kv")
    e = t.engine
    e.begin_round()
    t.apply(t.left, 1, 1, PutRequest(b"a", b"1"))
    e.begin_round()  # a later drive round joins the open transaction
    t.apply(t.left, 1, 2, PutRequest(b"b", b"1"))
    assert e.round_entries == 2 and e.stats()["rev"] == 2  # stats read the open round
    e.sync()  # what a log compaction calls before dropping the log
    assert e.round is None
    e.begin_round()
    t.apply(t.right, 2, 1, PutRequest(b"x", b"1"))
    chunks = list(t.right.snapshot())  # commits first: its read transaction sees x
    assert e.round is None
    other = Engine(tmp_path / "other", map_size=MAP)
    restored = other.restore_range(3, iter(chunks))
    assert restored.get(b"x") is not None
    other.close()
    e.begin_round()
    t.apply(t.left, 1, 3, PutRequest(b"c", b"1"))
    e.close()  # without a commit the open round is lost: the log must replay it
    e = Engine(tmp_path / "kv", map_size=MAP)
    assert e.range(2).applied_index() == 2 and e.range(2).get(b"c") is None
    e.close()


def test_an_engine_whose_commit_failed_refuses_new_rounds(tmp_path: Path) -> None:
    t = Two(tmp_path / "kv")
    e = t.engine
    e.begin_round()
    t.apply(t.left, 1, 1, PutRequest(b"a", b"1"))

    class Failing:
        def commit(self) -> None:
            raise OSError("EIO")

    real, e.round = e.round, Failing()
    with pytest.raises(OSError):
        e.end_round()
    real.abort()
    assert t.left.get(b"a") is None and t.left.applied_index() == 0
    with pytest.raises(KVError, match="a commit failed"):
        e.begin_round()
    e.close()


def _record_bytes(engine: Engine, rs: RangeStore) -> int:
    """The bytes of ``rs``'s records, counted straight from the engine's ``rev`` table."""
    total = 0
    with engine.env.begin() as txn:
        for k, v in txn.cursor(db=engine.dbs.rev).iternext():
            key = unpack(v)[0]
            if rs.start <= key and (not rs.end or key < rs.end):
                total += len(k) + len(v)
    return total


def test_a_ranges_size_is_its_records_bytes_through_writes_compaction_splits_and_loads(
    tmp_path: Path,
) -> None:
    # The placement planner splits a range past ``split_bytes`` by this size.
    t = Two(tmp_path / "a")
    assert (t.left.size_bytes(), t.right.size_bytes()) == (0, 0)
    for i, key in enumerate([b"a", b"c", b"e", b"g", b"i", b"k"]):
        t.apply(t.left, 1, 2 * i + 1, PutRequest(key, b"v" * (10 * i + 1)))
        t.apply(t.left, 1, 2 * i + 2, PutRequest(key, b"w" * (100 * i)))  # a second revision
    t.apply(t.left, 1, 20, DeleteRangeRequest(b"c"))  # a tombstone is a record too
    t.apply(t.right, 2, 1, PutRequest(b"z", b"z" * 1000))
    sizes = (_record_bytes(t.engine, t.left), _record_bytes(t.engine, t.right))
    assert (t.left.size_bytes(), t.right.size_bytes()) == sizes and sizes[0] > 1500
    # A refused request writes no record.
    assert isinstance(t.apply(t.left, 1, 21, PutRequest(b"zz", b"x")), OutOfRangeError)
    assert t.left.size_bytes() == sizes[0]
    t.apply(t.left, 1, 22, CompactionRequest(t.left.revision()))
    compacted = _record_bytes(t.engine, t.left)
    assert t.left.size_bytes() == compacted < sizes[0]
    child = t.left.split(100, b"f", 4, desc_left=b"L2", desc_right=b"C", child_applied=1)
    t.index[2] = 100
    assert t.left.size_bytes() == _record_bytes(t.engine, t.left) > 0
    assert child.size_bytes() == _record_bytes(t.engine, child) > 0
    assert t.left.size_bytes() + child.size_bytes() == compacted
    halves = (t.left.size_bytes(), child.size_bytes(), t.right.size_bytes())
    t.reopen()
    child = t.engine.range(4)
    assert (t.left.size_bytes(), child.size_bytes(), t.right.size_bytes()) == halves
    other = Engine(tmp_path / "b", map_size=MAP)
    restored = other.restore_range(4, list(child.snapshot()))
    assert restored.size_bytes() == halves[1]
    other.close()
    t.engine.close()
