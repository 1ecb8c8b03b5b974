"""Limits are enforced where requests are built and decoded, with messages that name the
limit and the overshoot; the codec round-trips every request and result."""

from __future__ import annotations

import pytest

from quorumkv.kv import (
    LIMITS,
    Command,
    CompactedError,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    KVLimitError,
    MalformedRequestError,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    Result,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
)
from quorumkv.kv._codec import pack


def test_limits_are_etcds_where_etcd_has_them() -> None:
    assert LIMITS.max_request_bytes == 1536 * 1024
    assert LIMITS.max_txn_ops == 128
    assert LIMITS.max_key_bytes == 511


def test_key_too_long() -> None:
    PutRequest(b"k" * 511, b"")
    with pytest.raises(
        KVLimitError, match=r"^key size is 512 bytes, over the limit of 511 bytes by 1 bytes$"
    ):
        PutRequest(b"k" * 512, b"")
    with pytest.raises(KVLimitError, match="range_end size is 600 bytes"):
        RangeRequest(b"a", b"z" * 600)


def test_value_too_long() -> None:
    with pytest.raises(
        KVLimitError,
        match=r"value size is 1048586 bytes, over the limit of 1048576 bytes by 10 bytes",
    ):
        PutRequest(b"k", b"v" * (1024 * 1024 + 10))


def test_too_many_txn_ops() -> None:
    ops = tuple(PutRequest(b"k%d" % i, b"") for i in range(129))
    with pytest.raises(
        KVLimitError, match=r"txn success operations is 129 ops, over the limit of 128 ops by 1 ops"
    ):
        TxnRequest((), ops)
    with pytest.raises(KVLimitError, match="txn compare operations is 129 ops"):
        TxnRequest(
            tuple(Compare(CompareTarget.VERSION, CompareOp.EQUAL, b"k", 0) for _ in range(129))
        )


def test_txn_nesting_depth() -> None:
    txn = TxnRequest()
    for _ in range(31):
        txn = TxnRequest((), (txn,))
    with pytest.raises(
        KVLimitError, match="txn nesting depth is 33 levels, over the limit of 32 levels by 1"
    ):
        TxnRequest((), (txn,))


def test_deep_nesting_in_a_log_entry_is_refused_without_recursion() -> None:
    # Regression: a 2.3 KB txn nested 450 deep raised RecursionError in decode_command,
    # escaped every replica's apply and wedged the whole cluster (found in review).
    import msgpack

    from quorumkv.kv._codec import FORMAT, TXN

    inner = msgpack.packb([TXN, [], [], []])
    for _ in range(450):
        inner = b"\x94" + msgpack.packb(TXN) + b"\x90\x91" + inner + b"\x90"
    data = b"\x94" + msgpack.packb(FORMAT) + msgpack.packb(1) + msgpack.packb(1) + inner
    assert len(data) < 3000
    with pytest.raises(KVLimitError, match="txn nesting depth is 451 levels"):
        decode_command(data)


def test_request_too_big_when_encoded_and_when_decoded() -> None:
    value = b"v" * (1024 * 1024)
    big = TxnRequest((), (PutRequest(b"a", value), PutRequest(b"b", value)))
    with pytest.raises(
        KVLimitError, match=r"request size is 2097\d+ bytes, over the limit of 1572864 bytes"
    ):
        encode_command(Command(1, 1, big))
    with pytest.raises(KVLimitError, match="request size"):
        decode_command(b"\x00" * (LIMITS.max_request_bytes + 1))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        pack([1, 0, 0, [42]]),
        pack([2, 0, 0, [0, b"k", b"v", 0, False]]),
        pack([1, 0, 0, [0, "k", b"v", 0, False]]),
        pack([1, 0, 0, [0, b"", b"v", 0, False]]),
        pack([1, 0, 0, [1, b"k", b"", 0, 0, 7, 0, False, False]]),
        pack([1, 0, 0, [3, [], [[4, 5]], []]]),
        pack([1, -1, 0, [4, 5]]),
    ],
)
def test_malformed_commands(data: bytes) -> None:
    with pytest.raises(MalformedRequestError):
        decode_command(data)


def test_command_round_trip() -> None:
    txn = TxnRequest(
        (
            Compare(CompareTarget.VALUE, CompareOp.LESS, b"a", b"v"),
            Compare(CompareTarget.MOD, CompareOp.GREATER, b"b", 3),
        ),
        (
            PutRequest(b"a", b"1", 5, True),
            RangeRequest(b"a", b"z", 3, 2, SortOrder.DESCEND, SortTarget.VALUE, True, True),
        ),
        (DeleteRangeRequest(b"a", b"\x00", True), TxnRequest()),
    )
    cmd = Command(3, 9, txn)
    assert decode_command(encode_command(cmd)) == cmd


def test_result_round_trip() -> None:
    kv = KeyValue(b"a", b"1", 2, 3, 2, 7)
    results: list[Result] = [
        PutResponse(3, kv),
        TxnResponse(4, False, (RangeResponse(4, (kv,), True, 5), DeleteRangeResponse(4, 1, (kv,)))),
        CompactedError(3, 5),
        KVLimitError("key size", 511, 600),
    ]
    for res in results:
        assert repr(decode_result(encode_result(res))) == repr(res)
