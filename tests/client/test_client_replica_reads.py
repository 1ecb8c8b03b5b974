"""Reads spread over the replicas (``read_from``), against fake nodes: which replica each
read goes to on an unsharded and a sharded cluster, learners never asked, a replica that
cannot answer passed over, the leader as the last resort, and the error that says why
each replica tried could not answer. The rotation itself is tested without sockets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from fakenode import SILENT, FakeCluster, ThreadedCluster, run
from fakeshard import FakeShardedCluster

from quorumkv import Client
from quorumkv.cli._common import connect
from quorumkv.client import AsyncClient, _replicas
from quorumkv.client._replicas import ReplicaReads, check_read_from
from quorumkv.consensus import NodeId
from quorumkv.errors import UnavailableError
from quorumkv.net import (
    ERR_UNAVAILABLE,
    ERR_WRONG_RANGE,
    OP_RANGE_READ,
    OP_RANGES,
    OP_READ,
    OP_STATUS,
)
from quorumkv.shard import Replica

NO_LEADER = (
    ERR_UNAVAILABLE,
    "node 2 (follower of group 1) knows no leader to ask for a read index",
)


@pytest.fixture(autouse=True)
def _long_avoidance(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that failed stays left out for the whole test (no timing in the checks)."""
    monkeypatch.setattr(_replicas, "AVOID_S", 3600.0)


# -- the rotation, without sockets ----------------------------------------------------------


def test_follower_reads_rotate_over_the_followers_and_never_pick_the_leader() -> None:
    rr = ReplicaReads("follower")
    voters = ["a", "b", "c"]
    picks = [rr.order(voters, "a", 0.0) for _ in range(4)]
    assert picks == [["b", "c"], ["c", "b"], ["b", "c"], ["c", "b"]]
    assert rr.order(["a"], "a", 0.0) == []  # a one-voter group: the leader's path only
    assert rr.order(voters, None, 0.0) != []  # no leader known: every voter is a candidate


def test_any_reads_rotate_over_every_voter() -> None:
    rr = ReplicaReads("any")
    firsts = [rr.order(["a", "b", "c"], "a", 0.0)[0] for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


def test_a_replica_that_failed_is_left_out_until_its_time_is_over() -> None:
    avoid = _replicas.AVOID_S
    rr = ReplicaReads("follower")
    rr.failed("b", 10.0)
    assert rr.order(["a", "b", "c"], "a", 10.0) == ["c"]
    assert rr.order(["a", "b", "c"], "a", 10.0 + avoid - 0.01) == ["c"]
    assert sorted(rr.order(["a", "b", "c"], "a", 10.0 + avoid)) == ["b", "c"]
    rr.failed("c", 20.0)
    rr.answered("c")
    assert "c" in rr.order(["a", "b", "c"], "a", 20.0)


def test_read_from_is_checked() -> None:
    assert check_read_from("any") == "any"
    with pytest.raises(ValueError, match="read_from must be one of leader, follower, any"):
        check_read_from("followers")
    with pytest.raises(ValueError, match="read_from"):
        AsyncClient("127.0.0.1:1", read_from="nearest")  # type: ignore[arg-type]


# -- an unsharded cluster -------------------------------------------------------------------


def _reads(cl: Any, op: int = OP_READ) -> list[int]:
    return [len(cl[n].ops(op)) for n in sorted(cl.nodes)]


def test_unsharded_follower_reads_go_to_the_followers_in_turn(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster(tmp_path, 3, leader=1) as cl:
            cl.followers_read = True
            async with AsyncClient(cl[1].addr, timeout=5, read_from="follower") as kv:
                await kv.put("k", "v")
                for _ in range(4):
                    got = await kv.get("k")
                    assert got is not None and got.value == b"v"
                resp = await kv.range("k", prefix=True)
                assert [x.key for x in resp.kvs] == [b"k"]
            assert _reads(cl) == [0, 3, 2]
            # The voters came from one status, asked of the node the client talks to.
            assert [len(cl[n].ops(OP_STATUS)) for n in (1, 2, 3)] == [1, 0, 0]

    run(main())


def test_unsharded_any_reads_include_the_leader(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster(tmp_path, 3, leader=1) as cl:
            cl.followers_read = True
            async with AsyncClient(cl[2].addr, timeout=5, read_from="any") as kv:
                for _ in range(6):
                    await kv.get("k", serializable=True)
            assert _reads(cl) == [2, 2, 2]

    run(main())


def test_the_default_reads_at_the_leader_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster(tmp_path, 3, leader=1) as cl:
            cl.followers_read = True
            async with AsyncClient(cl[1].addr, timeout=5) as kv:
                for _ in range(3):
                    await kv.get("k")
            assert _reads(cl) == [3, 0, 0]
            assert not cl[1].ops(OP_STATUS)

    run(main())


def test_learners_are_never_asked(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster(tmp_path, 3, leader=1) as cl:
            cl.followers_read = True
            cl.members[2]["voter"] = False  # node 3 is a learner
            async with AsyncClient(cl[1].addr, timeout=5, read_from="any") as kv:
                for _ in range(4):
                    await kv.get("k")
            assert _reads(cl) == [2, 2, 0]

    run(main())


def test_a_follower_without_a_leader_is_passed_over_then_left_out(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster(tmp_path, 3, leader=1) as cl:
            cl.followers_read = True
            cl[2].always = NO_LEADER
            async with AsyncClient(cl[1].addr, timeout=5, read_from="follower") as kv:
                await kv.put("k", "v")
                for _ in range(4):
                    got = await kv.get("k")
                    assert got is not None and got.value == b"v"
            # Node 2 was tried once, then left out (AVOID_S): node 3 answered every read.
            assert _reads(cl) == [0, 1, 4]

    run(main())


def test_the_leader_answers_when_no_follower_can(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster(tmp_path, 3, leader=1) as cl:
            cl.followers_read = True
            cl[2].always = NO_LEADER
            cl[3].always = SILENT  # stalled: its try times out
            async with AsyncClient(
                cl[1].addr, timeout=5, attempt_timeout=0.2, read_from="follower"
            ) as kv:
                await kv.put("k", "v")
                for _ in range(2):
                    got = await kv.get("k")
                    assert got is not None and got.value == b"v"
            assert _reads(cl) == [2, 1, 1]  # the second read went to the leader at once

    run(main())


def test_the_give_up_error_says_why_each_replica_could_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_replicas, "AVOID_S", 0.0)  # node 2 is tried by every read

    async def main() -> None:
        async with FakeCluster(tmp_path, 2, leader=1) as cl:
            cl.followers_read = True
            cl[2].always = NO_LEADER
            async with AsyncClient(cl[1].addr, timeout=5, read_from="follower") as kv:
                await kv.put("k", "v")
                assert await kv.get("k") is not None  # the status read, then the leader
                cl[1].always = (ERR_UNAVAILABLE, "node 1 is catching up")
                with pytest.raises(UnavailableError) as info:
                    await kv.get("k", timeout=0.5)
        text = str(info.value)
        last, _, first = text.partition("(replicas tried first:")
        assert first, text
        assert "knows no leader to ask for a read index" in first  # the follower's
        # The last failure is whichever node the router's own retries asked last: the
        # leader, or the follower again (which one depends on the retries' timing).
        assert "node 1 is catching up" in last or "knows no leader" in last, text

    run(main())


def test_the_blocking_client_and_the_cli_pass_read_from_on(tmp_path: Path) -> None:
    with ThreadedCluster(tmp_path, 3, leader=1) as cl:
        cl.followers_read = True
        addrs = [n.addr for n in cl.nodes.values()]
        with Client(addrs, timeout=5, read_from="follower") as kv:
            kv.put("k", "v")
            got = kv.get("k")
            assert got is not None and got.value == b"v"
        args = argparse.Namespace(endpoints=",".join(addrs), timeout=5.0, read_from="any")
        with connect(args) as kv:
            for _ in range(3):
                kv.get("k")
        assert sum(_reads(cl)[1:]) >= 3


# -- a sharded cluster ----------------------------------------------------------------------

SPLITS = (b"g", b"p")
"""Ranges 2 [-inf, g) led by node 1, 3 [g, p) by node 2, 4 [p, +inf) by node 3."""


def test_sharded_follower_reads_go_to_each_ranges_followers(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3, SPLITS) as cl:
            cl.followers_read = True
            addrs = [n.addr for n in cl.nodes.values()]
            async with AsyncClient(addrs, timeout=5, read_from="follower") as kv:
                for key in (b"a", b"h", b"z"):
                    await kv.put(key, key)
                    for _ in range(2):
                        got = await kv.get(key)
                        assert got is not None and got.value == key
                resp = await kv.range(b"a", b"zz")
                assert [x.key for x in resp.kvs] == [b"a", b"h", b"z"]
            by_node = {n: [s.body[0] for s in cl[n].ops(OP_RANGE_READ)] for n in (1, 2, 3)}
            for node, rids in by_node.items():  # no range was read at its leader
                assert node - 1 + 2 not in rids, (node, rids)
            read = sorted(r for rids in by_node.values() for r in rids)
            assert read == [2, 2, 2, 3, 3, 3, 4, 4, 4]  # two gets and a scan's piece each

    run(main())


def test_sharded_reads_skip_learners_and_pass_over_a_replica_without_the_range(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with FakeShardedCluster(tmp_path, 3) as cl:
            cl.followers_read = True
            desc = cl.descs[2]
            learner = (Replica(NodeId(1)), Replica(NodeId(2)), Replica(NodeId(3), learner=True))
            cl.descs[2] = desc.with_replicas(learner)
            cl.publish()
            addrs = [n.addr for n in cl.nodes.values()]
            async with AsyncClient(addrs, timeout=5, read_from="any") as kv:
                for _ in range(4):
                    await kv.get(b"k")
                assert _reads(cl, OP_RANGE_READ) == [2, 2, 0]
                # Node 2 has not applied the split that made the range (or lost it): it
                # is passed over, and the read is answered elsewhere, the cache kept.
                cl[2].always = (ERR_WRONG_RANGE, None)
                for _ in range(3):
                    assert await kv.get(b"k") is None
                assert _reads(cl, OP_RANGE_READ) == [5, 3, 0]
                assert len(cl.ops(OP_RANGES)) == 1

    run(main())
