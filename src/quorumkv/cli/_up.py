"""``qkv up`` (a local cluster in the foreground) and ``qkv server`` (one node).

``qkv up`` runs a ``LocalCluster`` until Ctrl-C or SIGTERM, then stops every node it
started and says so; the data stays, and ``qkv up`` on the same directory brings the
same cluster back. ``qkv server`` hands its arguments to ``quorumkv.server.main``,
imported only then, so that no other command loads the server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn

from quorumkv.cli._common import (
    DEFAULT_ENDPOINTS,
    ENDPOINTS_ENV,
    ArgumentParser,
    UsageError,
    count,
)
from quorumkv.local import LocalCluster, read_spec

DEFAULT_DATA_DIR = "qkv-data"
DEFAULT_BASE_PORT = 7001


def run_server(argv: list[str]) -> int:
    """``qkv server ARGS``: run one node in this process until SIGTERM or SIGINT."""
    from quorumkv.server import main  # noqa: PLC0415 -- only this command loads the server

    return main(argv)


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM stops ``qkv up`` the way Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ports(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """``(base_port, http_base_port)`` for ``LocalCluster``: for a new cluster what was
    asked, 7001 by default (0: ports the kernel picks); an existing cluster keeps its
    ports (``LocalCluster`` refuses explicit ones that differ)."""
    if args.base_port is None and read_spec(args.data_dir):
        if args.http_base_port is not None:
            raise UsageError(f"{args.data_dir} holds a cluster, which keeps its ports")
        return None, None
    if args.base_port == 0:
        if args.http_base_port is not None:
            raise UsageError("--http-base-port needs a non-zero --base-port")
        return None, None
    base = DEFAULT_BASE_PORT if args.base_port is None else args.base_port
    return base, args.http_base_port


def cmd_up(args: argparse.Namespace) -> int:
    if args.nodes is not None and args.nodes < 1:
        raise UsageError(f"--nodes must be at least 1, not {args.nodes}")
    base_port, http_base_port = _ports(args)
    cluster = LocalCluster(
        args.nodes,
        args.data_dir,
        base_port=base_port,
        http_base_port=http_base_port,
        sharded=True if args.sharded else None,  # a reused dir keeps what it was founded as
    )
    with _sigterm_as_interrupt():
        print(f"qkv: starting nodes in {os.path.abspath(args.data_dir)} ...", flush=True)
        cluster.start(timeout=args.start_timeout)
        try:
            _banner(cluster)
            _watch(cluster)
        except KeyboardInterrupt:
            pass
        finally:
            print(f"qkv: stopping {len(cluster.nodes)} nodes ...", flush=True)
            codes = cluster.stop()
            summary = ", ".join(f"node {i} exit {c}" for i, c in sorted(codes.items()))
            print(
                f"qkv: stopped ({summary or 'no node was running'}); "
                f"data kept in {os.path.abspath(args.data_dir)}",
                flush=True,
            )
    return 0


def _banner(cluster: LocalCluster) -> None:
    what = "started a new" if cluster.created else "brought back the"
    eps = ",".join(cluster.endpoints)
    lines = [f"qkv: {what} {len(cluster.nodes)}-node cluster in {cluster.data_dir}"]
    for node in cluster.nodes.values():
        lines.append(
            f"  node {node.id}  {node.addr}  status {node.http_url}/status  log {node.log_path}"
        )
    lines.append(f"client endpoints: {eps}")
    lines.append("")
    lines.append("Try it from another terminal:")
    if eps != DEFAULT_ENDPOINTS:
        lines.append(f"  export {ENDPOINTS_ENV}={eps}")
    lines += ["  qkv put hello world", "  qkv get hello", "  qkv status"]
    if cluster.sharded:
        lines += ["  qkv split hello", "  qkv ranges"]
    lines.append("")
    lines.append("Ctrl-C stops every node; 'qkv up' on the same --data-dir brings them back.")
    print("\n".join(lines), flush=True)


def _watch(cluster: LocalCluster) -> None:
    """Wait for Ctrl-C; meanwhile say when a node exits (the others go on)."""
    reported: set[int] = set()
    while True:
        for node in cluster.nodes.values():
            if node.id not in reported and not node.alive:
                reported.add(node.id)
                print(f"qkv: {node.describe_exit()}", file=sys.stderr, flush=True)
        time.sleep(0.5)


def register(sub: Any) -> None:
    """Add ``up`` and ``server`` to ``sub``."""
    p: ArgumentParser = sub.add_parser(
        "up",
        help="run a local cluster in the foreground until Ctrl-C",
        description="Start a cluster of node processes on this machine (loopback), print "
        "how to reach it, and run until Ctrl-C or SIGTERM, which stops every node. The "
        "data stays in --data-dir: 'qkv up' on it again brings the same cluster back.",
    )
    p.add_argument(
        "--nodes", type=int, help="how many nodes (default 3; an existing cluster: its own)"
    )
    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"where the cluster lives (default ./{DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--base-port",
        type=count,
        metavar="PORT",
        help=f"node i listens on PORT+i-1 (default {DEFAULT_BASE_PORT}; 0: any free ports; "
        "an existing cluster keeps its ports)",
    )
    p.add_argument(
        "--http-base-port",
        type=count,
        metavar="PORT",
        help="node i serves /health and /status on PORT+i-1 (default: base port + 1000)",
    )
    p.add_argument(
        "--sharded",
        action="store_true",
        help="found a sharded cluster: a meta range and ranges of keys that split, each "
        "its own Raft group (decided when the cluster is founded; a data dir that holds "
        "one comes back sharded without it)",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up if the nodes are not healthy by then (default 30)",
    )
    p.set_defaults(func=cmd_up)
    sub.add_parser(
        "server",
        help="run one node (qkv server --help for its options)",
        add_help=False,  # main() hands every argument after "server" to the server
    )
