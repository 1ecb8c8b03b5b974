"""One behaviour per test: etcd's semantics for put, range, delete-range, txn, compaction,
and the state machine's sessions and log bookkeeping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kvharness import Harness

from quorumkv.kv import (
    ALL_KEYS,
    Command,
    CompactedError,
    CompactionRequest,
    CompactionResponse,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    DuplicateKeyError,
    FutureRevisionError,
    KeyValue,
    MalformedRequestError,
    Op,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
    encode_command,
    prefix_end,
)
from quorumkv.kv import _index as index_module
from quorumkv.kv import _range as range_module


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "kv")
    yield harness
    harness.close()


def kv(key: bytes, value: bytes, create: int, mod: int, version: int, lease: int = 0) -> KeyValue:
    return KeyValue(key, value, create, mod, version, lease)


def test_fresh_store_is_at_revision_1(h: Harness) -> None:
    assert (h.store.revision(), h.store.compacted_revision(), h.store.applied_index()) == (1, 0, 0)
    assert h.store.range(RangeRequest(b"a", ALL_KEYS)) == RangeResponse(1)


def test_put_takes_next_revision_and_returns_prev_kv(h: Harness) -> None:
    assert h.one(PutRequest(b"k", b"v1", lease=9)) == PutResponse(2)
    assert h.one(PutRequest(b"k", b"v2", prev_kv=True)) == PutResponse(
        3, kv(b"k", b"v1", 2, 2, 1, 9)
    )
    assert h.store.get(b"k") == kv(b"k", b"v2", 2, 3, 2)


def test_delete_and_recreate_resets_version_and_create_revision(h: Harness) -> None:
    h.apply(PutRequest(b"k", b"a"), PutRequest(b"k", b"b"))
    deleted = h.one(DeleteRangeRequest(b"k", prev_kv=True))
    assert deleted == DeleteRangeResponse(4, 1, (kv(b"k", b"b", 2, 3, 2),))
    assert h.store.get(b"k") is None
    h.one(PutRequest(b"k", b"c"))
    assert h.store.get(b"k") == kv(b"k", b"c", 5, 5, 1)
    assert h.store.get(b"k", revision=3) == kv(b"k", b"b", 2, 3, 2)
    assert h.store.get(b"k", revision=4) is None


def test_delete_of_nothing_takes_no_revision(h: Harness) -> None:
    h.one(PutRequest(b"a", b""))
    assert h.one(DeleteRangeRequest(b"x", b"z", prev_kv=True)) == DeleteRangeResponse(2, 0, ())
    assert h.store.revision() == 2


def test_delete_range_prefix_and_all(h: Harness) -> None:
    h.apply(*(PutRequest(k, k) for k in (b"a", b"ab", b"abc", b"b", b"c")))
    res = h.one(DeleteRangeRequest(b"ab", prefix_end(b"ab"), prev_kv=True))
    assert isinstance(res, DeleteRangeResponse)
    assert [p.key for p in res.prev_kvs] == [b"ab", b"abc"] and res.revision == 7
    assert h.one(DeleteRangeRequest(b"b", ALL_KEYS)) == DeleteRangeResponse(8, 2)
    assert [k.key for k in h.store.range(RangeRequest.prefix(b"")).kvs] == [b"a"]


@pytest.fixture
def abc(h: Harness) -> Harness:
    # a: 2, b: 3 then 5 (version 2), c: 4
    h.apply(PutRequest(b"a", b"3"), PutRequest(b"b", b"1"), PutRequest(b"c", b"2"))
    h.one(PutRequest(b"b", b"9"))
    return h


def keys(res: RangeResponse) -> list[bytes]:
    return [kv.key for kv in res.kvs]


def test_range_limit_count_more(abc: Harness) -> None:
    res = abc.store.range(RangeRequest(b"a", ALL_KEYS, limit=2))
    assert keys(res) == [b"a", b"b"] and res.count == 3 and res.more and res.revision == 5
    res = abc.store.range(RangeRequest(b"a", ALL_KEYS, limit=3))
    assert res.count == 3 and not res.more


def test_range_count_only_and_keys_only(abc: Harness) -> None:
    assert abc.store.range(RangeRequest(b"a", b"c", count_only=True)) == RangeResponse(
        5, (), False, 2
    )
    res = abc.store.range(RangeRequest(b"b", keys_only=True))
    assert res.kvs == (kv(b"b", b"", 3, 5, 2),)


@pytest.mark.parametrize(
    ("target", "order", "expected"),
    [
        (SortTarget.KEY, SortOrder.DESCEND, [b"c", b"b", b"a"]),
        (SortTarget.VALUE, SortOrder.ASCEND, [b"c", b"a", b"b"]),
        (SortTarget.VALUE, SortOrder.NONE, [b"c", b"a", b"b"]),
        (SortTarget.MOD, SortOrder.DESCEND, [b"b", b"c", b"a"]),
        (SortTarget.CREATE, SortOrder.ASCEND, [b"a", b"b", b"c"]),
        (SortTarget.VERSION, SortOrder.DESCEND, [b"b", b"a", b"c"]),  # ties in key order
    ],
)
def test_range_sorted(
    abc: Harness, target: SortTarget, order: SortOrder, expected: list[bytes]
) -> None:
    req = RangeRequest(b"a", ALL_KEYS, sort_order=order, sort_target=target)
    assert keys(abc.store.range(req)) == expected
    limited = abc.store.range(RangeRequest(b"a", ALL_KEYS, 1, sort_order=order, sort_target=target))
    assert keys(limited) == expected[:1] and limited.more and limited.count == 3


def test_range_at_older_revision(abc: Harness) -> None:
    assert abc.store.range(RangeRequest(b"a", ALL_KEYS, revision=3)).kvs == (
        kv(b"a", b"3", 2, 2, 1),
        kv(b"b", b"1", 3, 3, 1),
    )
    assert abc.store.range(RangeRequest(b"a", ALL_KEYS, revision=1)).kvs == ()
    with pytest.raises(FutureRevisionError, match="required revision 6 is a future revision"):
        abc.store.range(RangeRequest(b"a", revision=6))


def test_range_end_before_key_is_empty(abc: Harness) -> None:
    assert abc.store.range(RangeRequest(b"c", b"a")).count == 0


def cmp(target: CompareTarget, op: CompareOp, value: bytes | int, key: bytes = b"b") -> Compare:
    return Compare(target, op, key, value)


T, Op_ = CompareTarget, CompareOp


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (cmp(T.VALUE, Op_.EQUAL, b"9"), True),
        (cmp(T.VALUE, Op_.NOT_EQUAL, b"9"), False),
        (cmp(T.VALUE, Op_.LESS, b"99"), True),
        (cmp(T.VALUE, Op_.GREATER, b"8"), True),
        (cmp(T.VERSION, Op_.EQUAL, 2), True),
        (cmp(T.VERSION, Op_.GREATER, 2), False),
        (cmp(T.VERSION, Op_.LESS, 3), True),
        (cmp(T.VERSION, Op_.NOT_EQUAL, 1), True),
        (cmp(T.CREATE, Op_.EQUAL, 3), True),
        (cmp(T.CREATE, Op_.LESS, 3), False),
        (cmp(T.CREATE, Op_.GREATER, 2), True),
        (cmp(T.CREATE, Op_.NOT_EQUAL, 3), False),
        (cmp(T.MOD, Op_.EQUAL, 5), True),
        (cmp(T.MOD, Op_.GREATER, 5), False),
        (cmp(T.MOD, Op_.LESS, 6), True),
        (cmp(T.MOD, Op_.NOT_EQUAL, 3), True),
        (cmp(T.LEASE, Op_.EQUAL, 0), True),
        (cmp(T.LEASE, Op_.GREATER, 0), False),
        # a missing key: every number is 0, every value compare fails
        (cmp(T.VERSION, Op_.EQUAL, 0, b"zz"), True),
        (cmp(T.CREATE, Op_.LESS, 1, b"zz"), True),
        (cmp(T.MOD, Op_.EQUAL, 0, b"zz"), True),
        (cmp(T.VALUE, Op_.EQUAL, b"", b"zz"), False),
        (cmp(T.VALUE, Op_.NOT_EQUAL, b"x", b"zz"), False),
    ],
)
def test_txn_compares(abc: Harness, compare: Compare, holds: bool) -> None:
    res = abc.one(TxnRequest((compare,), (RangeRequest(b"a"),), (RangeRequest(b"c"),)))
    assert isinstance(res, TxnResponse)
    assert res.succeeded is holds
    assert res.revision == 5  # a read-only txn takes no revision
    (only,) = res.responses
    assert isinstance(only, RangeResponse) and keys(only) == ([b"a"] if holds else [b"c"])


def test_txn_writes_share_one_revision_and_see_each_other(h: Harness) -> None:
    txn = TxnRequest(
        (),
        (
            PutRequest(b"a", b"1"),
            PutRequest(b"b", b"2"),
            RangeRequest(b"a", ALL_KEYS, count_only=True),
        ),
    )
    res = h.one(txn)
    assert res == TxnResponse(
        2, True, (PutResponse(2), PutResponse(2), RangeResponse(2, (), False, 2))
    )
    assert h.store.range(RangeRequest(b"a", ALL_KEYS)).kvs == (
        kv(b"a", b"1", 2, 2, 1),
        kv(b"b", b"2", 2, 2, 1),
    )


def test_nested_txn_compares_see_the_state_before_the_outer_txn(h: Harness) -> None:
    inner = TxnRequest(
        (cmp(T.VERSION, Op_.EQUAL, 0, b"x"),),
        (PutRequest(b"y", b"then"),),
        (PutRequest(b"y", b"else"),),
    )
    outer = TxnRequest((), (PutRequest(b"x", b"1"), inner))
    res = h.one(outer)
    assert res == TxnResponse(2, True, (PutResponse(2), TxnResponse(2, True, (PutResponse(2),))))
    assert h.store.get(b"y") == kv(b"y", b"then", 2, 2, 1)


def test_failed_txn_is_atomic(h: Harness) -> None:
    h.apply(PutRequest(b"a", b"1"), CompactionRequest(2))
    bad = TxnRequest((), (PutRequest(b"b", b"1"), RangeRequest(b"a", revision=1)))
    assert isinstance(h.one(bad), CompactedError)
    assert h.store.get(b"b") is None and h.store.revision() == 2


@pytest.mark.parametrize(
    "ops",
    [
        (PutRequest(b"a", b""), PutRequest(b"a", b"")),
        (PutRequest(b"b", b""), DeleteRangeRequest(b"a", b"c")),
        (DeleteRangeRequest(b"a"), TxnRequest((), (PutRequest(b"a", b""),))),
        (PutRequest(b"a", b""), TxnRequest((), (), (PutRequest(b"a", b""),))),
    ],
)
def test_txn_with_duplicate_key_is_rejected(ops: tuple[Op, ...]) -> None:
    with pytest.raises(DuplicateKeyError, match="duplicate key given in txn request"):
        TxnRequest((), ops)


def test_txn_then_and_else_may_put_the_same_key() -> None:
    same = TxnRequest((), (PutRequest(b"a", b""),), (PutRequest(b"a", b""),))
    TxnRequest((), (same, DeleteRangeRequest(b"x"), DeleteRangeRequest(b"x")))


def test_compaction_drops_history_and_refuses_old_reads(h: Harness) -> None:
    h.apply(PutRequest(b"a", b"1"), PutRequest(b"a", b"2"), PutRequest(b"b", b"1"))
    h.apply(DeleteRangeRequest(b"b"), PutRequest(b"a", b"3"))  # revisions 5, 6
    assert h.store.stats()["rev"] == 5
    assert h.one(CompactionRequest(5)) == CompactionResponse(6)
    # a@3 is the newest at or below 5 and stays; a@2 and b (deleted at 5) are gone
    assert h.store.stats()["rev"] == 2 and h.store.stats()["index"] == 2
    assert h.store.get(b"a", revision=5) == kv(b"a", b"2", 2, 3, 2)
    assert h.store.get(b"b", revision=5) is None
    with pytest.raises(
        CompactedError, match=r"required revision 4 has been compacted \(compacted revision 5\)"
    ):
        h.store.get(b"a", revision=4)
    assert isinstance(h.one(CompactionRequest(5)), CompactedError)
    assert isinstance(h.one(CompactionRequest(7)), FutureRevisionError)
    assert h.store.revision() == 6  # compaction takes no revision


def test_compaction_in_many_passes(h: Harness) -> None:
    import quorumkv.kv._exec as ex

    chunk, ex._COMPACT_CHUNK = ex._COMPACT_CHUNK, 3
    try:
        h.apply(*(PutRequest(bytes([65 + i % 7]), bytes([i])) for i in range(40)))
        h.one(CompactionRequest(30))
        assert h.store.stats()["rev"] == 7 + 11  # one per key at or below 30, then all after
        assert h.store.get(b"A", 30) == kv(b"A", bytes([28]), 2, 30, 5)
    finally:
        ex._COMPACT_CHUNK = chunk


def test_sessions_answer_retries_without_reapplying(h: Harness) -> None:
    first = h.store.apply([h.entry(PutRequest(b"k", b"1", prev_kv=True), client=7, seq=1)])
    again = h.store.apply([h.entry(PutRequest(b"k", b"1", prev_kv=True), client=7, seq=1)])
    assert first == again == [PutResponse(2)]
    assert h.store.get(b"k") == kv(b"k", b"1", 2, 2, 1)
    h.store.apply([h.entry(PutRequest(b"k", b"2"), client=7, seq=2)])
    assert h.store.apply([h.entry(PutRequest(b"k", b"stale"), client=7, seq=1)]) == [None]
    err = h.store.apply([h.entry(CompactionRequest(99), client=7, seq=3)] * 1)
    retry = h.store.apply([h.entry(CompactionRequest(99), client=7, seq=3)])
    assert repr(err) == repr(retry) and isinstance(retry[0], FutureRevisionError)
    assert h.store.get(b"k") == kv(b"k", b"2", 2, 3, 2)


def test_noops_old_indexes_and_bad_commands(h: Harness) -> None:
    put = encode_command(Command(0, 0, PutRequest(b"a", b"1")))
    res = h.store.apply([(1, b""), (2, put), (2, put), (3, b"\xc1junk"), (5, put)])
    assert res[0] is None and res[2] is None
    assert isinstance(res[3], MalformedRequestError)
    assert res[1] == PutResponse(2) and res[4] == PutResponse(3, None)
    assert h.store.applied_index() == 5
    assert h.store.apply([(4, put)]) == [None]


def test_encoded_results_are_the_results_encoded(h: Harness) -> None:
    """``apply(encoded=True)`` hands back what ``encode_result`` makes of each result,
    also for a session retry (answered from the stored bytes) and a bad command."""
    from quorumkv.kv import decode_result, encode_result

    put = h.entry(PutRequest(b"k", b"v", prev_kv=True), client=7, seq=1)
    again = (h.index + 1, put[1])  # the same command, logged twice
    h.index += 1
    bad = (h.index + 1, b"\xc1 not a command")
    h.index += 1
    got = h.store.apply([put, again, bad], encoded=True)
    assert all(isinstance(g, bytes) for g in got)
    first, second, third = (decode_result(g) for g in got)
    assert first == second == PutResponse(2, None)
    assert isinstance(third, MalformedRequestError)
    assert got[0] == encode_result(first)


def test_before_commit_sees_the_results_and_can_veto_the_batch(h: Harness) -> None:
    seen: list[list[object]] = []
    h.store.apply([h.entry(PutRequest(b"a", b"1"))], before_commit=seen.append)
    assert seen == [[PutResponse(2, None)]]

    def boom(_: list[object]) -> None:
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        h.store.apply([h.entry(PutRequest(b"b", b"2"))], before_commit=boom)
    assert h.store.get(b"b") is None and h.store.applied_index() == 1
    assert h.store.stats()["keys"] == 1


def test_overwrites_take_create_and_version_from_the_index_memory(h: Harness) -> None:
    h.apply(PutRequest(b"k", b"a"), PutRequest(b"k", b"b"), PutRequest(b"k", b"c"))
    newest = h.store.get(b"k")
    assert newest == kv(b"k", b"c", 2, 4, 3)
    index = h.store.rs._index
    remembered = index.newest(b"k")
    assert remembered is not None and remembered[1:] == (2, 3)
    # after a reopen the memory is empty: the record is read instead, with the same result
    h.reopen()
    h.one(PutRequest(b"k", b"d"))
    assert h.store.get(b"k") == kv(b"k", b"d", 2, 5, 4)


def test_overwrites_are_right_when_the_index_memory_is_full(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "REMEMBERED_KEYS", 1)  # every other key: a miss
    for i in range(3):
        h.apply(PutRequest(b"a", b"%d" % i), PutRequest(b"b", b"%d" % i))
    assert h.store.get(b"a") == kv(b"a", b"2", 2, 6, 3)
    assert h.store.get(b"b") == kv(b"b", b"2", 3, 7, 3)


def test_an_overwrite_rolled_back_leaves_no_trace_in_later_versions(h: Harness) -> None:
    h.apply(PutRequest(b"k", b"a"), PutRequest(b"k", b"b"))

    def fail(results: list[object]) -> None:
        raise RuntimeError("the batch aborts after it wrote")

    with pytest.raises(RuntimeError):
        h.store.apply([h.entry(PutRequest(b"k", b"lost"))], before_commit=fail)
    assert h.store.get(b"k") == kv(b"k", b"b", 2, 3, 2)
    h.index -= 1  # the aborted entry was never applied: the log gives it again
    h.apply(DeleteRangeRequest(b"k"), PutRequest(b"k", b"c"), PutRequest(b"k", b"d"))
    assert h.store.get(b"k") == kv(b"k", b"d", 5, 6, 2)


def test_a_range_remembers_each_clients_last_seq_and_forgets_on_rollback(h: Harness) -> None:
    for seq in (1, 2, 3):
        h.store.apply([h.entry(PutRequest(b"k", b"%d" % seq), client=7, seq=seq)])
    assert h.store.rs._seqs == {7: 3}  # seq 4 on will not read the session back

    def boom(_: list[object]) -> None:
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        h.store.apply([h.entry(PutRequest(b"k", b"lost"), client=7, seq=4)], before_commit=boom)
    assert h.store.rs._seqs == {}
    h.index -= 1
    # the retry of seq 4 reads the session (seq 3) and applies; a copy of it is answered
    again = [h.entry(PutRequest(b"k", b"4"), client=7, seq=4) for _ in range(2)]
    assert h.store.apply(again) == [PutResponse(5), PutResponse(5)]
    assert h.store.get(b"k") == kv(b"k", b"4", 2, 5, 4)


def test_sessions_stay_exactly_once_when_the_seq_memory_is_full(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(range_module, "SESSIONS_REMEMBERED", 1)  # two clients: misses
    for seq in (1, 2):
        for client in (7, 8):
            put = h.entry(PutRequest(b"c%d" % client, b"%d" % seq), client=client, seq=seq)
            retry = (h.index + 1, put[1])
            h.index += 1
            first, second = h.store.apply([put, retry])
            assert first == second  # the retry answered from the session
    assert h.store.get(b"c7") == kv(b"c7", b"2", 2, 4, 2)
    assert h.store.get(b"c8") == kv(b"c8", b"2", 3, 5, 2)
    assert len(h.store.rs._seqs) == 1
