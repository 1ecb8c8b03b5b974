"""The benchmark's report: medians over rounds, the tables, JSON and Markdown files.

Pure functions over plain records (dicts), so they are tested without a cluster:

- ``summarize``: one ``Summary`` per (op, concurrency, system): the median of each
  figure over the rounds, with the min and max of the throughput;
- ``render_table`` / ``render_ratios``: the text (or Markdown) tables of throughput,
  p50/p99 latency and the generator's CPU, and of the ratios of quorumkv's median
  throughput to etcd's and PySyncObj's;
- ``summarize_profile``: py-spy's collapsed stacks as the top functions by own and
  total samples;
- ``write_report``: ``results.json`` and ``results.md`` in the output directory.

A generator at or above ``SATURATED_PCT`` of one core is marked ``SAT``: its
system's figure is then a floor, not the system's limit. Beside it, the nodes' CPU
and the machine's other busy CPU over the same window (percent of one core; the
machine has ``cpus`` times 100%): other load on the machine shows there.

What this module must never do: run or measure anything, or round a figure before it
is written to JSON (rounding is for the tables only).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SATURATED_PCT = 90.0
LABELS = {"quorumkv": "quorumkv", "etcd": "etcd", "pysyncobj": "PySyncObj"}
OP_LABELS = {
    "put": "put",
    "get": "get (linearizable)",
}
PYSYNCOBJ_GET = "get = replicated read through the log"


@dataclass(frozen=True)
class Summary:
    """One point over its rounds."""

    op: str
    concurrency: int
    system: str
    rounds: int
    ops_per_s: float
    ops_min: float
    ops_max: float
    p50_ms: float
    p99_ms: float
    p99_min: float
    p99_max: float
    cpu_pct: float | None
    """The generator's CPU (percent of one core), median; None: the load ran in-node."""
    node_cpu_pct: float | None
    """For in-node load: the leader process's CPU (load included), median."""
    errors: int
    nodes_cpu_pct: float | None = None
    """The three nodes' CPU over the window, summed (percent of one core), median."""
    other_cpu_pct: float | None = None
    """The machine's busy CPU that was neither the nodes' nor the generator's, median."""


def median_min_max(values: Sequence[float]) -> tuple[float, float, float]:
    """``(median, min, max)``; zeros for no values."""
    if not values:
        return 0.0, 0.0, 0.0
    return float(statistics.median(values)), float(min(values)), float(max(values))


def _opt_median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(statistics.median(known)) if known else None


def summarize(records: Iterable[dict[str, Any]]) -> list[Summary]:
    """Group point records (``op``, ``concurrency``, ``system``, ``ops_per_s``,
    ``p50_ms``, ``p99_ms``, ``cpu_pct``, ``errors``, ``extra``) and take medians."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["op"], int(r["concurrency"]), r["system"])].append(r)
    out = []
    for (op, conc, system), rs in groups.items():
        ops = median_min_max([float(r["ops_per_s"]) for r in rs])
        p99 = median_min_max([float(r["p99_ms"]) for r in rs])
        node_cpu = [
            100.0 * r["extra"]["node_cpu_s"] / r["seconds"]
            for r in rs
            if r.get("extra", {}).get("node_cpu_s") is not None and r.get("seconds")
        ]
        nodes_pct, other_pct = [], []
        for r in rs:
            x = r.get("extra", {})
            if x.get("window_s"):
                nodes_pct.append(100.0 * x["nodes_cpu_s"] / x["window_s"])
                rest = x["host_busy_s"] - x["nodes_cpu_s"] - (r.get("cpu_s") or 0.0)
                other_pct.append(100.0 * max(0.0, rest) / x["window_s"])
        out.append(
            Summary(
                op=op,
                concurrency=conc,
                system=system,
                rounds=len(rs),
                ops_per_s=ops[0],
                ops_min=ops[1],
                ops_max=ops[2],
                p50_ms=median_min_max([float(r["p50_ms"]) for r in rs])[0],
                p99_ms=p99[0],
                p99_min=p99[1],
                p99_max=p99[2],
                cpu_pct=_opt_median(r.get("cpu_pct") for r in rs),
                node_cpu_pct=_opt_median(node_cpu),
                errors=sum(int(r.get("errors", 0)) for r in rs),
                nodes_cpu_pct=_opt_median(nodes_pct),
                other_cpu_pct=_opt_median(other_pct),
            )
        )
    order = {"put": 0, "get": 1}
    systems = {s: i for i, s in enumerate(LABELS)}
    out.sort(key=lambda s: (order.get(s.op, 9), s.concurrency, systems.get(s.system, 9)))
    return out


def _num(x: float) -> str:
    return f"{x:,.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


def _ms(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def cpu_cell(s: Summary) -> str:
    """The generator-CPU cell: ``37%``, ``96% SAT``, or the node's CPU for in-node load."""
    if s.cpu_pct is None:
        return "in-node" if s.node_cpu_pct is None else f"in-node ({s.node_cpu_pct:.0f}%)"
    mark = " SAT" if s.cpu_pct >= SATURATED_PCT else ""
    return f"{s.cpu_pct:.0f}%{mark}"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]  # fmt: skip
    right = [i >= 2 for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def render_table(summaries: Sequence[Summary], markdown: bool = False) -> str:
    """Throughput (median [min-max]), p50/p99 latency (medians) and generator CPU."""
    header = ["op", "system", "conc", "ops/s median [min-max]", "p50 ms", "p99 ms",
              "gen CPU", "nodes CPU", "other CPU", "errors"]  # fmt: skip
    rows = []
    for s in summaries:
        op = OP_LABELS.get(s.op, s.op)
        if s.op == "get" and s.system == "pysyncobj":
            op = "get*"
        rows.append([
            op,
            LABELS.get(s.system, s.system),
            str(s.concurrency),
            f"{_num(s.ops_per_s)} [{_num(s.ops_min)}-{_num(s.ops_max)}]",
            _ms(s.p50_ms),
            _ms(s.p99_ms),
            cpu_cell(s),
            _pct(s.nodes_cpu_pct),
            _pct(s.other_cpu_pct),
            str(s.errors),
        ])  # fmt: skip
    return _grid(header, rows, markdown)


def ratios(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    """Per (op, concurrency): each system's median ops/s, and quorumkv's over the others'."""
    by: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for s in summaries:
        by[(s.op, s.concurrency)][s.system] = s.ops_per_s
    out = []
    for (op, conc), systems in by.items():
        row: dict[str, Any] = {"op": op, "concurrency": conc, "ops_per_s": dict(systems)}
        q = systems.get("quorumkv")
        for other in ("etcd", "pysyncobj"):
            o = systems.get(other)
            row[f"quorumkv/{other}"] = q / o if q is not None and o else None
        out.append(row)
    return out


def render_ratios(summaries: Sequence[Summary], markdown: bool = False) -> str:
    header = ["op", "conc", "quorumkv", "etcd", "PySyncObj", "quorumkv/etcd",
              "quorumkv/PySyncObj"]  # fmt: skip
    rows = []
    for r in ratios(summaries):
        ops = r["ops_per_s"]

        def cell(name: str, ops: dict[str, float] = ops) -> str:
            return _num(ops[name]) if name in ops else "-"

        def ratio(key: str, r: dict[str, Any] = r) -> str:
            return "-" if r[key] is None else f"{r[key]:.2f}x"

        rows.append([r["op"], str(r["concurrency"]), cell("quorumkv"), cell("etcd"),
                     cell("pysyncobj"), ratio("quorumkv/etcd"),
                     ratio("quorumkv/pysyncobj")])  # fmt: skip
    return _grid(header, rows, markdown)


def render_failover(failover: dict[str, list[float]], markdown: bool = False) -> str:
    header = ["system", "tries", "median s", "min s", "max s"]
    rows = []
    for system, times in failover.items():
        med, lo, hi = median_min_max(times)
        rows.append([LABELS.get(system, system), str(len(times)), f"{med:.3f}", f"{lo:.3f}",
                     f"{hi:.3f}"])  # fmt: skip
    return _grid(header, rows, markdown)


def render_memory(memory: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    header = ["system", "keys", "RSS sum MiB", "RSS per node MiB", "disk MiB", "load s"]
    rows = []
    for system, m in memory.items():
        per = ", ".join(f"{b / 2**20:.0f}" for b in m["rss_bytes"].values())
        rows.append([
            LABELS.get(system, system),
            _num(m["keys"]),
            f"{sum(m['rss_bytes'].values()) / 2**20:.0f}",
            per,
            f"{m['disk_bytes'] / 2**20:.0f}",
            f"{m['load_s']:.0f}",
        ])  # fmt: skip
    return _grid(header, rows, markdown)


def summarize_profile(collapsed: str, top: int = 15, entry: float = 0.97) -> dict[str, Any]:
    """py-spy's raw (collapsed) output as the top functions by own and by total samples.

    Each line is ``frame;frame;...;leaf COUNT``; a frame is ``function (file:line)``.
    Lines are dropped from frames, so a function counts once whatever line it was on;
    a function counts once per stack for its total, however deep its recursion. The
    entry chain (frames on at least ``entry`` of all samples: ``<module>``, ``main``,
    the event loop's ``run``) is listed apart and left out of the total ranking.
    """
    own: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for f in set(frames):
            total[f] += count

    def best(table: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return [{"function": f, "samples": n, "pct": 100.0 * n / samples} for f, n in ranked]

    chain = sorted(f for f, n in total.items() if samples and n >= entry * samples)
    inner = {f: n for f, n in total.items() if f not in chain}
    return {"samples": samples, "own": best(own), "total": best(inner), "entry": chain}


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``."""
    frame = frame.strip()
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0] if ":" in where else where
    return f"{name} ({path.rsplit('/', 1)[-1]})"


def render_profile(profile: dict[str, Any], markdown: bool = False) -> str:
    parts = []
    for kind in ("own", "total"):
        rows = [[str(i + 1), e["function"], str(e["samples"]), f"{e['pct']:.1f}%"]
                for i, e in enumerate(profile[kind])]  # fmt: skip
        title = f"by {kind} time ({profile['samples']} samples"
        if profile.get("possible_samples"):
            busy = 100.0 * profile["samples"] / profile["possible_samples"]
            title += f" of {profile['possible_samples']}: not idle {busy:.0f}% of the window"
        title += ")"
        parts.append((f"**{title}**\n\n" if markdown else f"{title}:\n")
                     + _grid(["#", "function", "samples", "share"], rows, markdown))  # fmt: skip
    if profile.get("entry"):
        parts.append("entry chain, on every stack, left out of the totals: "
                     + "; ".join(profile["entry"]))  # fmt: skip
    return "\n\n".join(parts)


def render_all(doc: dict[str, Any], markdown: bool = False) -> str:
    """The whole report from the JSON document ``write_report`` writes."""
    summaries = [Summary(**s) for s in doc["summary"]]

    def h(title: str) -> str:
        return f"## {title}\n" if markdown else f"== {title} =="

    out = []
    if markdown:
        out.append(f"# qkv bench compare, {doc['config']['started']}\n")
    out += [h("throughput and latency"), render_table(summaries, markdown), ""]
    out += [h("quorumkv's throughput over the others' (medians)"),
            render_ratios(summaries, markdown), ""]  # fmt: skip
    if doc.get("failover"):
        out += [h("failover: kill -9 of the leader to the next acknowledged write"),
                render_failover(doc["failover"], markdown), ""]  # fmt: skip
    if doc.get("memory"):
        out += [h("memory after loading"), render_memory(doc["memory"], markdown), ""]
    for name, prof in doc.get("profiles", {}).items():
        out += [h(f"profile: {name}"), render_profile(prof, markdown), ""]
    out += [h("notes")]
    out += [f"- {n}" for n in doc.get("notes", [])]
    return "\n".join(out).rstrip() + "\n"


def write_report(out_dir: Path, doc: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "results.json", out_dir / "results.md"
    js.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md.write_text(render_all(doc, markdown=True))
    return js, md


def summary_dicts(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    return [asdict(s) for s in summaries]
