"""``qkv server``: run one node until SIGTERM or SIGINT, then stop it gracefully.

Owns the process: logging set-up, the event loop (uvloop when installed), signal
handlers, the HTTP endpoint, and the exit status. Start-up errors (bad flags, an address
in use, a data dir of another cluster, a damaged WAL) print one line and exit non-zero;
nothing here decides anything about Raft or data.

Exit status: 0 after a graceful stop, 2 for a bad configuration, 1 when the node could
not start, 3 when its storage failed while running (restart it once the disk is fixed:
it recovers from what was durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

try:
    from uvloop import run as _run
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    _run = asyncio.run  # type: ignore[assignment]

from quorumkv.errors import QuorumKVError, ServerError
from quorumkv.net import parse_address

from ._config import ServerConfig, parse_config
from ._http import serve_http
from ._metrics import Metrics
from ._node import Node

log = logging.getLogger("quorumkv.server")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except ServerError as e:
        print(f"qkv server: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format=f"%(asctime)s node{cfg.node_id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _run(_serve(cfg))
    except QuorumKVError as e:
        print(f"qkv server: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C during the stop
        return 130


GC_THRESHOLD = (3000, 10, 10)
"""Python's cyclic collector, tuned for a node (``_collector``). Under puts at
concurrency 256 on a 100k-key store, the default (700, 10, 10) ran about 30 passes a
second of about 1 ms each, 6-7% of each node's CPU: most young objects (log entries,
requests in flight) are still alive when a pass looks at them. At 3000 it ran about 4
passes a second of 2-3 ms, about 4% (measured with ``quorumkv_gc_seconds``)."""


@contextlib.contextmanager
def _collector(metrics: Metrics) -> Iterator[None]:
    """While the node runs: what start-up loaded (the key index of a big store) is moved
    out of the collector's sight (``gc.freeze``), young objects are collected less often
    (``GC_THRESHOLD``), and every pass is timed into ``quorumkv_gc_seconds``."""
    started = 0.0

    def timed(phase: str, _info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            metrics.gc_seconds.observe(time.perf_counter() - started)

    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    callback: Callable[[str, dict[str, Any]], None] = timed
    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*old)
        gc.unfreeze()


async def _serve(cfg: ServerConfig) -> int:
    node = Node(cfg)
    http = None
    try:
        await node.start()
        if cfg.http:
            host, port = parse_address(cfg.http)
            try:
                http = await serve_http(host, port, node)
            except OSError as e:
                raise ServerError(f"cannot listen on {cfg.http}: {e.strerror or e}") from None
    except BaseException:
        await node.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "node %d ready: cluster %016x, listening on %s%s",
        cfg.node_id,
        node.cluster,
        cfg.listen,
        f", http on {cfg.http}" if cfg.http else "",
    )
    with _collector(node.metrics):
        while not stop.is_set() and node.fatal is None and node.retired is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    code = 0
    if node.fatal is not None:
        code = 3
        log.error("node %d exits: %s", cfg.node_id, node.fatal)
    elif node.retired is not None:
        log.info("node %d stopping: %s", cfg.node_id, node.retired)
    else:
        log.info("node %d stopping", cfg.node_id)
    await node.stop()
    if http is not None:
        http.close()
    log.info("node %d stopped", cfg.node_id)
    return code
