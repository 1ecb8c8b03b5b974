"""Tests for the key-value register linearizability checker.

Hand-written histories pin the semantics; two property tests check the search: random
tiny histories against a brute-force oracle over all orders, and real sequential
executions blurred into overlapping intervals (must pass) then corrupted (must fail).
"""

import dataclasses
import itertools
import random
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quorumkv.sim._linearizability import (
    CheckResult,
    Operation,
    OpKind,
    check_history,
    describe_operation,
)

K = b"k"
A, B, C = b"a", b"b", b"c"


def put(v: bytes, t0: float, t1: float | None, *, key: bytes = K, client: int = 0) -> Operation:
    return Operation(client, key, OpKind.PUT, value=v, invoke=t0, complete=t1)


def delete(t0: float, t1: float | None, *, key: bytes = K, client: int = 0) -> Operation:
    return Operation(client, key, OpKind.DELETE, invoke=t0, complete=t1)


def get(out: bytes | None, t0: float, t1: float, *, key: bytes = K, client: int = 0) -> Operation:
    return Operation(client, key, OpKind.GET, output=out, invoke=t0, complete=t1)


def cas(
    exp: bytes | None,
    new: bytes,
    out: bool | None,
    t0: float,
    t1: float | None,
    *,
    key: bytes = K,
    client: int = 0,
) -> Operation:
    return Operation(
        client, key, OpKind.CAS, value=new, expected=exp, output=out, invoke=t0, complete=t1
    )


def assert_ok(ops: list[Operation]) -> None:
    result = check_history(ops)
    assert result == CheckResult(ok=True, key=None, explanation=""), result.explanation


def assert_bad(ops: list[Operation], key: bytes = K) -> CheckResult:
    result = check_history(ops)
    assert not result.ok
    assert not result.timed_out
    assert result.key == key
    assert repr(key) in result.explanation
    return result


# --- linearizable histories -------------------------------------------------------------


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([], id="empty"),
        pytest.param([get(None, 0, 1)], id="initially-absent"),
        pytest.param([put(A, 0, 1), get(A, 2, 3), put(B, 4, 5), get(B, 6, 7)], id="sequential"),
        pytest.param([put(A, 0, 1), delete(2, 3), get(None, 4, 5)], id="delete"),
        # the later-invoked PUT b linearizes first: order b, a, then read a
        pytest.param([put(A, 0, 10), put(B, 1, 2), get(A, 3, 4)], id="reorder-concurrent"),
        # reads inside one long write may see it or not, but never un-see it
        pytest.param([put(A, 0, 10), get(None, 1, 2), get(A, 3, 4), get(A, 5, 6)], id="in-write"),
        pytest.param(
            [put(A, 0, 5), put(B, 1, 6), get(A, 2, 3), get(B, 4, 7), get(B, 8, 9)],
            id="two-overlapping-writes",
        ),
        pytest.param(
            [put(A, 0, 1), cas(A, B, True, 2, 5), cas(A, C, False, 2, 5), get(B, 6, 7)],
            id="cas-race-one-wins",
        ),
        pytest.param([cas(None, A, True, 0, 1), cas(None, B, False, 2, 3)], id="cas-absent"),
        # intervals that only touch are concurrent: the GET may precede the PUT
        pytest.param([put(A, 0, 1), get(None, 1, 2)], id="touching-is-concurrent"),
        pytest.param([put(A, 3, 3), get(A, 3, 3), get(A, 3, 4)], id="zero-length-ops"),
    ],
)
def test_linearizable(ops: list[Operation]) -> None:
    assert_ok(ops)


# --- non-linearizable histories ---------------------------------------------------------


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([put(A, 0, 1), put(B, 2, 3), get(A, 4, 5)], id="stale-read"),
        pytest.param([put(A, 0, 1), get(None, 2, 3)], id="lost-write"),
        pytest.param([put(A, 0, 1), delete(2, 3), get(A, 4, 5)], id="lost-delete"),
        pytest.param([put(A, 0, 1), get(C, 2, 3)], id="read-never-written"),
        pytest.param([get(A, 0, 1), put(A, 2, 3)], id="read-from-future"),
        pytest.param(
            [put(A, 0, 10), put(B, 0, 10), get(A, 1, 2), get(B, 3, 4), get(A, 5, 6)],
            id="flip-flop",
        ),
        pytest.param(
            [put(A, 0, 1), cas(A, B, True, 2, 5), cas(A, C, True, 2, 5)],
            id="two-cas-from-same-expected",
        ),
        pytest.param([put(A, 0, 1), cas(A, B, False, 2, 3)], id="cas-wrongly-failed"),
        pytest.param([put(A, 0, 1), cas(None, B, True, 2, 3)], id="cas-absent-but-present"),
        pytest.param(
            [put(A, 0, 1), cas(A, B, True, 2, 3), get(A, 4, 5)], id="cas-swap-not-visible"
        ),
    ],
)
def test_not_linearizable(ops: list[Operation]) -> None:
    assert_bad(ops)


# --- unknown outcomes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([put(A, 0, 1), put(B, 2, None), get(B, 10, 11)], id="put-took-effect"),
        pytest.param([put(A, 0, 1), put(B, 2, None), get(A, 10, 11)], id="put-never-did"),
        pytest.param(
            [put(A, 0, 1), put(B, 2, None), get(A, 10, 11), get(B, 12, 13)], id="put-late"
        ),
        pytest.param([put(A, 0, 1), delete(2, None), get(None, 5, 6)], id="delete-took-effect"),
        pytest.param([put(A, 0, 1), cas(A, B, None, 2, None), get(B, 5, 6)], id="cas-swapped"),
        pytest.param([put(A, 0, 1), cas(A, B, None, 2, None), get(A, 5, 6)], id="cas-did-not"),
        # the only explanation for the read of b is the unknown PUT, before the CAS
        pytest.param(
            [put(A, 0, 1), put(B, 2, None), cas(B, C, True, 3, 4), get(C, 5, 6)],
            id="unknown-put-explains-cas",
        ),
        pytest.param(
            [Operation(0, K, OpKind.GET, invoke=0.0), put(A, 1, 2), get(A, 3, 4)],
            id="unknown-get-dropped",
        ),
        pytest.param([Operation(0, K, OpKind.GET, invoke=5.0)], id="only-unknown-get"),
    ],
)
def test_unknown_outcome_linearizable(ops: list[Operation]) -> None:
    assert_ok(ops)


@pytest.mark.parametrize(
    "ops",
    [
        # once seen, an unknown write cannot be undone by the earlier write
        pytest.param(
            [put(A, 0, 1), put(B, 2, None), get(B, 10, 11), get(A, 12, 13)], id="put-undone"
        ),
        pytest.param([put(A, 0, 1), get(B, 2, 3), put(B, 5, None)], id="put-before-invoke"),
        # an unknown CAS swaps only if the state matches at its linearization point
        pytest.param([put(C, 0, 1), cas(A, B, None, 2, None), get(B, 5, 6)], id="cas-mismatch"),
        # known ops after the unknown one still constrain each other
        pytest.param(
            [put(A, 0, 1), put(B, 2, None), put(C, 3, 4), get(A, 5, 6)], id="known-still-checked"
        ),
    ],
)
def test_unknown_outcome_not_linearizable(ops: list[Operation]) -> None:
    assert_bad(ops)


# --- multiple keys, explanation, budget -------------------------------------------------


def test_only_the_bad_key_is_named() -> None:
    x, y, z = b"x", b"y", b"z"
    ops = [
        put(A, 0, 1, key=x),
        put(A, 0, 1, key=y),
        put(B, 0, 10, key=z),
        get(A, 2, 3, key=x),
        put(B, 2, 3, key=y),
        get(A, 4, 5, key=y),  # stale: y was overwritten with b
        get(A, 4, 5, key=x),
        get(B, 11, 12, key=z),
    ]
    result = assert_bad(ops, key=y)
    assert "b'x'" not in result.explanation
    assert "b'z'" not in result.explanation
    # the first bad key in order of first appearance is reported
    assert_bad([get(C, 0, 1, key=z), *ops], key=z)


def test_keys_are_independent() -> None:
    # per key this is fine; a check mixing keys into one register would fail
    ops = [put(A, 0, 1, key=b"x"), put(B, 2, 3, key=b"y"), get(A, 4, 5, key=b"x")]
    assert_ok(ops)


def test_explanation_lists_ops_by_invoke_and_the_longest_prefix() -> None:
    ops = [get(A, 6, 7, client=2), put(B, 2, 3, client=1), put(A, 0, 1, client=3)]
    text = assert_bad(ops).explanation
    lines = text.splitlines()
    assert lines[0].startswith("key b'k' is not linearizable")
    assert lines[1] == "operations by invoke time (3):"
    assert lines[2:5] == [
        "  #0   client 3 PUT b'a' [0, 1]",
        "  #1   client 1 PUT b'b' [2, 3]",
        "  #2   client 2 GET -> b'a' [6, 7]",
    ]
    assert lines[5] == "longest linearizable prefix found (2 of 3 ops):"
    assert lines[6:8] == [
        "  #0   client 3 PUT b'a' [0, 1]  => b'a'",
        "  #1   client 1 PUT b'b' [2, 3]  => b'b'",
    ]
    assert lines[8] == "not in that prefix: #2"


def test_describe_operation() -> None:
    assert describe_operation(cas(None, A, True, 1.5, 2)) == (
        "client 0 CAS b'k' absent -> b'a' swapped [1.5, 2]"
    )
    assert describe_operation(cas(A, B, None, 1, None), with_key=False) == (
        "client 0 CAS b'a' -> b'b' outcome unknown [1, ?]"
    )
    assert describe_operation(get(None, 0, 1)) == "client 0 GET b'k' -> absent [0, 1]"
    assert describe_operation(delete(0, None, client=4)) == "client 4 DELETE b'k' [0, ?]"


def many_concurrent_writes(key: bytes, n: int) -> list[Operation]:
    return [put(bytes([i]), 0, 100, key=key) for i in range(n)] + [get(b"\xff", 101, 102, key=key)]


def test_budget_exhausted_is_reported() -> None:
    result = check_history(many_concurrent_writes(K, 8), max_steps_per_key=50)
    assert not result.ok
    assert result.timed_out
    assert result.key == K
    assert "budget of 50 steps exhausted" in result.explanation
    # with the default budget the same history is decided
    assert not check_history(many_concurrent_writes(K, 8)).timed_out


def test_definite_violation_beats_timeout() -> None:
    ops = [*many_concurrent_writes(b"slow", 8), get(A, 0, 1, key=b"bad")]
    result = check_history(ops, max_steps_per_key=50)
    assert (result.ok, result.timed_out, result.key) == (False, False, b"bad")


def test_memoization_keeps_wide_concurrency_cheap() -> None:
    # 12 concurrent writes then a read of a value none wrote: 12! orders, 12 * 2**11 configs
    started = time.perf_counter()
    result = check_history(many_concurrent_writes(K, 12))
    assert (result.ok, result.timed_out) == (False, False)
    assert time.perf_counter() - started < 2.0


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": OpKind.PUT, "value": A, "invoke": 2.0, "complete": 1.0}, "complete < invoke"),
        ({"kind": OpKind.PUT, "invoke": 0.0, "complete": 1.0}, "PUT needs value"),
        ({"kind": OpKind.PUT, "value": A, "output": A, "complete": 1.0}, "output must be None"),
        ({"kind": OpKind.PUT, "value": A, "expected": A, "complete": 1.0}, "only CAS"),
        ({"kind": OpKind.DELETE, "value": A, "complete": 1.0}, "DELETE takes no value"),
        ({"kind": OpKind.GET, "value": A, "complete": 1.0}, "GET takes no value"),
        ({"kind": OpKind.GET, "output": True, "complete": 1.0}, "GET output must be bytes"),
        ({"kind": OpKind.GET, "output": A}, "unknown outcome"),
        ({"kind": OpKind.CAS, "value": A, "complete": 1.0}, "needs output: bool"),
        ({"kind": OpKind.CAS, "value": A, "output": A, "complete": 1.0}, "needs output: bool"),
        ({"kind": OpKind.CAS, "value": A, "output": True}, "unknown outcome"),
        ({"kind": OpKind.CAS, "output": True, "complete": 1.0}, "CAS needs value"),
        ({"kind": OpKind.PUT, "value": A, "invoke": float("nan")}, "invoke must be a finite"),
        ({"kind": OpKind.PUT, "value": A, "complete": float("inf")}, "complete must be a finite"),
        ({"kind": "put", "value": A}, "kind must be an OpKind"),
        ({"kind": OpKind.PUT, "key": "k", "value": A}, "key must be bytes"),
        ({"kind": OpKind.CAS, "value": A, "expected": "a"}, "expected must be bytes"),
    ],
)
def test_invalid_operations_are_rejected(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"client": 0, "key": K, **kwargs}
    with pytest.raises(ValueError, match=message):
        Operation(**fields)  # type: ignore[arg-type]


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_steps_per_key"):
        check_history([], max_steps_per_key=0)
    with pytest.raises(ValueError, match="only Operation"):
        check_history([("not", "an", "op")])  # type: ignore[list-item]


# --- property: against a brute-force oracle on tiny histories ---------------------------


def apply(op: Operation, state: bytes | None) -> tuple[bool, bytes | None]:
    """Whether op's recorded output is possible in ``state``, and the state after it."""
    if op.kind is OpKind.PUT:
        return True, op.value
    if op.kind is OpKind.DELETE:
        return True, None
    if op.kind is OpKind.GET:
        return op.output == state, state
    swaps = state == op.expected
    return op.output in (None, swaps), op.value if swaps else state


def brute_force_ok(ops: list[Operation]) -> bool:
    """Tries every order: legal for the register and consistent with real time."""
    ops = [op for op in ops if not (op.kind is OpKind.GET and op.complete is None)]
    for order in itertools.permutations(ops):
        if any(
            later.complete is not None and later.complete < earlier.invoke
            for earlier, later in itertools.combinations(order, 2)
        ):
            continue
        state: bytes | None = None
        for op in order:
            legal, state = apply(op, state)
            if not legal:
                break
        else:
            return True
    return False


@st.composite
def tiny_op(draw: st.DrawFn) -> Operation:
    kind = draw(st.sampled_from(OpKind))
    t0 = draw(st.integers(0, 6))
    t1: int | None = None if draw(st.integers(0, 4)) == 0 else t0 + draw(st.integers(0, 3))
    v = draw(st.sampled_from([A, B]))
    maybe = st.sampled_from([None, A, B])
    client = draw(st.integers(0, 3))
    if kind is OpKind.PUT:
        return put(v, t0, t1, client=client)
    if kind is OpKind.DELETE:
        return delete(t0, t1, client=client)
    if kind is OpKind.CAS:
        out = None if t1 is None else draw(st.booleans())
        return cas(draw(maybe), v, out, t0, t1, client=client)
    if t1 is None:
        return Operation(client, K, OpKind.GET, invoke=t0)
    return get(draw(maybe), t0, t1, client=client)


@settings(max_examples=200, deadline=None)
@given(st.lists(tiny_op(), max_size=5))
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    result = check_history(ops)
    assert not result.timed_out
    assert result.ok == brute_force_ok(ops), result.explanation


# --- property: real executions pass, corrupted ones fail --------------------------------

KEYS = [b"x", b"y"]
VALUES = [b"1", b"2", b"3"]
NEVER = b"never-written"


STEPS = st.tuples(
    st.sampled_from(OpKind),
    st.sampled_from(KEYS),
    st.sampled_from(VALUES),
    st.sampled_from([None, *VALUES]),  # CAS expected
    st.integers(0, 9),  # 0: a PUT, DELETE or CAS times out
    st.integers(0, 99),  # how far invoke is before the true time, in % of the spread
    st.integers(0, 99),  # how far complete is after it
)


@st.composite
def executions(draw: st.DrawFn) -> list[Operation]:
    """A sequential run against a dict, op i truly at time 10*i, blurred into an interval."""
    spread, n = draw(st.integers(0, 25)), draw(st.integers(1, 40))
    store: dict[bytes, bytes] = {}
    ops: list[Operation] = []
    for i, (kind, key, v, expected, roll, early, late) in enumerate(
        draw(st.lists(STEPS, min_size=n, max_size=n))
    ):
        at = 10 * i
        invoke, complete = at - early * spread / 100, at + late * spread / 100
        unknown = kind is not OpKind.GET and roll == 0
        end = None if unknown else complete
        old = store.get(key)
        if kind is OpKind.PUT:
            store[key] = v
            op = put(v, invoke, end, key=key, client=i)
        elif kind is OpKind.DELETE:
            store.pop(key, None)
            op = delete(invoke, end, key=key, client=i)
        elif kind is OpKind.GET:
            op = get(old, invoke, complete, key=key, client=i)
        else:
            if old == expected:
                store[key] = v
            op = cas(expected, v, None if unknown else old == expected, invoke, end, key=key)
        ops.append(op)
    # writes that timed out and never took effect, and reads that timed out
    for key, t0 in draw(
        st.lists(st.tuples(st.sampled_from(KEYS), st.integers(-10, 400)), max_size=2)
    ):
        ops.append(put(b"phantom", t0, None, key=key, client=99))
        ops.append(Operation(98, key, OpKind.GET, invoke=t0))
    random.Random(spread * n).shuffle(ops)  # the checker must not rely on input order
    return ops


@settings(max_examples=100, deadline=None)
@given(executions(), st.integers(min_value=0))
def test_real_executions_pass_and_corrupted_fail(ops: list[Operation], pick: int) -> None:
    result = check_history(ops)
    assert result.ok, result.explanation

    reads = [i for i, op in enumerate(ops) if op.kind is OpKind.GET and op.complete is not None]
    assume(reads)
    victim = reads[pick % len(reads)]
    corrupted = list(ops)
    corrupted[victim] = dataclasses.replace(ops[victim], output=NEVER)
    result = check_history(corrupted)
    assert (result.ok, result.timed_out, result.key) == (False, False, ops[victim].key)
    assert repr(NEVER) in result.explanation


def test_long_history_is_fast() -> None:
    """A 300-op, one-key history with heavy overlap, as the simulator produces."""
    rnd = random.Random(7)
    value: bytes | None = None
    ops: list[Operation] = []
    for i in range(300):
        at = 10.0 * i
        t0, t1 = at - rnd.uniform(0, 40), at + rnd.uniform(0, 40)
        if rnd.random() < 0.5:
            value = str(i % 7).encode()
            ops.append(put(value, t0, t1, client=i % 5))
        else:
            ops.append(get(value, t0, t1, client=i % 5))
    started = time.perf_counter()
    assert_ok(ops)
    assert time.perf_counter() - started < 1.0
