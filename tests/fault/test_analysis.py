"""The verdict pipeline on fabricated histories: unavailability windows, the summary,
and planted violations that must be caught."""

from __future__ import annotations

import json

import pytest
from fault_helpers import rec, stale_read

from quorumkv.sim._linearizability import OpKind
from quorumkv.torture import FaultInterval, Outcome, Record, analyze, unavailability


def _fi(i: int, kind: str, start: float, end: float) -> FaultInterval:
    return FaultInterval(i, kind, start, end)


def test_the_window_is_the_longest_write_gap_that_overlaps_the_fault() -> None:
    writes = [0.5, 1.0, 1.2, 4.0, 4.1, 9.0]
    faults = [_fi(0, "kill", 1.1, 2.0), _fi(1, "pause", 4.05, 4.07), _fi(2, "kill", 8.0, 8.5)]
    w = unavailability(writes, faults, 0.0, 10.0)
    assert (w["kill"].start, w["kill"].end, w["kill"].fault) == (4.1, 9.0, 2)
    assert w["kill"].length == pytest.approx(4.9)  # fault 0 only saw 1.2-4.0
    assert (w["pause"].start, w["pause"].end) == (4.0, 4.1)
    # a gap must overlap the fault: one that merely ends when it starts does not count
    assert unavailability([1.0, 2.0, 3.0], [_fi(0, "x", 2.0, 2.5)], 0, 4)["x"].start == 2.0
    # no write at all after the fault: the gap runs to the end of the load
    tail = unavailability([1.0], [_fi(0, "kill", 2.0, 3.0)], 0.0, 10.0)["kill"]
    assert (tail.start, tail.end) == (1.0, 10.0)
    # writes outside [start, end] are ignored; no faults, no windows
    assert unavailability([-1.0, 11.0], [_fi(0, "k", 1, 2)], 0, 10)["k"].length == 10.0
    assert unavailability([1.0], [], 0, 10) == {}


def _good_history() -> list[Record]:
    return [
        rec(0, OpKind.PUT, b"a", 0.0, 1.0, value=b"0.1", client=0),
        rec(1, OpKind.PUT, b"a", 1.5, 2.0, value=b"1.1", client=1),
        rec(2, OpKind.GET, b"a", 2.1, 2.2, output=b"1.1", client=0),
        rec(3, OpKind.CAS, b"a", 2.3, 2.4, value=b"0.2", expected=b"1.1", output=True),
        rec(4, OpKind.CAS, b"a", 2.5, 2.6, value=b"1.2", expected=b"1.1", output=False),
        rec(5, OpKind.PUT, b"b", 2.0, None, value=b"2.1", client=2, outcome=Outcome.UNKNOWN),
        rec(6, OpKind.DELETE, b"b", 2.7, 2.9, client=1),
        rec(7, OpKind.GET, b"b", 3.0, 3.1, outcome=Outcome.FAIL, client=1),
        rec(8, OpKind.GET, b"a", 5.0, 5.1, output=b"0.2", client=-1),
        rec(9, OpKind.GET, b"b", 5.0, 5.1, output=b"2.1", client=-1),  # the unknown put landed
    ]


def test_a_linearizable_healthy_run_passes_and_its_summary_says_what_happened() -> None:
    s = analyze(
        _good_history(),
        [_fi(0, "kill-leader", 1.1, 1.4)],
        healthy=True,
        health=["3 nodes healthy"],
        meta={"seed": 1, "nodes": 3, "network": "loopback", "duration": 3.0},
        load_start=0.0,
        load_end=3.0,
    )
    assert s.passed and s.verdict == "PASS" and s.linearizable is True
    assert s.ops_checked == 9  # the failed read is dropped
    assert s.ops["put"] == {"ok": 2, "fail": 0, "unknown": 1}
    assert s.ops["get"] == {"ok": 1, "fail": 1, "unknown": 0}
    assert s.ops["final-get"]["ok"] == 2
    assert s.faults == {"kill-leader": 1}
    assert s.windows["kill-leader"].start == 1.0 and s.windows["kill-leader"].end == 2.0
    text = s.render()
    assert "verdict: PASS" in text and "kill-leader" in text and "tc netem" in text
    doc = s.to_json()
    assert json.loads(json.dumps(doc))["passed"] is True
    assert doc["unavailability"]["kill-leader"]["seconds"] == 1.0


def test_a_planted_stale_read_fails_the_run() -> None:
    history = _good_history()
    stale = stale_read(history)
    assert stale.key == b"a" and stale.output == b"0.1"
    s = analyze(
        [*history, stale],
        [],
        healthy=True,
        health=[],
        meta={},
        load_start=0.0,
        load_end=3.0,
    )
    assert s.linearizable is False and not s.passed
    assert s.verdict == "FAIL: history not linearizable"
    assert "key b'a' is not linearizable" in s.explanation
    assert "linearizable: NO" in s.render()


@pytest.mark.parametrize(
    "planted",
    [
        # a lost acknowledged write: the final read still shows the value before it
        rec(10, OpKind.GET, b"a", 6.0, 6.1, output=b"1.1", client=-1),
        # a CAS reported as swapped although the value it expected was gone
        rec(10, OpKind.CAS, b"a", 3.0, 3.1, value=b"9.9", expected=b"0.1", output=True),
        # a read of a value nobody wrote
        rec(10, OpKind.GET, b"b", 2.95, 2.99, output=b"never"),
    ],
)
def test_other_planted_violations_are_caught(planted: Record) -> None:
    s = analyze(
        [*_good_history(), planted],
        [],
        healthy=True,
        health=[],
        meta={},
        load_start=0.0,
        load_end=3.0,
    )
    assert s.linearizable is False, planted


def test_an_unhealthy_or_undecided_run_does_not_pass() -> None:
    history = _good_history()
    sick = analyze(
        history,
        [],
        healthy=False,
        health=["node 2 is not running"],
        meta={},
        load_start=0.0,
        load_end=3.0,
    )
    assert not sick.passed and sick.verdict == "FAIL: cluster not healthy"
    undecided = analyze(
        [*history, stale_read(history)],
        [],
        healthy=True,
        health=[],
        meta={},
        load_start=0.0,
        load_end=3.0,
        max_steps_per_key=1,
    )
    assert undecided.linearizable is None and not undecided.passed
    assert "budget" in undecided.verdict
