"""Where a busy machine's idle CPU time goes, from the kernel scheduler's trace (not a test).

``cpu_per_op.py --sched SECONDS`` calls ``record`` for part of its window, then
``report``: it replays every CPU's context switches (``perf sched timehist --state``)
and, every 20 microseconds of the trace, notes how many CPUs were idle and what each
measured process was doing: running, runnable but waiting for a CPU (it was preempted
or woken and not yet run), in uninterruptible sleep (``D``: a disk wait, such as an
fsync) or asleep (``S``: waiting for a message or a timer). The report splits the idle
CPU time three ways:

- a measured process was runnable: the scheduler left a CPU idle while work waited
  (it does not move a task that ran less than ``sched_migration_cost_ns`` ago);
- none was runnable and one was in a disk wait;
- all were asleep: a bubble of the pipeline, each waiting for another's message.

Needs ``perf`` (Debian's ``linux-perf``) and the right to trace the scheduler (root).
Standalone: ``python benchmarks/sched_idle.py TRACE NAME=PID ...`` reports on a trace
recorded with ``perf sched record -o TRACE``.
"""

from __future__ import annotations

import bisect
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

STEP = 20e-6
_TID = re.compile(r"\[(\d+)(?:/(\d+))?\]$")


def record(trace: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Start recording the scheduler for ``seconds``; wait on the returned process."""
    argv = ["perf", "sched", "record", "-o", str(trace), "--", "sleep", str(seconds)]
    try:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SystemExit("--sched needs perf (Debian: apt-get install linux-perf)") from None


def _switches(trace: Path) -> list[tuple[float, float, int, int, str]]:
    """``(start, end, cpu, pid, state after)`` of every run in the trace; pid 0 is idle."""
    out = subprocess.run(
        ["perf", "sched", "timehist", "-i", str(trace), "--state"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    runs = []
    for line in out.splitlines()[3:]:
        f = line.split()
        if len(f) < 7 or not f[1].startswith("["):
            continue
        end, cpu, run_ms, state = float(f[0]), int(f[1].strip("[]")), float(f[-2]), f[-1]
        name = " ".join(f[2:-4])
        m = _TID.search(name)
        pid = 0 if name.startswith("<idle>") else int(m.group(2) or m.group(1)) if m else -1
        runs.append((end - run_ms / 1000, end, cpu, pid, state))
    runs.sort()
    return runs


def report(trace: Path, procs: dict[str, int]) -> str:
    """The split of idle CPU time over the trace, for the processes ``procs`` (name ->
    pid), as printable lines."""
    runs = _switches(trace)
    if not runs:
        return "  sched: the trace holds no context switches"
    by_pid: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
    busy: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for start, end, cpu, pid, state in runs:
        busy.setdefault(cpu, [])
        if pid != 0:  # perf lists the idle task of some CPUs only: idle is what no run covers
            busy[cpu].append((start, end))
            by_pid[pid].append((start, end, state))
    starts = {pid: [r[0] for r in rs] for pid, rs in by_pid.items()}
    busy_starts = {cpu: [iv[0] for iv in ivs] for cpu, ivs in busy.items()}

    def state_of(pid: int, t: float) -> str:
        i = bisect.bisect_right(starts.get(pid, []), t) - 1
        if i < 0:
            return "?"
        start, end, after = by_pid[pid][i]
        return "run" if start <= t < end else after

    def is_idle(cpu: int, t: float) -> bool:
        i = bisect.bisect_right(busy_starts[cpu], t) - 1
        return i < 0 or not busy[cpu][i][0] <= t < busy[cpu][i][1]

    first, last = runs[0][0] + 0.01, runs[-1][1] - 0.01
    cpus = sorted(busy)
    seen: Counter[str] = Counter()
    t, samples, cpu_samples = first, 0, 0
    while t < last:
        samples += 1
        n_idle = sum(is_idle(c, t) for c in cpus)
        cpu_samples += n_idle
        if n_idle:
            states = [state_of(pid, t) for pid in procs.values()]
            kind = "runnable" if "R" in states else "disk" if "D" in states else "asleep"
            seen[kind] += n_idle
        t += STEP
    n_cpus = max(len(cpus), 1)
    total = samples * n_cpus
    lines = [f"  sched: {cpu_samples / total:.0%} of {n_cpus} CPUs idle over {last - first:.2f} s"]
    what = {
        "runnable": "a measured process was runnable, left waiting",
        "disk": "none runnable, one in a disk wait (fsync)",
        "asleep": "all asleep, waiting for a message",
    }
    for kind, text in what.items():
        lines.append(f"    {seen[kind] / total:5.1%} of CPU time idle while {text}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    procs = {}
    for arg in sys.argv[2:]:
        name, _, pid = arg.partition("=")
        procs[name] = int(pid)
    print(report(Path(sys.argv[1]), procs))


if __name__ == "__main__":
    main()
