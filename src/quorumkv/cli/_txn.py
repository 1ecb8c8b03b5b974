"""``qkv txn``'s compact syntax: compares and operations written as short strings.

The grammar is ``SYNTAX`` below (it is also what ``qkv txn --help`` shows). Words are
split as a POSIX shell would (``shlex``), so a key or value holding spaces or
parentheses is quoted inside the argument. Nested transactions have no syntax here.

This module is pure: it builds ``quorumkv.kv`` requests and raises ``UsageError``
saying what is wrong with a string; it never talks to a node.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import TypeVar

from quorumkv.cli._common import UsageError, arg_bytes
from quorumkv.kv import (
    ALL_KEYS,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    KVError,
    Op,
    PutRequest,
    RangeRequest,
    prefix_end,
)

TARGETS = {
    "value": CompareTarget.VALUE,
    "version": CompareTarget.VERSION,
    "create": CompareTarget.CREATE,
    "mod": CompareTarget.MOD,
    "lease": CompareTarget.LEASE,
}
OPS = {
    "=": CompareOp.EQUAL,
    "==": CompareOp.EQUAL,
    "!=": CompareOp.NOT_EQUAL,
    ">": CompareOp.GREATER,
    "<": CompareOp.LESS,
}
_COMPARE = re.compile(r"\s*([A-Za-z_]+)\s*\((.*)\)\s*(==|!=|=|>|<)(.*)", re.DOTALL)

SYNTAX = """\
  --if 'TARGET(KEY) OP VALUE'      a compare; every one must hold for --then to run
      TARGET  value | version | create | mod | lease
              (create, mod: the key's create and last-modified revisions)
      OP      =  ==  !=  >  <
      VALUE   for value: a word or a quoted string; otherwise an integer
  --then / --else 'OPERATION'     run in order when the compares hold / fail
      put KEY VALUE
      get KEY [END]     get --prefix KEY
      del KEY [END]     del --prefix KEY

  Quote words holding spaces or parentheses inside the argument, as in a shell:
  --if 'value("my key") = "a b"'   --then 'put k "hello world"'
  A missing key has version, create, mod and lease 0 and fails every value
  compare, so 'version(k) = 0' means "k does not exist"."""


def _words(text: str, what: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as e:  # an unclosed quote
        raise UsageError(f"{what}: {e}") from None


def _one_word(text: str, what: str, part: str) -> str:
    words = _words(text, what)
    if len(words) != 1:
        raise UsageError(f"{what}: the {part} must be one word or one quoted string")
    return words[0]


def parse_compare(text: str) -> Compare:
    """``'value(k) = v'`` → ``Compare``; ``UsageError`` saying what is wrong."""
    what = f"--if {text!r}"
    m = _COMPARE.fullmatch(text)
    if m is None:
        raise UsageError(f"{what}: expected TARGET(KEY) OP VALUE, such as 'value(k) = v'")
    name, key_text, op_text, value_text = m.groups()
    target = TARGETS.get(name.lower())
    if target is None:
        raise UsageError(f"{what}: unknown target {name!r}; use one of {', '.join(TARGETS)}")
    key = _one_word(key_text, what, "key")
    raw = _one_word(value_text, what, "value")
    value: bytes | int
    if target is CompareTarget.VALUE:
        value = arg_bytes(raw)
    else:
        try:
            value = int(raw)
        except ValueError:
            raise UsageError(f"{what}: {name} compares to an integer, not {raw!r}") from None
    return _build(what, lambda: Compare(target, OPS[op_text], arg_bytes(key), value))


def parse_op(text: str) -> Op:
    """``'put k v'``, ``'get k'``, ``'del --prefix k'`` → a request; ``UsageError``."""
    what = f"operation {text!r}"
    words = _words(text, what)
    if not words:
        raise UsageError(f"{what}: empty; use put, get or del")
    verb, args = words[0].lower(), words[1:]
    prefix = "--prefix" in args
    args = [a for a in args if a != "--prefix"]
    if verb == "put":
        if prefix or len(args) != 2:
            raise UsageError(f"{what}: expected 'put KEY VALUE'")
        return _build(what, lambda: PutRequest(arg_bytes(args[0]), arg_bytes(args[1])))
    if verb not in ("get", "del", "delete"):
        raise UsageError(f"{what}: unknown operation {words[0]!r}; use put, get or del")
    if not 1 <= len(args) <= (1 if prefix else 2):
        form = f"{verb} KEY [END]' or '{verb} --prefix KEY"
        raise UsageError(f"{what}: expected '{form}'")
    key = arg_bytes(args[0])
    if prefix:
        key, end = key or ALL_KEYS, prefix_end(key)
    else:
        end = arg_bytes(args[1]) if len(args) == 2 else b""
    if verb == "get":
        return _build(what, lambda: RangeRequest(key, end))
    return _build(what, lambda: DeleteRangeRequest(key, end))


T = TypeVar("T")


def _build(what: str, make: Callable[[], T]) -> T:
    try:
        return make()
    except KVError as e:  # an empty key, a key over the limit
        raise UsageError(f"{what}: {e}") from None
