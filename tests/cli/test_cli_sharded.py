"""``qkv ranges``, ``qkv split``, ``qkv status`` and ``qkv up --sharded`` without a real
cluster: the renderings, the arguments, and the commands run against the fake sharded
cluster of ``tests/client/fakeshard.py`` (real sockets, ranges with leaders)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from quorumkv.cli import build_parser, main
from quorumkv.cli._render import (
    META_NOTE,
    RANGES_HEADERS,
    RANGES_PER_NODE_HEADERS,
    _size,
    leaders_report,
    range_rows,
    ranges_per_node_rows,
    table,
)
from quorumkv.shard import Epoch, RangeDescriptor, RangeId, Replica

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))  # the fakes

from fakenode import Threaded, ThreadedCluster
from fakeshard import FakeShardedCluster

from quorumkv.consensus import NodeId


def _desc(rid: int, start: bytes, end: bytes, leader: int = 0) -> RangeDescriptor:
    replicas = (Replica(NodeId(1)), Replica(NodeId(2)), Replica(NodeId(4), learner=True))
    return RangeDescriptor(RangeId(rid), start, end, Epoch(1, 3), replicas, NodeId(leader))


def test_the_ranges_table_shows_what_the_leaders_report_and_dashes_for_the_rest() -> None:
    descs = [_desc(2, b"", b"m", leader=1), _desc(5, b"m", b"\xff\xfe", leader=2)]
    statuses: list[dict[str, Any]] = [
        {"id": 1, "ranges": [{"id": 2, "role": "leader", "keys": 12, "bytes": 3 << 20,
                              "applied": 40}, {"id": 5, "role": "follower"}]},
        {"id": 2, "error": "connection refused"},
    ]  # fmt: skip
    led = leaders_report(descs, statuses)
    assert led == [{"leader": 1, "keys": 12, "bytes": 3 << 20, "applied": 40}, {}]
    assert table(RANGES_HEADERS, range_rows(descs, led)).splitlines() == [
        "RANGE  START    END          VERSION  REPLICAS        LEADER  KEYS  SIZE     APPLIED",
        "2      (start)  m            3        1,2,4(learner)  1       12    3.0 MiB  40",
        "5      m        b'\\xff\\xfe'  3        1,2,4(learner)  2       -     -        -",
    ]  # fmt: skip


def test_sizes_are_for_people() -> None:
    assert [_size(n) for n in (0, 1023, 1024, 1536, 5 << 20, 3 << 40)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3072.0 GiB"]  # fmt: skip


def test_the_per_node_table_lists_the_ranges_each_node_leads() -> None:
    statuses: list[dict[str, Any]] = [
        {"id": 3, "ranges": [{"id": 2, "role": "follower"}, {"id": 4, "role": "leader"}]},
        {"id": 1, "ranges": [{"id": 2, "role": "leader"}, {"id": 4, "role": "follower"},
                             {"id": 7, "role": "leader"}]},
        {"id": 2, "error": "timed out"},
        {"id": 4, "ranges": []},
    ]  # fmt: skip
    assert table(RANGES_PER_NODE_HEADERS, ranges_per_node_rows(statuses)).splitlines() == [
        "NODE  RANGES  LEADS  LEADER OF",
        "1     3       2      2,7",
        "2     -       -      unreachable: timed out",
        "3     2       1      4",
        "4     0       0      -",
    ]


def test_the_sharded_commands_parse() -> None:
    p = build_parser()
    assert p.parse_args(["up", "--sharded"]).sharded is True
    assert p.parse_args(["up"]).sharded is False
    args = p.parse_args(["split", "user:5", "--endpoints", "h:1"])
    assert (args.key, args.endpoints) == ("user:5", "h:1")
    assert p.parse_args(["ranges", "--json"]).json is True


def test_split_needs_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["split"])
    assert e.value.code == 2
    assert "the following arguments are required: key" in capsys.readouterr().err


@pytest.fixture
def fake(tmp_path: Path) -> Any:
    with Threaded(lambda: FakeShardedCluster(tmp_path, 3, (b"g", b"p"))) as cl:
        yield cl


def test_qkv_ranges_prints_the_ranges_in_key_order(
    fake: FakeShardedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = ["--endpoints", fake[2].addr]
    assert main(["put", "apple", "1", *eps]) == 0
    assert main(["put", "zebra", "1", *eps]) == 0
    capsys.readouterr()
    assert main(["ranges", *eps]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == list(RANGES_HEADERS)
    assert [r[:3] + r[5:7] for r in rows[1:]] == [
        ["2", "(start)", "g", "1", "1"],
        ["3", "g", "p", "2", "0"],
        ["4", "p", "(end)", "3", "1"],
    ]
    assert main(["ranges", "--json", *eps]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(d["range"], d["start"], d["end"], d["leader"], d["keys"]) for d in doc] == [
        (2, "", "g", 1, 1), (3, "g", "p", 2, 0), (4, "p", "", 3, 1)]  # fmt: skip
    assert doc[0]["replicas"] == [{"node": n, "learner": False} for n in (1, 2, 3)]


def test_qkv_split_prints_both_halves_and_refusals_are_one_line(
    fake: FakeShardedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = ["--endpoints", fake[1].addr]
    assert main(["split", "kiwi", *eps]) == 0
    head, left, right = (line.split() for line in capsys.readouterr().out.splitlines())
    assert head == list(RANGES_HEADERS)
    assert left[:4] == ["3", "g", "kiwi", "4"] and right[:4] == ["5", "kiwi", "p", "4"]
    assert main(["split", "kiwi", *eps]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qkv: error: ") and "cannot split" in err[0]


def test_qkv_status_shows_the_meta_range_then_ranges_per_node(
    fake: FakeShardedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--endpoints", fake[3].addr]) == 0
    out = capsys.readouterr().out
    status, per_node = out.split(f"\n\n{META_NOTE}\n")
    assert [line.split()[:3] for line in status.splitlines()[1:]] == [
        [str(n), fake[n].addr, "leader" if n == 1 else "follower"] for n in (1, 2, 3)
    ]
    assert per_node.splitlines() == [
        "NODE  RANGES  LEADS  LEADER OF",
        "1     3       1      2",
        "2     3       1      3",
        "3     3       1      4",
    ]


def test_qkv_ranges_on_an_unsharded_cluster_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadedCluster(tmp_path) as cl:
        assert main(["ranges", "--endpoints", cl[1].addr]) == 1
        assert main(["split", "k", "--endpoints", cl[1].addr]) == 1
        assert main(["status", "--endpoints", cl[1].addr]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("this cluster is not sharded") == 2
    assert len(captured.err.strip().splitlines()) == 2
    assert META_NOTE not in captured.out
