"""The client on a real sharded cluster (``qkv server --sharded``): routing by range,
splits under it, scans, deletes and compactions across ranges, transactions refused
across ranges, automatic splits, and concurrent writers through splits."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from quorumkv.client import AsyncClient
from quorumkv.errors import ClientError, CompactedError, CrossRangeError, FutureRevisionError
from quorumkv.kv import ALL_KEYS, PutRequest, SortOrder, SortTarget


def _key(i: int) -> bytes:
    return b"k%04d" % i


@pytest.fixture
def sharded(make_cluster: Any) -> Any:
    cluster = make_cluster(3, extra_args=["--sharded"], tick_ms=20)
    with cluster.client(timeout=30) as cl:
        yield cluster, cl


def test_the_client_routes_through_splits_and_across_ranges(sharded: Any) -> None:
    cluster, cl = sharded
    for i in range(0, 200, 2):
        cl.put(_key(i), b"v%d" % i)
    (only,) = cl.ranges()
    assert (only.start, only.end) == (b"", b"")
    left, right = cl.split(_key(50))
    assert (left.end, right.start) == (_key(50), _key(50))
    with pytest.raises(ClientError, match="starts there already"):  # not a malformed request
        cl.split(_key(50))
    cl.split(_key(120))
    # A client that cached the old layout is refused by the ranges and catches up.
    with cluster.client(timeout=30) as other:
        assert other.get(_key(10)) is not None
        cl.split(_key(10))
        for i in range(1, 200, 2):
            other.put(_key(i), b"v%d" % i)
        assert other.get(_key(199)).value == b"v199"
    assert [(d.start, d.end) for d in cl.ranges()] == [
        (b"", _key(10)),
        (_key(10), _key(50)),
        (_key(50), _key(120)),
        (_key(120), b""),
    ]
    # A scan across the four ranges: ordered, complete, limit and count honoured.
    everything = cl.range(b"k", prefix=True)
    assert [kv.key for kv in everything.kvs] == [_key(i) for i in range(200)]
    assert everything.count == 200 and not everything.more
    page = cl.range(_key(5), _key(130), limit=60)
    assert [kv.key for kv in page.kvs] == [_key(i) for i in range(5, 65)]
    assert page.more and page.count == 125
    counted = cl.range(b"k", prefix=True, count_only=True)
    assert counted.count == 200 and counted.kvs == ()
    newest = cl.range(b"k", prefix=True, limit=3, sort_order=SortOrder.DESCEND,
                      sort_target=SortTarget.MOD)  # fmt: skip
    assert [kv.key for kv in newest.kvs] == [_key(199), _key(197), _key(195)]
    # Revisions are one sequence: the last write is the newest everywhere.
    assert newest.kvs[0].mod_revision == max(kv.mod_revision for kv in everything.kvs)
    # A transaction inside one range is atomic; across ranges it is refused unsent.
    cl.txn([], [PutRequest(_key(11), b"t"), PutRequest(_key(12), b"t")])
    assert cl.get(_key(12)).value == b"t"
    with pytest.raises(CrossRangeError, match="spans 2 ranges"):
        cl.txn([], [PutRequest(_key(1), b"x"), PutRequest(_key(100), b"x")])
    assert cl.get(_key(1)).value == b"v1"
    # A delete across ranges runs range by range.
    gone = cl.delete(_key(40), _key(60))
    assert gone.deleted == 20
    assert cl.range(b"k", prefix=True, count_only=True).count == 180
    assert cl.range(_key(0), ALL_KEYS, count_only=True).count == 180
    # A compaction reaches every range.
    rev = cl.put(_key(0), b"last").revision
    cl.compact(rev)
    with pytest.raises(CompactedError):
        cl.get(_key(150), revision=rev - 50)
    # Every node holds every range; leaders spread over the nodes in time.
    st = cl.status()
    assert st["sharded"] is True and len(st["ranges"]) == 4


def test_reads_pinned_at_a_revision_see_every_range_as_of_that_revision(sharded: Any) -> None:
    """etcd's one revision sequence across ranges: a read at revision R answers from
    every range, including one whose last write is older than R (it holds its state as
    of R), and a revision not yet handed out is refused as in the future."""
    _, cl = sharded
    cl.split(_key(100))
    quiet = cl.put(_key(1), b"old").revision  # the left range's last write
    for i in range(5):
        cl.put(_key(150), b"v%d" % i)
    busy = cl.put(_key(151), b"x").revision  # the right range moved on
    assert busy > quiet + 5
    assert cl.get(_key(1), revision=busy).value == b"old"  # left: its own revision < busy
    assert cl.get(_key(1), revision=busy - 1).mod_revision == quiet
    snapshot = cl.range(b"k", prefix=True, revision=busy - 1)  # across both ranges
    assert [(kv.key, kv.value) for kv in snapshot.kvs] == [(_key(1), b"old"), (_key(150), b"v4")]
    later = cl.put(_key(1), b"new").revision
    assert cl.get(_key(1), revision=busy).value == b"old"  # still as of busy
    assert cl.get(_key(1), revision=later).value == b"new"
    with pytest.raises(FutureRevisionError):
        cl.get(_key(1), revision=later + 1000)
    with pytest.raises(FutureRevisionError):
        cl.get(_key(150), revision=later + 1000)


def test_pinned_reads_under_concurrent_writes_miss_no_acknowledged_write(
    make_cluster: Any,
) -> None:
    """Writers keep both ranges busy while a reader reads the left key at the newest
    revision any write was acknowledged with. Each answer must be the key as of that
    revision: its newest write at or below it, judged once every write is done, so a
    write stamped below the revision but still in flight when the read came counts too
    (the leader waits out stamp batches still out, whatever the interleaving)."""
    cluster = make_cluster(3, extra_args=["--sharded"], tick_ms=20)
    acked: dict[bytes, list[int]] = {_key(1): [], _key(150): []}
    newest = [0]

    async def main() -> None:
        async with AsyncClient(cluster.endpoints, timeout=30) as kv:
            await kv.split(_key(100))

            async def writer(key: bytes, n: int) -> None:
                for i in range(n):
                    rev = (await kv.put(key, b"%d" % i)).revision
                    acked[key].append(rev)
                    newest[0] = max(newest[0], rev)

            async def reader() -> None:
                while len(acked[_key(1)]) < 150:
                    at = newest[0]
                    if at:
                        got = await kv.get(_key(1), revision=at)
                        reads.append((at, 0 if got is None else got.mod_revision))
                    await asyncio.sleep(0)

            tasks = [writer(_key(1), 150), writer(_key(150), 300), writer(_key(150), 300)]
            await asyncio.gather(*tasks, reader())

    reads: list[tuple[int, int]] = []
    asyncio.run(main())
    assert len(reads) > 20
    for at, seen in reads:
        assert seen == max([r for r in acked[_key(1)] if r <= at], default=0), (at, seen)


def test_splits_in_quick_succession_all_succeed(sharded: Any) -> None:
    # Regression: a split's requester and the reconciler (which saw the directory
    # ahead of the range) both proposed the same split; the second was refused and
    # the requester told the split failed although it had happened.
    _, cl = sharded
    for i in range(1, 25):
        _left, right = cl.split(b"idle/%03d" % i)
        assert right.start == b"idle/%03d" % i
    assert len(cl.ranges()) == 25


def _await_splits(cl: Any, ranges: int, keys: int) -> list[Any]:
    """Wait (60 s at most) until the cluster split itself into ``ranges`` ranges; then
    they tile the keyspace and a scan finds keys 0 .. ``keys`` - 1, in order. Returns
    the ranges."""
    deadline = time.monotonic() + 60
    while len(cl.ranges()) < ranges:
        assert time.monotonic() < deadline, f"no automatic split: {cl.ranges()}"
        time.sleep(0.2)
    descs: list[Any] = cl.ranges()
    assert descs[0].start == b"" and descs[-1].end == b""
    assert all(a.end == b.start for a, b in itertools.pairwise(descs))
    everything = cl.range(b"k", prefix=True, keys_only=True)
    assert [kv.key for kv in everything.kvs] == [_key(i) for i in range(keys)]
    return descs


def test_a_range_splits_by_itself_past_its_key_threshold(make_cluster: Any) -> None:
    cluster = make_cluster(3, extra_args=["--sharded", "--split-keys", "300"], tick_ms=20)
    with cluster.client(timeout=30) as cl:
        for i in range(1000):
            cl.put(_key(i), b"v")
        _await_splits(cl, 3, 1000)


def test_a_range_splits_by_itself_past_its_byte_threshold(make_cluster: Any) -> None:
    cluster = make_cluster(3, extra_args=["--sharded", "--split-bytes", "32KiB"], tick_ms=20)
    value = b"x" * 1024
    with cluster.client(timeout=30) as cl:
        for i in range(100):  # about 105 KiB of records, far fewer keys than --split-keys
            cl.put(_key(i), value)
        descs = _await_splits(cl, 2, 100)
    # Every replica reports its range's real size: the records of its keys.
    sizes: dict[int, int] = {}
    for n in cluster.nodes:
        for r in cluster.nodes[n].status()["ranges"]:
            sizes[r["id"]] = max(sizes.get(r["id"], 0), r["bytes"])
    assert all(sizes[d.range_id] > 0 for d in descs)
    assert sum(sizes[d.range_id] for d in descs) >= 100 * len(value)


def test_an_unsharded_cluster_has_no_ranges_to_show(make_cluster: Any) -> None:
    cluster = make_cluster(1)
    with cluster.client(timeout=10) as cl, pytest.raises(ClientError, match="not sharded"):
        cl.ranges()


def test_writers_through_splits_apply_each_write_exactly_once(make_cluster: Any) -> None:
    cluster = make_cluster(3, sharded=True, tick_ms=20)
    keys = [b"w%02d" % i for i in range(12)]
    writes = 30

    async def main() -> None:
        async with AsyncClient(cluster.endpoints, timeout=30) as kv:

            async def writer(key: bytes) -> None:
                for n in range(writes):
                    await kv.put(key, b"%d" % n)

            async def splitter() -> None:
                async with AsyncClient(cluster.endpoints, timeout=30) as admin:
                    for key in keys[1::2]:
                        await admin.split(key)
                        await asyncio.sleep(0.02)

            await asyncio.gather(*(writer(k) for k in keys), splitter())
            got = await kv.range(b"w", prefix=True)
            # Every put was acknowledged once and applied once: version == puts.
            assert [(p.key, p.value, p.version) for p in got.kvs] == [
                (k, b"%d" % (writes - 1), writes) for k in keys
            ]
            assert got.count == len(keys)
            assert [d.start for d in await kv.ranges()] == [b"", *keys[1::2]]
            assert len(kv.shards.pool) <= 3  # one connection per node for every range

    asyncio.run(main())
