"""What a torture run found: the linearizability check, unavailability, the summary.

Theory of operation
-------------------
``analyze`` is a pure function of what the run recorded: the history, the fault
intervals, and the health the runner observed at the end. It

1. checks the history with ``quorumkv.sim``'s linearizability checker (per key; the
   final reads made after every fault healed are part of the history, so a write that
   was acknowledged and later lost makes the final read of its key illegal);
2. measures, for every fault, the longest gap between two acknowledged writes that
   overlaps the fault's interval (``unavailability``): what a client writing all the
   time would have seen. The run's start and the end of its load bound the first and
   last gaps; per kind, the longest over its faults;
3. counts operations by kind and outcome and faults by kind, and gives the verdict:
   PASS only if the history is linearizable (not merely "not disproved within the
   search budget") and the cluster came back to full health by itself.

Slow networks are not among the faults: without ``tc netem`` there is no way to delay
packets on this machine, and the summary says so rather than pretend.

This module must never do I/O, read a clock, or use randomness.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quorumkv.sim._linearizability import check_history
from quorumkv.torture._history import Outcome, Record, operations

NOT_INJECTED = (
    "not injected: slow or lossy links (packet delay, reordering, duplication), since "
    "this machine has no tc netem; partitions drop whole directed links instead"
)


@dataclass(frozen=True, slots=True)
class FaultInterval:
    """A fault as it happened: ``start`` to ``end`` on the history's clock."""

    id: int
    kind: str
    start: float
    end: float
    nodes: tuple[int, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    """The longest write gap overlapping fault ``fault`` (of ``kind``)."""

    kind: str
    fault: int
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fault": self.fault,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "seconds": round(self.length, 3),
        }


def unavailability(
    write_times: Iterable[float],
    faults: Iterable[FaultInterval],
    start: float,
    end: float,
) -> dict[str, Window]:
    """Per fault kind, the longest gap between consecutive acknowledged writes (the
    completion times ``write_times``, bounded by ``start`` and ``end``) that overlaps
    one of its faults."""
    points = [start, *sorted(t for t in write_times if start < t < end), end]
    ends = points[1:]
    best: dict[str, Window] = {}
    for f in faults:
        i = bisect.bisect_right(ends, f.start)  # first gap ending after the fault starts
        while i < len(ends) and points[i] < f.end:
            w = Window(f.kind, f.id, points[i], ends[i])
            old = best.get(f.kind)
            if old is None or w.length > old.length:
                best[f.kind] = w
            i += 1
    return best


@dataclass(slots=True)
class Summary:
    """The result of a run; ``passed`` is the verdict."""

    meta: dict[str, Any]
    ops: dict[str, dict[str, int]]
    faults: dict[str, int]
    windows: dict[str, Window]
    ops_checked: int
    linearizable: bool | None
    """False: a violation was found; None: the search budget ran out (not a pass)."""
    explanation: str
    healthy: bool
    health: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.linearizable is True and self.healthy

    @property
    def verdict(self) -> str:
        if self.passed:
            return "PASS"
        why = []
        if self.linearizable is False:
            why.append("history not linearizable")
        elif self.linearizable is None:
            why.append("linearizability unknown (search budget exhausted)")
        if not self.healthy:
            why.append("cluster not healthy")
        return "FAIL: " + "; ".join(why)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            **self.meta,
            "operations": self.ops,
            "operations_checked": self.ops_checked,
            "faults": self.faults,
            "unavailability": {k: w.to_json() for k, w in sorted(self.windows.items())},
            "linearizable": self.linearizable,
            "explanation": self.explanation,
            "healthy": self.healthy,
            "health": self.health,
            "notes": self.notes,
            "not_injected": NOT_INJECTED,
        }

    def render(self) -> str:
        """The summary as text, for the terminal and ``summary.txt``."""
        m = self.meta
        lines = [
            f"qkv torture: seed {m.get('seed')}, {m.get('nodes')} nodes"
            f"{' (sharded)' if m.get('sharded') else ''}, "
            f"{m.get('network')}, {m.get('duration', 0):g} s of faults",
            f"operations checked: {self.ops_checked}",
            f"  {'kind':<8}{'ok':>8}{'fail':>8}{'unknown':>9}",
        ]
        for kind in sorted(self.ops):
            c = self.ops[kind]
            lines.append(
                f"  {kind:<8}{c.get('ok', 0):>8}{c.get('fail', 0):>8}{c.get('unknown', 0):>9}"
            )
        faults = ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())) or "none"
        lines.append(f"faults: {faults}")
        lines.append("longest unavailability (gap between acknowledged writes over a fault):")
        for kind, w in sorted(self.windows.items()):
            lines.append(
                f"  {kind:<13}{w.length:7.2f} s  (fault #{w.fault}, {w.start:.2f}-{w.end:.2f} s)"
            )
        if not self.windows:
            lines.append("  (no faults)")
        if self.linearizable is True:
            lin = "yes"
        elif self.linearizable is None:
            lin = "unknown (search budget exhausted)"
        else:
            lin = "NO"
        lines.append(f"linearizable: {lin}")
        if self.explanation:
            lines += ["  " + line for line in self.explanation.splitlines()[:60]]
        lines.append(f"health: {'ok' if self.healthy else 'NOT OK'}")
        lines += [f"  {h}" for h in self.health]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(NOT_INJECTED)
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


def count_ops(records: Iterable[Record]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in records:
        kind = "final-get" if r.client < 0 else r.kind.value
        by = out.setdefault(kind, dict.fromkeys((o.value for o in Outcome), 0))
        by[r.outcome.value] += 1
    return out


def analyze(
    records: Sequence[Record],
    faults: Sequence[FaultInterval],
    *,
    healthy: bool,
    health: Iterable[str],
    meta: Mapping[str, Any],
    load_start: float,
    load_end: float,
    notes: Iterable[str] = (),
    max_steps_per_key: int = 5_000_000,
) -> Summary:
    """Check and summarize a run (see the module docstring)."""
    ops = operations(records)
    result = check_history(ops, max_steps_per_key=max_steps_per_key)
    if result.ok:
        linearizable: bool | None = True
    else:
        linearizable = None if result.timed_out else False
    acked = [
        r.complete
        for r in records
        if r.is_write and r.outcome is Outcome.OK and r.complete is not None and r.client >= 0
    ]
    windows = unavailability(acked, faults, load_start, load_end)
    by_kind: dict[str, int] = {}
    for f in faults:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
    return Summary(
        meta=dict(meta),
        ops=count_ops(records),
        faults=by_kind,
        windows=windows,
        ops_checked=len(ops),
        linearizable=linearizable,
        explanation=result.explanation,
        healthy=healthy,
        health=list(health),
        notes=list(notes),
    )
