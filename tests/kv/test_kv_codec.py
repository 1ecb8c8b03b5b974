"""The fast paths of the kv types and codec against the general ones they shortcut.

Each request class accepts the common case with one combined test and runs its detailed
checks only when that test fails; the codec decodes the exact shapes of a put and of a
range directly. Here, over odd and valid inputs alike: a constructor raises exactly what
its detailed checks raise (so the fast test never accepts what they refuse), a fast
decode gives what the general path gives for the same document with one more field
(which it ignores), ``encode_request`` gives the bytes and errors of
``encode_command(Command(...))``, and ``encode_put``/``encode_get`` those of
``encode_request`` of the request they stand for.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.kv import (
    LIMITS,
    Command,
    CompactionRequest,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    KVError,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    SortOrder,
    SortTarget,
    TxnRequest,
    _codec,
    _types,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
)
from quorumkv.kv._codec import (
    FORMAT,
    decode_entry,
    encode_get,
    encode_put,
    encode_request,
    pack,
)

MAX_KEY = LIMITS.max_key_bytes

odd_keys = st.one_of(
    st.sampled_from([b"", b"k" * (MAX_KEY + 1), None, 1]),
    st.text(max_size=3),
    st.builds(bytearray, st.binary(max_size=3)),
)
odd_ints = st.sampled_from([-1, 1 << 63, True, False, SortOrder.ASCEND, 1.0, "1", None])
odd_bools = st.sampled_from([0, 1, None, "x"])


def fields(spec: list[tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]) -> Any:
    """Argument tuples for a constructor: each field valid, except for up to two chosen
    ones drawn from their odd values (so every check gets to be the first that fails)."""
    valid = st.tuples(*(v for v, _ in spec))
    odd = st.tuples(*(o for _, o in spec))
    which = st.sets(st.integers(0, len(spec) - 1), max_size=2)
    return st.builds(
        lambda v, o, w: tuple(o[i] if i in w else v[i] for i in range(len(spec))), valid, odd, which
    )


key = (st.binary(min_size=1, max_size=8) | st.just(b"k" * MAX_KEY), odd_keys)
end = (st.binary(max_size=8) | st.just(b"k" * MAX_KEY), odd_keys)
value = (st.binary(max_size=8), odd_keys)
u63 = (st.integers(0, 3) | st.just((1 << 63) - 1), odd_ints)
u64 = (st.integers(0, 3) | st.just((1 << 64) - 1), odd_ints | st.just(1 << 64))
flag = (st.booleans(), odd_bools)
order = (st.sampled_from(SortOrder), st.sampled_from([0, 2, 7, True, None, "x"]))
target = (st.sampled_from(SortTarget), st.sampled_from([0, 4, 9, True, None]))
request = (
    st.sampled_from([PutRequest(b"k", b"v"), RangeRequest(b"k"), CompactionRequest(3)]),
    st.sampled_from(["put", None, b"k"]),
)


def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    """What calling ``fn`` did: the error's type and message, or "ok"."""
    try:
        fn()
    except KVError as e:
        return type(e).__name__, str(e)
    return "ok", ""


@settings(max_examples=400)
@given(fields([key, value, u63, flag]))
def test_a_put_raises_exactly_what_its_checks_raise(args: tuple[Any, ...]) -> None:
    want = outcome(lambda: _types._check_put(*args))
    assert outcome(lambda: PutRequest(*args)) == want
    if want[0] == "ok":
        assert dataclasses.astuple(PutRequest(*args)) == args


@settings(max_examples=400)
@given(fields([key, end, u63, u63, order, target, flag, flag]))
def test_a_range_raises_exactly_what_its_checks_raise(args: tuple[Any, ...]) -> None:
    want = outcome(lambda: _types._check_range(*args))
    assert outcome(lambda: RangeRequest(*args)) == want
    if want[0] == "ok":
        assert dataclasses.astuple(RangeRequest(*args)) == args


@settings(max_examples=200)
@given(fields([key, end, flag]))
def test_a_delete_raises_exactly_what_its_checks_raise(args: tuple[Any, ...]) -> None:
    want = outcome(lambda: _types._check_delete(*args))
    assert outcome(lambda: DeleteRangeRequest(*args)) == want


@settings(max_examples=300)
@given(fields([u64, u64, request]))
def test_a_command_and_encode_request_raise_exactly_what_the_checks_raise(
    args: tuple[Any, ...],
) -> None:
    want = outcome(lambda: _types._check_command(*args))
    assert outcome(lambda: Command(*args)) == want
    assert outcome(lambda: encode_request(*args)) == want
    if want[0] == "ok":
        assert encode_request(*args) == encode_command(Command(*args))


@settings(max_examples=400)
@given(fields([u64, u64, key, value, u63, flag]))
def test_encode_put_is_encode_request_of_a_put(args: tuple[Any, ...]) -> None:
    client, seq, *put = args
    want = outcome(lambda: encode_request(client, seq, PutRequest(*put)))
    assert outcome(lambda: encode_put(*args)) == want
    if want[0] == "ok":
        assert encode_put(*args) == encode_request(client, seq, PutRequest(*put))


@settings(max_examples=200)
@given(fields([key, u63]))
def test_encode_get_is_encode_request_of_a_range_of_one_key(args: tuple[Any, ...]) -> None:
    k, revision = args
    want = outcome(lambda: encode_request(0, 0, RangeRequest(k, revision=revision)))
    assert outcome(lambda: encode_get(k, revision)) == want
    if want[0] == "ok":
        assert encode_get(k, revision) == encode_command(
            Command(0, 0, RangeRequest(k, revision=revision))
        )


def test_encode_request_checks_the_request_size() -> None:
    value = b"v" * LIMITS.max_value_bytes
    big = TxnRequest((), (PutRequest(b"a", value), PutRequest(b"b", value)))
    with pytest.raises(KVError, match="request size"):
        encode_request(1, 1, big)


docf = st.one_of(
    st.binary(max_size=4),
    st.integers(-1, 10),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
    st.lists(st.integers(0, 2), max_size=2),
)
put_docs = st.tuples(st.sampled_from([0, False, 0.0]), docf, docf, docf, docf)
range_docs = st.tuples(
    st.sampled_from([1, True, 1.0]),
    docf,
    docf,
    docf,
    docf,
    st.one_of(st.integers(-1, 4), docf),
    st.one_of(st.integers(-1, 6), docf),
    docf,
    docf,
)


def decoded(data: bytes) -> object:
    try:
        return repr(decode_command(data))
    except KVError as e:
        return type(e).__name__, str(e)


@settings(max_examples=500)
@given(st.one_of(put_docs, range_docs), st.integers(0, 3), st.integers(0, 3))
def test_a_fast_decode_is_the_general_decode(doc: tuple[Any, ...], client: int, seq: int) -> None:
    fast = pack([FORMAT, client, seq, list(doc)])
    general = pack([FORMAT, client, seq, [*doc, "ignored"]])
    assert decoded(fast) == decoded(general)


ids = st.one_of(st.integers(-1, 3), st.just((1 << 64) - 1), docf)


@settings(max_examples=500)
@given(put_docs, ids, ids)
def test_a_plain_put_decoded_as_a_tuple_is_the_general_decode(
    doc: tuple[Any, ...], client: Any, seq: Any
) -> None:
    """``decode_entry`` gives a tuple only for a valid put without prev_kv, and that
    tuple is the command the general decoder builds (or the same error)."""
    data = pack([FORMAT, client, seq, list(doc)])
    general = pack([FORMAT, client, seq, [*doc, "ignored"]])
    try:
        got = decode_entry(data)
    except KVError as e:
        assert decoded(general) == (type(e).__name__, str(e))
        return
    if type(got) is tuple:
        assert doc[4] is False
        c, s, k, v, lease = got
        got = Command(c, s, PutRequest(k, v, lease))
    assert repr(got) == decoded(general)


def test_well_formed_puts_and_ranges_decode_the_same_either_way() -> None:
    for req in (
        PutRequest(b"k", b"v", 3, True),
        RangeRequest(b"a", b"z", 3, 9, SortOrder.DESCEND, SortTarget.VALUE, True, False),
        RangeRequest(b"k"),
    ):
        data = encode_command(Command(5, 6, req))
        doc = msgpack.unpackb(data)
        assert decode_command(data) == Command(5, 6, req)
        assert decode_command(pack([*doc[:3], [*doc[3], 0]])) == Command(5, 6, req)


def test_results_decode_the_same_either_way() -> None:
    kv = KeyValue(b"a", b"1", 2, 3, 2, 7)
    for res in (
        PutResponse(3),
        PutResponse(3, kv),
        RangeResponse(4, (kv, kv), True, 5),
        RangeResponse(4),
        DeleteRangeResponse(4, 1, (kv,)),
    ):
        doc = msgpack.unpackb(encode_result(res))
        assert decode_result(encode_result(res)) == res
        assert _codec._result([*doc, None]) == res


def test_the_classes_stay_frozen_slotted_dataclasses() -> None:
    kv = KeyValue(b"a", b"1", 2, 3, 2)
    for obj in (
        kv,
        PutRequest(b"k", b"v"),
        RangeRequest(b"k", sort_order=SortOrder.ASCEND),
        DeleteRangeRequest(b"k"),
        PutResponse(1, kv),
        RangeResponse(1, (kv,)),
        DeleteRangeResponse(1),
        Command(1, 2, PutRequest(b"k", b"v")),
    ):
        assert not hasattr(obj, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, dataclasses.fields(obj)[0].name, b"x")
        assert pickle.loads(pickle.dumps(obj)) == obj == copy.copy(obj)
        assert dataclasses.replace(obj) == obj and hash(dataclasses.replace(obj)) == hash(obj)
        assert repr(obj).startswith(type(obj).__name__ + "(")
    assert dataclasses.replace(PutRequest(b"k", b"v"), lease=3) == PutRequest(b"k", b"v", 3)
    with pytest.raises(KVError, match="lease"):
        dataclasses.replace(PutRequest(b"k", b"v"), lease=-1)


def test_every_error_apply_returns_comes_back_as_its_class_with_its_fields() -> None:
    """A writer gets the errors of the state machine back through ``encode_result``,
    the sharded ones included: a client refreshes its range cache on ``OutOfRangeError``
    from its fields, and retries a ``StaleStampError``."""
    from quorumkv.errors import OutOfRangeError, StaleStampError
    from quorumkv.kv import (
        CompactedError,
        DuplicateKeyError,
        FutureRevisionError,
        KVLimitError,
        MalformedRequestError,
    )

    errors: list[KVError] = [
        OutOfRangeError(7, b"zz", b"m", b""),
        OutOfRangeError(1 << 40, b"\x00", b"", b"\xff" * 3),
        StaleStampError(40, 50),
        CompactedError(3, 5),
        FutureRevisionError(9, 4),
        KVLimitError("txn nesting depth", 32, 40, "levels"),
        DuplicateKeyError(b"k"),
        MalformedRequestError("not a key-value command"),
    ]
    for err in errors:
        back = decode_result(encode_result(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert vars(back) == vars(err)


# -- the plain put's own layout ----------------------------------------------------------

sizes = st.sampled_from([0, 1, 3, MAX_KEY, MAX_KEY + 1])
value_sizes = st.sampled_from([0, 1, 5, LIMITS.max_value_bytes, LIMITS.max_value_bytes + 1])
any_u64 = st.integers(0, 3) | st.sampled_from([(1 << 63) - 1, 1 << 63, (1 << 64) - 1])


def plain_put(client: int, seq: int, lease: int, key: bytes, value: bytes) -> bytes:
    """A plain put's layout written out by hand, from its documented fields."""
    head = bytes([_codec.PLAIN_PUT]) + b"".join(n.to_bytes(8, "big") for n in (client, seq, lease))
    return head + len(key).to_bytes(2, "big") + key + value


def test_a_plain_put_has_its_own_layout_and_a_put_with_prev_kv_does_not() -> None:
    put = Command(5, 6, PutRequest(b"k", b"v", 7))
    want = plain_put(5, 6, 7, b"k", b"v")
    assert encode_command(put) == encode_request(5, 6, put.request) == want
    assert encode_put(5, 6, b"k", b"v", 7) == want
    assert decode_entry(want) == (5, 6, b"k", b"v", 7)
    assert decode_command(want) == put
    with_prev = encode_command(Command(5, 6, PutRequest(b"k", b"v", 7, True)))
    assert with_prev[0] == 0x94 and msgpack.unpackb(with_prev)[0] == FORMAT


@settings(max_examples=300)
@given(any_u64, any_u64, any_u64, sizes, value_sizes)
def test_a_plain_put_decodes_as_the_same_put_in_msgpack(
    client: int, seq: int, lease: int, key_size: int, value_size: int
) -> None:
    """Whatever its fields, a plain put in its layout decodes to the command, or the
    error, that the same put in the msgpack layout (from before the plain layout, or
    from another encoder) decodes to."""
    k, v = b"k" * key_size, b"v" * value_size
    legacy = pack([FORMAT, client, seq, [0, k, v, lease, False]])
    assert decoded(plain_put(client, seq, lease, k, v)) == decoded(legacy)
    try:
        got = decode_entry(plain_put(client, seq, lease, k, v))
    except KVError:
        return
    if type(got) is tuple:  # the fast path: exactly the legacy decode's fields
        assert got == decode_entry(legacy)


def test_a_cut_plain_put_is_malformed_until_its_key_is_whole() -> None:
    data = plain_put(1, 2, 0, b"key", b"value")
    head = len(data) - len(b"key") - len(b"value")
    for n in range(1, head + len(b"key")):
        with pytest.raises(KVError, match="cannot decode command"):
            decode_command(data[:n])
    # past the key, a cut is a shorter value: the log's checksums catch damage, not this
    assert decode_command(data[: head + 4]) == Command(1, 2, PutRequest(b"key", b"v"))
