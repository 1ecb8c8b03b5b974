"""Child processes of the benchmark: spawn, signal by pid, wait, read memory.

``Proc`` is one OS process the bench started (an etcd member, a PySyncObj node), with
its output appended to a log file. It only ever signals the pid it spawned; stopping
is SIGTERM, then SIGKILL after a grace period, and always a wait, so nothing is left
running or unreaped. Children get a parent-death signal on Linux (as
``quorumkv.local`` nodes do), so a killed bench does not leave them holding ports.

Also here: ``rss_bytes`` (from ``/proc/<pid>/status``), ``CpuWindow`` (CPU of some
pids and of the whole machine over a window), ``dir_bytes`` (disk used),
``http_get`` (a small blocking GET for health and metrics).

What this module must never do: signal a process by name or group, or one it did not
spawn.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from quorumkv.local import pdeathsig_hook


class Proc:
    """One process the bench spawned: ``spawn``, ``kill``, ``stop``, ``pid``."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        pipes: bool = False,
    ) -> None:
        """Start the process; output to the log (with ``pipes``, stdin and stdout are
        pipes for a line protocol, and only stderr goes to the log)."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log if pipes else subprocess.STDOUT,
                env=None if env is None else dict(env),
                start_new_session=True,
                preexec_fn=pdeathsig_hook(),  # noqa: PLW1509 -- one ctypes call, no locks
            )

    def kill(self) -> None:
        """SIGKILL this pid and reap it."""
        if self.alive:
            self.popen.kill()
        if self._popen is not None:
            self._popen.wait()

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL; the exit code (None: never ran)."""
        if self._popen is None:
            return None
        if self.alive:
            self._popen.send_signal(signal.SIGTERM)
        try:
            code = self._popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            code = self._popen.wait()
        for f in (self._popen.stdin, self._popen.stdout):
            if f is not None:
                f.close()
        return code

    def log_tail(self, lines: int = 15) -> str:
        try:
            data = self.log_path.read_bytes()[-16384:]
        except OSError:
            return "(no log)"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds ``pid`` has used so far (``/proc/<pid>/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def host_cpu() -> tuple[float, float]:
    """``(busy, total)`` CPU seconds of every core of the machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user time
    ticks = os.sysconf("SC_CLK_TCK")
    return (total - idle) / ticks, total / ticks


class CpuWindow:
    """The CPU the given processes, and the whole machine, use between ``open`` and
    ``close``; ``result`` in CPU seconds (a process that died counts until it died)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: tuple[float, float, dict[str, float]] | None = None
        self._end: tuple[float, float, dict[str, float]] | None = None

    def _sample(self) -> tuple[float, float, dict[str, float]]:
        per = {}
        for name, pid in self.pids.items():
            try:
                per[name] = cpu_seconds(pid)
            except (OSError, ValueError):
                continue
        busy, _total = host_cpu()
        return time.monotonic(), busy, per

    def open(self) -> None:
        self._start = self._sample()

    def close(self) -> None:
        self._end = self._sample()

    def result(self) -> dict[str, float]:
        """``window_s``, ``nodes_cpu_s`` (summed), ``host_busy_s``; empty if incomplete."""
        if self._start is None or self._end is None:
            return {}
        (t0, b0, p0), (t1, b1, p1) = self._start, self._end
        nodes = sum(p1[n] - p0[n] for n in p0 if n in p1)
        return {"window_s": t1 - t0, "nodes_cpu_s": nodes, "host_busy_s": b1 - b0}


def dir_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """``(status, body)`` of a GET; status 0 if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return 0, ""
