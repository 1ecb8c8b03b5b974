"""``qkv put``, ``get``, ``del``, ``range`` and ``txn``: parse, one client call, print.

Reads are linearizable unless ``--serializable`` (then any node answers from what it
has applied, possibly stale); ``--read-from follower`` or ``any`` spreads them over the
replicas (``quorumkv.Client``'s ``read_from``). Keys and values are taken as the bytes typed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from quorumkv.cli._common import (
    ArgumentParser,
    UsageError,
    arg_bytes,
    connect,
    count,
    fail,
    show,
)
from quorumkv.cli._render import kv_json, kv_lines, txn_lines
from quorumkv.cli._txn import SYNTAX, parse_compare, parse_op
from quorumkv.client import READ_FROM


def cmd_put(args: argparse.Namespace) -> int:
    with connect(args) as c:
        c.put(arg_bytes(args.key), arg_bytes(args.value))
    print("OK")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    key = arg_bytes(args.key)
    with connect(args) as c:
        kv = c.get(key, serializable=args.serializable, revision=args.rev)
    if kv is None:
        return fail(f"key {show(key)!r} not found")
    print(json.dumps(kv_json(kv), ensure_ascii=False) if args.json else show(kv.value))
    return 0


def cmd_del(args: argparse.Namespace) -> int:
    with connect(args) as c:
        resp = c.delete(arg_bytes(args.key), prefix=args.prefix)
    print(resp.deleted)
    return 0


def cmd_range(args: argparse.Namespace) -> int:
    if args.prefix and args.end is not None:
        raise UsageError("give END or --prefix, not both")
    if not args.prefix and not args.key:
        raise UsageError("KEY is empty; use --prefix '' for every key")
    opts: dict[str, Any] = {
        "prefix": args.prefix,
        "limit": args.limit,
        "revision": args.rev,
        "keys_only": args.keys_only,
        "count_only": args.count,
        "serializable": args.serializable,
    }
    end = b"" if args.end is None else arg_bytes(args.end)
    with connect(args) as c:
        resp = c.range(arg_bytes(args.key), end, **opts)
    if args.count:
        print(resp.count)
        return 0
    for line in kv_lines(resp.kvs, keys_only=args.keys_only):
        print(line)
    if resp.more:
        print(f"({resp.count - len(resp.kvs)} more keys; raise --limit)", file=sys.stderr)
    return 0


def cmd_txn(args: argparse.Namespace) -> int:
    compare = [parse_compare(t) for t in args.compares]
    success = [parse_op(t) for t in args.success]
    failure = [parse_op(t) for t in args.failure]
    if not (compare or success or failure):
        raise UsageError("an empty transaction: give --if, --then or --else")
    with connect(args) as c:
        resp = c.txn(compare, success, failure)
    for line in txn_lines(resp):
        print(line)
    return 0


def register(sub: Any, common: ArgumentParser) -> None:
    """Add the key-value commands to ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("put", parents=[common], help="store VALUE under KEY")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser(
        "get",
        parents=[common],
        help="print the value of KEY",
        description="Print the value of KEY (exit 1 if it does not exist).",
    )
    p.add_argument("key", metavar="KEY")
    _read_options(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the whole record as JSON (key and value as text, or key_base64 / "
        "value_base64 when not UTF-8; revisions, version, lease)",
    )
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("del", parents=[common], help="delete KEY; print how many keys were deleted")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    p.set_defaults(func=cmd_del)

    p = sub.add_parser(
        "range",
        parents=[common],
        help="print the keys in [KEY, END) and their values",
        description="Print the keys in [KEY, END), or starting with KEY (--prefix), each "
        "followed by its value, in key order.",
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("end", metavar="END", nargs="?", help="first key after the range")
    p.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    p.add_argument("--limit", type=count, default=0, metavar="N", help="at most N keys")
    p.add_argument("--keys-only", action="store_true", help="print keys only")
    p.add_argument("--count", action="store_true", help="print only how many keys match")
    _read_options(p)
    p.set_defaults(func=cmd_range)

    p = sub.add_parser(
        "txn",
        parents=[common],
        help="compare-and-do atomically: --if ... --then ... --else ...",
        description="Run one transaction: if every --if compare holds, run the --then "
        "operations, else the --else ones, atomically. Prints SUCCESS or FAILURE (which "
        "branch ran), then each operation's answer.",
        epilog="syntax:\n" + SYNTAX + "\n\nexample:\n  qkv txn --if 'value(stock) = 1' "
        "--then 'put stock 0' --then 'put owner alice' --else 'get owner'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--if", dest="compares", action="append", default=[], metavar="COMPARE")
    p.add_argument("--then", dest="success", action="append", default=[], metavar="OP")
    p.add_argument("--else", dest="failure", action="append", default=[], metavar="OP")
    p.set_defaults(func=cmd_txn)


def _read_options(p: ArgumentParser) -> None:
    p.add_argument(
        "--serializable",
        action="store_true",
        help="let any node answer from what it has applied (faster, may be stale)",
    )
    p.add_argument(
        "--read-from",
        choices=READ_FROM,
        default="leader",
        help="which replica answers: the leader (default), a follower (the leader only if "
        "none can), or any voter; a linearizable read stays linearizable at a follower",
    )
    p.add_argument(
        "--rev", type=count, default=0, metavar="N", help="read as of revision N (default: now)"
    )
