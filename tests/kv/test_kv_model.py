"""``MVCCStore`` against the naive model in ``kvmodel``: same answers everywhere.

Random batches of puts, delete-ranges, txns (nested, with every compare target and
operator), compactions and reads at random revisions go through ``apply``; between
batches, reads at every revision from 0 to one past the current one go straight to
``range``, and now and then the store is reopened or replaced by a restore of its own
snapshot. Every response and error must equal the model's. The second test runs the
same plans against one range of an engine shared with a busy neighbour.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from kvharness import Harness, RangeHarness
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
    RangeStore,
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


def _check_reads(store: MVCCStore | RangeStore, model: Model) -> None:
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


def _surviving(model: Model) -> int:
    """The records a store holds after the model's writes and its last compaction: every
    write above the compacted revision, and per key the newest at or below it unless
    that is a deletion."""
    newest: dict[bytes, bool] = {}
    above = 0
    for e in model.events:
        if e.main > model.compacted:
            above += 1
        else:
            newest[e.key] = e.kv is not None
    return above + sum(newest.values())


@settings(max_examples=60, deadline=None)
@given(steps, st.integers(0, 6))
def test_a_range_sharing_its_engine_matches_model(
    plan: list[list[Request] | str], churn: int
) -> None:
    """The same, for a stamped, bounded range of an engine whose other range is written,
    deleted from and compacted between steps: bounds checks, stamps, compaction by the
    index and the shared ``rev`` must change no answer, and the neighbour must keep
    exactly its own state. Each write is stamped with the revision the model gives it."""
    with tempfile.TemporaryDirectory() as tmp:
        h = RangeHarness(Path(tmp) / "a")
        model = Model()
        try:
            for step in plan:
                if step == "reopen":
                    h.reopen()
                elif step == "restore":
                    h.restore()
                else:
                    assert isinstance(step, list)
                    stamps, want = [], []
                    for r in step:
                        stamps.append(model.revision + 1)
                        want.append(model.run(r))
                    got = h.apply(step, stamps)
                    assert [repr(g) for g in got] == [repr(w) for w in want]
                h.churn(churn)
                assert h.store.revision() == model.revision
                assert h.store.compacted_revision() == model.compacted
                _check_reads(h.store, model)
                h.check_busy()
                # Compaction dropped exactly what it may, and nothing of the neighbour's.
                kept = _surviving(model)
                assert h.store.stats()["rev"] == kept
                assert h.engine.stats()["rev"] == kept + h.busy.stats()["rev"]
        finally:
            h.close()
