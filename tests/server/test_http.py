"""``serve_http`` over real loopback sockets, under asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import errno
import json
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvloop
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from quorumkv.server._http import MAX_HEAD_BYTES, serve_http
from quorumkv.server._metrics import Metrics

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]
HOST = "127.0.0.1"


@dataclass
class FakeSource:
    """An ``HttpSource`` whose answers the test sets."""

    ready: bool = True
    reason: str = "leader known, log applied"
    state: dict[str, Any] = field(default_factory=lambda: {"id": 1, "term": 5, "role": "leader"})
    fail: Exception | None = None
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: {"term": float(self.state["term"])})

    def status(self) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return self.state

    def health(self) -> tuple[bool, str]:
        return self.ready, self.reason


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


def parse(raw: bytes) -> Response:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw!r}"
    status_line, *lines = head.decode("ascii").split("\r\n")
    version, code, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines:
        name, _, val = line.partition(":")
        headers[name.strip().lower()] = val.strip()
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body) or not body
    return Response(int(code), headers, body)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run[Any]:
    """Runs a test's coroutine to completion on a fresh loop of either kind."""

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        factory = uvloop.new_event_loop if request.param == "uvloop" else None
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            return loop_runner.run(coro)

    return runner


@asynccontextmanager
async def serving(source: FakeSource, **kwargs: Any) -> AsyncIterator[int]:
    server = await serve_http(HOST, 0, source, **kwargs)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, data: bytes, *, eof: bool = False) -> bytes:
    """Send ``data`` (then EOF if asked) and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def get(port: int, path: str, method: str = "GET") -> Response:
    request = f"{method} {path} HTTP/1.1\r\nHost: node1\r\nUser-Agent: test\r\n\r\n"
    return parse(await exchange(port, request.encode("ascii")))


# -- the three resources ------------------------------------------------------------


def test_health_ready(run: Run[Any]) -> None:
    async def main() -> Response:
        async with serving(FakeSource()) as port:
            return await get(port, "/health")

    response = run(main())
    assert response.status == 200
    assert response.json() == {"health": True, "reason": "leader known, log applied"}


def test_health_not_ready_is_503(run: Run[Any]) -> None:
    async def main() -> Response:
        async with serving(FakeSource(ready=False, reason="no leader")) as port:
            return await get(port, "/health")

    response = run(main())
    assert response.status == 503
    assert response.json() == {"health": False, "reason": "no leader"}


def test_status_is_sorted_indented_json(run: Run[Any]) -> None:
    source = FakeSource(state={"term": 5, "id": 1, "peers": {"3": "b", "2": "a"}})

    async def main() -> Response:
        async with serving(source) as port:
            return await get(port, "/status")

    response = run(main())
    assert response.status == 200
    assert response.json() == source.state
    assert response.body == (json.dumps(source.state, indent=2, sort_keys=True) + "\n").encode()


def test_metrics_are_prometheus_text(run: Run[Any]) -> None:
    source = FakeSource()
    source.metrics.proposals.inc(11)
    source.metrics.client_requests["read"].inc(2)
    source.metrics.commit_seconds.observe(0.002)

    async def main() -> Response:
        async with serving(source) as port:
            return await get(port, "/metrics")

    response = run(main())
    assert response.status == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.body.decode("utf-8"))
        for s in family.samples
    }
    assert samples["quorumkv_proposals_total", ()] == 11
    assert samples["quorumkv_client_requests_total", (("op", "read"),)] == 2
    assert samples["quorumkv_commit_seconds_count", ()] == 1
    assert samples["quorumkv_term", ()] == 5


def test_query_string_is_ignored(run: Run[Any]) -> None:
    async def main() -> Response:
        async with serving(FakeSource()) as port:
            return await get(port, "/health?verbose=1&x=%20")

    assert run(main()).status == 200


def test_head_answers_headers_only(run: Run[Any]) -> None:
    async def main() -> tuple[Response, Response]:
        async with serving(FakeSource()) as port:
            return await get(port, "/status", "HEAD"), await get(port, "/status")

    head, full = run(main())
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(full.body))


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/nope", "/health/", "/HEALTH", "/metrics.txt"])
def test_unknown_path_is_404(run: Run[Any], path: str) -> None:
    async def main() -> Response:
        async with serving(FakeSource()) as port:
            return await get(port, path)

    response = run(main())
    assert response.status == 404
    assert path in response.json()["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get"])
def test_other_methods_are_405(run: Run[Any], method: str) -> None:
    async def main() -> Response:
        async with serving(FakeSource()) as port:
            return await get(port, "/health", method)

    response = run(main())
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json() == {"error": "method not allowed"}


def test_status_that_raises_is_500_and_the_server_lives_on(run: Run[Any]) -> None:
    source = FakeSource(fail=RuntimeError("raft group 7 is gone"))

    async def main() -> tuple[Response, Response]:
        async with serving(source) as port:
            return await get(port, "/status"), await get(port, "/health")

    broken, after = run(main())
    assert broken.status == 500
    assert broken.json() == {"error": "RuntimeError: raft group 7 is gone"}
    assert after.status == 200


def test_status_that_is_not_json_is_500(run: Run[Any]) -> None:
    source = FakeSource(state={"data": b"bytes are not JSON"})

    async def main() -> Response:
        async with serving(source) as port:
            return await get(port, "/status")

    response = run(main())
    assert response.status == 500
    assert "TypeError" in response.json()["error"]


BAD_HEADS = {
    "two words": b"GET /health\r\n\r\n",
    "four words": b"GET /health HTTP/1.1 extra\r\n\r\n",
    "http/2": b"GET /health HTTP/2.0\r\n\r\n",
    "http/0.9": b"GET /health\r\n",
    "relative target": b"GET health HTTP/1.1\r\n\r\n",
    "absolute-form target": b"GET http://node1/health HTTP/1.1\r\n\r\n",
    "space in target": b"GET /hea lth HTTP/1.1\r\n\r\n",
    "bad method": b"G(T /health HTTP/1.1\r\n\r\n",
    "binary request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "header without colon": b"GET /health HTTP/1.1\r\nHost node1\r\n\r\n",
    "space before colon": b"GET /health HTTP/1.1\r\nHost : node1\r\n\r\n",
    "folded header": b"GET /health HTTP/1.1\r\nX: a\r\n  b\r\n\r\n",
    "control in value": b"GET /health HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    "head cut by eof": b"GET /health HTTP/1.1\r\nHost: node1\r\n",
    "line cut by eof": b"GET /heal",
}


@pytest.mark.parametrize("data", BAD_HEADS.values(), ids=BAD_HEADS.keys())
def test_malformed_heads_are_400(run: Run[Any], data: bytes) -> None:
    async def main() -> Response:
        async with serving(FakeSource()) as port:
            return parse(await exchange(port, data, eof=True))

    response = run(main())
    assert response.status == 400
    assert response.json()["error"]


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_400(run: Run[Any], seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.choice([1, 10, 100, 1000, 5000, 20000]))

    async def main() -> Response:
        async with serving(FakeSource()) as port:
            return parse(await exchange(port, data, eof=True))

    assert run(main()).status == 400


def head_of(size: int, *, line: int = 100) -> bytes:
    """A valid GET /health head of exactly ``size`` bytes, in headers of ~``line`` bytes."""
    start, end = b"GET /health HTTP/1.1\r\n", b"\r\n"
    body = bytearray()
    room = size - len(start) - len(end)
    number = 0
    while room - len(body) > 0:
        left = room - len(body)
        prefix = f"X-{number}: ".encode()
        take = min(line, left)
        if left - take and left - take < len(prefix) + 2 + 1:
            take = left  # no room for another header: make this one longer
        filler = take - len(prefix) - 2
        assert filler >= 1
        body += prefix + b"v" * filler + b"\r\n"
        number += 1
    data = start + bytes(body) + end
    assert len(data) == size
    return data


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (head_of(MAX_HEAD_BYTES), 200),
        (head_of(MAX_HEAD_BYTES + 1), 400),  # many small headers, one byte too many
        (head_of(MAX_HEAD_BYTES * 4, line=MAX_HEAD_BYTES * 4), 400),  # one huge header
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 400),  # huge request line
    ],
    ids=["at limit", "over limit", "huge header", "huge request line"],
)
def test_head_size_limit(run: Run[Any], data: bytes, status: int) -> None:
    async def main() -> Response:
        async with serving(FakeSource()) as port:
            return parse(await exchange(port, data))

    assert run(main()).status == status


def test_silent_client_times_out_with_408(run: Run[Any]) -> None:
    async def main() -> Response:
        async with serving(FakeSource(), timeout=0.05) as port:
            return parse(await exchange(port, b""))

    response = run(main())
    assert response.status == 408
    assert "in time" in response.json()["error"]


def test_client_that_stalls_mid_head_times_out(run: Run[Any]) -> None:
    async def main() -> Response:
        async with serving(FakeSource(), timeout=0.05) as port:
            return parse(await exchange(port, b"GET /health HTTP/1.1\r\nHost: no"))

    assert run(main()).status == 408


def test_bad_clients_do_not_stop_the_next_good_one(run: Run[Any]) -> None:
    async def main() -> tuple[Response, Response, Response]:
        async with serving(FakeSource()) as port:
            # One client connects and says nothing, and stays connected meanwhile.
            _, silent = await asyncio.open_connection(HOST, port)
            # One connects and hangs up at once.
            _, gone = await asyncio.open_connection(HOST, port)
            gone.close()
            await gone.wait_closed()
            try:
                garbage = parse(await exchange(port, b"\xff\xfe\x00garbage\r\n\r\n"))
                good = await get(port, "/health")
                metrics = await get(port, "/metrics")
            finally:
                silent.close()
                await silent.wait_closed()
            return garbage, good, metrics

    garbage, good, metrics = run(main())
    assert garbage.status == 400
    assert good.status == 200
    assert metrics.status == 200


def test_address_in_use_is_oserror(run: Run[Any]) -> None:
    async def main() -> None:
        async with serving(FakeSource()) as port:
            with pytest.raises(OSError) as info:
                await serve_http(HOST, port, FakeSource())
            assert info.value.errno == errno.EADDRINUSE

    run(main())
