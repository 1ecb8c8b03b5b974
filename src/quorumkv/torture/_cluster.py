"""``TortureCluster``: real node processes placed on a ``Network``, for the nemesis.

Theory of operation
-------------------
It composes ``quorumkv.local``'s pieces rather than ``LocalCluster`` itself, because a
torture run needs what a laptop cluster does not: a different host per node (one
network namespace each), a command prefix (``ip netns exec``), a tmpfs per node for
disk faults, and node ids that are never reused when membership changes under faults.
So it keeps a ``ClusterSpec`` (token, founding peers, addresses) and one
``NodeProcess`` per node, which spawns the node, signals only its own pid and reaps
it, and appends its output to ``node-<id>.log`` in the working directory.

Membership follows the cluster, not the supervisor's wishes: after every change,
whatever its outcome (a change whose answer was lost may or may not have happened),
``reconcile`` asks the cluster for its members, stops the processes of nodes that are
no longer members, and forgets them. ``endpoints`` (read by the load generator's thread,
under a lock) lists every node the supervisor runs.

``sharded=True`` starts the nodes with ``--sharded --split-keys N``: a meta range
(group 1, whose role, term and indexes are what a node's status shows at its top) and
ranges of keys, each its own Raft group. There ``leader`` is the meta range's leader;
``targets`` lists the groups a ``-leader`` fault or a transfer may act on
(``_sharded.leader_targets``); ``split`` and ``transfer_range`` are the operator's
requests of the client. A node joins by itself (``--join``: it registers in the
directory, and ranges then move to it); no node is ever removed, since a sharded
cluster cannot remove one yet, so ``reconcile`` stops nothing there.

``converge`` is the end-of-run check: every member process runs and says healthy, they
agree on one leader and term, the leader's member list is exactly the nodes that run,
and every node has applied the leader's commit index (sharded: all of that for the
meta range, and ``_sharded.check_ranges`` for the ranges of keys: the directory tiles
the keyspace, each range has one leader its replicas agree on, its replicas and Raft
group are what the directory says, and every replica has applied its commit index). It
only watches: it never restarts, splits, moves or repairs anything.

This module must never signal a pid it did not spawn, leave a process running after
``stop``, or import the server.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import quorumkv
from quorumkv.client import Client
from quorumkv.errors import ClientError, QuorumKVError, ServerError
from quorumkv.local import ClusterSpec, NodeProcess, NodeSpec
from quorumkv.torture._disk import Tmpfs
from quorumkv.torture._network import Network
from quorumkv.torture._sharded import (
    META_RANGE,
    Target,
    check_ranges,
    describe_ranges,
    leader_targets,
    replicas,
    show_key,
)

_POLL = 0.05


class TortureCluster:
    """``nodes`` founding nodes on ``network``, working in ``workdir``; a tmpfs of
    ``disk_bytes`` per node when given, mounted on the node's data directory or on
    its part ``disk_at`` (``raft/wal``, ``kv``) (see the module docstring). ``sharded``:
    found a sharded cluster whose ranges split at ``split_keys`` keys; ``keys`` are the
    load's keys (what ``targets`` and ``converge`` report on). Drive it from one thread,
    except ``endpoints`` which any thread may call."""

    def __init__(
        self,
        workdir: Path,
        nodes: int,
        network: Network,
        *,
        disk_bytes: int | None = None,
        disk_at: str = "",
        tick_ms: int = 50,
        election_ticks: int = 10,
        extra_args: Iterable[str] = (),
        sharded: bool = False,
        split_keys: int | None = None,
        keys: Sequence[bytes] = (),
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        if split_keys is not None and (not sharded or split_keys < 1):
            raise ValueError("split_keys is a positive threshold of sharded clusters")
        self.sharded = sharded
        self.split_keys = split_keys
        self.keys = list(keys)
        self.workdir = workdir
        self.founders = nodes
        self.network = network
        self.disk_bytes = disk_bytes
        self.disk_at = disk_at
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self._extra = list(extra_args)
        self._log = log
        self.procs: dict[int, NodeProcess] = {}
        """Every node process the supervisor runs (or restarts), by id."""
        self.disks: dict[int, Tmpfs] = {}
        self._retired: list[NodeProcess] = []
        self._spec: ClusterSpec | None = None
        self._next_id = nodes + 1
        self._lock = threading.Lock()
        self._endpoints: list[str] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Create and start every founding node; wait until all are healthy."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        specs = [self._place(i, join=False) for i in range(1, self.founders + 1)]
        peers = ",".join(f"{n.id}={n.addr}" for n in specs)
        token = f"qkv-torture-{secrets.token_hex(8)}"
        self._spec = ClusterSpec(token, tuple(specs), peers)
        for node in specs:
            self._spawn(self._new_proc(node))
        self.wait_healthy(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> dict[int, int]:
        """Stop every process (SIGTERM, SIGKILL after ``timeout``), reap each, unmount
        the disks. Returns the exit code of each node that was running."""
        running = [p for p in self.procs.values() if p.alive]
        for p in running:
            p.begin_stop()
        deadline = time.monotonic() + timeout
        codes: dict[int, int] = {}
        for p in [*self.procs.values(), *self._retired]:
            code = p.finish_stop(deadline - time.monotonic())
            if p in running and code is not None:
                codes[p.id] = code
        problems = []
        for disk in self.disks.values():
            try:
                disk.unmount()
            except Exception as e:
                problems.append(str(e))
        if problems:
            raise ServerError("; ".join(problems))
        return codes

    # -- what it is ------------------------------------------------------------------

    def endpoints(self) -> list[str]:
        """Every running or restartable node's client address (thread-safe)."""
        with self._lock:
            return list(self._endpoints)

    def ids(self) -> list[int]:
        return sorted(self.procs)

    def alive(self) -> list[int]:
        """Nodes whose process runs and is not paused."""
        return [i for i, p in sorted(self.procs.items()) if p.alive and not p.paused]

    def leader(self, timeout: float = 2.0) -> int | None:
        """The leader of the highest term among running nodes, or None in time."""
        deadline = time.monotonic() + timeout
        while True:
            best: tuple[int, int] | None = None
            for i in self.alive():
                st = self.procs[i].status(timeout=0.5)
                if st and st.get("role") == "leader":
                    term = int(st.get("term", 0))
                    if best is None or term > best[0]:
                        best = (term, i)
            if best is not None:
                return best[1]
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL)

    def client(self, timeout: float) -> Client:
        """A client for the supervisor's own requests: the leader first, then the other
        running nodes, so that it does not begin by waiting on a node that cannot answer
        (the client waits on a silent node until its deadline)."""
        up = self.alive()
        lead = self.leader(timeout=min(1.0, timeout))
        order = sorted(self.procs, key=lambda i: (i != lead, i not in up, i))
        return Client([self.procs[i].addr for i in order], timeout=timeout)

    # -- process faults --------------------------------------------------------------

    def kill(self, node_id: int) -> None:
        self.procs[node_id].send_signal(signal.SIGKILL)

    def pause(self, node_id: int) -> None:
        self.procs[node_id].send_signal(signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        self.procs[node_id].send_signal(signal.SIGCONT)

    def restart(self, node_id: int) -> None:
        """Start the node again on its data (reaping its last run); no waiting."""
        proc = self.procs[node_id]
        if proc.alive:
            proc.terminate(10.0)
        else:
            proc.finish_stop(0)
        self._spawn(proc)

    def unexpected_exits(self) -> list[NodeProcess]:
        """Processes that ended although nobody stopped them; each is reported once
        (it is then marked as expected to be down)."""
        out = []
        for p in self.procs.values():
            if not p.alive and not p.expected_down:
                p.expected_down = True
                out.append(p)
        return out

    # -- membership ------------------------------------------------------------------

    def add_node(self, timeout: float) -> tuple[int, str]:
        """Start a new node and ask the cluster to add it. Returns its id and what
        happened; afterwards the node runs only if the cluster has it as a member.
        Sharded: the node registers itself; this waits (up to ``timeout``) until the
        meta range lists it, and the node runs on either way (it keeps registering)."""
        node_id = self._next_id
        self._next_id += 1
        spec = self._place(node_id, join=True)
        self._spec = self._require_spec().with_node(spec)
        proc = self._new_proc(spec)
        self._spawn(proc)
        if self.sharded:
            return node_id, self._wait_registered(node_id, timeout)
        try:
            with self.client(timeout) as c:
                c.member_add(node_id, spec.addr, timeout=timeout)
            what = "added"
        except ClientError as e:
            what = f"member_add failed: {type(e).__name__}: {e}"
        return node_id, what + "; " + self.reconcile(timeout)

    def _wait_registered(self, node_id: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            members = self.members(timeout=max(0.5, min(2.0, deadline - time.monotonic())))
            if members is not None and node_id in members:
                role = "a meta voter" if members[node_id] else "a meta learner"
                return f"joined: registered, {role}"
            if time.monotonic() >= deadline:
                return f"not registered within {timeout:g} s (it keeps trying)"
            time.sleep(0.1)

    def remove_node(self, node_id: int, timeout: float) -> str:
        """Ask the cluster to remove ``node_id``; stop it if it is no longer a member."""
        try:
            with self.client(timeout) as c:
                c.member_remove(node_id, timeout=timeout)
            what = "removed"
        except ClientError as e:
            what = f"member_remove failed: {type(e).__name__}: {e}"
        return what + "; " + self.reconcile(timeout)

    def transfer(self, to: int, timeout: float) -> str:
        """Move the leadership (sharded: of the meta range) to node ``to``."""
        try:
            with self.client(timeout) as c:
                leader = c.transfer_leader(to, timeout=timeout)
        except ClientError as e:
            return f"transfer failed: {type(e).__name__}: {e}"
        return f"leader is now {leader}"

    # -- ranges (sharded) ------------------------------------------------------------

    def statuses(self, timeout: float = 1.0) -> dict[int, dict[str, Any]]:
        """The ``/status`` of every running node that answers."""
        out = {}
        for i in self.alive():
            st = self.procs[i].status(timeout=timeout)
            if st is not None:
                out[i] = st
        return out

    def targets(self) -> list[Target]:
        """Sharded: the groups whose leaders a fault may act on (``leader_targets``)."""
        return leader_targets(self.statuses(timeout=0.5), self.keys)

    def range_starts(self) -> list[bytes]:
        """Sharded: the first key of every range some running node holds."""
        return sorted({v.start for v in replicas(self.statuses(timeout=0.5))})

    def transfer_range(self, target: Target, to: int, timeout: float) -> str:
        """Sharded: move ``target``'s group's leadership to node ``to``."""
        if target.range_id == META_RANGE:
            return self.transfer(to, timeout)
        try:
            with self.client(timeout) as c:
                leader = c.transfer_range_leader(target.range_id, to, timeout=timeout)
        except ClientError as e:
            return f"transfer failed: {type(e).__name__}: {e}"
        return f"range {target.range_id}'s leader is now {leader}"

    def split(self, key: bytes, timeout: float) -> tuple[bool, str]:
        """Sharded: split the range holding ``key`` so that a new range starts there.
        Returns whether it did, and what happened."""
        try:
            with self.client(timeout) as c:
                left, right = c.split(key, timeout=timeout)
        except QuorumKVError as e:  # a refusal is an outcome to log, not the run's end
            return False, f"split at {show_key(key)!r} failed: {type(e).__name__}: {e}"
        return True, (
            f"split at {show_key(key)!r}: range {left.range_id} "
            f"[{show_key(left.start)!r}, {show_key(left.end)!r}), range {right.range_id} "
            f"[{show_key(right.start)!r}, {show_key(right.end)!r})"
        )

    def members(self, timeout: float) -> dict[int, bool] | None:
        """``{id: voter}`` as the leader lists them, or None if no leader answers.
        Asked over HTTP, node by node: a client would take the first node's word, and
        a node just removed knows no leader any more."""
        lead = self.leader(timeout)
        status = None if lead is None else self.procs[lead].status(timeout=1.0)
        if status is None or status.get("role") != "leader":
            return None
        return {int(m["id"]): bool(m["voter"]) for m in status.get("members", [])}

    def reconcile(self, timeout: float) -> str:
        """Make the processes follow the cluster's membership; says what it did."""
        deadline = time.monotonic() + timeout
        members = None
        while members is None and time.monotonic() < deadline:
            members = self.members(timeout=max(0.5, min(2.0, deadline - time.monotonic())))
            if members is None:
                time.sleep(0.1)
        if members is None:
            return "membership unknown (no leader answered); will look again"
        # A sharded cluster removes no node, and a node that joined may not be listed
        # yet: it keeps registering until it is.
        gone = [] if self.sharded else [i for i in self.procs if i not in members]
        for i in gone:
            self._retire(i)
        shown = ",".join(f"{i}{'' if v else '(learner)'}" for i, v in sorted(members.items()))
        return f"members {shown}" + (f"; stopped non-members {gone}" if gone else "")

    # -- waiting ---------------------------------------------------------------------

    def wait_healthy(self, ids: Iterable[int] | None = None, timeout: float = 30.0) -> None:
        """Wait until every node of ``ids`` (default all) says healthy; ``ServerError``
        quoting the logs of those that do not."""
        todo = set(self.procs if ids is None else ids)
        deadline = time.monotonic() + timeout
        why: dict[int, str] = {}
        while todo:
            for i in sorted(todo):
                proc = self.procs[i]
                if not proc.alive:
                    tail = "\n".join(proc.log_tail())
                    raise ServerError(f"{proc.describe_exit()}\n{tail}")
                ok, reason = proc.health(timeout=1.0)
                if ok:
                    todo.discard(i)
                else:
                    why[i] = reason
            if todo and time.monotonic() > deadline:
                detail = "; ".join(f"node {i}: {why.get(i, '?')}" for i in sorted(todo))
                raise ServerError(f"nodes {sorted(todo)} not healthy after {timeout:g} s: {detail}")
            if todo:
                time.sleep(_POLL)

    def converge(self, timeout: float) -> tuple[bool, list[str]]:
        """Wait until the cluster is whole again (see the module docstring); returns
        whether it became so, and the findings (what is wrong, or what it looks like)."""
        deadline = time.monotonic() + timeout
        self.reconcile(max(1.0, timeout / 2))
        problems: list[str] = []
        while True:
            ok, problems = self._whole()
            if ok and self.sharded:
                ok, problems = self._ranges_whole(problems, deadline)
            if ok or time.monotonic() > deadline:
                return ok, problems
            time.sleep(0.1)

    def _ranges_whole(self, found: list[str], deadline: float) -> tuple[bool, list[str]]:
        """Sharded: the ranges of keys (``check_ranges``) once the meta range is whole
        (``found`` says how it is)."""
        statuses = self.statuses()
        if sorted(statuses) != sorted(self.procs):
            return False, [f"nodes {sorted(set(self.procs) - set(statuses))} did not answer"]
        try:
            with self.client(max(1.0, min(5.0, deadline - time.monotonic()))) as c:
                directory = c.ranges()
        except QuorumKVError as e:
            return False, [f"the directory could not be read: {type(e).__name__}: {e}"]
        factor = min(3, len(statuses))
        problems = check_ranges(directory, statuses, factor)
        if problems:
            return False, problems
        return True, [*found, describe_ranges(directory, self.keys)]

    def _whole(self) -> tuple[bool, list[str]]:
        problems = []
        statuses: dict[int, dict[str, Any]] = {}
        for i, p in sorted(self.procs.items()):
            if not p.alive or p.paused:
                problems.append(f"node {i} is not running ({p.describe_exit()})")
                continue
            healthy, reason = p.health(timeout=1.0)
            st = p.status(timeout=1.0)
            if not healthy or st is None:
                problems.append(f"node {i} is not healthy: {reason}")
                continue
            statuses[i] = st
        if problems:
            return False, problems
        views = {(int(s["term"]), int(s["leader"])) for s in statuses.values()}
        if len(views) != 1:
            return False, [f"nodes disagree on (term, leader): {sorted(views)}"]
        term, lead = views.pop()
        if lead not in statuses:
            return False, [f"the leader {lead} is not one of the running nodes"]
        lst = statuses[lead]
        members = sorted(int(m["id"]) for m in lst.get("members", []))
        if members != sorted(statuses):
            return False, [f"members {members} but running nodes {sorted(statuses)}"]
        applied = {i: int(s["applied"]) for i, s in statuses.items()}
        if set(applied.values()) != {int(lst["commit"])}:
            return False, [f"applied {applied}, leader's commit {lst['commit']}"]
        voters = sorted(int(m["id"]) for m in lst["members"] if m.get("voter"))
        group = "the meta range's leader" if self.sharded else "leader"
        return True, [
            f"{len(statuses)} nodes healthy, {group} {lead} in term {term}, voters {voters}, "
            f"applied index {lst['commit']} on every node"
        ]

    # -- internals -------------------------------------------------------------------

    def _require_spec(self) -> ClusterSpec:
        if self._spec is None:
            raise RuntimeError("the cluster has not been started")
        return self._spec

    def _place(self, node_id: int, *, join: bool) -> NodeSpec:
        addr, http = self.network.add_node(node_id)
        return NodeSpec(node_id, addr, http, join)

    def _new_proc(self, node: NodeSpec) -> NodeProcess:
        data = self.workdir / f"node-{node.id}"
        if self.disk_bytes is not None:
            disk = Tmpfs(data / self.disk_at if self.disk_at else data, self.disk_bytes)
            self.disks[node.id] = disk
            disk.mount()
        proc = NodeProcess(node, data, self.workdir / f"node-{node.id}.log")
        self.procs[node.id] = proc
        self._publish()
        return proc

    def _retire(self, node_id: int) -> None:
        proc = self.procs.pop(node_id)
        self._publish()
        proc.terminate(10.0)
        self._retired.append(proc)
        self._spec = self._require_spec().without_node(node_id)
        self._log(f"node {node_id} is no longer a member; stopped it")

    def _publish(self) -> None:
        with self._lock:
            self._endpoints = [p.addr for _, p in sorted(self.procs.items())]

    def _argv(self, proc: NodeProcess) -> list[str]:
        spec = self._require_spec()
        node = spec.node(proc.id)
        argv = [
            *self.network.prefix(proc.id),
            sys.executable, "-m", "quorumkv.server",
            "--id", str(proc.id),
            "--data-dir", str(proc.data_dir),
            "--listen", node.addr,
            "--http", node.http,
            "--peers", spec.peers_arg(node),
            "--cluster-token", spec.token,
            "--tick-ms", str(self.tick_ms),
            "--election-ticks", str(self.election_ticks),
        ]  # fmt: skip
        if node.join:
            argv.append("--join")
        if self.sharded:
            argv.append("--sharded")
            if self.split_keys is not None:
                argv += ["--split-keys", str(self.split_keys)]
        return argv + self._extra

    def _spawn(self, proc: NodeProcess) -> None:
        proc.spawn(self._argv(proc), _child_env())


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(quorumkv.__file__).resolve().parent.parent)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = src if not path else f"{src}{os.pathsep}{path}"
    env["PYTHONUNBUFFERED"] = "1"
    return env
