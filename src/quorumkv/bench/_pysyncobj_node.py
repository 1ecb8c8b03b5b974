"""One PySyncObj node for the benchmark, with its load generator inside it.

``python -m quorumkv.bench._pysyncobj_node --self H:P --partners H:P,H:P --data-dir D``
runs a ``SyncObj`` holding a dict with ``@replicated`` ``set`` and ``get`` methods,
and answers commands on stdin, one JSON object a line, with one JSON line on stdout
each (its own logging goes to stderr):

=========  ===============================================================
status     leader, state, term, log length, applied and commit index, keys
load       ``concurrency`` callers of ``set`` (or ``get``) for ``warmup`` +
           ``duration`` s; ops, errors, p50/p99, the node's CPU seconds
           (an ``open`` and a ``close`` event line come first, as the
           window opens and closes)
fill       ``set`` every key ``0..keys-1`` once, ``concurrency`` at a time
probe      ``set`` one key until a call succeeds (``attempt`` s each, until
           ``deadline`` s): the ``time.monotonic()`` of the first success
=========  ===============================================================

Why the load runs here: PySyncObj has no client protocol; a program reaches its state
only by calling its methods in-process. A caller is a chain of callbacks: each call's
callback (run on PySyncObj's tick thread) records the latency and makes the next call,
so ``concurrency`` calls are always in flight. A ``get`` is a ``@replicated`` method
too: a read that goes through the log (appended, replicated to a majority, applied),
which is linearizable; a plain local read on the leader is not, and is not measured.

Configuration (``node_conf``): a file journal (``journalFile``) and a full dump file
(``fullDumpFile``) in the data dir, and log compaction after ``--compaction-entries``
(100,000, as etcd's default ``--snapshot-count``) entries, dumped by a forked child
(``useFork``, the default), so the node never stalls serializing its state; with the
default 5,000 entries it forks and gzips its whole state every fraction of a second
under load, which on a small machine takes a core from everything else. Timing as
quorumkv's: heartbeats every 50 ms, elections after 0.5-1.0 s. PySyncObj's journal is
an mmap'ed file that is never fsynced.

What this module must never do: import ``pysyncobj`` at import time (the parser is
tested without it), or print anything but answers on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quorumkv.bench._load import KEY_FORMAT, emit, percentile

COMPACTION_ENTRIES = 100_000
HEARTBEAT_S = 0.05
ELECTION_MIN_S = 0.5
ELECTION_MAX_S = 1.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m quorumkv.bench._pysyncobj_node",
        description="One PySyncObj node of the benchmark; commands on stdin, JSON lines.",
    )
    p.add_argument("--self", dest="self_addr", required=True, metavar="HOST:PORT")
    p.add_argument("--partners", required=True, metavar="HOST:PORT,...")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--compaction-entries", type=int, default=COMPACTION_ENTRIES)
    p.add_argument("--compaction-seconds", type=float, default=3600.0)
    p.add_argument("--batch", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_S, metavar="SECONDS")
    p.add_argument("--election-min", type=float, default=ELECTION_MIN_S, metavar="SECONDS")
    p.add_argument("--election-max", type=float, default=ELECTION_MAX_S, metavar="SECONDS")
    return p


def node_argv(
    self_addr: str,
    partners: list[str],
    data_dir: Path,
    compaction_entries: int = COMPACTION_ENTRIES,
    batch: bool = True,
) -> list[str]:
    """The command line (after ``python``) that starts one node."""
    return [
        "-m", "quorumkv.bench._pysyncobj_node",
        "--self", self_addr,
        "--partners", ",".join(partners),
        "--data-dir", str(data_dir),
        "--compaction-entries", str(compaction_entries),
        "--batch" if batch else "--no-batch",
    ]  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.partner_list = [a.strip() for a in args.partners.split(",") if a.strip()]
    if not args.partner_list:
        raise SystemExit("--partners names no partner")
    if args.self_addr in args.partner_list:
        raise SystemExit("--partners must not include --self")
    if not 3 * args.heartbeat < args.election_min < args.election_max:
        raise SystemExit("need 3 * --heartbeat < --election-min < --election-max")
    if args.compaction_entries < 2:
        raise SystemExit("--compaction-entries must be at least 2")
    return args


def node_conf(args: argparse.Namespace) -> dict[str, Any]:
    """The ``SyncObjConf`` keyword arguments for these arguments."""
    return {
        "journalFile": str(args.data_dir / "journal.bin"),
        "fullDumpFile": str(args.data_dir / "dump.bin"),
        "logCompactionMinEntries": args.compaction_entries,
        "logCompactionMinTime": args.compaction_seconds,
        "logCompactionSplit": False,
        "useFork": True,
        "appendEntriesPeriod": args.heartbeat,
        "raftMinTimeout": args.election_min,
        "raftMaxTimeout": args.election_max,
        "commandsWaitLeader": True,
        "appendEntriesUseBatch": args.batch,
        "dynamicMembershipChange": False,
    }


class _Callers:
    """``concurrency`` chains of callbacks calling ``call(key, callback=...)``."""

    def __init__(self, call: Callable[..., Any], concurrency: int, keys: int) -> None:
        self._call = call
        self._keys = keys
        self._rng = random.Random(os.getpid())
        self.stopping = False
        self.window_open = False
        self.outstanding = 0
        self.done = 0
        self.errors = 0
        self.first_error = ""
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        for _ in range(concurrency):
            self._issue()

    def _issue(self) -> None:
        if self.stopping:
            return
        with self._lock:
            self.outstanding += 1
        k = KEY_FORMAT % self._rng.randrange(self._keys)
        t0 = time.perf_counter()
        self._call(k, callback=lambda _res, err: self._done(t0, err))

    def _done(self, t0: float, err: int) -> None:
        latency = time.perf_counter() - t0
        with self._lock:
            self.outstanding -= 1
        if err == 0:
            if self.window_open:
                self.done += 1
                self.latencies.append(latency)
        else:
            self.first_error = self.first_error or f"PySyncObj FAIL_REASON {err}"
            if self.window_open:
                self.errors += 1
        self._issue()

    def drain(self, timeout: float) -> None:
        self.stopping = True
        end = time.monotonic() + timeout
        while self.outstanding > 0 and time.monotonic() < end:
            time.sleep(0.01)


class Node:
    """The command handlers around one ``SyncObj`` (``store``)."""

    def __init__(
        self, store: Any, emit: Callable[[str], None] = emit, value_size: int = 100
    ) -> None:
        self.store = store
        self.emit = emit
        self.value = os.urandom(value_size)

    def status(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        for _ in range(10):  # read from another thread: retry a torn read
            try:
                st = self.store.getStatus()
                break
            except RuntimeError:
                time.sleep(0.01)
        leader = st.get("leader")
        return {
            "self": str(st["self"]),
            "leader": None if leader is None else str(leader),
            "state": int(st["state"]),
            "term": int(st["raft_term"]),
            "log_len": int(st["log_len"]),
            "applied": int(st["last_applied"]),
            "commit": int(st["commit_idx"]),
            "has_quorum": bool(st["has_quorum"]),
            "keys": self.store.size(),
        }

    def load(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.value = os.urandom(int(cmd.get("value_size", 100)))
        value = self.value
        if cmd["op"] == "put":

            def call(k: bytes, callback: Callable[..., None]) -> None:
                self.store.set(k, value, callback=callback)
        else:
            call = self.store.get
        callers = _Callers(call, int(cmd["concurrency"]), int(cmd["keys"]))
        time.sleep(float(cmd["warmup"]))
        self.emit("open")
        cpu0, t0 = time.process_time(), time.perf_counter()
        callers.window_open = True
        time.sleep(float(cmd["duration"]))
        callers.window_open = False
        cpu1, t1 = time.process_time(), time.perf_counter()
        self.emit("close")
        callers.drain(30.0)
        lat = sorted(callers.latencies)
        return {
            "ops": callers.done,
            "seconds": t1 - t0,
            "errors": callers.errors,
            "p50_ms": 1000 * percentile(lat, 50),
            "p99_ms": 1000 * percentile(lat, 99),
            "cpu_s": None,
            "first_error": callers.first_error,
            "extra": {"node_cpu_s": cpu1 - cpu0},
        }

    def fill(self, cmd: dict[str, Any]) -> dict[str, Any]:
        keys, value = int(cmd["keys"]), os.urandom(int(cmd.get("value_size", 100)))
        todo = list(range(keys - 1, -1, -1))
        lock = threading.Lock()
        finished = threading.Event()
        state = {"done": 0, "errors": 0}

        def issue(i: int) -> None:
            self.store.set(KEY_FORMAT % i, value, callback=lambda _r, err: done(i, err))

        def done(i: int, err: int) -> None:
            with lock:
                if err != 0:
                    state["errors"] += 1
                    nxt: int | None = i  # again
                else:
                    state["done"] += 1
                    nxt = todo.pop() if todo else None
                if state["done"] == keys:
                    finished.set()
            if nxt is not None:
                issue(nxt)

        t0 = time.perf_counter()
        with lock:
            first = [todo.pop() for _ in range(min(int(cmd["concurrency"]), len(todo)))]
        for i in first:
            issue(i)
        if not finished.wait(float(cmd.get("timeout", 3600))):
            raise RuntimeError(f"fill: {state['done']} of {keys} keys written in time")
        return {"ops": keys, "seconds": time.perf_counter() - t0, "errors": state["errors"]}

    def probe(self, cmd: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + float(cmd["deadline"])
        attempt, tries, last = float(cmd["attempt"]), 0, -1
        while time.monotonic() < deadline:
            tries += 1
            answered = threading.Event()
            errs: list[int] = []

            def cb(
                _res: Any, err: int, errs: list[int] = errs, ev: threading.Event = answered
            ) -> None:
                errs.append(err)
                ev.set()

            self.store.set(b"bench/failover", self.value, callback=cb)
            if answered.wait(attempt) and errs[0] == 0:
                return {"ok_at": time.monotonic(), "tries": tries}
            last = errs[0] if errs else -1
            if errs:
                time.sleep(0.02)
        raise RuntimeError(f"probe: no write succeeded in time (last FAIL_REASON {last})")

    def handle(self, line: str) -> dict[str, Any]:
        cmd = json.loads(line)
        what = cmd.get("cmd")
        handler = {
            "status": self.status,
            "load": self.load,
            "fill": self.fill,
            "probe": self.probe,
        }.get(what)
        if handler is None:
            return {"error": f"unknown command {what!r}"}
        try:
            return handler(cmd)
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}


def make_store(args: argparse.Namespace) -> Any:
    """The ``SyncObj`` of this node (imports PySyncObj)."""
    from pysyncobj import SyncObj, SyncObjConf, replicated  # noqa: PLC0415 -- optional

    class Store(SyncObj):  # type: ignore[misc]
        def __init__(self, self_addr: str, partners: list[str], conf: Any) -> None:
            super().__init__(self_addr, partners, conf)
            self.__data: dict[bytes, bytes] = {}

        @replicated  # type: ignore[untyped-decorator]
        def set(self, key: bytes, value: bytes) -> None:
            self.__data[key] = value

        @replicated  # type: ignore[untyped-decorator]
        def get(self, key: bytes) -> bytes | None:
            return self.__data.get(key)

        def size(self) -> int:
            return len(self.__data)

    return Store(args.self_addr, args.partner_list, SyncObjConf(**node_conf(args)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    node = Node(make_store(args))
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip():
            out.write(json.dumps(node.handle(line)) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
