"""Strict readers for decoded msgpack documents, shared by every ``to_wire``/``from_wire``.

msgpack gives back whatever the sender wrote; these helpers check each field's type and
raise ``MalformedShardDataError`` naming the field, so a damaged log entry or snapshot
becomes one clear, deterministic error instead of a ``TypeError`` deep in the code.

This module owns type checks only; it must never know what a range or a command means.
"""

from __future__ import annotations

import math
from typing import Any

from quorumkv.net import FrameError, pack, unpack
from quorumkv.shard._errors import MalformedShardDataError

__all__ = ["as_bool", "as_bytes", "as_float", "as_int", "as_list", "as_str", "dumps", "loads"]


def dumps(doc: object) -> bytes:
    return pack(doc)


def loads(data: bytes) -> Any:
    try:
        return unpack(data)
    except FrameError as e:
        raise MalformedShardDataError(str(e)) from None


def as_list(doc: object, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(doc, list):
        raise MalformedShardDataError(f"{what}: expected a list, got {type(doc).__name__}")
    if length is not None and len(doc) != length:
        raise MalformedShardDataError(f"{what}: expected {length} fields, got {len(doc)}")
    return doc


def as_int(value: object, what: str, minimum: int = 0) -> int:
    if type(value) is not int:
        raise MalformedShardDataError(f"{what}: expected an integer, got {value!r}")
    if value < minimum:
        raise MalformedShardDataError(f"{what}: {value} is below {minimum}")
    return value


def as_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedShardDataError(f"{what}: expected a number, got {value!r}")
    result = float(value)
    if math.isnan(result) or result < 0:
        raise MalformedShardDataError(f"{what}: {value!r} is not a non-negative number")
    return result


def as_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedShardDataError(f"{what}: expected bytes, got {value!r}")
    return value


def as_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedShardDataError(f"{what}: expected a string, got {value!r}")
    return value


def as_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise MalformedShardDataError(f"{what}: expected a boolean, got {value!r}")
    return value
