"""``serve_http``: the node's small HTTP endpoint for operators and monitoring.

Theory of operation
-------------------
Three read-only resources, one request per connection:

* ``GET /health``: 200 ``{"health": true, "reason": ...}`` when ``source.health()`` says
  the node is ready, else 503 with ``"health": false``. For load balancers and probes.
* ``GET /status``: 200 with ``source.status()`` as JSON (indented, keys sorted).
* ``GET /metrics``: 200 with ``source.metrics.render()``, Prometheus' text format.

``HEAD`` is answered like ``GET`` without the body. Any other method is 405 (with
``Allow``), any other path 404, a malformed request line or header, or a head over
``max_head_bytes`` (request line and headers together, 8 KiB by default), 400. A client
that does not send a whole head within ``timeout`` seconds gets 408; one that hangs up
gets nothing. The query string is ignored, the request body never read. Every answer
carries ``Content-Length`` and ``Connection: close``; the server then half-closes and
discards input until the client hangs up (``_linger``), and closes. No keep-alive: a
connection lives at most one ``timeout`` for the head and one for the answer, so idle
sockets cannot pile up. An exception inside ``source`` is a 500 with its text as JSON;
it is logged and never reaches the listening server.

Why by hand and not with a framework: three GET resources need a request line, a size
limit, a timeout and a fixed response format; that is a page of code on asyncio
streams. A framework (aiohttp, an ASGI server) would be the largest dependency of the
node for its least important port, bring its own event loop and logging policies, and
still need the same timeout and limit settings reviewed.

This module owns HTTP parsing and response framing for that port. It must never change
node state, never block the event loop (``source``'s methods are called on it and must
be quick), and never let one client's bytes, silence or errors affect the next client.
A bind error is not handled here: ``serve_http`` raises the ``OSError`` to its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any, Protocol

from quorumkv.server._metrics import Metrics

log = logging.getLogger("quorumkv.server.http")

DEFAULT_TIMEOUT = 5.0
"""Seconds a client has to send its request head, and then to take the answer."""

MAX_HEAD_BYTES = 8 * 1024
"""Largest request line plus headers accepted, in bytes."""

_ALLOWED = "GET, HEAD"
_LINGER_BYTES = 64 * 1024
_JSON = "application/json"
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION_RE = re.compile(rb"HTTP/1\.[0-9]")
_TARGET_RE = re.compile(rb"/[\x21-\x7e]*")
_CTL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls but TAB
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HttpSource(Protocol):
    """What the HTTP endpoint reads from its node. Methods run on the event loop."""

    @property
    def metrics(self) -> Metrics:
        """The node's instruments; ``/metrics`` renders them."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-serializable description of the node, for ``/status``."""
        ...

    def health(self) -> tuple[bool, str]:
        """Whether the node is ready to serve, and a short reason either way."""
        ...


class _Response:
    __slots__ = ("body", "content_type", "extra", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str, extra: tuple[str, ...] = ()
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra = extra

    def encode(self, with_body: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *self.extra,
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head + self.body if with_body else head


def _json(
    status: int, value: object, *, pretty: bool = False, headers: tuple[str, ...] = ()
) -> _Response:
    text = json.dumps(value, indent=2 if pretty else None, sort_keys=pretty) + "\n"
    return _Response(status, text.encode("utf-8"), _JSON, headers)


def _error(status: int, message: str, headers: tuple[str, ...] = ()) -> _Response:
    return _json(status, {"error": message}, headers=headers)


class _BadRequest(Exception):
    """The client sent something that is not an HTTP/1.x request head we accept."""


async def serve_http(
    host: str,
    port: int,
    source: HttpSource,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_head_bytes: int = MAX_HEAD_BYTES,
) -> asyncio.Server:
    """Listen on ``host:port`` (0 picks a free port) and serve ``source`` until closed.

    Returns the listening server (under uvloop, uvloop's equivalent); close it with
    ``close()`` and ``await wait_closed()``. Raises ``OSError`` if the address cannot be
    bound (``errno.EADDRINUSE`` when it is taken).
    """

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one(reader, writer, source, timeout, max_head_bytes)

    # The stream limit bounds one line; _read_head bounds their total.
    return await asyncio.start_server(on_connect, host, port, limit=max_head_bytes)


async def _serve_one(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    source: HttpSource,
    timeout: float,
    max_head_bytes: int,
) -> None:
    """Answer at most one request on this connection, then close it."""
    try:
        try:
            async with asyncio.timeout(timeout):
                head = await _read_head(reader, max_head_bytes)
        except TimeoutError:
            response, with_body = _error(408, "request head not received in time"), True
        except _BadRequest as exc:
            response, with_body = _error(400, str(exc)), True
        else:
            if head is None:
                return  # the client hung up before sending a request
            method, path = head
            response, with_body = _route(method, path, source), method != b"HEAD"
        async with asyncio.timeout(timeout):
            writer.write(response.encode(with_body))
            await writer.drain()
            await _linger(reader, writer)
    except (ConnectionError, TimeoutError):
        pass  # the client went away or would not take the answer: nothing to tell it
    except Exception:
        log.exception("HTTP connection failed")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(timeout):
                await writer.wait_closed()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard what the client still sends until it hangs up.

    Closing a socket with unread input makes the kernel reset the connection, and a reset
    can destroy the answer before the client reads it: exactly the answers (400 for an
    oversized head, 408 mid-head) sent while input is still arriving. The caller's timeout
    and ``_LINGER_BYTES`` bound how long and how much.
    """
    if not writer.can_write_eof():
        return
    writer.write_eof()
    discarded = 0
    while discarded <= _LINGER_BYTES:
        chunk = await reader.read(_LINGER_BYTES)
        if not chunk:
            return
        discarded += len(chunk)


async def _read_head(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, bytes] | None:
    """Read the request line and headers: ``(method, path)``, or None on immediate EOF.

    Raises ``_BadRequest`` for anything malformed, truncated or over ``limit`` bytes.
    """
    total = 0
    request_line: bytes | None = None
    first = await reader.read(1)
    if not first:
        return None
    if not (first.isalpha() or first in b"\r\n"):
        # A request line starts with a method token. Say so at once rather than wait
        # for a line end that a binary client (our own protocol, TLS) never sends.
        raise _BadRequest(
            "not an HTTP request: this port serves /health, /status and /metrics; "
            "quorumkv clients use the node's --listen address"
        )
    while True:
        try:
            line = first + await reader.readline()
            first = b""
        except ValueError:  # one line over the stream limit
            raise _BadRequest("request head too large") from None
        total += len(line)
        if total > limit:
            raise _BadRequest("request head too large")
        if not line:
            if request_line is None and total == 0:
                return None
            raise _BadRequest("connection closed inside the request head")
        if not line.endswith(b"\n"):
            raise _BadRequest("connection closed inside the request head")
        line = line.rstrip(b"\r\n")
        if request_line is None:
            if line:  # RFC 9112 2.2: ignore empty lines before the request line
                request_line = line
            continue
        if not line:
            return _parse_request_line(request_line)
        _check_header(line)


def _parse_request_line(line: bytes) -> tuple[bytes, bytes]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise _BadRequest("malformed request line")
    method, target, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise _BadRequest("malformed method")
    if not _VERSION_RE.fullmatch(version):
        raise _BadRequest("unsupported HTTP version")
    if not _TARGET_RE.fullmatch(target):
        raise _BadRequest("request target must be an absolute path")
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    return method, path


def _check_header(line: bytes) -> None:
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN_RE.fullmatch(name):
        raise _BadRequest("malformed header line")
    if _CTL_RE.search(value):
        raise _BadRequest("control character in header value")


def _route(method: bytes, path: bytes, source: HttpSource) -> _Response:
    if method not in (b"GET", b"HEAD"):
        return _error(405, "method not allowed", (f"Allow: {_ALLOWED}",))
    handler = _ROUTES.get(path)
    if handler is None:
        return _error(404, f"no such resource: {path.decode('ascii')}")
    try:
        return handler(source)
    except Exception as exc:
        log.exception("HTTP %s failed", path.decode("ascii"))
        return _error(500, f"{type(exc).__name__}: {exc}")


def _health(source: HttpSource) -> _Response:
    ok, reason = source.health()
    return _json(200 if ok else 503, {"health": bool(ok), "reason": str(reason)})


def _status(source: HttpSource) -> _Response:
    return _json(200, source.status(), pretty=True)


def _metrics(source: HttpSource) -> _Response:
    body, content_type = source.metrics.render()
    return _Response(200, body, content_type)


_ROUTES: dict[bytes, Callable[[HttpSource], _Response]] = {
    b"/health": _health,
    b"/status": _status,
    b"/metrics": _metrics,
}
