"""``qkv torture`` on loopback: 20 s of kills, pauses, membership changes and leader
transfers against 3 real node processes, then the verdict, checked from its files.

Every process is stopped by pid by the run itself (also when it fails); the test then
checks that none is left. Conditions are what the run recorded, not sleeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fault_helpers import analyze_with_stale_read, pids_running_in

from quorumkv.cli import main
from quorumkv.torture import FaultKind, make_plan, read_history

SEED = 15
KINDS = "kill,kill-leader,pause,pause-leader,member,transfer"


def test_the_plan_of_this_seed_holds_every_process_fault() -> None:
    kinds = {f.kind for f in make_plan(SEED, 20.0, [FaultKind(k) for k in KINDS.split(",")])}
    assert kinds == {FaultKind(k) for k in KINDS.split(",")}


def test_kills_and_pauses_on_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["torture", "--loopback", "--nodes", "3", "--duration", "20", "--seed", str(SEED)]
    rc = main([*argv, "--faults", KINDS, "--out", str(out), "--recovery-timeout", "30"])
    printed = capsys.readouterr().out
    assert rc == 0, printed[-3000:]
    assert "verdict: PASS" in printed
    assert not pids_running_in(out)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True and summary["linearizable"] is True
    assert summary["healthy"] is True
    assert summary["operations_checked"] > 1000
    for kind in ("kill", "kill-leader", "pause", "pause-leader", "member", "transfer"):
        assert summary["faults"].get(kind, 0) >= 1, summary["faults"]
    # after a leader dies, writes resume within a few election timeouts
    assert summary["unavailability"]["kill-leader"]["seconds"] < 5.0, summary["unavailability"]

    events = [json.loads(line) for line in (out / "faults.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert {e["kind"] for e in starts} >= {"kill", "kill-leader", "pause", "pause-leader"}
    assert not [e for e in events if e["event"] == "crash"], "a node exited by itself"
    assert all(e["t"] >= 0 and e["wall"] for e in events)

    records = read_history(out / "history.jsonl")
    finals = [r for r in records if r.client < 0]
    assert len(finals) == 5 and all(r.outcome.value == "ok" for r in finals)
    assert len({r.client for r in records if r.client >= 0}) == 10
    puts = [r.value for r in records if r.value is not None]
    assert len(puts) == len(set(puts)), "a value was written twice"

    # The same pipeline flags the same history once a stale read is planted in it.
    planted = analyze_with_stale_read(records, events)
    assert planted.linearizable is False and not planted.passed
    assert "not linearizable" in planted.explanation


def test_impossible_requests_fail_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    assert main(["torture", "--faults", "isolate", "--out", str(out)]) == 1
    assert "need --netns" in capsys.readouterr().err
    assert main(["torture", "--faults", "slow", "--out", str(out)]) == 2
    assert "unknown fault kinds slow" in capsys.readouterr().err
    assert not (out / "cluster").exists()
