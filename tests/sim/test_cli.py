"""`qkv sim` as a user runs it: the summary line, replays, and failing seeds."""

from __future__ import annotations

import re

import pytest

from quorumkv.cli import _sim_overrides, build_parser, main, replay_command
from quorumkv.sim import SimResult, Summary


def test_sim_prints_the_summary_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--seeds", "3", "--first-seed", "11", "--quiet", "--workers", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"seeds: 3, steps: \d+, faults: \d+, violations: 0", out[-1])


def test_replaying_one_seed_prints_its_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--seed", "11", "--trace"]) == 0
    out = capsys.readouterr().out
    assert "becomes leader in term" in out
    assert "client 1 invokes" in out
    assert out.strip().endswith("no violations")


def test_a_failing_seed_prints_how_to_replay_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = SimResult(5, 10, 1, 1, 1, "election safety violated: two leaders", [], [])

    def fake_run_many(*args: object, **kwargs: object) -> Summary:
        s = Summary()
        s.add(bad)
        return s

    monkeypatch.setattr("quorumkv.cli.run_many", fake_run_many)
    assert main(["sim", "--seeds", "1", "--quiet", "--nodes", "5"]) == 1
    out = capsys.readouterr().out
    assert "seed 5 failed: election safety violated" in out
    assert "replay: qkv sim --seed 5 --trace --nodes 5" in out
    assert out.strip().endswith("violations: 1")


def test_replay_command_parses_back_to_the_same_overrides() -> None:
    overrides = {
        "nodes": 5,
        "duration_us": 2_000_000,
        "lease_reads": True,
        "faults": ("crash", "split"),
    }
    cmd = replay_command(3, overrides)
    assert cmd.startswith("qkv sim --seed 3 --trace")
    args = build_parser().parse_args(cmd.split()[1:])
    assert args.seed == 3
    assert _sim_overrides(args) == overrides
    assert replay_command(3, {}) == "qkv sim --seed 3 --trace"


def test_unknown_fault_kind_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="unknown fault kinds"):
        main(["sim", "--seeds", "1", "--faults", "crash,meteor"])


def test_sharded_sim_prints_the_range_operations(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--sharded", "--seeds", "1", "--first-seed", "20", "--quiet", "--workers", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"seeds: 1, steps: \d+, faults: \d+, violations: 0", out[-1])
    assert re.fullmatch(
        r"splits: [1-9]\d*/\d+, moves: [1-9]\d*/\d+, leader transfers: [1-9]\d*/\d+, "
        r"wrong-range answers: \d+",
        out[-2],
    )


def test_sharded_replay_command_parses_back() -> None:
    overrides = {"sharded": True, "faults": ("crash", "range-split", "move")}
    cmd = replay_command(9, overrides)
    assert cmd.startswith("qkv sim --seed 9 --trace --sharded")
    args = build_parser().parse_args(cmd.split()[1:])
    assert _sim_overrides(args) == overrides
