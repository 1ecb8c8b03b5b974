"""From the caller's arguments to kv requests, and from answers back to responses.

Keys and values are ``bytes`` or ``str`` (encoded as UTF-8). Requests are the frozen
dataclasses of ``quorumkv.kv``, which validate themselves when built, so a bad or
oversized request raises ``MalformedRequestError`` or ``KVLimitError`` here, before
anything reaches the network. An answer's result either is the expected response, or a
``KVError`` decided by the state machine (raised as such), or something no quorumkv
node sends (``ProtocolError``).

This module is pure: it never does I/O and never retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from quorumkv.errors import KVError, MalformedRequestError, ProtocolError
from quorumkv.kv import (
    ALL_KEYS,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    Result,
    SortOrder,
    SortTarget,
    TxnRequest,
    decode_result,
    prefix_end,
)
from quorumkv.net import parse_address

T = TypeVar("T")

Data = bytes | str
"""A key or value as the caller passes it: bytes, or str encoded as UTF-8."""


def to_bytes(name: str, data: object) -> bytes:
    """``data`` as bytes (a str as UTF-8); anything else raises ``MalformedRequestError``."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise MalformedRequestError(f"{name} must be bytes or str, not {type(data).__name__}")


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """``"h1:p1,h2:p2"`` or a sequence of ``"host:port"`` → the list, validated; raises
    ``ValueError`` naming the bad one."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"endpoint {item!r} is not a 'host:port' string")
        addr = item.strip()
        if not addr:
            continue
        parse_address(addr)
        if addr not in out:
            out.append(addr)
    if not out:
        raise ValueError("no endpoints given; pass 'host:port' of at least one node")
    return out


def key_range(key: Data, range_end: Data, prefix: bool) -> tuple[bytes, bytes]:
    """``(key, range_end)`` for a single key, an explicit range, or a prefix."""
    k, end = to_bytes("key", key), to_bytes("range_end", range_end)
    if not prefix:
        return k, end
    if end:
        raise MalformedRequestError("give either range_end or prefix=True, not both")
    return (k or ALL_KEYS), prefix_end(k)


def range_request(
    key: Data,
    range_end: Data,
    *,
    prefix: bool,
    limit: int,
    revision: int,
    keys_only: bool,
    count_only: bool,
    sort_order: SortOrder,
    sort_target: SortTarget,
) -> RangeRequest:
    k, end = key_range(key, range_end, prefix)
    return RangeRequest(k, end, limit, revision, sort_order, sort_target, keys_only, count_only)


def delete_request(
    key: Data, range_end: Data, *, prefix: bool, prev_kv: bool
) -> DeleteRangeRequest:
    k, end = key_range(key, range_end, prefix)
    return DeleteRangeRequest(k, end, prev_kv)


def cas_request(key: bytes, expected: Data | None, new: Data) -> TxnRequest:
    """Put ``new`` if ``key`` holds ``expected`` (``None``: if it does not exist), else
    read the key, so a failed compare can report what it found."""
    if expected is None:
        cmp = Compare(CompareTarget.VERSION, CompareOp.EQUAL, key, 0)
    else:
        cmp = Compare(CompareTarget.VALUE, CompareOp.EQUAL, key, to_bytes("expected", expected))
    put = PutRequest(key, to_bytes("value", new))
    return TxnRequest((cmp,), (put,), (RangeRequest(key),))


def decode(answer: object, addr: str) -> Result:
    """The result in an OK answer's body."""
    if not isinstance(answer, bytes):
        raise ProtocolError(f"{addr} sent a result that is not bytes: {answer!r:.100}")
    try:
        return decode_result(answer)
    except Exception as e:  # decode_result trusts its input; this came from a socket
        raise ProtocolError(f"{addr} sent an undecodable result: {e!r}") from None


def expect(result: Result, kind: type[T], addr: str) -> T:
    """``result`` if it is a ``kind``; raises it if it is a ``KVError``."""
    if isinstance(result, kind):
        return result
    if isinstance(result, KVError):
        raise result
    raise ProtocolError(f"{addr} answered with {type(result).__name__}, not {kind.__name__}")


def expect_list(answer: object, what: str, addr: str) -> list[dict[str, Any]]:
    if not isinstance(answer, list) or not all(isinstance(m, dict) for m in answer):
        raise ProtocolError(f"{addr} sent {what} that is not a list of dicts: {answer!r:.100}")
    return answer


def expect_dict(answer: object, what: str, addr: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise ProtocolError(f"{addr} sent {what} that is not a dict: {answer!r:.100}")
    return answer
