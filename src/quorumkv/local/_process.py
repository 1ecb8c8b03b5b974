"""One node process: spawn it, signal it, wait for it, read the tail of its log.

A ``NodeProcess`` owns at most one live OS process at a time and only ever signals the
pid it spawned (never a name or a group). Every process it spawns is waited for by
whoever stops it, so none is left a zombie. Output (stdout and stderr) is appended to
the node's log file; the offset where the current run began is kept so that an error
quotes this run's lines, not an earlier run's.

On Linux, a node started from the main thread also gets a parent-death signal
(``PR_SET_PDEATHSIG`` = SIGTERM): if the supervising process dies without running its
``atexit`` hooks (SIGKILL, a crash), its nodes stop by themselves instead of holding
their ports forever. (Not set from other threads: Linux sends it when the *thread*
that forked exits.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quorumkv.local import _http
from quorumkv.local._spec import NodeSpec

_PR_SET_PDEATHSIG = 1
_DEADLY = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


def pdeathsig_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when we die, or None."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return hook


class NodeProcess:
    """A node of a ``LocalCluster``: where it lives and, while it runs, its process.

    ``pid`` is the pid of the current (or last) run; ``alive`` says whether that process
    is still running (a paused one is alive). ``expected_down`` is set when the
    supervisor killed or stopped it on purpose, so health waits skip it.
    """

    def __init__(self, spec: NodeSpec, data_dir: Path, log_path: Path) -> None:
        self.spec = spec
        self.data_dir = data_dir
        self.log_path = log_path
        self.paused = False
        self.expected_down = True
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        state = "paused" if self.paused else "alive" if self.alive else "down"
        return f"<NodeProcess {self.id} {self.addr} pid={self.pid} {state}>"

    @property
    def id(self) -> int:
        return self.spec.id

    @property
    def addr(self) -> str:
        """``host:port`` for peers and clients."""
        return self.spec.addr

    @property
    def http(self) -> str:
        """``host:port`` of the HTTP status server."""
        return self.spec.http

    @property
    def http_url(self) -> str:
        return f"http://{self.spec.http}"

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code of the last run (negative: killed by that signal), or None."""
        return None if self._popen is None else self._popen.poll()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Start a run. The previous run, if any, must have been waited for."""
        if self.alive:
            raise RuntimeError(f"node {self.id} is already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # a Ctrl-C in the terminal reaches the supervisor only
                preexec_fn=pdeathsig_hook(),  # noqa: PLW1509 -- one ctypes call, no locks
            )
        self.paused = False
        self.expected_down = False

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to this run's pid if it is still running. SIGKILL also waits
        for the process, so it is gone (and reaped) when this returns."""
        if not self.alive:
            return
        assert self._popen is not None
        if sig in _DEADLY:
            self.expected_down = True
        self._popen.send_signal(sig)
        if sig == signal.SIGSTOP:
            self.paused = True
        elif sig == signal.SIGCONT:
            self.paused = False
        elif sig in _DEADLY and self.paused:
            self._popen.send_signal(signal.SIGCONT)  # let it act on the signal now
            self.paused = False
        if sig == signal.SIGKILL:
            self._popen.wait()

    def begin_stop(self) -> None:
        """SIGTERM (and SIGCONT if paused), without waiting."""
        self.send_signal(signal.SIGTERM)

    def finish_stop(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the exit that ``begin_stop`` asked for, then
        SIGKILL. Returns the exit code, or None if there was no process."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            self._popen.kill()
            return self._popen.wait()

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, SIGKILL if still running; the exit code."""
        self.begin_stop()
        return self.finish_stop(timeout)

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines this run wrote to its log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                start = max(self._log_offset, f.tell() - 64 * 1024)
                f.seek(start)
                data = f.read()
        except OSError:
            return []
        text = data.decode("utf-8", "replace")
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def describe_exit(self) -> str:
        """One line: how the last run ended and the last thing it said."""
        code = self.returncode
        how = f"was killed by {_signal_name(-code)}" if code and code < 0 else f"exited {code}"
        tail = self.log_tail(1)
        said = f": {tail[-1].strip()}" if tail else ""
        return f"node {self.id} {how}{said} (log: {self.log_path})"

    def health(self, timeout: float = 1.0) -> tuple[bool, str]:
        """``(healthy, reason)`` from the node's ``/health``."""
        return _http.node_health(self.http, timeout)

    def status(self, timeout: float = 1.0) -> dict[str, Any] | None:
        """The node's ``/status`` dict, or None if it does not answer."""
        return _http.node_status(self.http, timeout)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
