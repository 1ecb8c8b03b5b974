"""Linearizability checker for a key-value register (Wing & Gong, Lowe, Porcupine).

Theory of operation
-------------------
A history is a set of client operations, each with the interval ``[invoke, complete]`` in
which it must have taken effect. It is linearizable iff some total order of the operations
(1) respects real time: if ``a.complete < b.invoke`` then ``a`` comes before ``b``; and
(2) is legal for a sequential register that starts absent (``None``) for every key.

1. Linearizability is local (Herlihy & Wing 1990; Porcupine's "P-compositionality"): a
   history is linearizable iff each key's sub-history is. Keys are checked one by one.
2. A key's ops become call and return events, sorted by time; at equal times calls come
   first, so intervals that merely touch count as concurrent. The events form a doubly
   linked list kept in two int arrays (``nxt``/``prv``) with head and tail sentinels.
3. The search (Wing & Gong with Lowe's memoization, as Porcupine does it) walks the list.
   At a call it tries to linearize that op now: if the register model accepts it and the
   configuration (set of linearized ops as an int bitset, register state) was never seen
   before, it pushes (op, state before), lifts the op's call and return out of the list
   and restarts from the head. At the return of an op not yet linearized, the current
   prefix is a dead end: it pops the last op, unlifts it, restores the state and tries the
   next call after it. A return reached with an empty stack: not linearizable. The
   memo bounds the work by the number of reachable configurations, which is exponential
   only in how many ops are pending at once; a step budget caps the rest.
4. Unknown outcomes (``complete=None``: timeout, crash) return at +infinity, after every
   known return. PUT, DELETE and an unknown CAS are legal in any state (the CAS swaps iff
   the state at its linearization point equals ``expected``), so the first +infinity
   return reached means all still-pending ops can be appended: linearizable. Placing an
   op last is indistinguishable from it never taking effect. An unknown GET constrains
   nothing and is dropped. The cost: an unknown op stays pending to the end, so proving a
   key *not* linearizable can take time exponential in its unknown ops (ok histories are
   found fast). A key that runs out of budget is reported with ``timed_out=True``.
5. Register states are interned to small ints (0 = absent, then each value written to the
   key), so the model compares ints and a memo key is the single int
   ``bitset << shift | state``.

This module must never do I/O, read a clock, use randomness or global state, or recurse:
it is a pure function of the history, safe to call from the deterministic simulator.
"""

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CheckResult", "OpKind", "Operation", "check_history", "describe_operation"]


class OpKind(enum.Enum):
    PUT = "put"
    GET = "get"
    CAS = "cas"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key, validated when built (ValueError if malformed)."""

    client: int
    key: bytes
    kind: OpKind
    value: bytes | None = None  # PUT: the value written; CAS: the new value
    expected: bytes | None = None  # CAS: value compared against (None means "key absent")
    output: bytes | bool | None = None  # GET: value read; CAS: True if swapped; else None
    invoke: float = 0.0  # time the client sent it (first attempt)
    complete: float | None = None  # time the answer arrived; None = outcome unknown

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ValueError(f"invalid Operation: {problem}: {self!r}")


def _problem(op: Operation) -> str | None:
    """Says what is wrong with ``op``, or None if it is well formed."""
    # Typed as object: callers may be untyped, so the declared types are checked too.
    kind: object = op.kind
    key: object = op.key
    expected: object = op.expected
    if not isinstance(kind, OpKind):
        return "kind must be an OpKind"
    if not isinstance(key, bytes):
        return "key must be bytes"
    if not isinstance(expected, bytes | None):
        return "expected must be bytes or None"
    if not math.isfinite(op.invoke):
        return "invoke must be a finite time"
    if op.complete is not None:
        if not math.isfinite(op.complete):
            return "complete must be a finite time or None (outcome unknown)"
        if op.complete < op.invoke:
            return "complete < invoke"
    elif op.output is not None:
        return "an op with unknown outcome (complete=None) cannot have an output"
    if kind is OpKind.PUT or kind is OpKind.CAS:
        if not isinstance(op.value, bytes):
            return f"{kind.name} needs value: bytes"
    elif op.value is not None:
        return f"{kind.name} takes no value"
    if kind is not OpKind.CAS and expected is not None:
        return "only CAS takes expected"
    if kind is OpKind.GET:
        if isinstance(op.output, bool) or not isinstance(op.output, bytes | None):
            return "GET output must be bytes or None (absent)"
    elif kind is OpKind.CAS:
        if op.complete is not None and not isinstance(op.output, bool):
            return "a completed CAS needs output: bool (True if it swapped)"
    elif op.output is not None:
        return f"{kind.name} output must be None"
    return None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on a history; ``explanation`` is meant for a human reading a test failure."""

    ok: bool
    key: bytes | None  # first key found non-linearizable
    explanation: str  # "" when ok; otherwise the key, its ops and the longest linearizable prefix
    timed_out: bool = False  # search budget exhausted; ok is then False


_OK = CheckResult(ok=True, key=None, explanation="")

# Model step codes for one op; each op is (code, a, b) over interned states.
_SET = 0  # PUT / DELETE: state := a
_READ = 1  # completed GET: legal iff state == a
_CAS_OK = 2  # CAS that swapped: legal iff state == a; state := b
_CAS_FAIL = 3  # CAS that did not swap: legal iff state != a
_CAS_ANY = 4  # CAS of unknown outcome: state := b if state == a


def check_history(ops: Iterable[Operation], *, max_steps_per_key: int = 2_000_000) -> CheckResult:
    """Checks a whole history, key by key in order of first appearance.

    Returns the first definite violation found; otherwise, if any key exhausted its
    budget of search steps, that key's timed-out result; otherwise ok.
    """
    if max_steps_per_key < 1:
        raise ValueError(f"max_steps_per_key must be >= 1, got {max_steps_per_key}")
    by_key: dict[bytes, list[Operation]] = {}
    for op in ops:
        if not isinstance(op, Operation):
            raise ValueError(f"history must contain only Operation, got {op!r}")
        if op.kind is OpKind.GET and op.complete is None:
            continue  # an unanswered read constrains nothing
        by_key.setdefault(op.key, []).append(op)
    timed_out: CheckResult | None = None
    for key, key_ops in by_key.items():
        result = _check_key(key, sorted(key_ops, key=_by_invoke), max_steps_per_key)
        if result.ok:
            continue
        if not result.timed_out:
            return result
        if timed_out is None:
            timed_out = result
    return timed_out if timed_out is not None else _OK


def _by_invoke(op: Operation) -> tuple[float, float]:
    return (op.invoke, math.inf if op.complete is None else op.complete)


def _encode(ops: list[Operation]) -> tuple[list[int], list[int], list[int], int]:
    """Interns states and turns each op into a model step (code, a, b); also the memo shift."""
    sid: dict[bytes | None, int] = {None: 0}
    for op in ops:
        if op.value is not None:
            sid.setdefault(op.value, len(sid))
    code: list[int] = []
    arg_a: list[int] = []
    arg_b: list[int] = []
    for op in ops:
        a, b = sid.get(op.expected, -1), 0  # -1: a value no op writes, never the state
        if op.kind is OpKind.PUT or op.kind is OpKind.DELETE:
            c, a = _SET, sid[op.value]
        elif op.kind is OpKind.GET:
            c, a = _READ, sid.get(op.output if isinstance(op.output, bytes) else None, -1)
        elif op.output is None:
            c, b = _CAS_ANY, sid[op.value]
        else:
            c, b = (_CAS_OK if op.output else _CAS_FAIL), sid[op.value]
        code.append(c)
        arg_a.append(a)
        arg_b.append(b)
    return code, arg_a, arg_b, len(sid).bit_length()


def _check_key(key: bytes, ops: list[Operation], budget: int) -> CheckResult:
    n = len(ops)
    code, arg_a, arg_b, shift = _encode(ops)
    # Nodes: 0 = head, 1..2n = events in time order, 2n+1 = tail.
    events = sorted(
        [(op.invoke, 0, i) for i, op in enumerate(ops)]
        + [(math.inf if op.complete is None else op.complete, 1, i) for i, op in enumerate(ops)]
    )
    size = 2 * n + 2
    nxt = list(range(1, size + 1))
    prv = list(range(-1, size - 1))
    op_at = [-1] * size
    match = [0] * size  # call: its return node (> 0); finite return: 0; +inf return, tail: -1
    match[size - 1] = -1
    call_node = [0] * n
    for node, (t, is_return, i) in enumerate(events, start=1):
        op_at[node] = i
        if not is_return:
            call_node[i] = node
        else:
            match[call_node[i]] = node
            match[node] = -1 if t == math.inf else 0
    bit = [1 << i for i in range(n)]

    state, linearized, steps = 0, 0, 0
    stack_nodes: list[int] = []  # call nodes of the linearized prefix, in order
    stack_states: list[int] = []  # the state before each of them
    best: list[int] = []  # ops of the longest prefix seen
    seen: set[int] = set()
    entry = nxt[0]
    while True:
        steps += 1
        if steps > budget:
            return _failure(key, ops, best, timed_out=True, steps=budget)
        ret = match[entry]
        if ret > 0:  # a call: try to linearize its op here
            i = op_at[entry]
            c, a = code[i], arg_a[i]
            if c == _SET:
                new = a
            elif c == _READ:
                new = state if state == a else -1
            elif c == _CAS_OK:
                new = arg_b[i] if state == a else -1
            elif c == _CAS_FAIL:
                new = state if state != a else -1
            else:
                new = arg_b[i] if state == a else state
            if new < 0:
                entry = nxt[entry]
                continue
            memo = ((linearized | bit[i]) << shift) | new
            if memo in seen:
                entry = nxt[entry]
                continue
            seen.add(memo)
            stack_nodes.append(entry)
            stack_states.append(state)
            state, linearized = new, linearized | bit[i]
            # lift the call, then its return, out of the list
            nxt[prv[entry]] = nxt[entry]
            prv[nxt[entry]] = prv[entry]
            nxt[prv[ret]] = nxt[ret]
            prv[nxt[ret]] = prv[ret]
            if len(stack_nodes) > len(best):
                best = [op_at[e] for e in stack_nodes]
            entry = nxt[0]
        elif ret == 0:  # a known return of a pending op: backtrack
            if not stack_nodes:
                return _failure(key, ops, best, timed_out=False, steps=steps)
            entry, state = stack_nodes.pop(), stack_states.pop()
            ret = match[entry]
            linearized ^= bit[op_at[entry]]
            # unlift in the reverse order (dancing links)
            nxt[prv[ret]] = ret
            prv[nxt[ret]] = ret
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
            entry = nxt[entry]
        else:  # tail, or a +inf return: every pending op has unknown outcome
            return _OK


def _after(op: Operation, state: bytes | None) -> bytes | None:
    """The register state after ``op`` (assumed legal) is applied to ``state``."""
    if op.kind is OpKind.PUT:
        return op.value
    if op.kind is OpKind.DELETE:
        return None
    if op.kind is OpKind.CAS and state == op.expected and op.output is not False:
        return op.value
    return state


def _show(value: object) -> str:
    return "absent" if value is None else repr(value)


def describe_operation(op: Operation, *, with_key: bool = True) -> str:
    """One line, e.g. ``client 3 CAS b'k' b'a' -> b'b' swapped [1.5, 2.0]``."""
    where = f" {op.key!r}" if with_key else ""
    if op.kind is OpKind.PUT:
        what = f"PUT{where} {op.value!r}"
    elif op.kind is OpKind.DELETE:
        what = f"DELETE{where}"
    elif op.kind is OpKind.GET:
        what = f"GET{where} -> {'?' if op.complete is None else _show(op.output)}"
    else:
        if op.output is None:
            outcome = "outcome unknown"
        else:
            outcome = "swapped" if op.output else "not swapped"
        what = f"CAS{where} {_show(op.expected)} -> {op.value!r} {outcome}"
    end = "?" if op.complete is None else f"{op.complete}"
    return f"client {op.client} {what} [{op.invoke}, {end}]"


def _failure(
    key: bytes, ops: list[Operation], best: list[int], *, timed_out: bool, steps: int
) -> CheckResult:
    if timed_out:
        head = f"key {key!r}: search budget of {steps} steps exhausted; linearizability unknown"
    else:
        head = f"key {key!r} is not linearizable ({steps} search steps)"
    lines = [head, f"operations by invoke time ({len(ops)}):"]
    lines += [f"  #{i:<3} {describe_operation(op, with_key=False)}" for i, op in enumerate(ops)]
    lines.append(f"longest linearizable prefix found ({len(best)} of {len(ops)} ops):")
    state: bytes | None = None
    for i in best:
        state = _after(ops[i], state)
        lines.append(f"  #{i:<3} {describe_operation(ops[i], with_key=False)}  => {_show(state)}")
    left = sorted(set(range(len(ops))) - set(best))
    lines.append("not in that prefix: " + (", ".join(f"#{i}" for i in left) or "none"))
    return CheckResult(ok=False, key=key, explanation="\n".join(lines), timed_out=timed_out)
