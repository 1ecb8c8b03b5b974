"""How ``qkv`` shows answers: tables, the status table, key-values, txn results."""

from __future__ import annotations

from typing import Any

from quorumkv.cli._common import show
from quorumkv.cli._render import (
    STATUS_HEADERS,
    kv_json,
    kv_lines,
    members_table,
    status_rows,
    table,
    txn_lines,
)
from quorumkv.kv import (
    DeleteRangeResponse,
    KeyValue,
    PutResponse,
    RangeResponse,
    TxnResponse,
)


def test_a_table_pads_columns_and_shows_none_as_a_dash() -> None:
    assert table(("ID", "NAME", "NOTE"), [[1, "alpha", None], [22, "b", "long note"]]) == (
        "ID  NAME   NOTE\n1   alpha  -\n22  b      long note"
    )


def _status(node: int, role: str, commit: int, applied: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": node,
        "listen": f"127.0.0.1:700{node}",
        "role": role,
        "term": 4,
        "leader": 1,
        "commit": commit,
        "applied": applied,
        "http": f"127.0.0.1:800{node}",
        **extra,
    }


def test_status_rows_measure_lag_against_the_leaders_commit() -> None:
    members = [
        {"id": 1, "addr": "127.0.0.1:7001", "voter": True},
        {"id": 2, "addr": "127.0.0.1:7002", "voter": True},
        {"id": 3, "addr": "127.0.0.1:7003", "voter": False},
    ]
    statuses = [
        _status(3, "follower", 90, 80),
        _status(1, "leader", 100, 100, members=members),
        {"id": 4, "addr": "127.0.0.1:7004", "error": "connection refused"},
        _status(2, "follower", 100, 97),
    ]
    health = {1: (True, ""), 2: (False, "behind"), 3: (True, "")}
    text = table(STATUS_HEADERS, status_rows(statuses, health))
    assert text.splitlines() == [
        "ID  ADDRESS         ROLE         TERM  LEADER  COMMIT  APPLIED  LAG  HEALTH",
        "1   127.0.0.1:7001  leader       4     1       100     100      0    healthy",
        "2   127.0.0.1:7002  follower     4     1       100     97       3    unhealthy: behind",
        "3   127.0.0.1:7003  learner      4     1       90      80       20   healthy",
        "4   127.0.0.1:7004  unreachable  -     -       -       -        -    connection refused",
    ]


def test_without_a_leader_there_is_no_lag_and_no_leader() -> None:
    rows = status_rows([_status(1, "candidate", 5, 5, leader=0)])
    assert rows == [[1, "127.0.0.1:7001", "candidate", 4, "none", 5, 5, None, "-"]]


def test_members_table_sorts_by_id_and_names_learners() -> None:
    text = members_table(
        [{"id": 2, "addr": "h:2", "voter": False}, {"id": 1, "addr": "h:1", "voter": True}]
    )
    assert text == "ID  ADDRESS  ROLE\n1   h:1      voter\n2   h:2      learner"


def test_values_show_as_text_when_utf8_else_as_repr() -> None:
    assert show("héllo".encode()) == "héllo"
    assert show(b"\xff\x00") == "b'\\xff\\x00'"
    kvs = [KeyValue(b"a", b"1", 2, 2, 1), KeyValue(b"b", b"\xff", 3, 3, 1)]
    assert kv_lines(kvs) == ["a", "1", "b", "b'\\xff'"]
    assert kv_lines(kvs, keys_only=True) == ["a", "b"]


def test_kv_json_falls_back_to_base64_per_field() -> None:
    assert kv_json(KeyValue(b"k", b"v", 2, 5, 3, 0)) == {
        "key": "k",
        "value": "v",
        "create_revision": 2,
        "mod_revision": 5,
        "version": 3,
        "lease": 0,
    }
    doc = kv_json(KeyValue(b"k", b"\xff", 2, 2, 1))
    assert doc["key"] == "k" and doc["value_base64"] == "/w==" and "value" not in doc


def test_txn_lines_name_the_branch_then_each_answer() -> None:
    resp = TxnResponse(
        7,
        True,
        (
            PutResponse(7),
            RangeResponse(7, (KeyValue(b"k", b"v", 2, 7, 2),), count=1),
            DeleteRangeResponse(7, deleted=2),
        ),
    )
    assert txn_lines(resp) == ["SUCCESS", "OK", "k", "v", "2"]
    assert txn_lines(TxnResponse(7, False)) == ["FAILURE"]
