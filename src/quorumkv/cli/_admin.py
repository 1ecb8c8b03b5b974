"""``qkv status``, ``qkv member list|add|remove``, ``qkv leader transfer``, and, on a
sharded cluster, ``qkv ranges`` and ``qkv split``.

``status`` asks every member for its status through the client, then each reachable
node's own ``/health`` (the node's verdict, not one recomputed here), and prints a
table; on a sharded cluster (whose table rows are about the meta range) then, per node,
how many ranges of keys it holds and which it leads. ``ranges`` prints the directory's
ranges with what their leaders report (keys, size, applied index); ``split`` sends an
operator's split to the leader of the range holding the key and prints both halves.
Thin: parse, call, print.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from quorumkv.cli._common import ArgumentParser, connect
from quorumkv.cli._render import (
    META_NOTE,
    RANGES_HEADERS,
    RANGES_PER_NODE_HEADERS,
    STATUS_HEADERS,
    leaders_report,
    members_table,
    range_json,
    range_rows,
    ranges_per_node_rows,
    status_rows,
    table,
)
from quorumkv.local import node_health


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as c:
        statuses = c.cluster_status()
    if args.json:
        print(json.dumps(statuses, indent=2, sort_keys=True))
        return 0
    health = {
        int(s["id"]): node_health(_http_addr(s), timeout=min(args.timeout, 2.0))
        for s in statuses
        if "error" not in s and _http_addr(s)
    }
    print(table(STATUS_HEADERS, status_rows(statuses, health)))
    if any(s.get("sharded") for s in statuses):
        print()
        print(META_NOTE)
        print(table(RANGES_PER_NODE_HEADERS, ranges_per_node_rows(statuses)))
    return 0


def cmd_ranges(args: argparse.Namespace) -> int:
    with connect(args) as c:
        descs = c.ranges()
        statuses = c.cluster_status()
    led = leaders_report(descs, statuses)
    if args.json:
        doc = [{**range_json(d), **info} for d, info in zip(descs, led, strict=True)]
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(table(RANGES_HEADERS, range_rows(descs, led)))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    with connect(args) as c:
        left, right = c.split(args.key)
    print(table(RANGES_HEADERS, range_rows([left, right], [{}, {}])))
    return 0


def _http_addr(status: Mapping[str, Any]) -> str:
    http = str(status.get("http") or "")
    return http.removeprefix("http://").rstrip("/")


def cmd_member_list(args: argparse.Namespace) -> int:
    with connect(args) as c:
        members = c.members()
    print(members_table(members))
    return 0


def cmd_member_add(args: argparse.Namespace) -> int:
    with connect(args) as c:
        members = c.member_add(args.id, args.addr, learner_only=args.learner)
    kind = "a learner" if args.learner else "a voter"
    print(f"added node {args.id} ({args.addr}) as {kind}")
    print(members_table(members))
    return 0


def cmd_member_remove(args: argparse.Namespace) -> int:
    with connect(args) as c:
        members = c.member_remove(args.id)
    print(f"removed node {args.id}")
    print(members_table(members))
    return 0


def cmd_leader_transfer(args: argparse.Namespace) -> int:
    with connect(args) as c:
        leader = c.transfer_leader(args.id)
    if leader:
        print(f"leader is now node {leader}")
    else:  # the old leader stepped down before it heard from the new one
        print("the leader stepped down; 'qkv status' shows the new one")
    return 0


def register(sub: Any, common: ArgumentParser) -> None:
    """Add the cluster administration commands to ``sub``."""
    p = sub.add_parser(
        "status",
        parents=[common],
        help="a table of every member: role, term, commit, applied, lag, health",
        description="Show every member's status: its role, term, the leader it follows, "
        "its commit and applied indexes, LAG (how far its applied index is behind the "
        "leader's commit index) and what its /health says.",
    )
    p.add_argument("--json", action="store_true", help="print the raw status dicts as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "ranges",
        parents=[common],
        help="a sharded cluster's ranges: bounds, replicas, leader, keys, size",
        description="Show the ranges of keys of a sharded cluster, in key order: their "
        "bounds, descriptor version, replicas, the node leading each, and the keys, size "
        "and applied index its leader reports ('-' where it does not say).",
    )
    p.add_argument("--json", action="store_true", help="print the ranges as JSON")
    p.set_defaults(func=cmd_ranges)
    p = sub.add_parser(
        "split",
        parents=[common],
        help="split the range holding KEY so that a new range starts at KEY",
        description="Split a range of a sharded cluster at KEY (an operator's split; the "
        "cluster also splits ranges past --split-keys keys or --hot-write-ops writes/s). "
        "No data is copied. Prints the two ranges.",
    )
    p.add_argument("key", help="the first key of the new range")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("member", help="list, add or remove members")
    msub = p.add_subparsers(dest="member_command", required=True, metavar="{list,add,remove}")
    m = msub.add_parser("list", parents=[common], help="list the members")
    m.set_defaults(func=cmd_member_list)
    m = msub.add_parser(
        "add",
        parents=[common],
        help="add node ID at ADDR (start it first with --join)",
        description="Add node ID, listening on ADDR, to the cluster. Start the node first, "
        "empty, with 'qkv server --join --id ID --listen ADDR ...'.",
    )
    m.add_argument("id", type=int, metavar="ID")
    m.add_argument("addr", metavar="ADDR", help="the node's HOST:PORT")
    m.add_argument("--learner", action="store_true", help="add it as a non-voting learner")
    m.set_defaults(func=cmd_member_add)
    m = msub.add_parser("remove", parents=[common], help="remove node ID")
    m.add_argument("id", type=int, metavar="ID")
    m.set_defaults(func=cmd_member_remove)

    p = sub.add_parser("leader", help="leadership: transfer it to another node")
    lsub = p.add_subparsers(dest="leader_command", required=True, metavar="{transfer}")
    m = lsub.add_parser(
        "transfer",
        parents=[common],
        help="hand leadership to node ID (default: the most caught-up follower)",
    )
    m.add_argument("id", type=int, nargs="?", default=0, metavar="ID")
    m.set_defaults(func=cmd_leader_transfer)
