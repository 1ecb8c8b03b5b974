"""Small parts of ``quorumkv.bench`` that need no cluster: CPU windows, window hooks,
and the PySyncObj node's handlers over a fake store."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from quorumkv.bench._load import Hooks
from quorumkv.bench._procs import CpuWindow, cpu_seconds, host_cpu, rss_bytes
from quorumkv.bench._pysyncobj_node import Node


def test_cpu_window_sees_this_process_work() -> None:
    w = CpuWindow({"me": os.getpid()})
    assert w.result() == {}
    w.open()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    w.close()
    r = w.result()
    assert r["window_s"] > 0
    assert 0.05 < r["nodes_cpu_s"] <= r["window_s"] + 0.05
    assert r["host_busy_s"] >= r["nodes_cpu_s"] - 0.05


def test_proc_readers() -> None:
    busy, total = host_cpu()
    assert 0 < busy < total
    assert cpu_seconds(os.getpid()) > 0
    assert rss_bytes(os.getpid()) > 1 << 20


def test_hooks_dispatch_window_events() -> None:
    seen: list[str] = []
    hooks = Hooks(open=lambda: seen.append("open"), close=lambda: seen.append("close"))
    for event in ("open", "close", "unknown"):
        hooks.event(event)
    Hooks().event("open")  # no hook: nothing happens
    assert seen == ["open", "close"]


class FakeStore:
    """Answers every replicated call on a thread after ``delay`` s; fails every
    ``fail_every``-th call with a FAIL_REASON."""

    def __init__(self, delay: float = 0.002, fail_every: int = 0) -> None:
        self.delay = delay
        self.fail_every = fail_every
        self.calls = 0
        self.data: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def _answer(self, callback: Callable[[Any, int], None], result: Any) -> None:
        with self._lock:
            self.calls += 1
            err = 1 if self.fail_every and self.calls % self.fail_every == 0 else 0
        threading.Timer(self.delay, callback, (result, err)).start()

    def set(self, key: bytes, value: bytes, callback: Callable[[Any, int], None]) -> None:
        self.data[key] = value
        self._answer(callback, None)

    def get(self, key: bytes, callback: Callable[[Any, int], None]) -> None:
        self._answer(callback, self.data.get(key))

    def size(self) -> int:
        return len(self.data)


def test_node_load_counts_completions_in_the_window_and_emits_events() -> None:
    events: list[str] = []
    node = Node(FakeStore(fail_every=10), emit=events.append)
    cmd = {"op": "put", "concurrency": 4, "keys": 50, "warmup": 0.05, "duration": 0.3}
    r = node.load(cmd)
    assert events == ["open", "close"]
    assert r["ops"] > 10 and r["errors"] > 0
    assert r["first_error"] == "PySyncObj FAIL_REASON 1"
    assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert r["cpu_s"] is None and r["extra"]["node_cpu_s"] >= 0
    json.dumps(r)


def test_node_fill_writes_every_key_once_despite_failures() -> None:
    store = FakeStore(delay=0.0005, fail_every=7)
    r = Node(store, emit=lambda _e: None).fill({"keys": 300, "concurrency": 8})
    assert r["ops"] == 300 and r["errors"] > 0
    assert store.size() == 300


def test_node_handle_answers_unknown_commands_and_errors() -> None:
    node = Node(FakeStore(), emit=lambda _e: None)
    assert node.handle('{"cmd": "nope"}') == {"error": "unknown command 'nope'"}
    assert "KeyError" in node.handle('{"cmd": "load"}')["error"]
