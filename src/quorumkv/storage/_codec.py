"""Encoding of Raft's durable vocabulary as msgpack, and the checksummed record frame.

Theory of operation
-------------------
A *record* is a frame around a msgpack payload::

    u32 length (little-endian) | u32 crc32(length bytes + payload) | payload

The checksum covers the length field too, so a damaged length is caught like a damaged
payload. A length of zero never occurs in a valid record, so a zero-filled tail (which a
file system may leave after a crash) reads as torn, never as a run of empty records.

Entries, hard states and snapshot metadata are encoded as short msgpack arrays of plain
integers and bytes, never pickled objects: the format does not depend on Python class
layout and decoding untrusted bytes cannot run code.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

from quorumkv.consensus import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Index,
    NodeId,
    SnapshotMeta,
    Term,
)

HEADER = struct.Struct("<II")
HEADER_SIZE = HEADER.size
_U32 = struct.Struct("<I")


def frame(payload: bytes) -> bytes:
    """One record: header and payload."""
    length = _U32.pack(len(payload))
    return length + _U32.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


def parse_frame(data: bytes | memoryview, offset: int) -> tuple[int, bytes] | str:
    """The record at ``offset`` as (offset of the next record, payload), or why there is
    no valid record there (a short header, a short payload, a bad checksum)."""
    end = len(data)
    if end - offset < HEADER_SIZE:
        return "short header"
    length, crc = HEADER.unpack_from(data, offset)
    if length == 0:
        return "zero length"
    start = offset + HEADER_SIZE
    if end - start < length:
        return f"short payload ({end - start} of {length} bytes)"
    payload = bytes(data[start : start + length])
    if zlib.crc32(payload, zlib.crc32(bytes(data[offset : offset + 4]))) != crc:
        return "checksum mismatch"
    return start + length, payload


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)


# -- Raft's vocabulary -------------------------------------------------------------------


def encode_entry(e: Entry) -> list[Any]:
    return [e.term, e.index, e.type.value, e.data]


def decode_entry(obj: list[Any]) -> Entry:
    term, index, etype, data = obj
    return Entry(Term(term), Index(index), EntryType(etype), bytes(data))


def encode_hard_state(hs: HardState) -> list[int]:
    return [hs.term, hs.vote, hs.commit]


def decode_hard_state(obj: list[int]) -> HardState:
    term, vote, commit = obj
    return HardState(Term(term), NodeId(vote), Index(commit))


def _ids(ids: frozenset[NodeId]) -> list[int]:
    return sorted(ids)


def _frozen(ids: list[int]) -> frozenset[NodeId]:
    return frozenset(NodeId(i) for i in ids)


def encode_meta(meta: SnapshotMeta) -> list[Any]:
    c = meta.conf
    conf = [
        _ids(c.voters),
        _ids(c.learners),
        _ids(c.voters_outgoing),
        _ids(c.learners_next),
        c.auto_leave,
    ]
    return [meta.index, meta.term, conf]


def decode_meta(obj: list[Any]) -> SnapshotMeta:
    index, term, (voters, learners, outgoing, learners_next, auto_leave) = obj
    conf = ConfState(
        _frozen(voters), _frozen(learners), _frozen(outgoing), _frozen(learners_next), auto_leave
    )
    return SnapshotMeta(Index(index), Term(term), conf)
