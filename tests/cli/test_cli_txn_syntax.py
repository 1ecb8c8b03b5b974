"""``qkv txn``'s compact syntax: what each string builds, and what each mistake says."""

from __future__ import annotations

import re

import pytest

from quorumkv.cli._common import UsageError
from quorumkv.cli._txn import parse_compare, parse_op
from quorumkv.kv import (
    ALL_KEYS,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("value(k)=v", Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"k", b"v")),
        ("value(k) == v", Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"k", b"v")),
        ("version(k) > 0", Compare(CompareTarget.VERSION, CompareOp.GREATER, b"k", 0)),
        ("create(k) < 5", Compare(CompareTarget.CREATE, CompareOp.LESS, b"k", 5)),
        ("mod(k) != 3", Compare(CompareTarget.MOD, CompareOp.NOT_EQUAL, b"k", 3)),
        ("lease(k) = 0", Compare(CompareTarget.LEASE, CompareOp.EQUAL, b"k", 0)),
        ("VALUE(k) = v", Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"k", b"v")),
        ("""value("my key") = 'a b'""",
         Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"my key", b"a b")),
        ("value('(x)') = ''", Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"(x)", b"")),
        ("value(k) = =", Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"k", b"=")),
        ("value(k) = héllo", Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"k", "héllo".encode())),
    ],
)  # fmt: skip
def test_compares(text: str, expected: Compare) -> None:
    assert parse_compare(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("k = v", "expected TARGET\\(KEY\\) OP VALUE"),
        ("value(k) ~ v", "expected TARGET\\(KEY\\) OP VALUE"),
        ("size(k) = 1", "unknown target 'size'; use one of value, version, create, mod, lease"),
        ("version(k) = one", "version compares to an integer, not 'one'"),
        ("value(k) = a b", "the value must be one word or one quoted string"),
        ("value(a b) = v", "the key must be one word or one quoted string"),
        ("value() = v", "the key must be one word"),
        ("value('') = v", "key is not provided"),
        ("value(k) = 'open", "No closing quotation"),
        ("version(k) = -1", "compare value must be an integer"),
    ],
)
def test_compare_mistakes_say_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"--if {text!r}: ") + f".*{error}"):
        parse_compare(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("put k v", PutRequest(b"k", b"v")),
        ("put k 'hello world'", PutRequest(b"k", b"hello world")),
        ("PUT k ''", PutRequest(b"k", b"")),
        ("get k", RangeRequest(b"k")),
        ("get a c", RangeRequest(b"a", b"c")),
        ("get --prefix users/", RangeRequest(b"users/", b"users0")),
        ("get users/ --prefix", RangeRequest(b"users/", b"users0")),
        ("get --prefix ''", RangeRequest(ALL_KEYS, ALL_KEYS)),
        ("del k", DeleteRangeRequest(b"k")),
        ("delete a c", DeleteRangeRequest(b"a", b"c")),
        ("del --prefix a", DeleteRangeRequest(b"a", b"b")),
    ],
)
def test_operations(text: str, expected: object) -> None:
    assert parse_op(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty; use put, get or del"),
        ("put k", "expected 'put KEY VALUE'"),
        ("put k v w", "expected 'put KEY VALUE'"),
        ("put --prefix k v", "expected 'put KEY VALUE'"),
        ("get", "expected 'get KEY \\[END\\]' or 'get --prefix KEY'"),
        ("get --prefix a b", "expected 'get KEY \\[END\\]' or 'get --prefix KEY'"),
        ("del a b c", "expected 'del KEY \\[END\\]' or 'del --prefix KEY'"),
        ("watch k", "unknown operation 'watch'; use put, get or del"),
        ("get ''", "key is not provided"),
        ("put k 'v", "No closing quotation"),
    ],
)
def test_operation_mistakes_say_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"operation {text!r}: ") + f".*{error}"):
        parse_op(text)


def test_keys_over_the_limit_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="key size is 512 bytes, over the limit of 511"):
        parse_op("put " + "k" * 512 + " v")
