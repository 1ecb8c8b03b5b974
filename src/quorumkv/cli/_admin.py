"""``qkv status``, ``qkv member list|add|remove``, ``qkv leader transfer``, and, on a
sharded cluster, ``qkv ranges``, ``qkv split`` and ``qkv node list|drain|up|remove``.

``status`` asks every member for its status through the client, then each reachable
node's own ``/health`` (the node's verdict, not one recomputed here), and prints a
table; on a sharded cluster (whose table rows are about the meta range) then, per node,
how many ranges of keys it holds and which it leads. ``ranges`` prints the directory's
ranges with what their leaders report (keys, size, applied index); ``split`` sends an
operator's split to the leader of the range holding the key and prints both halves.
``node`` lists the registered nodes with their state and replica counts, and drains a
node (the placement driver then moves its replicas and leaders away), brings it back
up, or removes it for good (refused while it holds a replica; ``--drain`` drains it
first and waits, printing what is left, until it holds nothing). Thin: parse, call,
print.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from typing import Any

from quorumkv.cli._common import ArgumentParser, UsageError, connect
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
from quorumkv.client import Client
from quorumkv.errors import ClientError, RequestTimeoutError
from quorumkv.local import node_health

NODES_HEADERS = ("ID", "ADDRESS", "STATE", "REPLICAS", "LEADERS")


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


def _nodes_table(nodes: list[dict[str, Any]]) -> str:
    rows = [[n["id"], n["addr"], n["state"], n["replicas"], n["leaders"]] for n in nodes]
    return table(NODES_HEADERS, rows)


def cmd_node_list(args: argparse.Namespace) -> int:
    with connect(args) as c:
        nodes = c.nodes()
    if args.json:
        print(json.dumps(nodes, indent=2, sort_keys=True))
    else:
        print(_nodes_table(nodes))
    return 0


def cmd_node_state(args: argparse.Namespace) -> int:
    state = {"drain": "draining", "up": "up"}[args.node_command]
    wait = getattr(args, "wait", False)
    if wait:
        _check_timeout(args.wait_timeout)
    with connect(args) as c:
        c.set_node_state(args.id, state)
        print(f"node {args.id} is {state}")
        if wait:
            _wait_empty(c, args.id, args.wait_timeout)
    return 0


def cmd_node_remove(args: argparse.Namespace) -> int:
    if args.drain:
        _check_timeout(args.wait_timeout)
    with connect(args) as c:
        state = next((n["state"] for n in c.nodes() if n["id"] == args.id), None)
        if state == "removed":
            print(f"node {args.id} was removed already")
            return 0
        if args.drain:
            c.set_node_state(args.id, "draining")
            print(f"node {args.id} is draining")
            _wait_empty(c, args.id, args.wait_timeout)
        c.set_node_state(args.id, "removed")
    print(f"node {args.id} is removed: once none of its groups counts it any more it stops "
          "by itself (if it runs); its id is never reused")  # fmt: skip
    return 0


def _check_timeout(timeout: float) -> None:
    if timeout <= 0:
        raise UsageError(f"--wait-timeout must be positive, not {timeout:g}")


def _wait_empty(c: Client, node_id: int, timeout: float) -> None:
    """Wait until the directory lists no replica on ``node_id`` and the node itself (if
    it answers) hosts no range, printing what is left whenever it changes;
    ``RequestTimeoutError`` after ``timeout`` seconds (the node stays draining)."""
    began = time.monotonic()
    shown: tuple[int, int, int] | None = None
    while True:
        waited = time.monotonic() - began
        left: tuple[int, int, int] | None
        try:
            left = _left_on(c, node_id)
        except ClientError as e:  # a leader changing, a node restarting: ask again
            print(f"  {waited:6.1f} s: {e}; asking again", flush=True)
            left = shown
        if left is not None and left != shown:
            print(f"  {waited:6.1f} s: {left[0]} replicas in the directory, {left[1]} "
                  f"hosted on the node, {left[2]} leaderships left", flush=True)  # fmt: skip
            shown = left
        if left is not None and left[:2] == (0, 0):
            return
        if waited > timeout:
            raise RequestTimeoutError(
                f"node {node_id} is still draining after {timeout:g} s ('qkv node list' "
                "and 'qkv ranges' show what is left; 'qkv node up "
                f"{node_id}' undoes the drain)"
            )
        time.sleep(1.0)


def _left_on(c: Client, node_id: int) -> tuple[int, int, int]:
    """(replicas the directory lists on the node, ranges the node itself hosts, range
    leader hints naming it); the node's own count is 0 when it does not answer."""
    mine = [n for n in c.nodes() if n["id"] == node_id]
    listed, leads = (mine[0]["replicas"], mine[0]["leaders"]) if mine else (0, 0)
    hosted = 0
    for st in c.cluster_status():
        if st.get("id") == node_id and "error" not in st:
            hosted = len(st.get("ranges") or [])
    return listed, hosted, leads


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
        "(the bytes of its records, which the nodes' --split-bytes threshold is compared "
        "with, as --split-keys is with the keys) and applied index its leader reports "
        "('-' where it does not say).",
    )
    p.add_argument("--json", action="store_true", help="print the ranges as JSON")
    p.set_defaults(func=cmd_ranges)
    p = sub.add_parser(
        "split",
        parents=[common],
        help="split the range holding KEY so that a new range starts at KEY",
        description="Split a range of a sharded cluster at KEY (an operator's split; the "
        "cluster also splits ranges past the nodes' --split-bytes size (64 MiB) or "
        "--split-keys keys (1,000,000), or above --hot-write-ops writes/s). "
        "No data is copied. Prints the two ranges.",
    )
    p.add_argument("key", help="the first key of the new range")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser(
        "node", help="a sharded cluster's nodes: list them, drain, restore or remove one"
    )
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="{list,drain,up,remove}")
    m = nsub.add_parser(
        "list", parents=[common], help="the registered nodes: state, replicas, leaderships"
    )
    m.add_argument("--json", action="store_true", help="print the nodes as JSON")
    m.set_defaults(func=cmd_node_list)
    for name, text in (
        ("drain", "move every replica and leadership off node ID (it keeps serving)"),
        ("up", "let node ID take replicas again (undo a drain)"),
    ):
        m = nsub.add_parser(name, parents=[common], help=text)
        m.add_argument("id", type=int, metavar="ID")
        if name == "drain":
            m.add_argument(
                "--wait", action="store_true", help="wait, showing progress, until it is empty"
            )
            m.add_argument(
                "--wait-timeout", type=float, default=600.0, metavar="S", help="seconds (600)"
            )
        m.set_defaults(func=cmd_node_state)
    m = nsub.add_parser(
        "remove",
        parents=[common],
        help="remove node ID for good (it must hold nothing; --drain empties it first)",
        description="Mark node ID removed in the directory. Refused while it holds a "
        "replica: drain it first ('qkv node drain ID --wait'), or pass --drain to drain "
        "it, wait until it is empty, and then remove it. The node stops by itself; its "
        "data directory stays; its id is never reused.",
    )
    m.add_argument("id", type=int, metavar="ID")
    m.add_argument("--drain", action="store_true", help="drain it and wait first")
    m.add_argument("--wait-timeout", type=float, default=600.0, metavar="S", help="seconds (600)")
    m.set_defaults(func=cmd_node_remove)

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
