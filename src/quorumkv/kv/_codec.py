"""The encodings of commands (for the log) and of results (for client sessions).

Theory of operation
-------------------
A command is msgpack's ``[FORMAT, client, seq, request]``; a request is a list whose
first item is a tag (``PUT``, ``RANGE``...) followed by the dataclass's fields in order.
Results use the same scheme with their own tags, and a tag for the errors ``apply`` can
return, so the state machine can store a client's last result and replay it for a retry.

One command has a second layout: a plain put (no ``prev_kv``), the one command every
replica applies by the thousand, is ``PLAIN_PUT`` followed by fixed-width fields and its
key and value as they are (``_PLAIN_PUT``), which a replica takes apart with one struct
unpack and two slices instead of a msgpack decode of nested lists. Every encoder writes a
plain put that way; a plain put in the msgpack layout (from before it existed) still
decodes to the same command. The two layouts cannot be confused: a msgpack command
begins with 0x94 (an array of four), a plain put with ``PLAIN_PUT``.

Decoding rebuilds the dataclasses, so every decoded request has passed the same
validation as one built by hand; the encoded size is checked against
``LIMITS.max_request_bytes`` both ways. Anything that fails to decode raises
``MalformedRequestError`` (never ``TypeError`` or a msgpack error), so a damaged log
entry becomes a deterministic error result on every replica rather than a crash.

Both directions run for every write on every replica and in the client, so the common
shapes have fast paths: encoding packs with a msgpack ``Packer`` kept per thread
(``msgpack.packb`` builds a new one per call), and decoding builds a put or a plain
range directly when the document has exactly that shape, with enums looked up in a
table; any other document takes the general path, so an odd or damaged one fails with
the same error as ever. A client needs the bytes of a command, not the objects:
``encode_request`` skips building the ``Command``, and ``encode_put``/``encode_get``
also the request, each with the same bytes and errors as the general path.

This module must never depend on the engine, and must never change the meaning of an
existing tag or field position: encoded commands live in logs and snapshots.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from quorumkv.kv._errors import (
    CompactedError,
    DuplicateKeyError,
    FutureRevisionError,
    KVError,
    KVLimitError,
    MalformedRequestError,
    OutOfRangeError,
    StaleStampError,
)
from quorumkv.kv._types import (
    _MAX_INT64,
    _MAX_KEY,
    _MAX_UINT64,
    _MAX_VALUE,
    _REQUEST_TYPES,
    LIMITS,
    Command,
    CompactionRequest,
    CompactionResponse,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    Op,
    OpResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    Request,
    Response,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)

FORMAT = 1
PUT, RANGE, DELETE_RANGE, TXN, COMPACTION, ERROR = 0, 1, 2, 3, 4, 9

PLAIN_PUT = 0x02
"""The first byte of a plain put's layout: then client, seq and lease as big-endian
unsigned 64-bit ints, the key's length as a 16-bit one, the key, and the value up to the
end of the command."""
_PLAIN_PUT = struct.Struct(">BQQQH")
_PLAIN_TAG = bytes([PLAIN_PUT])
_PLAIN_HEAD = _PLAIN_PUT.size
# The largest plain put (511-byte key, 1 MiB value) is far below the request size limit,
# and its key's length fits the 16 bits the layout gives it.
assert LIMITS.max_request_bytes >= _PLAIN_HEAD + _MAX_KEY + _MAX_VALUE and _MAX_KEY < 1 << 16

Result = Response | KVError
"""What applying one command produced: its response, or the error it was refused with."""


class _Packers(threading.local):
    """One msgpack ``Packer`` per thread: a packer is reusable, but not by two threads
    at once."""

    def __init__(self) -> None:
        self.pack: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack


_packers = _Packers()


def pack(obj: object) -> bytes:
    return _packers.pack(obj)


def packer() -> Callable[[object], bytes]:
    """``pack`` for the calling thread only, without the thread-local lookup per call."""
    return _packers.pack


def unpack(data: bytes) -> Any:
    # msgpack's defaults (since 1.0): raw=False, use_list=True, strict_map_key=True;
    # passing them costs a keyword parse per call.
    return msgpack.unpackb(data)


def _table(kind: type[Any]) -> dict[int, Any]:
    """``kind``'s members by value: a dict lookup instead of the enum's ``__call__``."""
    return {member.value: member for member in kind}


_SORT_ORDERS = _table(SortOrder)
_SORT_TARGETS = _table(SortTarget)


# -- requests ------------------------------------------------------------------------


def _request_doc(req: Request) -> list[object]:
    if isinstance(req, PutRequest):
        return [PUT, req.key, req.value, req.lease, req.prev_kv]
    if isinstance(req, RangeRequest):
        return [
            RANGE,
            req.key,
            req.range_end,
            req.limit,
            req.revision,
            req.sort_order,  # IntEnum members pack as their int value
            req.sort_target,
            req.keys_only,
            req.count_only,
        ]
    if isinstance(req, DeleteRangeRequest):
        return [DELETE_RANGE, req.key, req.range_end, req.prev_kv]
    if isinstance(req, TxnRequest):
        return [
            TXN,
            [[int(c.target), int(c.op), c.key, c.value] for c in req.compare],
            [_request_doc(op) for op in req.success],
            [_request_doc(op) for op in req.failure],
        ]
    return [COMPACTION, req.revision]


def _enum(kind: type[Any], value: object) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise MalformedRequestError(f"unknown {kind.__name__} {value!r}") from None


def _request(doc: list[Any]) -> Request:
    # The exact shapes of a put and of a range, first; anything else, the general path.
    n = len(doc) if type(doc) is list else 0
    if n == 5 and doc[0] == PUT:
        return PutRequest(doc[1], doc[2], doc[3], doc[4])
    if n == 9 and doc[0] == RANGE:
        o, t = doc[5], doc[6]
        order = _SORT_ORDERS.get(o) if type(o) is int else None
        if order is None:
            order = _enum(SortOrder, o)
        target = _SORT_TARGETS.get(t) if type(t) is int else None
        if target is None:
            target = _enum(SortTarget, t)
        return RangeRequest(doc[1], doc[2], doc[3], doc[4], order, target, doc[7], doc[8])
    tag, *f = doc
    if tag == PUT:
        return PutRequest(f[0], f[1], f[2], f[3])
    if tag == RANGE:
        order, target = _enum(SortOrder, f[4]), _enum(SortTarget, f[5])
        return RangeRequest(f[0], f[1], f[2], f[3], order, target, f[6], f[7])
    if tag == DELETE_RANGE:
        return DeleteRangeRequest(f[0], f[1], f[2])
    if tag == TXN:
        compare = tuple(
            Compare(_enum(CompareTarget, t), _enum(CompareOp, o), k, v) for t, o, k, v in f[0]
        )
        return TxnRequest(compare, _ops(f[1]), _ops(f[2]))
    if tag == COMPACTION:
        return CompactionRequest(f[0])
    raise MalformedRequestError(f"unknown request tag {tag!r}")


def _ops(docs: list[Any]) -> tuple[Op, ...]:
    ops = tuple(_request(d) for d in docs)
    for op in ops:
        if isinstance(op, CompactionRequest):
            raise MalformedRequestError("a compaction cannot be part of a txn")
    return ops  # type: ignore[return-value]


def encode_command(cmd: Command) -> bytes:
    """The bytes to propose to Raft. Raises ``KVLimitError`` over the request size."""
    req = cmd.request
    if type(req) is PutRequest and not req.prev_kv:
        return _plain_put(cmd.client, cmd.seq, req.key, req.value, req.lease)
    data = _packers.pack([FORMAT, cmd.client, cmd.seq, _request_doc(req)])
    if len(data) > LIMITS.max_request_bytes:
        raise KVLimitError("request size", LIMITS.max_request_bytes, len(data))
    return data


def encode_request(client: int, seq: int, req: Request) -> bytes:
    """``encode_command(Command(client, seq, req))``, the same bytes and errors, without
    building the ``Command`` when its checks would pass (what a client does per write)."""
    if not (
        type(client) is int
        and 0 <= client <= _MAX_UINT64
        and type(seq) is int
        and 0 <= seq <= _MAX_UINT64
        and type(req) in _REQUEST_TYPES
    ):
        return encode_command(Command(client, seq, req))
    if type(req) is PutRequest:
        if not req.prev_kv:
            return _plain_put(client, seq, req.key, req.value, req.lease)
        doc: list[object] = [PUT, req.key, req.value, req.lease, True]
    else:
        doc = _request_doc(req)
    data = _packers.pack([FORMAT, client, seq, doc])
    if len(data) > LIMITS.max_request_bytes:
        raise KVLimitError("request size", LIMITS.max_request_bytes, len(data))
    return data


def encode_put(
    client: int, seq: int, key: bytes, value: bytes, lease: int = 0, prev_kv: bool = False
) -> bytes:
    """``encode_request(client, seq, PutRequest(key, value, lease, prev_kv))``: the same
    bytes, or the same error, without building the request (what a client does per put)."""
    if not (
        type(key) is bytes
        and 0 < len(key) <= _MAX_KEY
        and type(value) is bytes
        and len(value) <= _MAX_VALUE
        and type(lease) is int
        and 0 <= lease <= _MAX_INT64
        and prev_kv is False
        and type(client) is int
        and 0 <= client <= _MAX_UINT64
        and type(seq) is int
        and 0 <= seq <= _MAX_UINT64
    ):
        return encode_request(client, seq, PutRequest(key, value, lease, prev_kv))
    return _plain_put(client, seq, key, value, lease)


def _plain_put(client: int, seq: int, key: bytes, value: bytes, lease: int) -> bytes:
    """A checked plain put (the fields of a valid ``Command``) in its own layout."""
    return _PLAIN_PUT.pack(PLAIN_PUT, client, seq, lease, len(key)) + key + value


def encode_get(key: bytes, revision: int = 0) -> bytes:
    """``encode_request(0, 0, RangeRequest(key, revision=revision))``: the same bytes, or
    the same error, without building the request (what a client does per get)."""
    if not (
        type(key) is bytes
        and 0 < len(key) <= _MAX_KEY
        and type(revision) is int
        and 0 <= revision <= _MAX_INT64
    ):
        return encode_request(0, 0, RangeRequest(key, revision=revision))
    # a key of at most 511 bytes keeps this far below the request size limit
    return _packers.pack([FORMAT, 0, 0, [RANGE, key, b"", 0, revision, 0, 0, False, False]])


def _doc_depth(doc: Any) -> int:
    """The txn nesting depth of an undecoded request, found without recursion, so a
    request nested deeper than Python's stack is refused by the limit it breaks."""
    deepest = 0
    stack = [(doc, 1)]
    while stack:
        d, depth = stack.pop()
        if not (isinstance(d, list) and len(d) == 4 and d[0] == TXN):
            continue
        deepest = max(deepest, depth)
        for branch in (d[2], d[3]):
            if isinstance(branch, list):
                stack.extend((op, depth + 1) for op in branch)
    return deepest


PlainPut = tuple[int, int, bytes, bytes, int]
"""A command that is a put without ``prev_kv``, as ``(client, seq, key, value, lease)``."""


def decode_entry(data: bytes) -> Command | PlainPut:
    """The command in a log entry; raises ``KVError`` (never anything else) if the
    bytes are not a valid command within the limits. A plain put (no ``prev_kv``)
    comes as a ``PlainPut`` tuple, its request never built: the apply path's common
    case costs one msgpack decode and one check."""
    if len(data) > LIMITS.max_request_bytes:
        raise KVLimitError("request size", LIMITS.max_request_bytes, len(data))
    if data[:1] == _PLAIN_TAG:
        return _decode_plain_put(data)
    try:
        fmt, client, seq, doc = msgpack.unpackb(data)  # as ``unpack``
        if fmt != FORMAT:
            raise MalformedRequestError(f"unknown command format {fmt!r}")
        if (
            type(doc) is list
            and len(doc) == 5
            and doc[0] == PUT
            and doc[4] is False
            and type(client) is int
            and 0 <= client <= _MAX_UINT64
            and type(seq) is int
            and 0 <= seq <= _MAX_UINT64
        ):
            _, key, value, lease, _ = doc
            if (
                type(key) is bytes
                and 0 < len(key) <= _MAX_KEY
                and type(value) is bytes
                and len(value) <= _MAX_VALUE
                and type(lease) is int
                and 0 <= lease <= _MAX_INT64
            ):
                return client, seq, key, value, lease
        if isinstance(doc, list) and len(doc) == 4 and doc[0] == TXN:  # else depth 0
            depth = _doc_depth(doc)
            if depth > LIMITS.max_txn_depth:
                raise KVLimitError("txn nesting depth", LIMITS.max_txn_depth, depth, "levels")
        return Command(client, seq, _request(doc))
    except KVError:
        raise
    except (
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        OverflowError,
        RecursionError,
        msgpack.UnpackException,
    ) as e:
        raise MalformedRequestError(f"cannot decode command: {e!r}") from None


def _decode_plain_put(data: bytes) -> PlainPut | Command:
    """``decode_entry`` of a command in the plain put layout."""
    n = len(data)
    if n < _PLAIN_HEAD:
        raise MalformedRequestError(f"cannot decode command: a plain put of {n} bytes")
    _, client, seq, lease, size = _PLAIN_PUT.unpack_from(data)
    end = _PLAIN_HEAD + size
    if 0 < size <= _MAX_KEY and end <= n and n - end <= _MAX_VALUE and lease <= _MAX_INT64:
        return client, seq, data[_PLAIN_HEAD:end], data[end:], lease
    if end > n:
        raise MalformedRequestError(
            f"cannot decode command: a plain put's key of {size} bytes runs past its end"
        )
    # Out of bounds: the request's own checks raise what they raise for it.
    return Command(client, seq, PutRequest(data[_PLAIN_HEAD:end], data[end:], lease))


def decode_command(data: bytes) -> Command:
    """The command in a log entry; raises ``KVError`` (never anything else) if the
    bytes are not a valid command within the limits."""
    got = decode_entry(data)
    if type(got) is tuple:
        client, seq, key, value, lease = got
        return Command(client, seq, PutRequest(key, value, lease))
    return got  # type: ignore[return-value]


def encode_put_response(revision: int) -> bytes:
    """``encode_result(PutResponse(revision))``, without building the response."""
    return _packers.pack([PUT, revision, None])


# -- results -------------------------------------------------------------------------


def _kv_doc(kv: KeyValue | None) -> list[object] | None:
    if kv is None:
        return None
    return [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease]


def _kv(doc: list[Any] | None) -> KeyValue | None:
    return None if doc is None else KeyValue(*doc)


def _kvs(docs: list[Any]) -> tuple[KeyValue, ...]:
    return tuple([KeyValue(*d) for d in docs])


def _result_doc(res: Result) -> list[object]:
    if isinstance(res, PutResponse):
        return [PUT, res.revision, _kv_doc(res.prev_kv)]
    if isinstance(res, RangeResponse):
        return [RANGE, res.revision, [_kv_doc(kv) for kv in res.kvs], res.more, res.count]
    if isinstance(res, DeleteRangeResponse):
        return [DELETE_RANGE, res.revision, res.deleted, [_kv_doc(kv) for kv in res.prev_kvs]]
    if isinstance(res, TxnResponse):
        return [TXN, res.revision, res.succeeded, [_result_doc(r) for r in res.responses]]
    if isinstance(res, CompactionResponse):
        return [COMPACTION, res.revision]
    if isinstance(res, CompactedError):
        return [ERROR, "compacted", res.requested, res.compacted]
    if isinstance(res, FutureRevisionError):
        return [ERROR, "future", res.requested, res.current]
    if isinstance(res, KVLimitError):
        return [ERROR, "limit", res.limit, res.allowed, res.actual, res.unit]
    if isinstance(res, DuplicateKeyError):
        return [ERROR, "duplicate", res.key]
    if isinstance(res, OutOfRangeError):
        return [ERROR, "out_of_range", res.range_id, res.key, res.start, res.end]
    if isinstance(res, StaleStampError):
        return [ERROR, "stale_stamp", res.stamp, res.current]
    return [ERROR, "malformed", str(res)]


def _result(doc: list[Any]) -> Result:
    # The exact shapes of a put's and of a range's response, first.
    n = len(doc) if type(doc) is list else 0
    if n == 3 and doc[0] == PUT:
        prev = doc[2]
        return PutResponse(doc[1], None if prev is None else KeyValue(*prev))
    if n == 5 and doc[0] == RANGE:
        return RangeResponse(doc[1], _kvs(doc[2]), doc[3], doc[4])
    tag, *f = doc
    if tag == PUT:
        return PutResponse(f[0], _kv(f[1]))
    if tag == RANGE:
        return RangeResponse(f[0], _kvs(f[1]), f[2], f[3])
    if tag == DELETE_RANGE:
        return DeleteRangeResponse(f[0], f[1], _kvs(f[2]))
    if tag == TXN:
        return TxnResponse(f[0], f[1], tuple(_op_response(d) for d in f[2]))
    if tag == COMPACTION:
        return CompactionResponse(f[0])
    assert tag == ERROR, f"unknown result tag {tag!r}"
    kind, *args = f
    if kind == "compacted":
        return CompactedError(*args)
    if kind == "future":
        return FutureRevisionError(*args)
    if kind == "limit":
        return KVLimitError(*args)
    if kind == "duplicate":
        return DuplicateKeyError(*args)
    if kind == "out_of_range":
        return OutOfRangeError(*args)
    if kind == "stale_stamp":
        return StaleStampError(*args)
    return MalformedRequestError(*args)


def _op_response(doc: list[Any]) -> OpResponse:
    res = _result(doc)
    assert isinstance(res, PutResponse | RangeResponse | DeleteRangeResponse | TxnResponse)
    return res


def encode_result(res: Result) -> bytes:
    return _packers.pack(_result_doc(res))


def decode_result(data: bytes) -> Result:
    """Inverse of ``encode_result``; the bytes come from our own engine, so damage here
    is a broken invariant (``AssertionError``), not a request error."""
    doc = msgpack.unpackb(data)  # as ``unpack``
    n = len(doc) if type(doc) is list else 0
    if n == 3 and doc[0] == PUT and doc[2] is None:  # the fast cases of ``_result``, inline
        return PutResponse(doc[1])
    if n == 5 and doc[0] == RANGE:
        return RangeResponse(doc[1], tuple([KeyValue(*d) for d in doc[2]]), doc[3], doc[4])
    return _result(doc)
