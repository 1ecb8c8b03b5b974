"""``ClientConn``: answers framed with the connection's own packer are the frames
``quorumkv.net.encode`` makes, and leave in one write per flush."""

from __future__ import annotations

from typing import Any

from quorumkv.net import encode
from quorumkv.server._conn import ClientConn


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_extra_info(self, name: str) -> Any:
        return None


class Host:
    def __init__(self) -> None:
        self.dirty: list[ClientConn] = []
        self.requests: list[tuple[Any, Any, Any]] = []

    def mark_dirty(self, conn: ClientConn) -> None:
        self.dirty.append(conn)

    def client_request(self, conn: ClientConn, req_id: Any, op: Any, body: Any) -> None:
        self.requests.append((req_id, op, body))


def test_answers_are_net_frames_in_one_write_per_flush() -> None:
    host, t = Host(), Transport()
    conn = ClientConn(host, t)  # type: ignore[arg-type]
    answers: list[tuple[Any, int, Any]] = [
        (1, 0, b"\x93\x00\x05\xc0"),
        (2, 1, [3, "127.0.0.1:7003"]),
        (None, 6, "a request must be [req_id, op, body]"),
        (3, 0, {"id": 1, "members": [{"id": 1, "addr": "a:1"}]}),
    ]
    for a in answers:
        conn.reply(*a)
    assert host.dirty == [conn], "marked dirty once, with the first answer"
    assert conn.flush() == sum(len(encode(list(a))) for a in answers)
    assert t.writes == [b"".join(encode(list(a)) for a in answers)]
    assert conn.flush() == 0 and len(t.writes) == 1


def test_requests_split_anywhere_reach_the_host() -> None:
    host = Host()
    conn = ClientConn(host, Transport())  # type: ignore[arg-type]
    stream = b"".join(encode([i, 1, b"x" * i]) for i in range(50))
    for i in range(0, len(stream), 7):
        conn.data(stream[i : i + 7])
    assert host.requests == [(i, 1, b"x" * i) for i in range(50)]
