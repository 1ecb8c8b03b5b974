"""Length-prefixed frames: the unit every quorumkv connection carries.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack. The
length comes first so that a receiver can refuse an oversized or garbage frame before
buffering it: a stray HTTP request, for instance, reads as a length of about 1.2 GB.

``FrameDecoder`` is fed raw bytes as they arrive and returns the complete frame bodies;
it never decodes msgpack itself (the caller knows what it expects). This module owns
framing only; it must never know about Raft, requests or connections.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

import msgpack

_LEN = struct.Struct(">I")
HEADER = _LEN.size


class FrameError(Exception):
    """The byte stream is not a sequence of valid frames; the connection must close.
    ``frames`` holds the complete frames that came before the damage, in order."""

    def __init__(self, message: str, frames: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.frames: list[bytes] = frames or []


class _Packers(threading.local):
    """One msgpack ``Packer`` per thread: building one per call cost more than the
    packing of a small message; a packer is reusable, but not by two threads at once."""

    def __init__(self) -> None:
        self.pack: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack


_packers = _Packers()


def pack(obj: object) -> bytes:
    return _packers.pack(obj)


def unpack(data: bytes | memoryview) -> Any:
    """Decode one msgpack body; raises ``FrameError`` on anything undecodable."""
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise FrameError(f"undecodable frame body: {e}") from None


def frame(body: bytes) -> bytes:
    """One frame around an encoded body."""
    return _LEN.pack(len(body)) + body


def encode(obj: object) -> bytes:
    """One frame holding ``obj`` as msgpack."""
    body = pack(obj)
    return _LEN.pack(len(body)) + body


def describe_garbage(head: bytes) -> str:
    """A human hint for bytes that are not a frame, from their first bytes."""
    text = head[:16]
    if text[:4] in (b"GET ", b"POST", b"PUT ", b"HEAD", b"PRI "):
        return "the bytes look like HTTP; this port speaks quorumkv's own protocol"
    if text[:1] == b"\x16":
        return "the bytes look like a TLS handshake; this port does not speak TLS"
    return f"the bytes {text!r} do not start a quorumkv frame"


class FrameDecoder:
    """Splits a byte stream into frame bodies of at most ``max_frame`` bytes."""

    __slots__ = ("_buf", "_need", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need = -1

    def feed(self, data: bytes) -> list[bytes]:
        """The complete frame bodies in ``data`` plus what was buffered; raises
        ``FrameError`` for a length over the limit (the stream cannot be resynced),
        carrying the frames before it."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:  # one copy per body, not two; released before del
            while True:
                if end - pos < HEADER:
                    break
                (n,) = _LEN.unpack_from(buf, pos)
                if n > self.max_frame:
                    raise FrameError(
                        f"frame of {n} bytes is over the limit of {self.max_frame}; "
                        + describe_garbage(bytes(buf[pos : pos + 16])),
                        out,
                    )
                if end - pos - HEADER < n:
                    break
                out.append(bytes(view[pos + HEADER : pos + HEADER + n]))
                pos += HEADER + n
        if pos:
            del buf[:pos]
        return out

    def buffered(self) -> int:
        return len(self._buf)
