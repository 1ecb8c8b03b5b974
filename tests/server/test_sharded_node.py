"""Sharded nodes on real processes, spoken to with the raw protocol (no client routing):
the founding directory, range-routed writes and reads, revisions from the meta range's
allocator, forced splits, bounds refusals, and a restart after a split."""

from __future__ import annotations

import socket
import time
from itertools import count
from typing import Any

import pytest

from quorumkv.errors import OutOfRangeError
from quorumkv.kv import (
    Command,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    decode_result,
    encode_command,
)
from quorumkv.net import (
    ERR_BAD_REQUEST,
    ERR_NOT_LEADER,
    ERR_UNAVAILABLE,
    ERR_WRONG_RANGE,
    OK,
    OP_RANGE_READ,
    OP_RANGE_WRITE,
    OP_RANGES,
    OP_SPLIT,
    OP_WRITE,
    FrameDecoder,
    client_hello,
    encode,
    unpack,
)
from quorumkv.shard import RangeDescriptor, WrongRange


def wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


_CLIENT = 77


class Raw:
    """One synchronous client connection per node address, speaking the raw protocol."""

    def __init__(self, addrs: dict[int, str]) -> None:
        self.addrs = addrs
        self.socks: dict[str, tuple[socket.socket, FrameDecoder]] = {}
        self.ids = count(1)
        self.seq = count(1)
        self.hello: dict[str, Any] = {}

    def close(self) -> None:
        for s, _ in self.socks.values():
            s.close()
        self.socks.clear()

    def call(self, addr: str, op: int, body: Any) -> tuple[int, Any]:
        if addr not in self.socks:
            host, port = addr.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=10)
            dec = FrameDecoder(1 << 22)
            s.sendall(encode(client_hello()))
            self.socks[addr] = (s, dec)
            self.hello = unpack(self._frame(addr))
        s, _ = self.socks[addr]
        req_id = next(self.ids)
        s.sendall(encode([req_id, op, body]))
        doc = unpack(self._frame(addr))
        assert doc[0] == req_id
        return int(doc[1]), doc[2]

    def _frame(self, addr: str) -> bytes:
        s, dec = self.socks[addr]
        while True:
            frames = dec.feed(b"") if dec.buffered() else []
            if frames:
                return frames[0]
            data = s.recv(1 << 16)
            if not data:
                raise ConnectionError(f"{addr} closed")
            frames = dec.feed(data)
            if frames:
                assert len(frames) == 1
                return frames[0]

    # -- by range, following redirects ------------------------------------------------

    def ranges(self) -> list[RangeDescriptor]:
        code, body = self.call(next(iter(self.addrs.values())), OP_RANGES, [b"", b""])
        assert code == OK, body
        return [RangeDescriptor.from_wire(d) for d in body["ranges"]]

    def at_leader(self, rid: int, op: int, body: Any, timeout: float = 20.0) -> tuple[int, Any]:
        """Send to each node until the range's leader answers (or a final error)."""
        deadline = time.monotonic() + timeout
        target = next(iter(self.addrs.values()))
        while True:
            code, ans = self.call(target, op, body)
            if code == ERR_NOT_LEADER and ans[1]:
                target = ans[1]
            elif code in (ERR_NOT_LEADER, ERR_UNAVAILABLE):
                time.sleep(0.1)
                ids = list(self.addrs.values())
                target = ids[(ids.index(target) + 1) % len(ids)]
            else:
                return code, ans
            if time.monotonic() > deadline:
                pytest.fail(f"range {rid}: no leader answered in {timeout} s: {code} {ans}")

    def put(self, rid: int, version: int, key: bytes, value: bytes) -> Any:
        data = encode_command(Command(_CLIENT, next(self.seq), PutRequest(key, value)))
        code, body = self.at_leader(rid, OP_RANGE_WRITE, [rid, version, data])
        assert code == OK, body
        return decode_result(body)

    def get(self, rid: int, version: int, key: bytes, end: bytes = b"") -> Any:
        data = encode_command(Command(0, 0, RangeRequest(key, end)))
        code, body = self.at_leader(rid, OP_RANGE_READ, [rid, version, data, False])
        assert code == OK, body
        return decode_result(body)


@pytest.fixture
def sharded(make_cluster: Any) -> Any:
    cluster = make_cluster(3, extra_args=["--sharded"], tick_ms=20)
    raw = Raw({i: p.addr for i, p in cluster.nodes.items()})
    yield cluster, raw
    raw.close()


def test_a_sharded_cluster_splits_and_routes(sharded: Any) -> None:
    cluster, raw = sharded
    (first,) = raw.ranges()
    assert (first.range_id, first.start, first.end) == (2, b"", b"")
    assert raw.hello.get("sharded") is True

    # Writes go to range 2's leader; revisions come from the meta range's allocator.
    a = raw.put(2, 1, b"apple", b"1")
    z = raw.put(2, 1, b"zebra", b"1")
    assert isinstance(a, PutResponse) and isinstance(z, PutResponse)
    assert z.revision > a.revision > 1

    # An unsharded operation is refused with a clear error.
    code, why = raw.call(cluster.nodes[1].addr, OP_WRITE, b"x")
    assert code == ERR_BAD_REQUEST and "sharded" in why

    # Split at "m": range 2 keeps [b"", b"m"), a new range takes [b"m", end).
    code, body = raw.at_leader(2, OP_SPLIT, [2, 1, b"m"])
    assert code == OK, body
    left, right = RangeDescriptor.from_wire(body["left"]), RangeDescriptor.from_wire(body["right"])
    assert (left.range_id, left.start, left.end, left.epoch.version) == (2, b"", b"m", 2)
    assert (right.start, right.end, right.epoch.version) == (b"m", b"", 2)
    rid = right.range_id
    assert [d.range_id for d in raw.ranges()] == [2, rid]

    # The data written before the split is read through the range that holds it now.
    got = raw.get(rid, 2, b"zebra")
    assert isinstance(got, RangeResponse) and [kv.key for kv in got.kvs] == [b"zebra"]
    got = raw.get(2, 2, b"apple")
    assert [kv.key for kv in got.kvs] == [b"apple"]

    # A key outside the range named is refused at apply (and at read), nothing written.
    refused = raw.put(2, 2, b"zoo", b"x")
    assert isinstance(refused, OutOfRangeError) and refused.range_id == 2
    assert raw.get(rid, 2, b"zoo").kvs == ()
    code, body = raw.at_leader(2, OP_RANGE_READ, [2, 2, encode_command(
        Command(0, 0, RangeRequest(b"a", b"zz"))), False])  # fmt: skip
    assert code == OK and isinstance(decode_result(body), OutOfRangeError)

    # Revisions stay one sequence across the two ranges.
    r1 = raw.put(rid, 2, b"zz", b"2").revision
    r2 = raw.put(2, 2, b"bb", b"2").revision
    r3 = raw.put(rid, 2, b"zzz", b"3").revision
    assert z.revision < r1 < r2 < r3

    # A range no node holds is a wrong-range answer.
    code, body = raw.call(cluster.nodes[1].addr, OP_RANGE_WRITE, [999, 1, b"x"])
    assert code == ERR_WRONG_RANGE and WrongRange.from_wire(body).range_id == 999

    # A cross-range txn reaches one range only: its keys outside are refused there.
    txn = TxnRequest(success=(PutRequest(b"a1", b"1"), PutRequest(b"z1", b"1")))
    data = encode_command(Command(_CLIENT, next(raw.seq), txn))
    code, body = raw.at_leader(2, OP_RANGE_WRITE, [2, 2, data])
    assert code == OK and isinstance(decode_result(body), OutOfRangeError)
    assert raw.get(2, 2, b"a1").kvs == ()

    # Every node hosts both ranges, and they survive a kill -9 and restart.
    def both_hosted() -> bool:
        for p in cluster.nodes.values():
            st = p.status()
            if not st or sorted(r["id"] for r in st.get("ranges", [])) != [2, rid]:
                return False
        return True

    wait_for("every node to host both ranges", both_hosted)
    victim = 3
    cluster.kill(victim)
    cluster.restart(victim)
    wait_for("the restarted node to host both ranges", both_hosted)
    st = cluster.nodes[victim].status()
    keys = {r["id"]: r["keys"] for r in st["ranges"]}
    wait_for(
        "the restarted node to hold every key",
        lambda: (
            {r["id"]: r["keys"] for r in cluster.nodes[victim].status()["ranges"]} == {2: 2, rid: 3}
        ),
    )
    assert keys  # read once before waiting: the status had both ranges


def test_split_keys_must_be_inside_the_range(sharded: Any) -> None:
    _, raw = sharded
    raw.put(2, 1, b"k", b"v")
    code, body = raw.at_leader(2, OP_SPLIT, [2, 1, b""])
    assert code == ERR_BAD_REQUEST, body
    code, body = raw.at_leader(2, OP_SPLIT, [2, 1, b"q"])
    assert code == OK
    # A key of the right range sent to the left one is a stale route: a wrong-range
    # answer naming the left range as it is now, so the client looks the key up again.
    code, body = raw.at_leader(2, OP_SPLIT, [2, 2, b"r"])
    assert code == ERR_WRONG_RANGE
    assert [(d.start, d.end) for d in WrongRange.from_wire(body).hint] == [(b"", b"q")]
