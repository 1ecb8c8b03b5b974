"""Helpers for the fault tests: fabricated histories and planted violations."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quorumkv.sim._linearizability import OpKind
from quorumkv.torture import FaultInterval, Outcome, Record, Summary, analyze

STALE_CLIENT = 1_000_000
"""The client id of a fabricated read."""


def rec(
    op_id: int,
    kind: OpKind,
    key: bytes,
    invoke: float,
    complete: float | None,
    *,
    value: bytes | None = None,
    expected: bytes | None = None,
    output: bytes | bool | None = None,
    outcome: Outcome = Outcome.OK,
    client: int = 0,
) -> Record:
    """A history record, briefly."""
    return Record(op_id, client, kind, key, value, expected, invoke, complete, outcome, output)


def _overwrites(r: Record) -> bool:
    """Whether ``r`` certainly changed its key (an acknowledged put, delete or swap)."""
    if r.outcome is not Outcome.OK:
        return False
    return r.kind in (OpKind.PUT, OpKind.DELETE) or (r.kind is OpKind.CAS and r.output is True)


def stale_read(records: Sequence[Record]) -> Record:
    """A fabricated GET, after everything else, of a value an acknowledged PUT wrote and
    a later acknowledged write certainly replaced: a stale read no correct run makes."""
    last = max(r.complete or r.invoke for r in records)
    for p in records:
        if p.kind is not OpKind.PUT or p.outcome is not Outcome.OK or p.complete is None:
            continue
        if any(r.key == p.key and _overwrites(r) and r.invoke > p.complete for r in records):
            return rec(
                max(r.id for r in records) + 1,
                OpKind.GET,
                p.key,
                last + 1.0,
                last + 1.1,
                output=p.value,
                client=STALE_CLIENT,
            )
    raise AssertionError("no acknowledged put was overwritten later: nothing to read stale")


def analyze_with_stale_read(records: Sequence[Record], events: Sequence[dict[str, Any]]) -> Summary:
    """The run's history analysed again with a stale read planted in it (each fault of
    the run's log held for a second): the same pipeline must flag it."""
    starts = [e for e in events if e["event"] == "start"]
    intervals = [FaultInterval(e["fault"], e["kind"], e["t"], e["t"] + 1.0) for e in starts]
    return analyze(
        [*records, stale_read(records)],
        intervals,
        healthy=True,
        health=[],
        meta={},
        load_start=0.0,
        load_end=max(r.complete or 0.0 for r in records),
    )


def namespaces(prefix: str = "qkvt-") -> set[str]:
    """The network namespaces whose names start with ``prefix``."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)}


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``."""
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(path)]


def pids_running_in(out: Path) -> set[int]:
    """Pids of processes still running with ``out`` (a run's directory) on their
    command line."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(out).encode() in cmd:
            found.add(int(entry))
    return found
