"""The nemesis: carries out a fault plan against a ``TortureCluster``, and logs it.

Theory of operation
-------------------
``Nemesis.run`` turns the plan (``_schedule``) into a timeline of actions (start a
main fault, heal it, do a side event) and performs each at its time, on the run's
clock, from the calling thread (the main thread, so that restarted nodes get the
parent-death signal). Between actions it watches: a node that exits although nobody
stopped it is a crash (logged, counted in ``failures``, and restarted so the run can
go on); a node whose disk was filled is watched until it exits, as documented (status
3); one that instead logs an error and keeps running is wedged (a failure too). Either
way the disk is freed at the heal and the node restarted.

Targets are chosen when a fault starts, among the nodes of that moment, by the fault's
``pick``: ``kill``/``pause`` any running node, the ``-leader`` kinds the current leader
(any running node if none is known within two seconds), partitions by ``_partition``
among running nodes, ``disk-full`` any running node with a tmpfs disk. ``member`` adds
a node while the cluster has its founding size and removes one (never one a main fault
holds) while it has one more; ``transfer`` names a voter other than the leader.

On a sharded cluster "the leader" is the leader of one group the load depends on:
the meta range or a range holding torture keys, chosen by ``pick`` among those whose
leader is known (``_sharded.leader_targets``); the ``-leader`` kinds act on its node,
the partitions make it their victim when they pick the leader, and ``transfer`` hands
that group's leadership to another of its voters. ``member`` only adds nodes (a
sharded cluster cannot remove one yet), at most ``SHARDED_JOINS`` over a run; the
node registers itself and ranges move to it. ``range-split`` splits the range holding
a torture key at that key, or next to one (``_sharded.split_point``).

Every start, heal and observation is one line of the ``FaultLog`` (JSON lines, times on
the history's clock plus wall-clock time) and, once healed, a ``FaultInterval``.
``heal_all`` ends whatever is still active and restarts every member that is down, so
that the cluster can then be asked to recover by itself.

This module must never hold more than one main fault at a time, cut a majority off
from a minority (only the shapes of ``_partition``), or touch a process that the
cluster does not supervise.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from quorumkv.local import NodeProcess
from quorumkv.torture._analysis import FaultInterval
from quorumkv.torture._cluster import TortureCluster
from quorumkv.torture._partition import partition_for
from quorumkv.torture._schedule import FaultKind, PlannedFault, choose
from quorumkv.torture._sharded import pick_other_voter, pick_target, split_point

_TICK = 0.05
_MEMBER_TIMEOUT = 8.0
_TRANSFER_TIMEOUT = 3.0
_SPLIT_TIMEOUT = 5.0
SHARDED_JOINS = 2
"""Nodes a sharded run adds at most (none can be removed: every join costs CPU)."""
_EXIT_GRACE = 5.0
"""Seconds a node that logged a storage failure gets to exit before its disk is freed."""


def _storage_failed(proc: NodeProcess) -> bool:
    """Whether the node says its storage failed (then it is about to exit)."""
    ok, reason = proc.health(timeout=0.5)
    if not ok and reason.startswith("storage failed"):
        return True
    return any(" stops: " in line or "storage failed" in line for line in proc.log_tail(50))


def _log_size(proc: NodeProcess) -> int:
    try:
        return proc.log_path.stat().st_size
    except OSError:
        return 0


def _errors_since(proc: NodeProcess, offset: int) -> list[str]:
    """The error lines (ERROR level, exceptions) the node logged after ``offset``."""
    try:
        with open(proc.log_path, "rb") as f:
            f.seek(offset)
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return []
    lines = [line.strip() for line in text.splitlines()]
    return [
        line for line in lines if " ERROR " in line or line.endswith("Error") or "Error:" in line
    ]


class FaultLog:
    """Fault events as JSON lines in ``path`` (if given), echoed as text."""

    def __init__(
        self,
        clock: Callable[[], float],
        path: Path | None = None,
        echo: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._clock = clock
        self._echo = echo
        self._file: IO[str] | None = None if path is None else open(path, "w", encoding="utf-8")  # noqa: SIM115
        self.intervals: list[FaultInterval] = []
        self._open: dict[int, tuple[str, float, tuple[int, ...], str]] = {}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def event(self, event: str, kind: str, fault: int, nodes: Any = (), detail: str = "") -> float:
        t = self._clock()
        doc = {
            "t": round(t, 4),
            "wall": datetime.datetime.now().isoformat(timespec="milliseconds"),
            "event": event,
            "kind": kind,
            "fault": fault,
            "nodes": list(nodes),
            "detail": detail,
        }
        if self._file is not None:
            self._file.write(json.dumps(doc) + "\n")
            self._file.flush()
        where = f" nodes {list(nodes)}" if nodes else ""
        self._echo(f"[{t:7.2f}s] {event} {kind} #{fault}{where}: {detail}".rstrip(": "))
        return t

    def begin(self, kind: str, fault: int, nodes: tuple[int, ...], detail: str) -> None:
        t = self.event("start", kind, fault, nodes, detail)
        self._open[fault] = (kind, t, nodes, detail)

    def end(self, fault: int, detail: str = "") -> None:
        kind, start, nodes, what = self._open.pop(fault)
        t = self.event("end", kind, fault, nodes, detail)
        self.intervals.append(FaultInterval(fault, kind, start, t, nodes, what))

    def instant(
        self, kind: str, fault: int, nodes: tuple[int, ...], detail: str, start: float
    ) -> None:
        """A side event that ran from ``start`` until now."""
        t = self.event("done", kind, fault, nodes, detail)
        self.intervals.append(FaultInterval(fault, kind, start, t, nodes, detail))


@dataclass(slots=True)
class _Active:
    fault: PlannedFault
    held: tuple[int, ...]
    """The nodes the fault acts on directly (killed, paused, disk filled); a side
    event never removes one of them. A partition holds none: any node may go."""
    heal: Callable[[], str]
    watch: Callable[[], None] = lambda: None


class Nemesis:
    """Carries out plans against ``cluster``, logging to ``log`` on ``clock``; calls
    ``tick`` between actions (progress output). ``failures`` lists what fails the run
    (a node that exited by itself, one that kept running wedged on a full disk);
    ``observations`` what the faults showed (exit codes; on a sharded cluster, how
    many of its side events did what they asked)."""

    def __init__(
        self,
        cluster: TortureCluster,
        log: FaultLog,
        clock: Callable[[], float],
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.cluster = cluster
        self.log = log
        self.clock = clock
        self.tick = tick
        self.failures: list[str] = []
        self.observations: list[str] = []
        self._active: _Active | None = None
        self._size = cluster.founders
        self.side_done: dict[str, list[bool]] = {}
        """Sharded side events by kind: whether each did what it asked."""

    def run(self, plan: tuple[PlannedFault, ...], until: float) -> None:
        """Perform ``plan`` on the clock, then wait (watching) until ``until``."""
        actions: list[tuple[float, int, PlannedFault]] = []
        for f in plan:
            actions.append((f.at, 0, f))
            if not f.kind.is_side:
                actions.append((f.at + f.hold, 1, f))
        actions.sort(key=lambda a: (a[0], a[1]))
        for at, phase, f in actions:
            self._wait_until(at)
            if phase == 1:
                self._heal(f)
            elif f.kind.is_side:
                self._side(f)
            else:
                self._start(f)
        self._wait_until(until)

    def heal_all(self) -> None:
        """End the active fault, and restart every supervised node that is down."""
        if self._active is not None:
            self._heal(self._active.fault)
        self._check_crashes()
        for i, p in sorted(self.cluster.procs.items()):
            if p.paused:
                self.cluster.resume(i)
                self.log.event("note", "heal", -1, (i,), "resumed a paused node")
            if not p.alive:
                self.cluster.restart(i)
                self.log.event("note", "heal", -1, (i,), "restarted a node that was down")

    # -- waiting and watching --------------------------------------------------------

    def _wait_until(self, at: float) -> None:
        while True:
            self._watch()
            left = at - self.clock()
            if left <= 0:
                return
            time.sleep(min(_TICK, left))

    def _watch(self) -> None:
        if self._active is not None:
            self._active.watch()
        self._check_crashes()
        self.tick()

    def _check_crashes(self) -> None:
        for p in self.cluster.unexpected_exits():
            tail = " | ".join(p.log_tail(3))
            what = f"node {p.id} exited by itself: {p.describe_exit()}; last lines: {tail}"
            self.failures.append(what)
            self.log.event("crash", "crash", -1, (p.id,), what)
            self.cluster.restart(p.id)
            self.log.event("note", "crash", -1, (p.id,), "restarted it")

    # -- main faults -----------------------------------------------------------------

    def _start(self, f: PlannedFault) -> None:
        if self._active is not None:  # the plan never overlaps; a slipped heal may
            self._heal(self._active.fault)
        c, kind = self.cluster, f.kind
        running = c.alive()
        if not running:
            self.log.event("skip", kind.value, f.index, (), "no running node")
            return
        if kind in (FaultKind.KILL_LEADER, FaultKind.PAUSE_LEADER):
            lead, what = self._leader(f.pick, timeout=2.0)
            target = lead if lead in running else choose(f.pick, running)
            role = what if target == lead else "no leader known: random node"
        else:
            target, role = choose(f.pick, running), ""
        if kind in (FaultKind.KILL, FaultKind.KILL_LEADER):
            c.kill(target)
            self._begin(
                f, (target,), f"SIGKILL node {target} {role}".strip(), lambda: self._restart(target)
            )
        elif kind in (FaultKind.PAUSE, FaultKind.PAUSE_LEADER):
            c.pause(target)
            self._begin(
                f, (target,), f"SIGSTOP node {target} {role}".strip(), lambda: self._resume(target)
            )
        elif kind.is_partition:
            lead, what = self._leader(f.pick, timeout=0.5)
            part = partition_for(kind, running, f.pick, lead)
            c.network.apply(part)
            shown = f"; the leader meant: node {lead}, {what}" if c.sharded and lead else ""
            detail = part.description + shown
            self._begin(f, part.nodes, detail, self._heal_network, held=())
        elif kind is FaultKind.DISK_FULL:
            self._disk_full(f, running)
        else:  # pragma: no cover - side kinds never reach here
            raise AssertionError(kind)

    def _leader(self, pick: int, timeout: float) -> tuple[int | None, str]:
        """The node a ``-leader`` fault means, and how to say it: the leader; on a
        sharded cluster, the leader of the group ``pick`` chooses (see the module
        docstring)."""
        c = self.cluster
        if not c.sharded:
            return c.leader(timeout=timeout), "leader"
        deadline = time.monotonic() + timeout
        while True:
            target = pick_target(pick, c.targets())
            if target is not None:
                return target.node, target.describe()
            if time.monotonic() >= deadline:
                return None, "no leader known"
            time.sleep(_TICK)

    def _begin(
        self,
        f: PlannedFault,
        nodes: tuple[int, ...],
        detail: str,
        heal: Callable[[], str],
        watch: Callable[[], None] = lambda: None,
        held: tuple[int, ...] | None = None,
    ) -> None:
        self.log.begin(f.kind.value, f.index, nodes, f"{detail} for {f.hold:.1f} s")
        self._active = _Active(f, nodes if held is None else held, heal, watch)

    def _heal(self, f: PlannedFault) -> None:
        active = self._active
        if active is None or active.fault.index != f.index:
            return
        self._active = None
        self.log.end(f.index, active.heal())

    def _restart(self, node: int) -> str:
        if node not in self.cluster.procs:
            return f"node {node} is no longer a member"
        self.cluster.restart(node)
        return f"restarted node {node}"

    def _resume(self, node: int) -> str:
        if node not in self.cluster.procs:
            return f"node {node} is no longer a member"
        self.cluster.resume(node)
        return f"SIGCONT node {node}"

    def _heal_network(self) -> str:
        self.cluster.network.heal()
        return "routes removed"

    def _disk_full(self, f: PlannedFault, running: list[int]) -> None:
        c = self.cluster
        candidates = [i for i in running if i in c.disks]
        if not candidates:
            self.log.event("skip", f.kind.value, f.index, (), "no node has a tmpfs disk")
            return
        target = choose(f.pick, candidates)
        proc, disk = c.procs[target], c.disks[target]
        log_mark = _log_size(proc)
        filled = disk.fill()
        started = self.clock()
        seen: dict[str, Any] = {}

        def watch() -> None:
            if "exit" not in seen and not proc.alive:
                proc.expected_down = True  # this exit is the fault's, not a crash
                seen["exit"] = proc.returncode
                after = self.clock() - started
                tail = " | ".join(line for line in proc.log_tail(3) if "storage" in line)
                self.log.event(
                    "observe", f.kind.value, f.index, (target,),
                    f"node {target} exited with status {proc.returncode} {after:.2f} s "
                    f"after its disk filled; {tail}",
                )  # fmt: skip
                self.observations.append(f"disk-full: node {target} exited {proc.returncode}")

        def heal() -> str:
            # A node that has failed is on its way out (it notices within half a
            # second, then stops): let it finish before freeing its disk, or its exit
            # would look like a crash of a healthy node.
            deadline = time.monotonic() + _EXIT_GRACE
            while proc.alive and _storage_failed(proc) and time.monotonic() < deadline:
                time.sleep(_TICK)
            watch()
            disk.free()
            if "exit" in seen:
                return f"freed the disk; {self._restart(target)}"
            # It never stopped. The remedy is the same (free the disk, restart the
            # node), but one that met an error and went on running is wedged: that
            # breaks the documented behaviour (stop, exit 3), so the run fails.
            errors = _errors_since(proc, log_mark)
            if errors:
                what = (
                    f"node {target} kept running with a full disk after an error "
                    f"({errors[0]}; last: {errors[-1]}); killed and restarted it"
                )
                self.failures.append(what)
                self.log.event("observe", f.kind.value, f.index, (target,), what)
            else:
                self.observations.append(f"disk-full: node {target} wrote nothing meanwhile")
            self.cluster.kill(target)
            return f"freed the disk; node {target} had not stopped; {self._restart(target)}"

        self._begin(
            f, (target,), f"filled node {target}'s disk ({filled} bytes of filler)", heal, watch
        )

    # -- side events -----------------------------------------------------------------

    def _side(self, f: PlannedFault) -> None:
        c = self.cluster
        start = self.clock()
        held = set(self._active.held) if self._active else set()
        if c.sharded:
            self._sharded_side(f, start)
            return
        if f.kind is FaultKind.RANGE_SPLIT:  # TortureConfig refuses this; be safe anyway
            self.log.event("skip", f.kind.value, f.index, (), "the cluster is not sharded")
            return
        if f.kind is FaultKind.TRANSFER:
            lead = c.leader(timeout=0.5)
            voters = [i for i in c.alive() if i != lead]
            if not voters:
                self.log.event("skip", "transfer", f.index, (), "no other running node")
                return
            to = choose(f.pick, voters)
            self.log.event("begin", "transfer", f.index, (to,), f"leader {lead} -> {to}")
            self.log.instant("transfer", f.index, (to,), c.transfer(to, _TRANSFER_TIMEOUT), start)
            return
        if len(c.procs) <= self._size:
            self.log.event("begin", "member", f.index, (), "adding a node")
            node, what = c.add_node(_MEMBER_TIMEOUT)
            self.log.instant("member", f.index, (node,), f"add node {node}: {what}", start)
            return
        candidates = [i for i in c.alive() if i not in held]
        if not candidates:
            self.log.event("skip", "member", f.index, (), "no running node to remove")
            return
        node = choose(f.pick, candidates)
        self.log.event("begin", "member", f.index, (node,), f"removing node {node}")
        self.log.instant(
            "member",
            f.index,
            (node,),
            f"remove node {node}: {c.remove_node(node, _MEMBER_TIMEOUT)}",
            start,
        )

    def _sharded_side(self, f: PlannedFault, start: float) -> None:
        c = self.cluster
        kind = f.kind.value
        if f.kind is FaultKind.TRANSFER:
            target = pick_target(f.pick, c.targets())
            to = None if target is None else pick_other_voter(f.pick, target, c.alive())
            if target is None or to is None:
                self.log.event("skip", kind, f.index, (), "no group with a known leader "
                               "and another voter")  # fmt: skip
                return
            moving = f"{target.describe()}: node {target.node} -> node {to}"
            self.log.event("begin", kind, f.index, (to,), moving)
            what = c.transfer_range(target, to, _TRANSFER_TIMEOUT)
            self.side_done.setdefault(kind, []).append(" is now " in what)
            self.log.instant(kind, f.index, (to,), what, start)
        elif f.kind is FaultKind.RANGE_SPLIT:
            key = split_point(f.pick, c.keys, c.range_starts())
            self.log.event("begin", kind, f.index, (), f"splitting at {key!r}")
            done, what = c.split(key, _SPLIT_TIMEOUT)
            self.side_done.setdefault(kind, []).append(done)
            self.log.instant(kind, f.index, (), what, start)
        elif f.kind is FaultKind.MEMBER:
            if len(c.procs) >= c.founders + SHARDED_JOINS:
                self.log.event("skip", kind, f.index, (), f"{SHARDED_JOINS} nodes joined "
                               "already (a sharded cluster cannot remove one)")  # fmt: skip
                return
            self.log.event("begin", kind, f.index, (), "a node joins")
            node, what = c.add_node(_MEMBER_TIMEOUT)
            self.side_done.setdefault(kind, []).append(what.startswith("joined"))
            self.log.instant(kind, f.index, (node,), f"node {node} {what}", start)
        else:  # pragma: no cover - main kinds never reach here
            raise AssertionError(f.kind)

    def side_summary(self) -> str:
        """Sharded: ``range-split 2/2, transfer 3/4, member 1/1`` (done of asked), or
        "" when there was none. A side event can fail without fault of the cluster's
        (a target that went down meanwhile, a move in progress); a kind that never
        succeeded is worth a look."""
        return ", ".join(
            f"{kind} {sum(oks)}/{len(oks)}" for kind, oks in sorted(self.side_done.items())
        )
