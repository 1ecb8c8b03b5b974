"""``Connection`` over an in-memory transport: framing in arbitrary chunks, deadlines in
and out of order, and what a node that breaks the framing gets."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from fakenode import run
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.client._conn import MAX_ANSWER_FRAME, Connection, Expired
from quorumkv.errors import ProtocolError
from quorumkv.net import FrameDecoder, accept, encode, frame, unpack


class MemoryTransport:
    """What ``Connection`` writes, kept; the bare transport interface it uses."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, chunks: list[bytes]) -> None:
        for c in chunks:
            self.write(c)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str) -> Any:
        return None


def requests_sent(t: MemoryTransport) -> list[Any]:
    """Every frame written after the hello, decoded with quorumkv.net's decoder."""
    return [unpack(f) for f in FrameDecoder(1 << 20).feed(bytes(t.written))][1:]


def connected() -> tuple[Connection, MemoryTransport]:
    conn = Connection("node:1", asyncio.get_running_loop())
    t = MemoryTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    conn.data_received(encode(accept(1, 7)))
    return conn, t


async def flushed() -> None:
    """Until the calls just started have run and their frames were written."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1 << 16), max_size=12), st.randoms(use_true_random=False))
def test_answers_split_anywhere_reach_their_callers(cuts: list[int], rng: random.Random) -> None:
    async def body() -> None:
        conn, t = connected()
        loop = asyncio.get_running_loop()
        calls = [asyncio.ensure_future(conn.call(1, b"x" * i, loop.time() + 5)) for i in range(20)]
        await flushed()
        sent = requests_sent(t)
        assert [(op, b) for _, op, b in sent] == [(1, b"x" * i) for i in range(20)]
        rng.shuffle(sent)  # answers come in any order
        stream = b"".join(encode([req_id, 0, body * 3]) for req_id, _, body in sent)
        for piece in chunks(stream, cuts):
            conn.data_received(piece)
        assert [await c for c in calls] == [(0, b"x" * i * 3) for i in range(20)]
        assert conn.in_flight() == 0

    run(body())


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ((MAX_ANSWER_FRAME + 1).to_bytes(4, "big") + b"GET / HTTP/1.1", "over the limit"),
        (frame(b"\xc1"), "undecodable frame body"),
        (encode([1, 2]), r"not \[req_id, code, body\]"),
    ],
)
def test_a_node_that_breaks_the_framing_fails_every_call(data: bytes, error: str) -> None:
    async def body() -> None:
        conn, _ = connected()
        loop = asyncio.get_running_loop()
        call = asyncio.ensure_future(conn.call(1, b"k", loop.time() + 5))
        await asyncio.sleep(0)
        conn.data_received(data[:3])
        conn.data_received(data[3:])
        with pytest.raises(ProtocolError, match=error):
            await call
        assert not conn.usable

    run(body())


def test_deadlines_out_of_order_expire_in_order_and_entries_are_forgotten() -> None:
    async def body() -> None:
        conn, _ = connected()
        loop = asyncio.get_running_loop()
        now = loop.time()
        # in order (the queue), then shorter ones (the heap), then in order again
        offsets = [0.2, 0.3, 0.05, 0.1, 5.0, 0.15, 5.0]
        calls = [asyncio.ensure_future(conn.call(1, i, now + d)) for i, d in enumerate(offsets)]
        await flushed()
        ended: list[int] = []

        def ends(i: int) -> Callable[[object], None]:
            return lambda _: ended.append(i)

        for i, c in enumerate(calls):
            c.add_done_callback(ends(i))
        conn.data_received(encode([5, 0, "five"]))  # request 4 is answered at once
        await asyncio.wait([c for i, c in enumerate(calls) if i not in (4, 6)])
        assert ended == [4, 2, 3, 5, 0, 1]
        for i in (2, 3, 5, 0, 1):
            with pytest.raises(Expired):
                calls[i].result()
        assert calls[4].result() == (0, "five") and not calls[6].done()
        calls[6].cancel()
        await asyncio.gather(calls[6], return_exceptions=True)
        assert conn.in_flight() == 0

    run(body())


def test_the_timer_forgets_answered_requests() -> None:
    async def body() -> None:
        conn, t = connected()
        loop = asyncio.get_running_loop()
        for round_ in range(3):
            deadline = loop.time() + 0.02
            calls = [asyncio.ensure_future(conn.call(1, None, deadline)) for _ in range(100)]
            await flushed()
            for req_id, _, _ in requests_sent(t)[round_ * 100 :]:
                conn.data_received(encode([req_id, 0, None]))
            await asyncio.gather(*calls)
        await asyncio.sleep(0.05)  # the timer has run past every deadline
        assert len(conn._deadlines) + len(conn._early) == 0

    run(body())
