"""``quorumkv.raft``: the seed request's example, run for real, and its JSON encoding."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from quorumkv import raft, sharding

SEED_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "seed_raft.py"
SEED_WHOLE = SEED_EXAMPLE.with_name("seed_sharding.py")


def test_the_seed_example_runs_and_prints_the_record() -> None:
    proc = subprocess.run(
        [sys.executable, str(SEED_EXAMPLE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "{'name': 'Alice', 'age': 30}\n"


def test_the_seeds_whole_example_writes_through_raft_and_reads_through_sharding() -> None:
    proc = subprocess.run(
        [sys.executable, str(SEED_WHOLE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "{'name': 'Alice', 'age': 30}\n"


SEED_AS_BRIEFED = """
from quorumkv import raft, sharding
cluster = raft.Cluster(nodes=3)
cluster.start()
def update_data(key, value):
    cluster.update_data(key, value)
update_data('user:1', {'name': 'Alice', 'age': 30})
sharded_cluster = sharding.Cluster(nodes=3)
sharded_cluster.start()
sharded_cluster.update_data('user:1', {'name': 'Alice', 'age': 30})
print(sharded_cluster.get_data('user:1'))
sharded_cluster.stop()
cluster.stop()
"""


def test_the_seed_example_writing_through_both_views_prints_the_record() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SEED_AS_BRIEFED],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "{'name': 'Alice', 'age': 30}\n"


def test_views_share_one_deployment_until_the_last_stops(tmp_path: Path) -> None:
    a = raft.Cluster(nodes=1)
    b = sharding.Cluster(nodes=1)
    alone = sharding.Cluster(nodes=1, data_dir=tmp_path / "alone")
    try:
        a.start()
        b.start()
        alone.start()
        assert a.local is b.local and a.endpoints == b.endpoints != alone.endpoints
        a.update_data("user:2", {"n": 2})
        assert b.get_data("user:2") == {"n": 2}
        assert alone.get_data("user:2") is None
        left, right = b.split("user:2")
        assert (left.end, right.start) == (b"user:2", b"user:2")
        assert [(d.start, d.end) for d in b.ranges()] == [(b"", b"user:2"), (b"user:2", b"")]
        assert a.get_data("user:2") == {"n": 2}  # the raft view routes through the split
        a.stop()
        assert b.get_data("user:2") == {"n": 2}  # b still holds the processes up
        procs = list(b.local.nodes.values())
    finally:
        a.stop()
        b.stop()
        alone.stop()
    assert procs and not any(p.alive for p in procs)
    c = raft.Cluster(nodes=1)  # a new view after the last stop starts afresh
    try:
        c.start()
        assert c.get_data("user:2") is None
    finally:
        c.stop()


def test_values_are_compact_utf8_json() -> None:
    assert raft.encode_value("k", {"name": "Zoë", "tags": [1, None]}) == (
        '{"name":"Zoë","tags":[1,null]}'.encode()
    )
    assert raft.decode_value("k", '[1,"é"]'.encode()) == [1, "é"]


@pytest.mark.parametrize(
    "value", [{1, 2}, b"raw", object(), math.nan, math.inf, {"nested": {"x": 1j}}]
)
def test_a_value_json_cannot_encode_is_a_type_error_naming_the_key(value: object) -> None:
    with pytest.raises(TypeError, match=r"cannot store the value for key 'user:7'.*not JSON"):
        raft.encode_value("user:7", value)


def test_a_circular_value_is_a_type_error_too() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="key 'a'"):
        raft.encode_value("a", loop)


@pytest.mark.parametrize("data", [b"world", b"\xff\xfe", b'{"a":'])
def test_stored_bytes_that_are_not_json_are_a_value_error_naming_the_key(data: bytes) -> None:
    with pytest.raises(ValueError, match="the value of key 'k' is not UTF-8 JSON"):
        raft.decode_value("k", data)


def test_a_cluster_must_be_started_before_use() -> None:
    cluster = raft.Cluster(nodes=3)
    with pytest.raises(RuntimeError, match="call start"):
        cluster.update_data("k", 1)
    cluster.stop()  # stopping what never started is fine
