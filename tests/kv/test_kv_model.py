"""``MVCCStore`` against the naive model in ``kvmodel``: same answers everywhere.

Random batches of puts, delete-ranges, txns (nested, with every compare target and
operator), compactions and reads at random revisions go through ``apply``; between
batches, reads at every revision from 0 to one past the current one go straight to
``range``, and now and then the store is reopened or replaced by a restore of its own
snapshot. Every response and error must equal the model's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from kvharness import Harness
from kvmodel import Model

from quorumkv.kv import (
    ALL_KEYS,
    CompactionRequest,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRangeRequest,
    DuplicateKeyError,
    KVError,
    MVCCStore,
    Op,
    PutRequest,
    RangeRequest,
    Request,
    SortOrder,
    SortTarget,
    TxnRequest,
)

KEYS = [b"a", b"a\x00", b"ab", b"b", b"b\xff", b"c"]
keys = st.sampled_from(KEYS)
ends = st.sampled_from([b"", b"", ALL_KEYS, b"b", b"c", b"ab"])
values = st.sampled_from([b"", b"x", b"y", b"zz"])
revs = st.integers(0, 30)

puts = st.builds(PutRequest, keys, values, st.sampled_from([0, 0, 7]), st.booleans())
deletes = st.builds(DeleteRangeRequest, keys, ends, st.booleans())
ranges = st.builds(
    RangeRequest,
    keys,
    ends,
    st.sampled_from([0, 0, 1, 2]),
    revs,
    st.sampled_from(SortOrder),
    st.sampled_from(SortTarget),
    st.booleans(),
    st.booleans(),
)


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    target = draw(st.sampled_from(CompareTarget))
    value: bytes | int
    if target is CompareTarget.VALUE:
        value = draw(values)
    else:
        value = draw(st.integers(0, 12))
    return Compare(target, draw(st.sampled_from(CompareOp)), draw(keys), value)


def txns(depth: int) -> st.SearchStrategy[Op]:
    ops: st.SearchStrategy[Op] = st.one_of(puts, deletes, ranges)
    if depth:
        ops = st.one_of(ops, txns(depth - 1))
    lists = st.lists(ops, max_size=3).map(tuple)
    return st.builds(TxnRequest, st.lists(compares(), max_size=2).map(tuple), lists, lists)


TXNS = txns(1)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from(["put", "put", "delete", "range", "txn", "txn", "compact"]))
    if kind == "put":
        return draw(puts)
    if kind == "delete":
        return draw(deletes)
    if kind == "range":
        return draw(ranges)
    if kind == "compact":
        return CompactionRequest(draw(revs))
    try:
        return draw(TXNS)
    except DuplicateKeyError:
        return draw(puts)


steps = st.lists(
    st.one_of(
        st.lists(requests(), min_size=1, max_size=6),
        st.sampled_from(["reopen", "restore"]),
    ),
    max_size=12,
)


def _check_reads(store: MVCCStore, model: Model) -> None:
    for rev in range(model.revision + 2):
        for end in (ALL_KEYS, b""):
            req = RangeRequest(b"a", end, revision=rev)
            want = model.run(req)
            try:
                got: object = store.range(req)
            except KVError as e:
                got = e
            assert repr(got) == repr(want), f"range at {rev}"


@settings(max_examples=120, deadline=None)
@given(steps)
def test_store_matches_model(plan: list[list[Request] | str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp) / "a")
        model = Model()
        try:
            for step in plan:
                if step == "reopen":
                    h.reopen()
                elif step == "restore":
                    chunks = list(h.store.snapshot())
                    h.close()
                    h.store = MVCCStore.restore(h.path, chunks, map_size=1 << 30, sync=False)
                else:
                    assert isinstance(step, list)
                    got = h.apply(*step)
                    want = [model.run(r) for r in step]
                    assert [repr(g) for g in got] == [repr(w) for w in want]
                assert h.store.revision() == model.revision
                assert h.store.compacted_revision() == model.compacted
                _check_reads(h.store, model)
        finally:
            h.close()
