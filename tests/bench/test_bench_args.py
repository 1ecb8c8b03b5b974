"""``qkv bench compare``'s arguments, and the PySyncObj node script's, without clusters."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from quorumkv.bench import CompareConfig
from quorumkv.bench._etcd import member_argv
from quorumkv.bench._install import extra_requirements, install_hint, missing
from quorumkv.bench._load import LoadSpec, PointResult
from quorumkv.bench._pysyncobj_node import (
    COMPACTION_ENTRIES,
    build_parser,
    node_argv,
    node_conf,
    parse_args,
)
from quorumkv.cli import build_parser as qkv_parser
from quorumkv.cli import main
from quorumkv.cli._bench import config_from_args, count, int_list, seconds


def parse(*argv: str) -> CompareConfig:
    cfg: CompareConfig = config_from_args(qkv_parser().parse_args(["bench", "compare", *argv]))
    return cfg


def test_defaults_are_the_issues_run() -> None:
    cfg = parse()
    assert cfg.systems == ("quorumkv", "etcd", "pysyncobj")
    assert cfg.ops == ("put", "get")
    assert cfg.concurrencies == (1, 16, 64, 256)
    assert (cfg.duration, cfg.warmup, cfg.rounds) == (10.0, 2.0, 3)
    assert (cfg.keys, cfg.value_size) == (100_000, 100)
    assert (cfg.failover_tries, cfg.memory_keys) == (5, 1_000_000)
    assert cfg.out_dir.parent == Path("bench-results")
    assert cfg.pysyncobj_batch and not cfg.profile


def test_a_quick_run() -> None:
    cfg = parse(
        "--duration",
        "2",
        "--rounds",
        "1",
        "--concurrency",
        "1,64",
        "--systems",
        "etcd,quorumkv",
        "--memory-keys",
        "100k",
        "--failover-tries",
        "0",
        "--out",
        "x",
        "--no-pysyncobj-batch",
    )
    assert (cfg.duration, cfg.rounds, cfg.concurrencies) == (2.0, 1, (1, 64))
    assert cfg.systems == ("etcd", "quorumkv")  # the round order as given
    assert (cfg.memory_keys, cfg.failover_tries, cfg.out_dir) == (100_000, 0, Path("x"))
    assert not cfg.pysyncobj_batch
    assert cfg.points_per_round() == 2 * 2 * 2


def test_list_and_count_types() -> None:
    assert int_list("1, 16,16,256") == (1, 16, 256)
    assert count("1m") == 1_000_000 and count("100k") == 100_000 and count("42") == 42
    assert seconds("0.5") == 0.5
    for bad, fn in (
        ("0", int_list),
        ("x", int_list),
        (",", int_list),
        ("-1", count),
        ("1q", count),
        ("-2", seconds),
        ("nan", seconds),
        ("inf", seconds),
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            fn(bad)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--systems", "etcd,zookeeper"], "zookeeper"),
        (["--ops", "scan"], "scan"),
        (["--concurrency", "0"], "not positive"),
        (["--rounds", "0"], "--rounds"),
        (["--duration", "0"], "--duration"),
    ],
)
def test_bad_flags_are_one_usage_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["bench", "compare", *argv])  # refused after parsing: UsageError
    except SystemExit as e:  # refused by the parser
        code = e.code  # type: ignore[assignment]
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qkv: error: ") and says in err and len(err.splitlines()) == 1


def test_help_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "compare", "--help"])
    out = capsys.readouterr().out
    for flag in ("--duration", "--rounds", "--concurrency", "--install", "--memory-keys"):
        assert flag in out


def test_install_hint_and_requirements() -> None:
    hint = install_hint()
    assert "etcd-server etcd-client" in hint and "--install" in hint
    reqs = [
        "tqdm>=4.66,<5",
        'pytest>=8.0,<10; extra == "test"',
        'pysyncobj<0.4,>=0.3.12; extra == "bench"',
        "grpcio<2,>=1.60; extra == 'bench'",
    ]
    assert extra_requirements(reqs, "bench") == ["pysyncobj<0.4,>=0.3.12", "grpcio<2,>=1.60"]
    assert extra_requirements(reqs, "test") == ["pytest>=8.0,<10"]
    assert missing(("quorumkv",)) == []


def test_pysyncobj_node_arguments_round_trip(tmp_path: Path) -> None:
    argv = node_argv("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], tmp_path, 5000, False)
    assert argv[:2] == ["-m", "quorumkv.bench._pysyncobj_node"]
    args = parse_args(argv[2:])
    assert args.self_addr == "127.0.0.1:1"
    assert args.partner_list == ["127.0.0.1:2", "127.0.0.1:3"]
    conf = node_conf(args)
    assert conf["journalFile"] == str(tmp_path / "journal.bin")
    assert conf["fullDumpFile"] == str(tmp_path / "dump.bin")
    assert conf["logCompactionMinEntries"] == 5000
    assert conf["useFork"] is True and conf["appendEntriesUseBatch"] is False
    assert (conf["appendEntriesPeriod"], conf["raftMinTimeout"], conf["raftMaxTimeout"]) == (
        0.05,
        0.5,
        1.0,
    )


def test_pysyncobj_node_defaults() -> None:
    args = parse_args(["--self", "h:1", "--partners", "h:2,h:3", "--data-dir", "d"])
    assert args.compaction_entries == COMPACTION_ENTRIES
    assert node_conf(args)["appendEntriesUseBatch"] is True
    assert build_parser().prog.endswith("_pysyncobj_node")


@pytest.mark.parametrize(
    "argv",
    [
        ["--partners", ",", "--self", "h:1", "--data-dir", "d"],
        ["--partners", "h:1,h:2", "--self", "h:1", "--data-dir", "d"],
        ["--partners", "h:2", "--self", "h:1", "--data-dir", "d", "--election-min", "0.1"],
        ["--partners", "h:2", "--self", "h:1", "--data-dir", "d", "--compaction-entries", "1"],
    ],
)
def test_pysyncobj_node_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_etcd_member_command_line(tmp_path: Path) -> None:
    argv = member_argv(
        "etcd", "etcd1", tmp_path, "http://h:1", "http://h:2", "etcd1=http://h:2", "tok"
    )
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags["--name"] == "etcd1"
    assert flags["--listen-client-urls"] == flags["--advertise-client-urls"] == "http://h:1"
    assert flags["--listen-peer-urls"] == flags["--initial-advertise-peer-urls"] == "http://h:2"
    assert flags["--initial-cluster-state"] == "new"
    assert flags["--initial-cluster-token"] == "tok"
    assert "--unsafe-no-fsync" not in argv


def test_load_spec_and_result_round_trip() -> None:
    spec = LoadSpec("etcd", ("h:1",), "put", concurrency=16, duration=2.0)
    assert LoadSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="op must be"):
        LoadSpec("etcd", ("h:1",), "scan")
    with pytest.raises(ValueError, match="quorumkv or etcd"):
        LoadSpec("pysyncobj", ("h:1",), "put")
    r = PointResult(ops=500, seconds=2.0, cpu_s=1.0, p99_ms=3.0)
    assert (r.ops_per_s, r.cpu_pct) == (250.0, 50.0)
    assert PointResult.from_dict(r.to_dict()) == r
