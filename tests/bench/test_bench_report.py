"""``quorumkv.bench._report``: medians over rounds, tables, ratios, profile summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quorumkv.bench._load import PointResult, percentile
from quorumkv.bench._report import (
    Summary,
    cpu_cell,
    median_min_max,
    ratios,
    render_all,
    render_ratios,
    render_table,
    summarize,
    summarize_profile,
    summary_dicts,
    write_report,
)


def rec(system: str, op: str, conc: int, ops: float, **kw: Any) -> dict[str, Any]:
    r = PointResult(
        ops=int(ops * 10),
        seconds=10.0,
        p50_ms=kw.pop("p50", 1.0),
        p99_ms=kw.pop("p99", 2.0),
        cpu_s=kw.pop("cpu_s", 1.0),
        **kw,
    )
    return {"system": system, "op": op, "concurrency": conc, "round": 1, **r.to_dict()}


def test_median_min_max() -> None:
    assert median_min_max([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert median_min_max([1.0, 4.0]) == (2.5, 1.0, 4.0)
    assert median_min_max([]) == (0.0, 0.0, 0.0)


def test_percentile_is_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 50) == 50.0
    assert percentile(xs, 99) == 99.0
    assert percentile(xs, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def test_summarize_takes_medians_over_rounds_and_orders_rows() -> None:
    records = [
        rec("etcd", "put", 1, 300.0),
        rec("quorumkv", "put", 1, 100.0, p99=5.0),
        rec("quorumkv", "put", 1, 300.0, p99=9.0),
        rec("quorumkv", "put", 1, 200.0, p99=7.0, errors=2),
        rec("quorumkv", "get", 1, 50.0),
    ]
    out = summarize(records)
    assert [(s.op, s.system) for s in out] == [
        ("put", "quorumkv"),
        ("put", "etcd"),
        ("get", "quorumkv"),
    ]
    q = out[0]
    assert (q.rounds, q.ops_per_s, q.ops_min, q.ops_max) == (3, 200.0, 100.0, 300.0)
    assert (q.p99_ms, q.p99_min, q.p99_max) == (7.0, 5.0, 9.0)
    assert q.errors == 2
    assert q.cpu_pct == 10.0  # 1 CPU second over 10 s
    assert q.node_cpu_pct is None


def test_in_node_load_shows_the_nodes_cpu_not_a_generator() -> None:
    r = rec("pysyncobj", "put", 64, 1000.0, cpu_s=None, extra={"node_cpu_s": 4.0})
    (s,) = summarize([r])
    assert s.cpu_pct is None
    assert s.node_cpu_pct == 40.0
    assert cpu_cell(s) == "in-node (40%)"


def test_a_saturated_generator_is_marked() -> None:
    (s,) = summarize([rec("quorumkv", "put", 256, 5000.0, cpu_s=9.5)])
    assert cpu_cell(s) == "95% SAT"
    (s,) = summarize([rec("quorumkv", "put", 256, 5000.0, cpu_s=3.0)])
    assert cpu_cell(s) == "30%"


def test_ratios_divide_quorumkvs_median_by_the_others() -> None:
    out = summarize(
        [
            rec("quorumkv", "put", 16, 3000.0),
            rec("etcd", "put", 16, 1500.0),
            rec("pysyncobj", "put", 16, 1000.0),
            rec("quorumkv", "get", 16, 100.0),
        ]
    )
    by = {(r["op"], r["concurrency"]): r for r in ratios(out)}
    assert by[("put", 16)]["quorumkv/etcd"] == 2.0
    assert by[("put", 16)]["quorumkv/pysyncobj"] == 3.0
    assert by[("get", 16)]["quorumkv/etcd"] is None
    text = render_ratios(out)
    assert "2.00x" in text and "3.00x" in text
    assert text.splitlines()[0].split() == [
        "op",
        "conc",
        "quorumkv",
        "etcd",
        "PySyncObj",
        "quorumkv/etcd",
        "quorumkv/PySyncObj",
    ]


def test_table_text_is_aligned_and_markdown_is_a_table() -> None:
    out = summarize([rec("quorumkv", "put", 1, 1234.0), rec("pysyncobj", "get", 1, 20.0)])
    lines = render_table(out).splitlines()
    assert len({len(line) for line in lines[:2]}) == 1  # the rule is as wide as the header
    assert "1,234 [1,234-1,234]" in lines[2]
    assert lines[3].startswith("get*")  # PySyncObj's get is marked: a replicated read
    md = render_table(out, markdown=True).splitlines()
    assert md[0].startswith("| op | system | conc |")
    assert md[1].startswith("|---|")
    assert all(line.startswith("|") and line.endswith("|") for line in md)


def test_profile_summary_counts_own_and_total_per_function() -> None:
    collapsed = "\n".join(
        [
            'process 1:"python";main (a.py:1);loop (a.py:5);fsync (b.py:9) 6',
            'process 1:"python";main (a.py:1);loop (a.py:6);encode (c.py:3) 3',
            'process 1:"python";main (a.py:1);loop (a.py:5);loop (a.py:5) 1',
            "garbage line",
        ]
    )
    prof = summarize_profile(collapsed, top=3)
    assert prof["samples"] == 10
    own = {e["function"]: e["samples"] for e in prof["own"]}
    assert own == {"fsync (b.py)": 6, "encode (c.py)": 3, "loop (a.py)": 1}
    assert prof["entry"] == ["loop (a.py)", "main (a.py)"]  # on every stack
    total = {e["function"]: e["samples"] for e in prof["total"]}
    assert total == {"fsync (b.py)": 6, "encode (c.py)": 3}
    prof = summarize_profile(collapsed, entry=1.1)
    total = {e["function"]: e["samples"] for e in prof["total"]}
    assert total["loop (a.py)"] == 10  # recursion counts once per stack
    assert prof["own"][0]["pct"] == 60.0


def test_write_report_writes_json_and_markdown(tmp_path: Path) -> None:
    records = [rec("quorumkv", "put", 1, 100.0), rec("etcd", "put", 1, 50.0)]
    doc = {
        "config": {"started": "2026-01-01 00:00:00"},
        "records": records,
        "summary": summary_dicts(summarize(records)),
        "failover": {"quorumkv": [0.5, 0.7, 0.6]},
        "memory": {
            "etcd": {
                "keys": 1000,
                "rss_bytes": {"a": 2**20, "b": 2**21},
                "disk_bytes": 2**22,
                "load_s": 3.0,
            }
        },
        "profiles": {},
        "notes": ["PySyncObj does NOT fsync"],
    }
    js, md = write_report(tmp_path / "out", doc)
    assert json.loads(js.read_text())["records"][0]["ops_per_s"] == 100.0
    text = md.read_text()
    assert text.startswith("# qkv bench compare")
    assert "| quorumkv | 3 | 0.600 | 0.500 | 0.700 |" in text
    assert "| etcd | 1,000 | 3 | 1, 2 | 4 | 3 |" in text
    assert "- PySyncObj does NOT fsync" in text
    assert "2.00x" in render_all(doc)


def test_summary_round_trips_through_json() -> None:
    (s,) = summarize([rec("quorumkv", "put", 1, 100.0)])
    assert Summary(**json.loads(json.dumps(summary_dicts([s])))[0]) == s
