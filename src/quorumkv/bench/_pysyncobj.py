"""A 3-node PySyncObj cluster on loopback, one ``_pysyncobj_node`` process per node.

Each node keeps its journal and dump file in its own directory under the run's temp
dir. The bench talks to a node through its stdin and stdout (one JSON line each way;
``call``); a thread per node reads its answers, so a call can time out. The leader is
the node whose status names itself. Load runs inside the leader (see
``_pysyncobj_node``: PySyncObj has no client protocol), and the failover probe inside
a surviving node.

What this module must never do: signal a process it did not spawn, or leave a node
running after ``stop``.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

from quorumkv.bench._load import child_env
from quorumkv.bench._procs import Proc
from quorumkv.bench._pysyncobj_node import COMPACTION_ENTRIES, node_argv
from quorumkv.local import free_ports


def pysyncobj_version() -> str | None:
    try:
        return version("pysyncobj")
    except PackageNotFoundError:
        return None


class PySyncObjCluster:
    """``nodes`` PySyncObj nodes on ``host`` with their data under ``root``."""

    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        host: str = "127.0.0.1",
        compaction_entries: int = COMPACTION_ENTRIES,
        batch: bool = True,
    ) -> None:
        self.root = root
        self.batch = batch
        self.host = host
        self.compaction_entries = compaction_entries
        self.addrs = [f"{host}:{p}" for p in free_ports(host, nodes)]
        self.names = [f"pso{i + 1}" for i in range(nodes)]
        self.procs = {n: Proc(n, root / f"{n}.log") for n in self.names}
        self._answers: dict[str, queue.Queue[str | None]] = {}

    def _argv(self, i: int) -> list[str]:
        others = [a for j, a in enumerate(self.addrs) if j != i]
        argv = node_argv(
            self.addrs[i], others, self.root / self.names[i], self.compaction_entries, self.batch
        )
        return [sys.executable, *argv]

    def _spawn(self, name: str) -> None:
        proc = self.procs[name]
        proc.spawn(self._argv(self.names.index(name)), child_env(), pipes=True)
        answers: queue.Queue[str | None] = queue.Queue()
        self._answers[name] = answers
        out = proc.popen.stdout
        assert out is not None
        threading.Thread(target=_read_lines, args=(out, answers), daemon=True).start()
        ready = self._answer(name, 30.0)
        if not ready.get("ready"):
            raise RuntimeError(f"{name} did not start: {ready}")

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for name in self.names:
                self._spawn(name)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    def restart(self, name: str, timeout: float = 60.0) -> None:
        self.procs[name].stop()
        self._spawn(name)
        self.wait_healthy(timeout)

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items() if p.alive}

    def call(
        self,
        name: str,
        cmd: dict[str, Any],
        timeout: float = 30.0,
        on_event: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Send one command to node ``name``; its answer (``on_event`` sees the event
        lines before it). RuntimeError on an error or after ``timeout`` s."""
        stdin = self.procs[name].popen.stdin
        assert stdin is not None
        stdin.write(json.dumps(cmd).encode() + b"\n")
        stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            answer = self._answer(name, max(0.0, deadline - time.monotonic()))
            if "event" not in answer:
                break
            if on_event is not None:
                on_event(answer["event"])
        if "error" in answer:
            raise RuntimeError(f"{name}: {answer['error']}")
        return answer

    def _answer(self, name: str, timeout: float) -> dict[str, Any]:
        try:
            line = self._answers[name].get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{name} did not answer within {timeout:g} s") from None
        if line is None:
            raise RuntimeError(f"{name} exited; log {self.procs[name].log_path}:\n"
                               f"{self.procs[name].log_tail()}")  # fmt: skip
        doc: dict[str, Any] = json.loads(line)
        return doc

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {n: self.call(n, {"cmd": "status"}) for n, p in self.procs.items() if p.alive}

    def leader(self, timeout: float = 10.0) -> str | None:
        """The node whose status says it leads, with a quorum (None: none in time)."""
        deadline = time.monotonic() + timeout
        while True:
            for name, st in self.statuses().items():
                if st["leader"] == st["self"] and st["has_quorum"]:
                    return name
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def require_leader(self) -> str:
        name = self.leader()
        if name is None:
            raise RuntimeError("no PySyncObj leader within 10 s")
        return name

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until a leader exists and every running node has applied its commit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sts = self.statuses()
            leaders = {st["leader"] for st in sts.values()}
            if (
                len(leaders) == 1
                and None not in leaders
                and all(st["applied"] >= st["commit"] for st in sts.values())
                and self.leader(0) is not None
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"PySyncObj not healthy after {timeout:g} s (logs in {self.root})")


def _read_lines(stream: IO[bytes], answers: queue.Queue[str | None]) -> None:
    for raw in stream:
        answers.put(raw.decode("utf-8", "replace"))
    answers.put(None)
