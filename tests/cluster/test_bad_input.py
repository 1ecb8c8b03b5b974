"""Bad input on a real node: a clear error for the sender, and the node keeps serving."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from quorumkv import net
from quorumkv.client import Client
from quorumkv.errors import KVLimitError, ProtocolError
from quorumkv.kv import LIMITS
from quorumkv.kv._codec import FORMAT, decode_result
from quorumkv.local import LocalCluster

MakeCluster = Callable[..., LocalCluster]


@pytest.fixture
def cluster(make_cluster: MakeCluster) -> LocalCluster:
    return make_cluster(3)


def _talk(addr: str, data: bytes, frames: int = 1) -> list[Any]:
    """Send raw bytes; return the frames the node answers with (until it closes)."""
    host, port = net.parse_address(addr)
    out: list[Any] = []
    with socket.create_connection((host, port), timeout=10) as s:
        # A node that refuses a stream may reset it while we still send; what it
        # said before that is still there to read.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            s.sendall(data)
        dec = net.FrameDecoder(net.MAX_CLIENT_FRAME)
        while len(out) < frames:
            chunk = s.recv(65536)
            if not chunk:
                break
            out.extend(net.unpack(f) for f in dec.feed(chunk))
    return out


def _still_serving(cluster: LocalCluster) -> None:
    with cluster.client(timeout=20) as cl:
        cl.put("alive", "yes")
        assert cl.get("alive").value == b"yes"  # type: ignore[union-attr]


def _garbage() -> Iterator[bytes]:
    yield b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    yield b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a TLS hello
    yield b"\x00\x00\x00\x05hello"  # a frame that is not msgpack
    yield net.encode({"magic": "redis"})
    yield os.urandom(64)


@pytest.mark.parametrize(
    "data", list(_garbage()), ids=["http", "tls", "junk-frame", "magic", "rnd"]
)
def test_garbage_on_the_port_gets_a_clear_refusal(cluster: LocalCluster, data: bytes) -> None:
    answer = _talk(cluster.endpoints[0], data)
    assert answer, "the node closed without saying why"
    assert answer[0]["ok"] is False and answer[0]["code"] == net.ERR_PROTOCOL
    assert answer[0]["message"]
    _still_serving(cluster)


def test_http_on_the_client_port_is_named(cluster: LocalCluster) -> None:
    answer = _talk(cluster.endpoints[1], b"GET /status HTTP/1.1\r\n\r\n")
    assert "look like HTTP" in answer[0]["message"]


def test_wrong_protocol_version(cluster: LocalCluster) -> None:
    hello = {"magic": net.MAGIC, "version": 99, "kind": "client"}
    answer = _talk(cluster.endpoints[0], net.encode(hello))
    assert "protocol version 99 is not supported" in answer[0]["message"]


def test_a_peer_of_another_cluster_is_refused(cluster: LocalCluster) -> None:
    hello = net.peer_hello(net.KIND_PEER, 12345, 9, "127.0.0.1:1")
    answer = _talk(cluster.endpoints[0], net.encode(hello))
    assert "belongs to cluster" in answer[0]["message"]
    _still_serving(cluster)


def test_garbage_on_a_peer_link_closes_only_that_link(cluster: LocalCluster) -> None:
    st = cluster.nodes[1].status()
    assert st is not None
    hello = net.peer_hello(net.KIND_PEER, int(st["cluster_id"], 16), 9, "127.0.0.1:1")
    junk = [net.encode(["not", "a", "message"]), net.encode([[1, 2, 3]]), b"\xff" * 16]
    answer = _talk(cluster.endpoints[0], net.encode(hello) + b"".join(junk), frames=2)
    assert answer[0]["ok"] is True
    _still_serving(cluster)
    assert "dropped a message from node 9" in cluster.nodes[1].log_path.read_text()


def test_requests_that_break_the_protocol_get_bad_request(cluster: LocalCluster) -> None:
    addr = cluster.endpoints[0]
    data = net.encode(net.client_hello())
    data += net.encode([1, 77, None])  # unknown op
    data += net.encode("not a request")
    data += net.encode([2, net.OP_WRITE, "not bytes"])
    answers = _talk(addr, data, frames=4)
    assert answers[0]["ok"] is True
    codes = {a[1] for a in answers[1:]}
    assert codes <= {net.ERR_BAD_REQUEST, net.ERR_NOT_LEADER, net.ERR_UNAVAILABLE}
    assert net.ERR_BAD_REQUEST in codes
    _still_serving(cluster)


def test_oversized_requests(cluster: LocalCluster) -> None:
    with cluster.client(timeout=20) as cl:
        with pytest.raises(KVLimitError, match="value size"):
            cl.put("k", b"x" * (LIMITS.max_value_bytes + 1))
        with pytest.raises(KVLimitError, match="key size"):
            cl.put(b"k" * (LIMITS.max_key_bytes + 1), "v")
    # The same, bypassing the client's own checks: the node refuses at its edge.
    lead = cluster.nodes[cluster.leader()].addr
    big = net.pack([FORMAT, 1, 1, [0, b"k", b"x" * (LIMITS.max_request_bytes + 10), 0, False]])
    answers = _talk(lead, net.encode(net.client_hello()) + net.encode([5, net.OP_WRITE, big]), 2)
    assert answers[1][1] == net.OK
    err = decode_result(answers[1][2])
    assert isinstance(err, KVLimitError) and "request size" in str(err)
    # A frame over the protocol's limit closes that connection with a reason.
    huge = net.frame(b"\x00" * (net.MAX_CLIENT_FRAME + 1))
    answers = _talk(lead, net.encode(net.client_hello()) + huge, 2)
    assert answers[1][1] == net.ERR_BAD_REQUEST and "over the limit" in answers[1][2]
    _still_serving(cluster)


def test_client_against_a_non_quorumkv_port(cluster: LocalCluster) -> None:
    http = cluster.nodes[1].http
    with Client([http], timeout=3) as cl, pytest.raises(ProtocolError):
        cl.put("k", "v")


def test_a_data_dir_of_another_cluster_is_refused(cluster: LocalCluster) -> None:
    node = cluster.nodes[2]
    data_dir = cluster.data_dir / "node-2"
    cluster.terminate(2)
    proc = subprocess.run(
        [sys.executable, "-m", "quorumkv.server", "--id", "2", "--data-dir", str(data_dir),
         "--listen", node.addr, "--peers", f"2={node.addr}", "--cluster-token", "another"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "belongs to cluster" in proc.stderr and "fresh --data-dir" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
