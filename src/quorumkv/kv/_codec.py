"""msgpack encodings of commands (for the log) and of results (for client sessions).

Theory of operation
-------------------
A command is ``[FORMAT, client, seq, request]``; a request is a list whose first item is
a tag (``PUT``, ``RANGE``...) followed by the dataclass's fields in order. Results use
the same scheme with their own tags, and a tag for the errors ``apply`` can return, so
the state machine can store a client's last result and replay it for a retry.

Decoding rebuilds the dataclasses, so every decoded request has passed the same
validation as one built by hand; the encoded size is checked against
``LIMITS.max_request_bytes`` both ways. Anything that fails to decode raises
``MalformedRequestError`` (never ``TypeError`` or a msgpack error), so a damaged log
entry becomes a deterministic error result on every replica rather than a crash.

This module must never depend on the engine, and must never change the meaning of an
existing tag or field position: encoded commands live in logs and snapshots.
"""

from __future__ import annotations

from typing import Any

import msgpack

from quorumkv.kv._errors import (
    CompactedError,
    DuplicateKeyError,
    FutureRevisionError,
    KVError,
    KVLimitError,
    MalformedRequestError,
)
from quorumkv.kv._types import (
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

Result = Response | KVError
"""What applying one command produced: its response, or the error it was refused with."""


def pack(obj: object) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)


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
            int(req.sort_order),
            int(req.sort_target),
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
    data = pack([FORMAT, cmd.client, cmd.seq, _request_doc(cmd.request)])
    if len(data) > LIMITS.max_request_bytes:
        raise KVLimitError("request size", LIMITS.max_request_bytes, len(data))
    return data


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


def decode_command(data: bytes) -> Command:
    """The command in a log entry; raises ``KVError`` (never anything else) if the
    bytes are not a valid command within the limits."""
    if len(data) > LIMITS.max_request_bytes:
        raise KVLimitError("request size", LIMITS.max_request_bytes, len(data))
    try:
        fmt, client, seq, doc = unpack(data)
        if fmt != FORMAT:
            raise MalformedRequestError(f"unknown command format {fmt!r}")
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


# -- results -------------------------------------------------------------------------


def _kv_doc(kv: KeyValue | None) -> list[object] | None:
    if kv is None:
        return None
    return [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease]


def _kv(doc: list[Any] | None) -> KeyValue | None:
    return None if doc is None else KeyValue(*doc)


def _kvs(docs: list[Any]) -> tuple[KeyValue, ...]:
    return tuple(KeyValue(*d) for d in docs)


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
    return [ERROR, "malformed", str(res)]


def _result(doc: list[Any]) -> Result:
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
    return MalformedRequestError(*args)


def _op_response(doc: list[Any]) -> OpResponse:
    res = _result(doc)
    assert isinstance(res, PutResponse | RangeResponse | DeleteRangeResponse | TxnResponse)
    return res


def encode_result(res: Result) -> bytes:
    return pack(_result_doc(res))


def decode_result(data: bytes) -> Result:
    """Inverse of ``encode_result``; the bytes come from our own engine, so damage here
    is a broken invariant (``AssertionError``), not a request error."""
    return _result(unpack(data))
