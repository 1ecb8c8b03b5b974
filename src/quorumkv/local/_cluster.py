"""``LocalCluster``: a supervisor of real node processes on one machine.

Theory of operation
-------------------
``start`` makes (or finds) the cluster's directory, takes a lock on it, reads or writes
``cluster.json`` (``_spec``), launches ``python -m quorumkv.server`` once per node with
its output appended to ``node-<id>.log``, and polls every node's ``/health`` until all
say 200. A node that exits meanwhile, or a deadline that passes, stops everything that
was started and raises ``ServerError`` quoting the node's log.

Layout of a data directory::

    cluster.json      token, ports and ids (see _spec)
    .lock             held (flock) while a supervisor runs the cluster
    node-1/           node 1's data directory (--data-dir)
    node-1.log        node 1's stdout and stderr, every run appended

The supervisor only signals pids it spawned itself, waits for every one of them (no
zombies), and registers an ``atexit`` hook so that a test run that crashes does not
leave nodes behind. It speaks to nodes over HTTP (health, status) and, for membership,
through ``quorumkv.client``; it never imports the server, which runs in its own process.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import quorumkv
from quorumkv.client import Client
from quorumkv.errors import ServerError, UnavailableError
from quorumkv.local._process import NodeProcess
from quorumkv.local._spec import (
    SPEC_FILE,
    ClusterSpec,
    NodeSpec,
    new_spec,
    read_spec,
    write_spec,
)

_LOCK_FILE = ".lock"
_LEFTOVER = re.compile(r"\.lock|node-\d+\.log")
"""What may be in a directory that holds no cluster: the lock, logs of a failed start."""
_POLL = 0.05
"""Seconds between polls of a condition that has a deadline."""


class LocalCluster:
    """A Raft cluster of ``nodes`` real node processes on ``host`` (loopback by default).

    ``nodes`` defaults to 3 for a new cluster; for a ``data_dir`` that already holds a
    cluster (its ``cluster.json``) it is that cluster's, and a different explicit number
    is an error. ``data_dir=None`` uses a temporary directory that ``stop`` removes.
    ``base_port=None`` lets the kernel pick free ports; ``base_port=P`` puts node ``i`` on
    ``P + i - 1`` and its HTTP server on ``http_base_port + i - 1`` (default ``P + 1000``).
    A reused directory keeps its ports and token. ``sharded=True`` founds a sharded
    cluster (``--sharded``: a meta range and ranges of keys, each range its own Raft
    group); it is recorded in ``cluster.json``, so ``sharded=None`` (the default) brings
    a reused directory back as it was founded, and an explicit value that disagrees is
    an error. ``extra_args`` are appended to every node's command line; ``env`` adds to
    (or overrides) the inherited environment.

    ``with LocalCluster() as c:`` starts it (if not started) and stops it on exit.
    Not thread-safe: drive it from one thread.
    """

    def __init__(
        self,
        nodes: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        base_port: int | None = None,
        http_base_port: int | None = None,
        tick_ms: int = 50,
        election_ticks: int = 10,
        snapshot_entries: int | None = None,
        sharded: bool | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        if nodes is not None and nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        if http_base_port is not None and base_port is None:
            raise ValueError("http_base_port needs base_port")
        self._want_nodes = nodes
        self._data_dir_arg = None if data_dir is None else Path(data_dir)
        self.host = host
        self._base_port = base_port
        self._http_base_port = http_base_port
        self._tick_ms = tick_ms
        self._election_ticks = election_ticks
        self._snapshot_entries = snapshot_entries
        self._sharded_arg = sharded
        self._extra_args = tuple(extra_args)
        self._env = dict(env or {})
        self.stop_timeout = stop_timeout
        self._dir: Path | None = None
        self._temp = False
        self._lock: IO[bytes] | None = None
        self._spec: ClusterSpec | None = None
        self.created = False
        """Whether ``start`` made a new cluster (False: it brought an existing one back)."""
        self.nodes: dict[int, NodeProcess] = {}
        """Every node of the cluster by id, running or not."""
        self._atexit_registered = False

    # -- what it is ------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The cluster's directory (``cluster.json``, node data, logs)."""
        if self._dir is None:
            raise RuntimeError("the cluster has not been started")
        return self._dir

    @property
    def sharded(self) -> bool:
        """A sharded cluster (``qkv server --sharded``: a meta range and ranges of keys),
        as its ``cluster.json`` records once started, else as asked."""
        spec = self._spec
        if spec is not None and spec.sharded is not None:
            return spec.sharded
        return bool(self._sharded_arg)

    @property
    def token(self) -> str:
        return self._require_spec().token

    @property
    def endpoints(self) -> list[str]:
        """Every node's client address, ``host:port``, in id order."""
        return [n.addr for n in self._require_spec().nodes]

    @property
    def http_urls(self) -> list[str]:
        """Every node's HTTP base URL (``/health``, ``/status`` below it), in id order."""
        return [f"http://{n.http}" for n in self._require_spec().nodes]

    def __repr__(self) -> str:
        where = self._dir or "not started"
        return f"<LocalCluster {sorted(self.nodes)} at {where}>"

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Launch every node and wait until each one's ``/health`` says 200.

        Raises ``ServerError`` (with the failing node's log) if a node exits or the
        deadline passes; everything started is stopped again before it raises.
        """
        if self.nodes:
            raise RuntimeError("the cluster is already started; stop() it first")
        self.created = False
        try:
            spec = self._open_dir()
            self._spec = spec
            for node in spec.nodes:
                self.nodes[node.id] = self._node_process(node)
            self._register_atexit()
            for proc in self.nodes.values():
                self._spawn(proc)
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self._stop_processes(self.stop_timeout)
            if self.created and not self._temp:
                self._forget_failed_birth()
            self._release()
            raise

    def stop(self, timeout: float | None = None) -> dict[int, int]:
        """Stop every process this cluster started (SIGTERM, then SIGKILL after
        ``timeout`` s, default ``stop_timeout``) and wait for each. Releases the data
        directory, and removes it if it was a temporary one. Returns the exit code of
        every node that was running, by id. Safe to call twice."""
        codes = self._stop_processes(self.stop_timeout if timeout is None else timeout)
        self._release()
        return codes

    def _stop_processes(self, grace: float) -> dict[int, int]:
        running = [p for p in self.nodes.values() if p.alive]
        for p in running:
            p.begin_stop()
        deadline = time.monotonic() + grace
        codes: dict[int, int] = {}
        for p in self.nodes.values():  # also reaps nodes that died by themselves
            code = p.finish_stop(deadline - time.monotonic())
            if p in running and code is not None:
                codes[p.id] = code
        self.nodes = {}
        return codes

    def _forget_failed_birth(self) -> None:
        """A new cluster that never came up holds no data anyone was told about: remove
        its record and node directories, so that the next start may choose other ports.
        The logs stay, for the reader of the error."""
        spec, where = self._require_spec(), self.data_dir
        (where / SPEC_FILE).unlink(missing_ok=True)
        for node in spec.nodes:
            shutil.rmtree(where / f"node-{node.id}", ignore_errors=True)

    def _release(self) -> None:
        """Unlock the directory (removing it if temporary) and forget the cluster."""
        self._spec = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
        if self._temp and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir, self._temp = None, False
        if self._atexit_registered:
            atexit.unregister(self._stop_at_exit)
            self._atexit_registered = False

    def __enter__(self) -> LocalCluster:
        if not self.nodes:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- waiting ---------------------------------------------------------------------

    def wait_healthy(self, ids: Iterable[int] | None = None, timeout: float = 30.0) -> None:
        """Wait until each node of ``ids`` (default: every node not stopped on purpose)
        answers ``/health`` with 200. ``ServerError`` if one exits or time runs out."""
        if ids is None:
            ids = [i for i, p in self.nodes.items() if not p.expected_down]
        todo = {i: self._node(i) for i in ids}
        deadline = time.monotonic() + timeout
        why: dict[int, str] = {}
        while True:
            for i, proc in list(todo.items()):
                if not proc.alive:
                    raise ServerError(f"{proc.describe_exit()}\n" + _indent(proc.log_tail()))
                ok, reason = proc.health(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                if ok:
                    del todo[i]
                else:
                    why[i] = reason
            if not todo:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL)
        lines = [
            f"node {i}: {why.get(i, 'no answer')} (log: {p.log_path})" for i, p in todo.items()
        ]
        tails = [
            f"-- last lines of {p.log_path} --\n{_indent(p.log_tail())}" for p in todo.values()
        ]
        raise ServerError(
            f"nodes {_ids(todo)} not healthy after {timeout:g} s: "
            + "; ".join(lines)
            + "\n"
            + "\n".join(tails)
        )

    def leader(self, timeout: float = 10.0) -> int:
        """The id of the current leader, by the nodes' ``/status`` (the leader of the
        highest term seen). ``UnavailableError`` if none is elected in time."""
        deadline = time.monotonic() + timeout
        while True:
            best: tuple[int, int] | None = None
            for proc in self.nodes.values():
                if not proc.alive or proc.paused:
                    continue
                st = proc.status(timeout=0.5)
                if st and st.get("role") == "leader":
                    term, node = int(st.get("term", 0)), int(st.get("id", proc.id))
                    if best is None or term > best[0]:
                        best = (term, node)
            if best is not None:
                return best[1]
            if time.monotonic() >= deadline:
                raise UnavailableError(f"no leader elected within {timeout:g} s")
            time.sleep(_POLL)

    # -- faults and changes ----------------------------------------------------------

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node's process (by its pid). With SIGKILL, returns once
        the process is gone and reaped."""
        self._node(node_id).send_signal(sig)

    def pause(self, node_id: int) -> None:
        """SIGSTOP the node: it stops dead, sockets open, as in a long GC or swap stall."""
        self._node(node_id).send_signal(signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        """SIGCONT a paused node."""
        self._node(node_id).send_signal(signal.SIGCONT)

    def terminate(self, node_id: int, timeout: float | None = None) -> int | None:
        """Stop the node gracefully (SIGTERM; SIGKILL after ``timeout`` s, default
        ``stop_timeout``) and wait for it. Returns its exit code (None: never ran)."""
        grace = self.stop_timeout if timeout is None else timeout
        return self._node(node_id).terminate(grace)

    def restart(self, node_id: int, *, timeout: float = 30.0, wait: bool = True) -> None:
        """Stop the node if it runs, start it again on its data, and (``wait``) wait
        until it is healthy. Also brings back a node that was killed."""
        proc = self._node(node_id)
        if proc.alive:
            proc.terminate(self.stop_timeout)
        else:
            proc.finish_stop(0)  # reap a run that ended by itself
        self._spawn(proc)
        if wait:
            self.wait_healthy([node_id], timeout)

    def add_node(self) -> int:
        """Start one more node, empty, with ``--join`` and the peer list plus itself,
        and return its id. On an unsharded cluster it is not a member yet: call
        ``client.member_add(id, addr)`` (``self.nodes[id].addr``), then
        ``wait_healthy([id])``. On a sharded cluster it registers itself, receives a
        replica of the meta range, and the placement driver moves ranges to it. It is
        recorded in ``cluster.json``, so the next start of this directory runs it too."""
        spec = self._require_spec()
        node = spec.next_node(self.host)
        self._spec = spec.with_node(node)
        write_spec(self.data_dir, self._spec)
        proc = self.nodes[node.id] = self._node_process(node)
        self._spawn(proc)
        return node.id

    def remove_node(self, node_id: int, *, timeout: float | None = None) -> None:
        """Remove the node from the membership (through the client), stop its process,
        and forget it in ``cluster.json``. Its data directory and log stay. On a sharded
        cluster the node is drained first: this waits (``timeout``, default 300 s) until
        the placement driver has moved every replica and leadership off it, then marks
        it removed, and the node stops by itself (``ServerError`` if it cannot be
        emptied in time, e.g. too few other nodes for each range's replicas)."""
        proc = self._node(node_id)
        with self.client() as c:
            if self.sharded:
                deadline = time.monotonic() + (300.0 if timeout is None else timeout)
                self._drain(c, proc, deadline)
                c.set_node_state(node_id, "removed")
                # It stops by itself once none of its groups counts it any more.
                while proc.alive and time.monotonic() < deadline:
                    time.sleep(0.05)
            else:
                c.member_remove(node_id)
        proc.terminate(self.stop_timeout if timeout is None else timeout)
        del self.nodes[node_id]
        self._spec = self._require_spec().without_node(node_id)
        write_spec(self.data_dir, self._spec)

    @staticmethod
    def _drain(c: Client, proc: NodeProcess, deadline: float) -> None:
        """Drain ``proc``'s node until the directory lists nothing on it and the node
        (if it answers) hosts no range."""
        c.set_node_state(proc.id, "draining")
        while True:
            mine = [n for n in c.nodes() if n["id"] == proc.id]
            listed = mine[0]["replicas"] if mine else 0
            st = proc.status(timeout=1.0) if proc.alive else None
            hosted = len((st or {}).get("ranges") or [])
            if listed == 0 and hosted == 0:
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"node {proc.id} is still draining ({listed} replicas in the directory, "
                    f"{hosted} hosted); 'qkv node up {proc.id}' undoes the drain"
                )
            time.sleep(0.2)

    def client(self, **kwargs: Any) -> Client:
        """A sync ``quorumkv.Client`` on every node's endpoint; close it when done."""
        return Client(self.endpoints, **kwargs)

    # -- internals -------------------------------------------------------------------

    def _require_spec(self) -> ClusterSpec:
        if self._spec is None:
            raise RuntimeError("the cluster has not been started")
        return self._spec

    def _node(self, node_id: int) -> NodeProcess:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(
                f"no node {node_id} in this cluster (nodes: {_ids(self.nodes)})"
            ) from None

    def _open_dir(self) -> ClusterSpec:
        """Make or find the directory, lock it, and read or write its ``cluster.json``."""
        if self._data_dir_arg is None:
            self._dir, self._temp = Path(tempfile.mkdtemp(prefix="qkv-cluster-")), True
        else:
            self._dir = self._data_dir_arg.absolute()
            self._dir.mkdir(parents=True, exist_ok=True)
        spec = read_spec(self._dir)
        others = sorted(p.name for p in self._dir.iterdir() if not _LEFTOVER.fullmatch(p.name))
        if spec is None and others:
            raise ServerError(
                f"data dir {self._dir} is not empty and holds no cluster.json (it has "
                f"{', '.join(others[:5])}): use an empty or new directory"
            )
        self._lock = _lock_dir(self._dir)
        spec = read_spec(self._dir)  # again: another supervisor may have made it meanwhile
        if spec is not None:
            self._check_reuse(spec)
            self.created = False
            return spec
        spec = new_spec(
            self.host,
            self._want_nodes or 3,
            self._base_port,
            self._http_base_port,
            bool(self._sharded_arg),
        )
        write_spec(self._dir, spec)
        self.created = True
        return spec

    def _check_reuse(self, spec: ClusterSpec) -> None:
        """An existing cluster is brought back as recorded; refuse explicit settings
        that disagree with the record rather than silently ignoring them."""
        where = f"data dir {self._dir} holds a cluster"
        asked = self._sharded_arg
        if asked is not None and spec.sharded is not None and asked != spec.sharded:
            kind = "a sharded cluster" if spec.sharded else "an unsharded cluster"
            raise ServerError(
                f"data dir {self._dir} holds {kind}: sharding is decided when a cluster is "
                f"founded; leave the sharded setting out to bring it back, or use another "
                f"data dir"
            )
        if self._want_nodes is not None and self._want_nodes != len(spec.nodes):
            raise ServerError(
                f"{where} of {len(spec.nodes)} nodes, not {self._want_nodes}: "
                f"leave the node count out to bring it back, or use another data dir"
            )
        if self._base_port is not None and (
            self._base_port != spec.base_port
            or (self._http_base_port is not None and self._http_base_port != spec.http_base_port)
        ):
            ports = ", ".join(f"{n.addr} (http {n.http})" for n in spec.nodes)
            raise ServerError(
                f"{where} on {ports}: leave the ports out to bring it back, or use another data dir"
            )

    def _node_process(self, node: NodeSpec) -> NodeProcess:
        return NodeProcess(
            node, self.data_dir / f"node-{node.id}", self.data_dir / f"node-{node.id}.log"
        )

    def _argv(self, proc: NodeProcess) -> list[str]:
        spec = self._require_spec()
        argv = [
            sys.executable, "-m", "quorumkv.server",
            "--id", str(proc.id),
            "--data-dir", str(proc.data_dir),
            "--listen", proc.addr,
            "--http", proc.http,
            "--peers", spec.peers_arg(proc.spec),
            "--cluster-token", spec.token,
            "--tick-ms", str(self._tick_ms),
            "--election-ticks", str(self._election_ticks),
        ]  # fmt: skip
        if self._snapshot_entries is not None:
            argv += ["--snapshot-entries", str(self._snapshot_entries)]
        if proc.spec.join:
            argv.append("--join")
        if self.sharded:
            argv.append("--sharded")
        return argv + list(self._extra_args)

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The nodes run the very quorumkv this process imported, installed or not.
        src = str(Path(quorumkv.__file__).resolve().parent.parent)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = src if not path else f"{src}{os.pathsep}{path}"
        env["PYTHONUNBUFFERED"] = "1"  # the log shows what a node said before it died
        env.update(self._env)
        return env

    def _spawn(self, proc: NodeProcess) -> None:
        proc.spawn(self._argv(proc), self._child_env())

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(timeout=min(self.stop_timeout, 5.0))


def _lock_dir(path: Path) -> IO[bytes]:
    """Hold an exclusive flock on ``path/.lock``; ``ServerError`` if another holds it."""
    f = open(path / _LOCK_FILE, "a+b")  # noqa: SIM115 -- held until stop()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().decode("ascii", "replace").strip() or "another process"
        f.close()
        raise ServerError(
            f"data dir {path} is in use by {holder}: stop that cluster first, "
            f"or use another data dir"
        ) from None
    except BaseException:
        f.close()
        raise
    f.truncate(0)
    f.write(f"pid {os.getpid()}\n".encode())
    f.flush()
    return f


def _ids(items: Iterable[int]) -> str:
    return ", ".join(str(i) for i in sorted(items))


def _indent(lines: list[str]) -> str:
    return "\n".join(f"    {line}" for line in lines) if lines else "    (the log is empty)"
