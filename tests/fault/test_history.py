"""Recording a history: outcomes, what the checker sees, and the JSON lines format."""

from __future__ import annotations

import threading
from pathlib import Path

from fault_helpers import rec

from quorumkv.errors import (
    CompareFailedError,
    KVLimitError,
    MalformedRequestError,
    NotLeaderError,
    RequestTimeoutError,
    TooManyRequestsError,
    UnavailableError,
)
from quorumkv.sim._linearizability import OpKind
from quorumkv.torture import Outcome, Recorder, classify, operations, read_history, write_history


def test_a_write_error_is_unknown_unless_it_certainly_did_nothing() -> None:
    # After retries, these only say that the *last* attempt did nothing.
    for error in (
        UnavailableError("x"),
        NotLeaderError("x"),
        RequestTimeoutError("x"),
        TooManyRequestsError("x"),
        ConnectionResetError("a contract breach"),
    ):
        for kind in (OpKind.PUT, OpKind.DELETE, OpKind.CAS):
            assert classify(kind, error) == (Outcome.UNKNOWN, None), (kind, error)
    limit = KVLimitError("value size", 10, 11)
    assert classify(OpKind.PUT, limit) == (Outcome.FAIL, None)
    assert classify(OpKind.PUT, MalformedRequestError("x")) == (Outcome.FAIL, None)
    assert classify(OpKind.CAS, CompareFailedError(b"k", b"v")) == (Outcome.OK, False)
    assert classify(OpKind.GET, RequestTimeoutError("x")) == (Outcome.FAIL, None)


def test_the_recorder_times_and_closes_every_operation() -> None:
    ticks = iter(float(t) for t in range(1, 100))
    r = Recorder(lambda: next(ticks))
    a = r.invoke(1, OpKind.PUT, b"k", b"1.1")  # t=1
    b = r.invoke(2, OpKind.GET, b"k")  # t=2
    c = r.invoke(3, OpKind.CAS, b"k", b"3.1", b"1.1")  # t=3
    d = r.invoke(4, OpKind.DELETE, b"k")  # t=4, never answered
    e = r.invoke(5, OpKind.PUT, b"k", b"5.1")  # t=5
    r.ok(a)  # t=6
    r.ok(b, b"1.1")  # t=7
    r.error(c, CompareFailedError(b"k", b"5.1"))  # t=8
    r.error(e, UnavailableError("gave up"))  # t=9
    assert r.counts() == {Outcome.OK: 3, Outcome.FAIL: 0, Outcome.UNKNOWN: 2}
    recs = r.records()
    assert [x.id for x in recs] == [a, b, c, d, e]
    assert (recs[0].invoke, recs[0].complete, recs[0].outcome) == (1.0, 6.0, Outcome.OK)
    assert recs[1].output == b"1.1"
    assert (recs[2].outcome, recs[2].output) == (Outcome.OK, False)
    assert recs[3].complete is None and recs[3].outcome is Outcome.UNKNOWN
    assert recs[4].complete == 9.0 and "UnavailableError: gave up" in recs[4].error
    ops = operations(recs)
    assert len(ops) == 5
    assert ops[3].complete is None and ops[4].complete is None  # unknown: pending forever
    assert ops[2].output is False


def test_failed_reads_and_failed_writes_constrain_nothing() -> None:
    history = [
        rec(0, OpKind.GET, b"k", 1.0, 2.0, outcome=Outcome.FAIL),
        rec(1, OpKind.GET, b"k", 1.0, None, outcome=Outcome.UNKNOWN),
        rec(2, OpKind.PUT, b"k", 1.0, 2.0, value=b"v", outcome=Outcome.FAIL),
        rec(3, OpKind.PUT, b"k", 1.0, 2.0, value=b"w", outcome=Outcome.UNKNOWN),
    ]
    ops = operations(history)
    assert [(o.kind, o.value, o.complete) for o in ops] == [(OpKind.PUT, b"w", None)]


def test_the_recorder_is_thread_safe() -> None:
    r = Recorder(lambda: 0.0)

    def work() -> None:
        for _ in range(500):
            r.ok(r.invoke(0, OpKind.GET, b"k"), None)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = r.records()
    assert len(recs) == 2000 and len({x.id for x in recs}) == 2000
    assert r.counts()[Outcome.OK] == 2000


def test_history_round_trips_through_json_lines(tmp_path: Path) -> None:
    history = [
        rec(0, OpKind.PUT, b"k\xff", 1.0, 2.0, value=b"\x00v\xfe"),
        rec(1, OpKind.GET, b"k\xff", 2.5, 3.0, output=b"\x00v\xfe"),
        rec(2, OpKind.GET, b"k\xff", 2.5, 3.0, output=None),
        rec(3, OpKind.CAS, b"k", 1.0, 2.0, value=b"n", expected=None, output=True),
        rec(4, OpKind.CAS, b"k", 1.0, None, value=b"m", expected=b"n", outcome=Outcome.UNKNOWN),
        rec(5, OpKind.DELETE, b"k", 4.0, 5.5, client=-1),
    ]
    path = tmp_path / "history.jsonl"
    assert write_history(path, history) == 6
    assert read_history(path) == history
    path.write_text(path.read_text() + '{"id": "x"}\n')
    try:
        read_history(path)
    except ValueError as e:
        assert "history.jsonl:7" in str(e)
    else:
        raise AssertionError("a bad line was read")
