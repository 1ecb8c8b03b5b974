"""The client's routing by range, against a fake sharded cluster (``fakeshard``): where
each request goes, what each stale-cache answer does, exactly-once across reroutes,
transactions refused across ranges before anything is sent, and deletes and
compactions over several ranges. Scans are in ``test_client_scan.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakenode import DROP_AFTER, After, Seen, Threaded, ThreadedCluster, run
from fakeshard import FakeShardedCluster

from quorumkv import Client
from quorumkv.client import AsyncClient
from quorumkv.client._shards import request_spans
from quorumkv.errors import (
    ClientError,
    CompactedError,
    CrossRangeError,
    FutureRevisionError,
    MalformedRequestError,
    RequestTimeoutError,
)
from quorumkv.kv import (
    Command,
    CompactionRequest,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    Op,
    PutRequest,
    RangeRequest,
    TxnRequest,
)
from quorumkv.net import (
    ERR_TIMEOUT,
    OP_META,
    OP_RANGE_READ,
    OP_RANGE_WRITE,
    OP_RANGES,
    OP_READ,
    OP_SPLIT,
    OP_WRITE,
)

SPLITS = (b"g", b"p")
"""Ranges 2 [-inf, g) led by node 1, 3 [g, p) by node 2, 4 [p, +inf) by node 3."""


def _client(cl: FakeShardedCluster, **kw: Any) -> AsyncClient:
    kw.setdefault("timeout", 5.0)
    return AsyncClient([n.addr for n in cl.nodes.values()], **kw)


def _session(command: Command | None) -> tuple[int, int]:
    assert command is not None
    return command.client, command.seq


def _is(seen: Seen, kind: type) -> bool:
    return seen.command is not None and isinstance(seen.command.request, kind)


def _puts_of(cl: FakeShardedCluster, value: bytes) -> list[tuple[int, int]]:
    """The session of every write any node received that puts ``value``."""
    return [
        _session(w.command)
        for w in cl.writes()
        if w.command is not None
        and isinstance(w.command.request, PutRequest)
        and w.command.request.value == value
    ]


def test_each_request_goes_to_its_ranges_leader_with_range_and_version(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            for key in (b"a", b"h", b"z"):
                await kv.put(key, key * 2)
            for node, (rid, version, key) in zip(
                (1, 2, 3), ((2, 2, b"a"), (3, 3, b"h"), (4, 3, b"z")), strict=True
            ):
                (w,) = cl[node].ops(OP_RANGE_WRITE)
                assert w.body[:2] == [rid, version]
                assert w.command is not None and isinstance(w.command.request, PutRequest)
                assert w.command.request.key == key
            got = [await kv.get(k) for k in (b"a", b"h", b"z")]
            assert [g.value for g in got if g is not None] == [b"aa", b"hh", b"zz"]
            assert [len(cl[n].ops(OP_RANGE_READ)) for n in (1, 2, 3)] == [1, 1, 1]
            assert not cl.ops(OP_WRITE) and not cl.ops(OP_READ)

    run(main())


def test_ranges_share_one_connection_per_node(tmp_path: Path) -> None:
    async def main() -> None:
        splits = (b"d", b"g", b"m", b"p", b"t")  # six ranges, led by nodes 1, 2, 1, 2, 1, 2
        async with FakeShardedCluster(tmp_path, 3, splits, (1, 2, 1, 2, 1, 2)) as cl:
            async with _client(cl) as kv:
                for key in (b"a", b"e", b"h", b"n", b"q", b"u") * 3:
                    await kv.put(key, b"v")
                assert len(kv.shards.routers) == 6 and len(kv.shards.pool) == 2
            # node 1: the client's own connection (lookups) and the pooled one
            assert [cl[n].handshakes for n in (1, 2, 3)] == [2, 1, 0]

    run(main())


def test_a_miss_looks_the_key_up_once_and_the_cache_serves_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            for _ in range(5):
                await kv.put(b"a", b"1")
            assert len(cl.ops(OP_RANGES)) == 1
            await kv.get(b"h")  # another range: a miss
            await kv.put(b"h", b"2")
            assert len(cl.ops(OP_RANGES)) == 2
            (lookup,) = cl.ops(OP_RANGES)[1:]
            assert lookup.body == [b"h", b"h\x00"]  # only the key's range is asked for

    run(main())


def test_the_lookup_follows_a_redirect_to_a_node_with_the_meta_range(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl:
            cl.meta_nodes = {3}
            async with AsyncClient([cl[1].addr], timeout=5) as kv:
                await kv.put(b"h", b"1")
            assert len(cl[1].ops(OP_RANGES)) == 1 and len(cl[3].ops(OP_RANGES)) == 1
            assert cl[2].ops(OP_RANGE_WRITE)

    run(main())


def test_wrong_range_learns_the_hint_avoids_the_node_and_keeps_the_seq(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await kv.put(b"z", b"1")
            cl.move(4, (1, 2), leader=1)  # node 3 no longer holds range 4
            await kv.put(b"z", b"2")
            refused, moved = cl[3].ops(OP_RANGE_WRITE)[1], cl[1].ops(OP_RANGE_WRITE)[0]
            assert _session(refused.command) == _session(moved.command)
            assert cl.applied == 2
            await kv.put(b"z", b"3")  # straight to the new leader now
            assert len(cl[3].ops(OP_RANGE_WRITE)) == 2
            assert len(cl[1].ops(OP_RANGE_WRITE)) == 2
            kvp = await kv.get(b"z")
            assert kvp is not None and (kvp.value, kvp.version) == (b"3", 3)

    run(main())


def test_out_of_range_after_a_split_reroutes_the_same_seq_to_the_new_range(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await kv.put(b"q", b"1")  # the cache now has range 4 [p, +inf)
            cl.split(b"w")  # range 5 [w, +inf), behind the client's back
            cl.set_leader(5, 2)
            await kv.put(b"x", b"1")
            at_old = cl[3].ops(OP_RANGE_WRITE)[-1]
            at_new = cl[2].ops(OP_RANGE_WRITE)[-1]
            assert at_old.body[:2] == [4, 3] and at_new.body[:2] == [5, 4]
            assert _session(at_old.command) == _session(at_new.command)
            assert cl.applied == 2
            assert [(d.range_id, d.start) for d in kv.shards.cache.descriptors()][-1] == (5, b"w")

    run(main())


def test_not_leader_moves_only_that_ranges_leader(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await kv.put(b"h", b"1")
            await kv.put(b"z", b"1")
            cl.auto_publish = False  # the directory still names node 3
            cl.set_leader(4, 1)
            await kv.put(b"z", b"2")  # node 3 redirects to node 1
            await kv.put(b"h", b"2")  # range 3: still straight to node 2
            await kv.put(b"z", b"3")  # range 4: straight to node 1
            assert [len(cl[n].ops(OP_RANGE_WRITE)) for n in (1, 2, 3)] == [2, 2, 2]
            assert [w.body[0] for w in cl[1].ops(OP_RANGE_WRITE)] == [4, 4]
            assert len(cl.ops(OP_RANGES)) == 2  # a redirect is no stale cache

    run(main())


def test_a_write_applied_but_unanswered_is_answered_from_its_session_after_a_move(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await kv.put(b"z", b"0")
            # Node 3 applies the write, its range moves away, and it answers "timeout":
            # the retry meets ERR_WRONG_RANGE, then the new leader, with the same seq.
            cl[3].faults.append(After(ERR_TIMEOUT, "gave up waiting"))
            cl.after_write.append(lambda: cl.move(4, (1, 2), leader=1))
            resp = await kv.put(b"z", b"1", prev_kv=True)
            assert resp.prev_kv is not None and resp.prev_kv.value == b"0"
            assert cl.applied == 2  # once, not twice
            tries = _puts_of(cl, b"1")
            assert len(tries) == 3 and len(set(tries)) == 1  # applied, wrong range, session
            kvp = await kv.get(b"z")
            assert kvp is not None and kvp.version == 2

    run(main())


def test_a_lost_answer_then_a_split_is_still_applied_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await kv.put(b"x", b"0")
            cl[3].faults.append(DROP_AFTER)

            def split_and_move() -> None:
                cl.split(b"w")
                cl.set_leader(5, 2)

            cl.after_write.append(split_and_move)
            await kv.put(b"x", b"1")
            assert cl.applied == 2
            tries = _puts_of(cl, b"1")
            assert len(tries) >= 2 and len(set(tries)) == 1
            kvp = await kv.get(b"x")
            assert kvp is not None and (kvp.value, kvp.version) == (b"1", 2)

    run(main())


def test_giving_up_after_an_unknown_outcome_says_so(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await kv.put(b"z", b"0")
            cl[3].faults.append(After(ERR_TIMEOUT, "gave up waiting"))
            cl.after_write.append(lambda: cl.move(4, (1, 2), leader=0))  # no leader now
            with pytest.raises(RequestTimeoutError, match="unknown"):
                await kv.put(b"z", b"1", timeout=0.5)

    run(main())


def test_a_stale_stamp_is_sent_again_with_the_same_seq(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            cl.stale_stamps[3] = 2
            await kv.put(b"h", b"1")
            tries = cl[2].ops(OP_RANGE_WRITE)
            assert len(tries) == 3 and len({_session(t.command) for t in tries}) == 1
            assert cl.applied == 1 and len(cl.ops(OP_RANGES)) == 1  # no refresh needed

    run(main())


def test_a_transaction_over_two_ranges_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            same_range: list[Op] = [PutRequest(b"h", b"1"), PutRequest(b"i", b"1")]
            cases: list[tuple[list[Compare], list[Op], list[Op]]] = [
                ([], [PutRequest(b"a", b"1"), PutRequest(b"z", b"1")], []),
                ([Compare(CompareTarget.VERSION, CompareOp.EQUAL, b"z", 0)], same_range, []),
                ([], same_range, [TxnRequest((), (DeleteRangeRequest(b"q"),))]),
                ([], [DeleteRangeRequest(b"h", b"q")], []),
                ([], [RangeRequest(b"a", b"h")], []),
            ]
            for compare, success, failure in cases:
                with pytest.raises(CrossRangeError) as err:
                    await kv.txn(compare, success, failure)
                assert len(err.value.ranges) == 2, err.value
            assert not cl.writes()
            with pytest.raises(CrossRangeError) as err:
                await kv.txn([], [PutRequest(b"a", b"1"), PutRequest(b"h", b"1"),
                                  PutRequest(b"z", b"1")])  # fmt: skip
            assert err.value.ranges == [(2, b"", b"g"), (3, b"g", b"p"), (4, b"p", b"")]
            assert "spans 3 ranges" in str(err.value)
            assert not cl.writes()
            resp = await kv.txn([Compare(CompareTarget.VERSION, CompareOp.EQUAL, b"h", 0)],
                                same_range)  # fmt: skip
            assert resp.succeeded and [len(cl[n].ops(OP_RANGE_WRITE)) for n in (1, 2, 3)] == [
                0, 1, 0]  # fmt: skip

    run(main())


def test_request_spans_names_every_key_of_nested_transactions() -> None:
    inner = TxnRequest((Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"c", b"x"),),
                       (PutRequest(b"d", b"1"),), (DeleteRangeRequest(b"e", b"f"),))  # fmt: skip
    txn = TxnRequest(
        (Compare(CompareTarget.VERSION, CompareOp.EQUAL, b"a", 0),),
        (RangeRequest(b"b"), inner),
        (PutRequest(b"g", b"1"),),
    )
    assert request_spans(txn) == [
        (b"a", b""), (b"b", b""), (b"c", b""), (b"d", b""), (b"e", b"f"), (b"g", b"")
    ]  # fmt: skip


def test_a_delete_across_ranges_runs_range_by_range_and_reclips_after_a_split(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            for c in b"abcdhijqrstxyz":
                await kv.put(bytes([c]), b"v")
            cl.split(b"s")  # range 5 [s, +inf), unknown to the client's cache
            resp = await kv.delete(b"b", b"y", prev_kv=True)
            assert resp.deleted == 11
            assert [p.key for p in resp.prev_kvs] == [bytes([c]) for c in b"bcdhijqrstx"]
            left = await kv.range(b"a", b"\xff")
            assert [p.key for p in left.kvs] == [b"a", b"y", b"z"]
            pieces = [w for w in cl.writes() if _is(w, DeleteRangeRequest)]
            spans = []
            for w in pieces:
                assert w.command is not None and isinstance(w.command.request, DeleteRangeRequest)
                spans.append((w.body[0], w.command.request.key, w.command.request.range_end))
            # range 4 was asked for [p, y) and refused (it ends at s now), then again
            assert spans == [(2, b"b", b"g"), (3, b"g", b"p"), (4, b"p", b"y"),
                             (4, b"p", b"s"), (5, b"s", b"y")]  # fmt: skip
            sessions = [_session(w.command) for w in pieces]
            assert sessions[2] != sessions[3]  # a re-clipped piece is a new command
            assert len(set(sessions)) == 5

    run(main())


def test_a_compaction_reaches_every_range_each_at_what_it_has(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            first = (await kv.put(b"a", b"1")).revision
            second = (await kv.put(b"a", b"2")).revision
            rev = (await kv.put(b"z", b"1")).revision
            with pytest.raises(FutureRevisionError):  # above every range, as on one range
                await kv.compact(rev + 10)
            for node in cl.nodes.values():
                node.seen.clear()
            await kv.compact(rev)
            sent = [w for w in cl.writes() if _is(w, CompactionRequest)]
            asked = []
            for w in sent:
                assert w.command is not None and isinstance(w.command.request, CompactionRequest)
                asked.append((w.body[0], w.command.request.revision))
            # range 2 last wrote at `second`: compacted there; range 3 was never written
            # to; range 4 is at `rev`
            assert sorted(asked) == [(2, second), (2, rev), (3, rev), (4, rev)]
            with pytest.raises(CompactedError):
                await kv.get(b"a", revision=first)
            got = await kv.get(b"a", revision=second)
            assert got is not None and got.value == b"2"

    run(main())


def test_reads_pinned_at_a_revision_go_by_range(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            r1 = (await kv.put(b"h", b"old")).revision
            await kv.put(b"h", b"new")
            old = await kv.get(b"h", revision=r1)
            assert old is not None and old.value == b"old"
            (read,) = cl[2].ops(OP_RANGE_READ)[-1:]
            assert read.command is not None and isinstance(read.command.request, RangeRequest)
            assert read.command.request.revision == r1

    run(main())


def test_split_goes_to_the_ranges_leader_and_the_cache_learns_both_halves(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            left, right = await kv.split("k")
            (sent,) = cl[2].ops(OP_SPLIT)
            assert sent.body == [3, 3, b"k"]
            assert (left.range_id, left.start, left.end) == (3, b"g", b"k")
            assert (right.range_id, right.start, right.end) == (5, b"k", b"p")
            lookups = len(cl.ops(OP_RANGES))
            await kv.put(b"m", b"1")
            assert cl[2].ops(OP_RANGE_WRITE)[-1].body[0] == 5
            assert len(cl.ops(OP_RANGES)) == lookups
            with pytest.raises(ClientError, match="starts there already"):
                await kv.split("k")  # already a range's first key: refused unsent
            assert len(cl[2].ops(OP_SPLIT)) == 1
            descs = await kv.ranges()
            assert [(d.range_id, d.start, d.end) for d in descs] == [
                (2, b"", b"g"), (3, b"g", b"k"), (5, b"k", b"p"), (4, b"p", b"")]  # fmt: skip
            assert [int(d.leader) for d in descs] == [1, 2, 2, 3]
            part = await kv.ranges("h", "m")
            assert [d.range_id for d in part] == [3, 5]

    run(main())


def test_a_range_leader_transfer_goes_to_the_ranges_leader(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            cl.auto_publish = False  # the directory's hint stays on the old leader (2)
            cl.set_leader(3, 3)
            assert await kv.transfer_range_leader(3, 1) == 1
            (sent,) = cl[3].ops(OP_META)  # the old leader redirected it to node 3
            assert sent.body == ["transfer", [3, 1]]
            assert cl.leaders[3] == 1 and cl.leaders[2] == 1 and cl.leaders[4] == 3
            with pytest.raises(ClientError, match="no range 9"):
                await kv.transfer_range_leader(9, 1)
            cl.move(4, (1, 2), 1)
            cl.publish()
            not_a_voter = r"node 3 is not a voter of range 4 \(voters 1, 2\)"
            with pytest.raises(ClientError, match=not_a_voter):
                await kv.transfer_range_leader(4, 3)
            with pytest.raises(MalformedRequestError, match="meta range"):
                await kv.transfer_range_leader(1, 2)
            with pytest.raises(MalformedRequestError, match="positive"):
                await kv.transfer_range_leader(3, 0)
            assert len(cl.ops(OP_META)) == 2  # nothing was sent for the refused ones

    run(main())


def test_an_unsharded_cluster_has_no_ranges(tmp_path: Path) -> None:
    with ThreadedCluster(tmp_path) as cl, Client([cl[1].addr], timeout=2) as kv:
        kv.put("a", "1")
        with pytest.raises(ClientError, match="not sharded"):
            kv.ranges()
        with pytest.raises(ClientError, match="not sharded"):
            kv.split("a")
        with pytest.raises(ClientError, match="not sharded"):
            kv.transfer_range_leader(2, 1)
        assert cl[1].ops(OP_WRITE)


def test_the_blocking_client_routes_by_range_too(tmp_path: Path) -> None:
    with Threaded(lambda: FakeShardedCluster(tmp_path, 3, SPLITS)) as cl:
        with Client([cl[2].addr], timeout=5) as kv:
            kv.put("apple", "1")
            kv.put("zebra", "2")
            assert kv.get("zebra").value == b"2"  # type: ignore[union-attr]
            assert [p.key for p in kv.range("a", "\xff").kvs] == [b"apple", b"zebra"]
            kv.split("b")
            assert len(kv.ranges()) == 4
        assert cl[1].ops(OP_RANGE_WRITE) and cl[3].ops(OP_RANGE_WRITE)
