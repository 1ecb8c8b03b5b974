"""cluster.json and port allocation: no process, no server."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from quorumkv.errors import ServerError
from quorumkv.local import SPEC_FILE, ClusterSpec, NodeSpec, free_ports, read_spec
from quorumkv.local._spec import new_spec, write_spec


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports("127.0.0.1", 6)
    assert len(set(ports)) == 6
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_fixed_base_port_numbers_nodes_from_it() -> None:
    spec = new_spec("127.0.0.1", 3, 7001, None)
    assert [(n.id, n.addr, n.http) for n in spec.nodes] == [
        (1, "127.0.0.1:7001", "127.0.0.1:8001"),
        (2, "127.0.0.1:7002", "127.0.0.1:8002"),
        (3, "127.0.0.1:7003", "127.0.0.1:8003"),
    ]
    assert spec.founding_peers == "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
    assert new_spec("127.0.0.1", 1, 9000, 9500).nodes[0].http == "127.0.0.1:9500"


def test_free_ports_give_every_node_two_distinct_ports() -> None:
    spec = new_spec("127.0.0.1", 3, None, None)
    ports = [int(a.rsplit(":", 1)[1]) for n in spec.nodes for a in (n.addr, n.http)]
    assert len(set(ports)) == 6
    assert spec.base_port is None


def test_every_new_cluster_gets_its_own_token() -> None:
    assert new_spec("127.0.0.1", 3, 7001, None).token != new_spec("127.0.0.1", 3, 7001, None).token


def test_ports_out_of_range_are_refused() -> None:
    with pytest.raises(ServerError, match="port 65536 of node 2 is out of range"):
        new_spec("127.0.0.1", 3, 65535, 1000)


def test_an_added_node_follows_the_port_scheme_and_joins() -> None:
    spec = new_spec("127.0.0.1", 3, 7001, None)
    node = spec.next_node("127.0.0.1")
    assert (node.id, node.addr, node.http, node.join) == (
        4,
        "127.0.0.1:7004",
        "127.0.0.1:8004",
        True,
    )
    free = new_spec("127.0.0.1", 3, None, None).next_node("127.0.0.1")
    assert free.id == 4 and free.join


def test_founders_keep_the_founding_peers_and_joiners_get_everyone() -> None:
    # The server derives the cluster id from the founding --peers: it must never change.
    spec = new_spec("127.0.0.1", 3, 7001, None)
    grown = spec.with_node(spec.next_node("127.0.0.1")).without_node(2)
    founder, joiner = grown.node(1), grown.node(4)
    assert grown.peers_arg(founder) == spec.founding_peers
    assert grown.peers_arg(joiner) == "1=127.0.0.1:7001,3=127.0.0.1:7003,4=127.0.0.1:7004"


def test_cluster_json_round_trips(tmp_path: Path) -> None:
    spec = new_spec("127.0.0.1", 3, 7001, None)
    spec = spec.with_node(spec.next_node("127.0.0.1"))
    assert read_spec(tmp_path) is None
    write_spec(tmp_path, spec)
    assert read_spec(tmp_path) == spec
    assert [p.name for p in tmp_path.iterdir()] == [SPEC_FILE]  # no temporary file left


def test_cluster_json_records_whether_the_cluster_is_sharded(tmp_path: Path) -> None:
    spec = new_spec("127.0.0.1", 3, None, None, sharded=True)
    write_spec(tmp_path, spec)
    assert json.loads((tmp_path / SPEC_FILE).read_text())["sharded"] is True
    back = read_spec(tmp_path)
    assert back is not None and back.sharded is True
    assert new_spec("127.0.0.1", 1, None, None).sharded is False
    # A file written before the field existed does not say: None, whatever is asked.
    doc = json.loads((tmp_path / SPEC_FILE).read_text())
    del doc["sharded"]
    (tmp_path / SPEC_FILE).write_text(json.dumps(doc))
    old = read_spec(tmp_path)
    assert old is not None and old.sharded is None


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ([], "not a JSON object"),
        ({"format": 2}, "format 2 is not 1"),
        ({"format": 1, "nodes": [{"id": 1}]}, "no cluster token"),
        ({"format": 1, "token": "t", "nodes": []}, "no nodes"),
        ({"format": 1, "token": "t", "nodes": [{"id": 1, "addr": "a", "http": "h"}]},
         "no founding_peers"),
        ({"format": 1, "token": "t", "founding_peers": "1=a", "nodes": [{"id": "1"}]},
         "needs an integer id"),
        ({"format": 1, "token": "t", "founding_peers": "1=a",
          "nodes": [{"id": 1, "addr": "a", "http": "h"}] * 2}, "one node id appears twice"),
        ({"format": 1, "token": "t", "founding_peers": "1=a", "base_port": 7001,
          "nodes": [{"id": 1, "addr": "a", "http": "h"}]}, "both be set or both null"),
        ({"format": 1, "token": "t", "founding_peers": "1=a", "sharded": "yes",
          "nodes": [{"id": 1, "addr": "a", "http": "h"}]}, "sharded must be true, false"),
    ],
)  # fmt: skip
def test_a_damaged_cluster_json_is_named(tmp_path: Path, doc: object, why: str) -> None:
    (tmp_path / SPEC_FILE).write_text(json.dumps(doc))
    with pytest.raises(
        ServerError, match=f"{SPEC_FILE} is not a quorumkv local cluster file: .*{why}"
    ):
        read_spec(tmp_path)


def test_cluster_json_that_is_not_json_is_named(tmp_path: Path) -> None:
    (tmp_path / SPEC_FILE).write_text("{")
    with pytest.raises(ServerError, match=r"cluster\.json is not valid JSON"):
        read_spec(tmp_path)


def test_node_ids_are_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        NodeSpec(0, "a:1", "a:2")
    with pytest.raises(ValueError, match="both"):
        ClusterSpec("t", (), "", base_port=1)
