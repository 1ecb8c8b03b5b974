"""Scans over several ranges, against a fake sharded cluster (``fakeshard``) whose
ranges share one store: every answer is compared with what that store, one range
holding every key, answers to the same request (pairs, order, ``count``, ``more``,
``revision``). Then how pieces are cut: clipped to their ranges, limited to what is
still missing, the rest only counted, and cut again after a split the cache missed."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from fakenode import run
from fakeshard import FakeShardedCluster

from quorumkv.client import AsyncClient
from quorumkv.kv import ALL_KEYS, RangeRequest, RangeResponse, SortOrder, SortTarget
from quorumkv.net import OP_RANGE_READ, OP_RANGES

SPLITS = (b"d", b"h", b"p", b"t")
"""Ranges [-inf, d) [d, h) [h, p) [p, t) [t, +inf): ids 2, 3, 4, 5, 6."""


async def _load(kv: AsyncClient) -> None:
    """Keys a..z with values whose order differs from the keys', versions 1-3, and
    writes in an order that makes mod revisions differ from key order."""
    letters = b"qwertyuiopasdfghjklzxcvbnm"
    for i, c in enumerate(letters):
        await kv.put(bytes([c]), b"v%d" % (i % 7))
    for c in b"zhp":
        await kv.put(bytes([c]), b"again")
    await kv.put(b"d", b"thrice")
    await kv.put(b"d", b"v3")


def _client(cl: FakeShardedCluster) -> AsyncClient:
    return AsyncClient([cl[1].addr], timeout=5)


def _reads(cl: FakeShardedCluster) -> list[RangeRequest]:
    out = []
    for s in cl.ops(OP_RANGE_READ):
        assert s.command is not None and isinstance(s.command.request, RangeRequest)
        out.append(s.command.request)
    return out


def _check(cl: FakeShardedCluster, got: RangeResponse, req: RangeRequest) -> None:
    assert got == cl.store.range(req), req


SORTS = [
    (SortOrder.NONE, SortTarget.KEY),
    (SortOrder.ASCEND, SortTarget.KEY),
    (SortOrder.DESCEND, SortTarget.KEY),
    (SortOrder.NONE, SortTarget.MOD),
    (SortOrder.DESCEND, SortTarget.MOD),
    (SortOrder.ASCEND, SortTarget.VALUE),
    (SortOrder.DESCEND, SortTarget.VERSION),
    (SortOrder.ASCEND, SortTarget.CREATE),
]


@pytest.mark.parametrize(
    ("key", "end"), [(b"a", ALL_KEYS), (b"b", b"s"), (b"d", b"h"), (b"e", b"f"), (b"x", b"\xff")]
)
def test_every_scan_answers_what_one_range_holding_every_key_answers(
    tmp_path: Path, key: bytes, end: bytes
) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await _load(kv)
            checked = 0
            for limit, (order, target) in itertools.product([0, 1, 3, 4, 7, 30], SORTS):
                for keys_only, count_only in ((False, False), (True, False), (False, True)):
                    args: dict[str, Any] = {
                        "limit": limit, "sort_order": order, "sort_target": target,
                        "keys_only": keys_only, "count_only": count_only,
                    }  # fmt: skip
                    got = await kv.range(key, end, **args)
                    _check(cl, got, RangeRequest(key, end, **args))
                    checked += 1
            assert checked == 144

    run(main())


def test_a_limited_scan_reads_what_is_missing_then_only_counts(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await _load(kv)
            before = len(_reads(cl))
            got = await kv.range(b"b", b"s", limit=5)
            assert [p.key for p in got.kvs] == [b"b", b"c", b"d", b"e", b"f"]
            assert got.more and got.count == 17
            pieces = sorted(_reads(cl)[before:], key=lambda r: r.key)
            assert [(r.key, r.range_end, r.limit, r.count_only) for r in pieces] == [
                (b"b", b"d", 5, False),  # range 2: 2 keys
                (b"d", b"h", 3, False),  # range 3: the 3 still missing, of 4
                (b"h", b"p", 0, True),  # the rest: counted, concurrently
                (b"p", b"s", 0, True),
            ]
            newest = await kv.range(b"a", ALL_KEYS, limit=2, sort_order=SortOrder.DESCEND)
            assert [p.key for p in newest.kvs] == [b"z", b"y"] and newest.count == 26

    run(main())


def test_a_scan_reclips_its_pieces_when_ranges_split_behind_the_cache(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await _load(kv)
            await kv.range(b"a", ALL_KEYS, count_only=True)  # every range cached
            lookups = len(cl.ops(OP_RANGES))
            cl.split(b"k")
            cl.split(b"r")
            cl.set_leader(7, 3)
            req = RangeRequest(b"b", b"y", limit=12)
            got = await kv.range(b"b", b"y", limit=12)
            _check(cl, got, req)
            cl.split(b"f")
            cl.split(b"w")
            for order, target in ((SortOrder.DESCEND, SortTarget.KEY),
                                  (SortOrder.DESCEND, SortTarget.MOD)):  # fmt: skip
                got = await kv.range(b"b", b"y", limit=6, sort_order=order, sort_target=target)
                _check(cl, got, RangeRequest(b"b", b"y", 6, 0, order, target))
            # The pieces sent by the stale cache were refused (the fake answers
            # OutOfRangeError for a piece beyond its range), looked up, cut again.
            assert len(cl.ops(OP_RANGES)) > lookups
            assert [d.start for d in kv.shards.cache.descriptors()] == [
                b"", b"d", b"f", b"h", b"k", b"p", b"r", b"t", b"w"]  # fmt: skip

    run(main())


def test_a_single_key_read_is_one_piece_at_its_range(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await kv.put(b"k", b"1")
            assert await kv.get(b"j") is None
            got = await kv.get(b"k", serializable=True)
            assert got is not None and got.value == b"1"
            (a, b) = cl[3].ops(OP_RANGE_READ)  # range 4 [h, p) is led by node 3
            assert a.body[0] == b.body[0] == 4 and b.serializable

    run(main())


def test_a_scan_pinned_at_a_revision_reads_every_range_there(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl, _client(cl) as kv:
            await _load(kv)
            # a range answers for its own history: pin at a revision every range reached
            rev = (await kv.put(b"m", b"late")).revision
            for key in (b"a", b"e", b"q", b"u"):
                await kv.put(key, b"newer")
            await kv.delete(b"r")
            got = await kv.range(b"a", ALL_KEYS, revision=rev)
            _check(cl, got, RangeRequest(b"a", ALL_KEYS, revision=rev))
            assert {p.key: p.value for p in got.kvs}[b"m"] == b"late"
            assert {p.key: p.value for p in got.kvs}[b"q"] != b"newer"
            assert b"r" in {p.key for p in got.kvs}
            assert {r.revision for r in _reads(cl)[-5:]} == {rev}

    run(main())
