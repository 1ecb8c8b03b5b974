"""The asyncio client against fake nodes: routing, exactly-once retries, pipelining,
deadlines and the error each failure ends in, local validation, close."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fakenode import DROP, DROP_AFTER, GARBLED, SILENT, FakeCluster, Fault, run

import quorumkv.aio
from quorumkv.client import AsyncClient
from quorumkv.errors import (
    ClientError,
    CompactedError,
    CompareFailedError,
    FutureRevisionError,
    KVLimitError,
    MalformedRequestError,
    MembershipError,
    NotLeaderError,
    ProtocolError,
    RequestTimeoutError,
    TooManyRequestsError,
    UnavailableError,
)
from quorumkv.kv import (
    LIMITS,
    Compare,
    CompareOp,
    CompareTarget,
    PutRequest,
    PutResponse,
    RangeRequest,
    TxnRequest,
)
from quorumkv.net import (
    ERR_BAD_REQUEST,
    ERR_NOT_LEADER,
    ERR_SHUTTING_DOWN,
    ERR_TIMEOUT,
    ERR_TOO_MANY,
    ERR_UNAVAILABLE,
    OK,
    OP_READ,
    OP_WRITE,
)


def sessions(cluster: FakeCluster) -> list[tuple[int, int]]:
    """The (client, seq) of every write any node received, in order per node."""
    return [(s.command.client, s.command.seq) for s in cluster.writes() if s.command]


def test_aio_client_is_the_asyncio_client() -> None:
    assert quorumkv.aio.Client is AsyncClient


def test_put_get_with_str_and_bytes(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr) as c:
            resp = await c.put("greeting", "héllo")
            assert isinstance(resp, PutResponse)
            kv = await c.get(b"greeting")
            assert kv is not None
            assert (kv.key, kv.value, kv.version) == (b"greeting", "héllo".encode(), 1)
            await c.put(b"raw", b"\x00\xff")
            raw = await c.get("raw")
            assert raw is not None and raw.value == b"\x00\xff"
            assert await c.get("missing") is None

    run(body())


def test_local_validation_fails_before_the_network(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr) as c:
            with pytest.raises(KVLimitError, match="value size"):
                await c.put("k", b"x" * (LIMITS.max_value_bytes + 1))
            with pytest.raises(KVLimitError, match="key size"):
                await c.get(b"k" * (LIMITS.max_key_bytes + 1))
            with pytest.raises(MalformedRequestError, match="key is not provided"):
                await c.delete(b"")
            with pytest.raises(MalformedRequestError, match="bytes or str"):
                await c.put(42, "v")  # type: ignore[arg-type]
            with pytest.raises(KVLimitError, match="txn success operations"):
                puts = [PutRequest(b"k%d" % i, b"v") for i in range(LIMITS.max_txn_ops + 1)]
                await c.txn([], puts)
            with pytest.raises(MalformedRequestError, match="not both"):
                await c.range("a", "b", prefix=True)
            with pytest.raises(MalformedRequestError, match="node id"):
                await c.member_remove(0)
            assert cl[1].seen == [] and cl[1].handshakes == 0

    run(body())


def test_follows_the_redirect_to_the_leader(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 3, leader=3) as cl, AsyncClient([cl[1].addr]) as c:
            await c.put("a", "1")
            await c.put("b", "2")
            kv = await c.get("a")
            assert kv is not None and kv.value == b"1"
            # one refused write at node 1, then everything at the leader
            assert [s.op for s in cl[1].seen] == [OP_WRITE]
            assert [s.op for s in cl[3].seen] == [OP_WRITE, OP_WRITE, OP_READ]
            assert cl[3].addr in c.endpoints
            # the redirected write kept its session: same (client, seq) at both nodes
            assert sessions(cl)[0] == sessions(cl)[1]

    run(body())


def test_finds_the_leader_past_a_dead_endpoint(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 3, leader=2) as cl:
            await cl[1].stop()
            async with AsyncClient(f"{cl[1].addr},{cl[3].addr}", timeout=5) as c:
                await c.put("k", "v")
            assert cl[1].seen == [] and len(cl[3].seen) == 1 and len(cl[2].seen) == 1

    run(body())


def test_leader_failover_moves_to_the_new_leader(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 3, leader=1) as cl:
            addrs = [n.addr for n in cl.nodes.values()]
            async with AsyncClient(addrs, timeout=5) as c:
                await c.put("k", "1")
                await cl[1].stop()  # the leader crashes; node 3 takes over
                cl.leader = 3
                await c.put("k", "2")
                kv = await c.get("k")
                assert kv is not None and (kv.value, kv.version) == (b"2", 2)

    run(body())


def test_dropped_connection_retries_exactly_once_on_the_same_lane(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=5) as c:
            cl[1].faults.append(DROP_AFTER)  # applied, but the answer never leaves
            first = await c.put("k", "v1")
            kv = await c.get("k")
            assert kv is not None and kv.version == 1, "the retry was applied a second time"
            assert first.revision == kv.mod_revision
            await c.put("k", "v2")
            (client, seq), retry, nxt = sessions(cl)
            assert retry == (client, seq), "a retry must reuse its (client, seq)"
            assert nxt == (client, seq + 1), "the lane goes back with seq + 1"
            assert cl[1].handshakes == 2

    run(body())


def test_dropped_connection_before_apply_is_retried(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=5) as c:
            cl[1].faults.extend([DROP, DROP])
            await c.put("k", "v")
            kv = await c.get("k")
            assert kv is not None and kv.version == 1
            assert len(set(sessions(cl))) == 1 and len(sessions(cl)) == 3

    run(body())


def test_server_timeout_is_retried_on_the_same_lane(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=5) as c:
            cl[1].faults.append((ERR_TIMEOUT, "commit timed out"))
            await c.put("k", "v")
            assert len(sessions(cl)) == 2 and len(set(sessions(cl))) == 1

    run(body())


def test_concurrent_writes_take_separate_lanes_then_reuse_them(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr) as c:
            await asyncio.gather(*(c.put(f"k{i}", "v") for i in range(3)))
            ids = {client for client, _ in sessions(cl)}
            assert len(ids) == 3 and 0 not in ids
            assert all(0 < client < 1 << 63 for client in ids)
            await c.put("k", "again")
            client, seq = sessions(cl)[-1]
            assert client in ids and seq == 2
            reads = cl[1].ops(OP_READ)
            assert reads == []
            await c.get("k")
            read = cl[1].ops(OP_READ)[0].command
            assert read is not None and (read.client, read.seq) == (0, 0)

    run(body())


def test_out_of_order_answers_reach_their_callers(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr) as c:
            for i in range(4):
                await c.put(f"k{i}", f"v{i}")
            cl[1].reorder = 4  # the 4 answers come back last-first
            kvs = await asyncio.gather(*(c.get(f"k{i}") for i in range(4)))
            assert [kv.value if kv else None for kv in kvs] == [b"v0", b"v1", b"v2", b"v3"]

    run(body())


@pytest.fixture
def no_second_try(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoffs longer than any deadline: a call gives up at its first retryable
    failure, so which error it ends in does not depend on timing."""
    from quorumkv.client import _policy

    monkeypatch.setattr(_policy, "BACKOFF_MIN", 60.0)
    monkeypatch.setattr(_policy, "BACKOFF_MAX", 60.0)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoffs of a few milliseconds, for tests that go through many retries."""
    from quorumkv.client import _policy

    monkeypatch.setattr(_policy, "BACKOFF_MIN", 0.001)
    monkeypatch.setattr(_policy, "BACKOFF_MAX", 0.004)


@pytest.mark.usefixtures("quick_retries")
def test_every_retryable_failure_is_retried_on_one_lane(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=10) as c:
            cl[1].faults.extend(
                [
                    (ERR_UNAVAILABLE, "no leader"),
                    (ERR_SHUTTING_DOWN, "stopping"),
                    (ERR_TOO_MANY, "queue full"),
                    (ERR_TIMEOUT, "commit timed out"),
                    (ERR_NOT_LEADER, [0, None]),
                    DROP,
                ]
            )
            await c.put("k", "v")
            assert len(sessions(cl)) == 7 and len(set(sessions(cl))) == 1
            kv = await c.get("k")
            assert kv is not None and kv.version == 1

    run(body())


@pytest.mark.usefixtures("no_second_try")
@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        ((ERR_UNAVAILABLE, "no leader elected"), UnavailableError, "no leader elected"),
        ((ERR_SHUTTING_DOWN, "node stopping"), UnavailableError, "node stopping"),
        ((ERR_TOO_MANY, "queue full"), TooManyRequestsError, "queue full"),
        ((ERR_TIMEOUT, "commit timed out"), RequestTimeoutError, "commit timed out"),
        ((ERR_NOT_LEADER, [0, None]), NotLeaderError, "no leader known"),
        (SILENT, RequestTimeoutError, "no answer"),
        # The write was sent when the connection dropped: it may have been applied.
        (DROP, RequestTimeoutError, "outcome is unknown"),
    ],
)
def test_deadline_raises_by_the_last_failure(
    tmp_path: Path, fault: Fault, error: type[ClientError], text: str
) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=2) as c:
            cl[1].always = fault
            with pytest.raises(error, match=text):
                await c.put("k", "v", timeout=None if fault != SILENT else 0.1)

    run(body())


@pytest.mark.usefixtures("no_second_try")
def test_not_leader_error_carries_the_named_leader(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 2, leader=2) as cl:
            cl[1].always = (ERR_NOT_LEADER, [2, None])  # named, address unknown
            async with AsyncClient(cl[1].addr, timeout=2) as c:
                with pytest.raises(NotLeaderError) as info:
                    await c.put("k", "v")
                assert info.value.leader == 2
            cl[1].always = None
            await cl[2].stop()  # named with its address, but down
            async with AsyncClient(cl[1].addr, timeout=2) as c:
                with pytest.raises(UnavailableError, match=cl[2].addr):
                    await c.put("k", "v")

    run(body())


@pytest.mark.usefixtures("no_second_try")
def test_nothing_reachable_is_unavailable(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 2) as cl:
            await cl[1].stop()
            await cl[2].stop()
            async with AsyncClient([cl[1].addr, cl[2].addr], timeout=2) as c:
                with pytest.raises(UnavailableError, match=cl[1].addr):
                    await c.get("k")

    run(body())


def test_refused_handshake_is_a_protocol_error_not_retried(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=5) as c:
            cl[1].refuse = "protocol version 1 is not supported; this node speaks 2"
            with pytest.raises(ProtocolError, match="this node speaks 2"):
                await c.put("k", "v")
            assert cl[1].handshakes == 1

    run(body())


def test_a_server_that_is_not_quorumkv_is_a_protocol_error() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def body() -> None:
        server = await asyncio.start_server(http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with AsyncClient(f"127.0.0.1:{port}", timeout=5) as c:
                with pytest.raises(ProtocolError, match="HTTP"):
                    await c.get("k")
        finally:
            server.close()
            await server.wait_closed()

    run(body())


def test_a_connection_level_refusal_is_a_protocol_error(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=5) as c:
            cl[1].faults.append(GARBLED)
            with pytest.raises(ProtocolError, match="must be"):
                await c.get("k")
            assert cl[1].handshakes == 1

    run(body())


def test_bad_request_and_membership_errors_are_not_retried(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=5) as c:
            cl[1].faults.append((ERR_BAD_REQUEST, "unknown op 9"))
            with pytest.raises(MalformedRequestError, match="unknown op 9"):
                await c.get("k")
            with pytest.raises(MembershipError, match="not a member"):
                await c.member_remove(7)
            assert len(cl[1].seen) == 2

    run(body())


def test_state_machine_errors_are_raised(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr) as c:
            first = await c.put("k", "1")
            await c.put("k", "2")
            last = await c.put("k", "3")
            await c.compact(last.revision)
            with pytest.raises(CompactedError):
                await c.get("k", revision=first.revision)
            with pytest.raises(FutureRevisionError):
                await c.get("k", revision=last.revision + 10)
            with pytest.raises(CompactedError):
                await c.compact(first.revision)

    run(body())


def test_compare_and_swap(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr) as c:
            await c.compare_and_swap("lock", None, "a")
            with pytest.raises(CompareFailedError) as info:
                await c.compare_and_swap("lock", None, "b")
            assert (info.value.key, info.value.actual) == (b"lock", b"a")
            resp = await c.compare_and_swap("lock", "a", "b")
            kv = await c.get("lock")
            assert kv is not None and (kv.value, kv.mod_revision) == (b"b", resp.revision)
            with pytest.raises(CompareFailedError) as info:
                await c.compare_and_swap("lock", b"a", "c")
            assert info.value.actual == b"b"
            with pytest.raises(CompareFailedError) as info:
                await c.compare_and_swap("free", "x", "c")
            assert info.value.actual is None

    run(body())


def test_range_delete_and_txn(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr) as c:
            for key in ("app/a", "app/b", "app/c", "other"):
                await c.put(key, key.upper())
            resp = await c.range("app/", prefix=True)
            assert [kv.key for kv in resp.kvs] == [b"app/a", b"app/b", b"app/c"]
            resp = await c.range("app/a", "app/c", keys_only=True)
            assert [(kv.key, kv.value) for kv in resp.kvs] == [(b"app/a", b""), (b"app/b", b"")]
            assert (await c.range("", prefix=True, count_only=True)).count == 4
            gone = await c.delete("app/", prefix=True, prev_kv=True)
            assert gone.deleted == 3 and gone.prev_kvs[0].value == b"APP/A"
            txn = await c.txn(
                [Compare(CompareTarget.VERSION, CompareOp.GREATER, b"other", 0)],
                [PutRequest(b"seen", b"yes"), RangeRequest(b"other")],
                [TxnRequest()],
            )
            assert txn.succeeded and len(txn.responses) == 2
            kv = await c.get("seen", serializable=True)
            assert kv is not None and kv.value == b"yes"

    run(body())


def test_serializable_reads_are_served_by_a_follower(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 2, leader=2) as cl:
            async with AsyncClient(cl[2].addr) as c:
                await c.put("k", "v")
            async with AsyncClient(cl[1].addr) as c:
                kv = await c.get("k", serializable=True)
                assert kv is not None and kv.value == b"v"
                assert cl[1].ops(OP_READ)[0].serializable
                assert cl[2].ops(OP_READ) == []
                await c.get("k")  # linearizable: redirected to the leader
                assert len(cl[2].ops(OP_READ)) == 1

    run(body())


def test_close_fails_calls_in_flight_and_later_calls(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl:
            c = AsyncClient(cl[1].addr)
            cl[1].always = SILENT
            pending = asyncio.ensure_future(c.put("k", "v"))
            await cl[1].wait_seen(1)
            await c.close()
            with pytest.raises(ClientError, match="closed"):
                await pending
            with pytest.raises(ClientError, match="closed"):
                await c.get("k")
            await c.close()  # idempotent

    run(body())


def test_close_wakes_a_call_in_backoff(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl:
            c = AsyncClient(cl[1].addr, timeout=30)
            cl[1].always = (ERR_UNAVAILABLE, "no leader")
            pending = asyncio.ensure_future(c.get("k"))
            await cl[1].wait_seen(1)
            await c.close()
            with pytest.raises(ClientError, match="closed"):
                await pending

    run(body())


def test_timeouts_and_cancellation_leave_nothing_behind(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=5) as c:
            cl[1].always = SILENT
            with pytest.raises(RequestTimeoutError, match="outcome is unknown"):
                await c.put("k", "v", timeout=0.05)
            call = asyncio.ensure_future(c.get("k"))
            await cl[1].wait_seen(2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            conn = c._conn
            assert conn is not None and conn.in_flight() == 0
            cl[1].always = None
            await c.put("k", "v")  # the lanes went back: the same session, next seq
            (a, s1), (b, s2) = sessions(cl)
            assert a == b and s2 == s1 + 1

    run(body())


def test_a_shorter_deadline_expires_first_on_a_shared_connection(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr) as c:
            await c.put("k", "v")
            cl[1].faults.extend([SILENT, SILENT])
            slow = asyncio.ensure_future(c.get("k", timeout=2.0))
            await cl[1].wait_seen(2)
            fast = asyncio.ensure_future(c.get("k", timeout=0.05))
            done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
            assert done == {fast}, "the later, shorter deadline must not wait for the earlier"
            with pytest.raises(RequestTimeoutError):
                fast.result()
            kv = await c.get("k")  # answered while the slow one still waits
            assert kv is not None and not slow.done()
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow

    run(body())


def test_status_teaches_the_client_every_member(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 3, leader=1) as cl, AsyncClient(cl[1].addr) as c:
            await c.status()
            assert c.endpoints == [cl[1].addr, cl[2].addr, cl[3].addr]
            await cl[1].stop()  # the only endpoint given dies; node 3 leads now
            cl.leader = 3
            await c.put("k", "v")
            assert len(cl[3].ops(OP_WRITE)) == 1

    run(body())


def test_status_members_and_cluster_status(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 3, leader=2) as cl, AsyncClient(cl[1].addr) as c:
            status = await c.status()
            assert status["id"] == 2, "status() asks the leader"
            assert (await c.status(cl[3].addr))["id"] == 3
            assert [m["id"] for m in await c.members()] == [1, 2, 3]
            await cl[3].stop()
            every = await c.cluster_status()
            assert [s["id"] for s in every] == [1, 2, 3]
            assert "error" not in every[0] and "error" not in every[1]
            assert every[2]["addr"] == cl[3].addr and every[2]["error"]

    run(body())


def test_membership_changes_and_leader_transfer(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 2, leader=1) as cl, AsyncClient(cl[1].addr) as c:
            members = await c.member_add(4, "127.0.0.1:4444", learner_only=True)
            assert members[-1] == {"id": 4, "addr": "127.0.0.1:4444", "voter": False}
            with pytest.raises(MembershipError, match="already a member"):
                await c.member_add(4, "127.0.0.1:4444")
            with pytest.raises(MalformedRequestError, match="host:port"):
                await c.member_add(5, "nowhere")
            assert [m["id"] for m in await c.member_remove(4)] == [1, 2]
            assert await c.transfer_leader(2) == 2
            await c.put("k", "v")  # node 1 redirects to the new leader
            assert len(cl[2].ops(OP_WRITE)) == 1

    run(body())


def test_transfer_finds_the_new_leader_when_the_old_one_does_not_know_it(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path, 2, leader=1) as cl, AsyncClient(cl[1].addr) as c:
            cl[1].faults.append((OK, {"leader": 0}))  # stepped down, new leader unknown yet
            cl.leader = 2
            assert await c.transfer_leader(2) == 2
            await c.put("k", "v")
            assert cl[1].ops(OP_WRITE) == [], "the client already routes to the new leader"

    run(body())


def test_admin_changes_with_unknown_outcome_are_not_retried(tmp_path: Path) -> None:
    async def body() -> None:
        async with FakeCluster(tmp_path) as cl, AsyncClient(cl[1].addr, timeout=5) as c:
            cl[1].faults.append(DROP_AFTER)
            with pytest.raises(RequestTimeoutError, match="outcome is unknown"):
                await c.member_add(4, "127.0.0.1:4444")
            assert [m["id"] for m in await c.members()] == [1, 4]

    run(body())


def test_constructor_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="no endpoints"):
        AsyncClient(" , ")
    with pytest.raises(ValueError, match="host:port"):
        AsyncClient(["localhost"])
    with pytest.raises(ValueError, match="positive"):
        AsyncClient("a:1", timeout=0)
    c = AsyncClient("a:1, b:2,a:1")
    assert c.endpoints == ["a:1", "b:2"]


def test_a_client_belongs_to_one_loop(tmp_path: Path) -> None:
    c = AsyncClient("127.0.0.1:1", timeout=0.05)

    async def use() -> Any:
        try:
            return await c.get("k")
        except UnavailableError:
            return None
        finally:
            await c.close()

    run(use())
    with pytest.raises(ClientError, match="another event loop"):
        run(use())
