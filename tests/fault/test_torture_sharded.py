"""``qkv torture --sharded`` on loopback: 20 s of kills and pauses (of nodes, of the meta
range's leader and of ranges' leaders), forced range splits, leader transfers and a
node joining, against 3 real sharded node processes whose ranges also split by
themselves; then the verdict, checked from its files.

Every process is stopped by pid by the run itself (also when it fails); the test then
checks that none is left. Conditions are what the run recorded, not sleeps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fault_helpers import analyze_with_stale_read, pids_running_in

from quorumkv.cli import main
from quorumkv.torture import FaultKind, make_plan, read_history

SEED = 149
KINDS = "kill,kill-leader,pause,pause-leader,member,transfer,range-split"
DURATION = 20.0


def test_the_plan_of_this_seed_holds_every_kind_and_an_early_join() -> None:
    plan = make_plan(SEED, DURATION, [FaultKind(k) for k in KINDS.split(",")])
    assert {f.kind for f in plan} == {FaultKind(k) for k in KINDS.split(",")}
    joins = [f for f in plan if f.kind is FaultKind.MEMBER]
    assert len(joins) == 1 and joins[0].at < 5.0  # ranges have time to move to it
    assert len([f for f in plan if f.kind is FaultKind.RANGE_SPLIT]) >= 2


def test_sharded_kills_pauses_splits_and_a_join_on_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["torture", "--loopback", "--sharded", "--nodes", "3", "--seed", str(SEED)]
    argv += ["--duration", f"{DURATION:g}", "--faults", KINDS, "--out", str(out)]
    rc = main([*argv, "--recovery-timeout", "30"])
    printed = capsys.readouterr().out
    assert rc == 0, printed[-4000:]
    assert "verdict: PASS" in printed
    assert not pids_running_in(out)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True and summary["linearizable"] is True
    assert summary["healthy"] is True
    assert summary["sharded"] is True and summary["split_keys"] == 2
    assert summary["operations_checked"] > 500
    for kind in KINDS.split(","):
        assert summary["faults"].get(kind, 0) >= 1, summary["faults"]

    events = [json.loads(line) for line in (out / "faults.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] == "crash"], "a node exited by itself"
    done = {k: [e["detail"] for e in events if e["event"] == "done" and e["kind"] == k]
            for k in ("member", "transfer", "range-split")}  # fmt: skip
    assert any("joined: registered" in d for d in done["member"]), done["member"]
    assert any(d.startswith("split at") for d in done["range-split"]), done["range-split"]
    assert any("leader is now" in d for d in done["transfer"]), done["transfer"]
    leaders = [e["detail"] for e in events if e["event"] == "start" and "leader" in e["kind"]]
    assert leaders and all(re.search(r"leader of (the meta range|range \d+)", d) for d in leaders)

    # The end: 4 nodes (3 founders and the one that joined), whole, and the colliding
    # keys spread over several ranges (a split at the middle key before the load, then
    # the nodes' threshold of 2 keys and the forced splits).
    health = " ".join(summary["health"])
    assert "4 nodes healthy, the meta range's leader" in health, health
    found = re.search(r"the 5 torture keys lie in (\d+) of them", health)
    assert found is not None and int(found.group(1)) >= 3, health
    assert "split at 'k2'" in printed  # the harness's own first split

    records = read_history(out / "history.jsonl")
    finals = [r for r in records if r.client < 0]
    assert len(finals) == 5 and all(r.outcome.value == "ok" for r in finals)
    puts = [r.value for r in records if r.value is not None]
    assert len(puts) == len(set(puts)), "a value was written twice"

    # The same pipeline flags the same history once a stale read is planted in it.
    planted = analyze_with_stale_read(records, events)
    assert planted.linearizable is False and not planted.passed


def test_range_faults_need_a_sharded_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    assert main(["torture", "--faults", "range-split", "--out", str(out)]) == 1
    assert "need --sharded" in capsys.readouterr().err
    assert main(["torture", "--split-keys", "5", "--out", str(out)]) == 2
    assert "needs --sharded" in capsys.readouterr().err
    assert main(["torture", "--sharded", "--keys", "1", "--out", str(out)]) == 2
    assert "at least 2 --keys" in capsys.readouterr().err
    assert not (out / "cluster").exists()
