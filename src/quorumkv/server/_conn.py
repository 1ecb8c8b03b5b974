"""The connections a node accepts: one listening address, three kinds of talk.

Theory of operation
-------------------
Every accepted connection starts as an ``Inbound`` protocol that waits for the HELLO
frame (``quorumkv.net._proto``). What the hello says decides the rest of its life:

- ``client``: pipelined ``[req_id, op, body]`` requests go to ``Host.client_request``;
  answers are framed with ``reply`` (the connection's own msgpack ``Packer``: one per
  answer would cost more than the framing) and written in one ``write`` per drive cycle
  (``flush``). When the kernel buffer towards a slow client passes a high-water mark the
  connection stops reading from it, so a client that does not read cannot grow our memory.
- ``peer``: frames of encoded Raft messages, of any groups, go to ``Host.peer_messages``
  (the host routes each by the group it names).
- ``snap``: one snapshot stream of one group, spooled to a file and handed to
  ``Host.snapshot_received`` (its first frame, the SNAP message, names the group).

Garbage, oversized frames, a wrong protocol version or another cluster's node get one
error frame that says what is wrong, a log line, and a closed connection; the node goes
on serving everyone else. This module decides nothing about Raft or data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import msgpack

from quorumkv.net import (
    ERR_BAD_REQUEST,
    ERR_PROTOCOL,
    HEADER,
    KIND_CLIENT,
    KIND_PEER,
    KIND_SNAP,
    MAX_CLIENT_FRAME,
    MAX_PEER_FRAME,
    FrameDecoder,
    FrameError,
    accept,
    check_hello,
    describe_garbage,
    encode,
    frame,
    pack,
    refuse,
    unpack,
)

log = logging.getLogger("quorumkv.server")

_HIGH_WATER = 16 << 20
_LEN = struct.Struct(">I")
_MAX_HELLO = 64 << 10
_LINGER_S = 1.0


class Host(Protocol):
    """What the connections need from the node."""

    node_id: int
    sharded: bool

    def current_cluster(self) -> int: ...
    def learn_cluster(self, cluster: int) -> None: ...
    def learn_address(self, node: int, addr: str) -> None: ...
    def client_request(self, conn: ClientConn, req_id: Any, op: Any, body: Any) -> None: ...
    def client_closed(self, conn: ClientConn) -> None: ...
    def peer_messages(self, frm: int, docs: list[Any], nbytes: int) -> None: ...
    def peer_lost(self, frm: int) -> None: ...
    def snapshot_received(self, frm: int, first: bytes, spool: Path, conn: SnapConn) -> None: ...
    def spool_path(self) -> Path: ...
    def mark_dirty(self, conn: ClientConn) -> None: ...


def close_after(transport: asyncio.Transport, last: bytes) -> None:
    """Send ``last``, then end our side and close a moment later. Closing at once with
    unread input would make the kernel send a reset, which can destroy ``last`` before
    the peer reads it; meanwhile whatever the peer still sends is discarded."""
    transport.write(last)
    if transport.can_write_eof():
        transport.write_eof()
    asyncio.get_running_loop().call_later(_LINGER_S, transport.close)


class Inbound(asyncio.Protocol):
    """An accepted connection before (and, by delegation, after) its handshake."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.refused = False
        self.delegate: _Kind | None = None
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.peer = str(transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # draining what the peer still sends, so our refusal is not reset
        if self.delegate is not None:
            if not self.delegate.closed:
                self.delegate.data(data)
            return
        # Only the hello is framed here; the bytes after it belong to the delegate,
        # whose own limits and errors apply to them.
        self.buf += data
        if len(self.buf) < HEADER:
            return
        (n,) = struct.unpack_from(">I", self.buf)
        if n > _MAX_HELLO:
            self._refuse(
                f"a handshake of {n} bytes is over the limit of {_MAX_HELLO}; "
                + describe_garbage(bytes(self.buf[:16]))
            )
            return
        if len(self.buf) < HEADER + n:
            return
        first, rest = bytes(self.buf[HEADER : HEADER + n]), bytes(self.buf[HEADER + n :])
        self.buf.clear()
        try:
            hello = unpack(first)
        except FrameError as e:
            self._refuse(str(e))
            return
        kind, why = check_hello(hello, self.host.current_cluster())
        if not kind:
            self._refuse(why)
            return
        assert self.transport is not None
        if kind == KIND_CLIENT:
            self.delegate = ClientConn(self.host, self.transport)
        else:
            frm = int(hello["from"])
            if not self.host.current_cluster():
                self.host.learn_cluster(int(hello["cluster"]))
            self.host.learn_address(frm, str(hello["addr"]))
            if kind == KIND_PEER:
                self.delegate = PeerConn(self.host, self.transport, frm)
            else:
                assert kind == KIND_SNAP
                self.delegate = SnapConn(self.host, self.transport, frm)
        self.transport.write(
            encode(accept(self.host.node_id, self.host.current_cluster(), self.host.sharded))
        )
        if rest:
            self.delegate.data(rest)

    def _refuse(self, why: str) -> None:
        log.warning("refused connection from %s: %s", self.peer, why)
        self.refused = True
        if self.transport is not None:
            close_after(self.transport, encode(refuse(ERR_PROTOCOL, why)))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.delegate is not None:
            self.delegate.lost()

    def pause_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.pause_writing()

    def resume_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.resume_writing()


class _Kind:
    def __init__(self, host: Host, transport: asyncio.Transport, max_frame: int) -> None:
        self.host = host
        self.transport = transport
        self.decoder = FrameDecoder(max_frame)
        self.closed = False

    def data(self, data: bytes) -> None:
        raise NotImplementedError

    def lost(self) -> None:
        self.closed = True

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def fail(self, why: str) -> None:
        log.warning(
            "closing connection from %s: %s", self.transport.get_extra_info("peername"), why
        )
        if not self.closed:
            self.transport.write(encode([None, ERR_BAD_REQUEST, why]))
            self.transport.close()
            self.closed = True


class ClientConn(_Kind):
    """A client's pipelined requests and our buffered answers."""

    def __init__(self, host: Host, transport: asyncio.Transport) -> None:
        super().__init__(host, transport, MAX_CLIENT_FRAME)
        self.out: list[bytes] = []
        self.bytes_in = 0
        self._pack: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack
        transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            frames, err = self.decoder.feed(data), None
        except FrameError as e:
            frames, err = e.frames, e
        host = self.host
        for f in frames:
            try:
                req_id, op, body = unpack(f)
            except (FrameError, ValueError, TypeError):
                self.reply(None, ERR_BAD_REQUEST, "a request must be [req_id, op, body]")
                continue
            host.client_request(self, req_id, op, body)
        if err is not None:
            self.fail(str(err))

    def reply(self, req_id: Any, code: int, body: Any) -> None:
        if self.closed:
            return
        out = self.out
        data = self._pack([req_id, code, body])  # what net.encode frames, with our packer
        if not out:
            self.host.mark_dirty(self)
        out.append(_LEN.pack(len(data)))
        out.append(data)

    def flush(self) -> int:
        if self.closed or not self.out:
            self.out.clear()
            return 0
        data = b"".join(self.out)
        self.out.clear()
        self.transport.write(data)
        return len(data)

    def lost(self) -> None:
        super().lost()
        self.host.client_closed(self)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.closed:
            self.transport.resume_reading()


class PeerConn(_Kind):
    """Raft messages from one peer (it dialled us; we never answer on this link)."""

    def __init__(self, host: Host, transport: asyncio.Transport, frm: int) -> None:
        super().__init__(host, transport, MAX_PEER_FRAME)
        self.frm = frm

    def data(self, data: bytes) -> None:
        try:
            frames, err = self.decoder.feed(data), None
        except FrameError as e:
            frames, err = e.frames, e
        try:
            for f in frames:
                docs = unpack(f)
                if not isinstance(docs, list):
                    raise FrameError("a peer frame must be a list of messages")
                self.host.peer_messages(self.frm, docs, len(f))
        except FrameError as e:
            err = e
        if err is not None:
            self.fail(f"peer {self.frm}: {err}")

    def lost(self) -> None:
        super().lost()
        self.host.peer_lost(self.frm)


class SnapConn(_Kind):
    """One snapshot stream: the SNAP message, state-machine chunks, an end marker."""

    def __init__(self, host: Host, transport: asyncio.Transport, frm: int) -> None:
        super().__init__(host, transport, MAX_PEER_FRAME)
        self.frm = frm
        self.first: bytes | None = None
        self.spool = host.spool_path()
        self.file: Any = open(self.spool, "wb")  # noqa: SIM115 - closed at end or loss
        self.done = False

    def data(self, data: bytes) -> None:
        if self.done:
            return
        try:
            for f in self.decoder.feed(data):
                if self.first is None:
                    self.first = f
                    continue
                doc = unpack(f)
                if doc == ["end"]:
                    self.done = True
                    self.file.close()
                    self.host.snapshot_received(self.frm, self.first, self.spool, self)
                    return
                if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == "chunk"):
                    raise FrameError("a snapshot stream carries chunk frames and an end")
                self.file.write(frame(doc[1]))
        except FrameError as e:
            self._discard()
            self.fail(f"snapshot from {self.frm}: {e}")

    def answer(self, ok: bool, why: str = "") -> None:
        if not self.closed:
            self.transport.write(encode(["ok"] if ok else ["error", why]))
            self.transport.close()
            self.closed = True

    def _discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spool)

    def lost(self) -> None:
        super().lost()
        if not self.done:
            self._discard()


def read_spool(path: Path) -> Iterator[bytes]:
    """The chunks a ``SnapConn`` spooled, in order, read back one at a time."""
    with open(path, "rb") as f:
        while head := f.read(HEADER):
            (n,) = struct.unpack(">I", head)
            body = f.read(n)
            if len(body) != n:
                raise FrameError(f"snapshot spool {path} is truncated")
            yield body


__all__ = ["ClientConn", "Host", "Inbound", "PeerConn", "SnapConn", "pack", "read_spool"]
