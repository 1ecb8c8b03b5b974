"""The blocking client: the same operations from several threads, close from another
thread, the lazy ``quorumkv.Client``, and the event loop it runs on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fakenode import SILENT, ThreadedCluster

import quorumkv
from quorumkv.client import Client
from quorumkv.errors import ClientError, CompareFailedError, KVLimitError, UnavailableError
from quorumkv.kv import LIMITS
from quorumkv.net import OP_WRITE


def test_package_client_is_the_blocking_client_and_import_is_light() -> None:
    assert quorumkv.Client is Client
    code = (
        "import sys, quorumkv; "
        "assert 'asyncio' not in sys.modules, 'import quorumkv pulled in asyncio'; "
        "quorumkv.Client; assert 'asyncio' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = quorumkv.Nope


def test_operations_through_the_blocking_client(tmp_path: Path) -> None:
    with ThreadedCluster(tmp_path, 2, leader=2) as cl, Client([cl[1].addr]) as c:
        c.put("k", "v")
        kv = c.get(b"k")
        assert kv is not None and kv.value == b"v"
        with pytest.raises(CompareFailedError):
            c.compare_and_swap("k", "other", "w")
        assert c.range("k", prefix=True).count == 1
        assert c.delete("k").deleted == 1
        assert c.status()["id"] == 2
        assert [m["id"] for m in c.members()] == [1, 2]
        assert cl[2].addr in c.endpoints
        with pytest.raises(KVLimitError):
            c.put("k", b"x" * (LIMITS.max_value_bytes + 1))
        assert "127.0.0.1" in repr(c)


def test_two_threads_share_one_client(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def worker(c: Client, name: str) -> None:
        try:
            for i in range(30):
                c.put(f"{name}/{i}", f"{name}-{i}")
                kv = c.get(f"{name}/{i}")
                assert kv is not None and kv.value == f"{name}-{i}".encode()
        except BaseException as e:
            errors.append(e)

    with ThreadedCluster(tmp_path) as cl, Client(cl[1].addr) as c:
        threads = [threading.Thread(target=worker, args=(c, n)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert c.range("", prefix=True, count_only=True).count == 60
        assert len(cl[1].ops(OP_WRITE)) == 60
        assert cl[1].handshakes == 1, "both threads pipeline on one connection"


def test_close_from_another_thread_fails_the_blocked_call(tmp_path: Path) -> None:
    outcome: list[BaseException] = []

    def blocked(c: Client) -> None:
        try:
            c.get("k")
        except BaseException as e:
            outcome.append(e)

    served = ThreadedCluster(tmp_path)
    with served as cl:
        c = Client(cl[1].addr, timeout=30)
        cl[1].always = SILENT
        t = threading.Thread(target=blocked, args=(c,))
        t.start()
        served.call(cl[1].wait_seen(1))
        c.close()
        t.join()
        assert len(outcome) == 1 and isinstance(outcome[0], ClientError)
        assert "closed" in str(outcome[0])
        with pytest.raises(ClientError, match="closed"):
            c.put("k", "v")
        c.close()  # idempotent
        assert not c._thread.is_alive()


def test_deadline_errors_cross_the_thread(tmp_path: Path) -> None:
    with ThreadedCluster(tmp_path) as cl:
        addr = cl[1].addr
    with Client(addr, timeout=0.1) as c, pytest.raises(UnavailableError):
        c.get("k")


def test_the_private_loop_is_uvloops_whatever_the_policy() -> None:
    uvloop = pytest.importorskip("uvloop")
    with Client("127.0.0.1:1") as c:
        assert isinstance(c._loop, uvloop.Loop)
    # The application's policy is its own loop's business, not the client's.
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with Client("127.0.0.1:1") as c:
            assert isinstance(c._loop, uvloop.Loop)
    finally:
        asyncio.set_event_loop_policy(old)


def test_an_unclosed_client_is_stopped_when_collected() -> None:
    c = Client("127.0.0.1:1")
    thread = c._thread
    del c
    thread.join(timeout=10)
    assert not thread.is_alive()
