"""The in-memory key index: picking revisions, compaction, and the batch journal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorumkv.kv import _index as index_module
from quorumkv.kv._index import KeyIndex, make_rev, rev_from_key, rev_key, rev_main
from quorumkv.kv._types import ALL_KEYS


def test_revision_ints_sort_as_pairs_and_round_trip() -> None:
    revs = [make_rev(m, s, t) for m in (1, 2, 300) for s in (0, 1, 70_000) for t in (False, True)]
    assert revs == sorted(revs)
    for r in revs:
        assert rev_from_key(rev_key(r), bool(r & 1)) == r
    assert rev_main(make_rev(300, 5, True)) == 300


def test_pick_and_live_follow_tombstones_and_history() -> None:
    idx = KeyIndex()
    idx.add(b"a", make_rev(2, 0, False))
    idx.add(b"b", make_rev(3, 0, False))
    idx.add(b"a", make_rev(4, 0, True))  # deleted at 4
    idx.add(b"a", make_rev(6, 0, False))  # back at 6
    assert idx.pick(b"a", 1) is None
    assert idx.pick(b"a", 3) == make_rev(2, 0, False)
    assert idx.pick(b"a", 5) == make_rev(4, 0, True)
    assert idx.pick(b"a", None) == make_rev(6, 0, False)
    assert [k for k, _ in idx.live(b"a", ALL_KEYS, 5)] == [b"b"]
    assert [k for k, _ in idx.live(b"a", ALL_KEYS, None)] == [b"a", b"b"]
    assert [k for k, _ in idx.live(b"a", b"b", None)] == [b"a"]
    assert list(idx.live(b"zz", b"", None)) == []


def test_compaction_keeps_what_later_reads_see() -> None:
    idx = KeyIndex()
    for main in (2, 3, 5):
        idx.add(b"k", make_rev(main, 0, False))
    idx.add(b"gone", make_rev(2, 1, False))
    idx.add(b"gone", make_rev(4, 0, True))
    assert idx.compact(b"k", 4) == [make_rev(2, 0, False)]
    assert idx.compact(b"gone", 4) == [make_rev(2, 1, False), make_rev(4, 0, True)]
    assert idx.all_revisions(b"k") == [make_rev(3, 0, False), make_rev(5, 0, False)]
    assert len(idx) == 1 and idx.revisions() == 2
    assert [k for k, _ in idx.live(b"", ALL_KEYS, None)] == [b"k"]


@given(
    st.lists(
        st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.booleans(), st.booleans()),
        max_size=30,
    ),
    st.integers(0, 40),
)
def test_rollback_restores_exactly_the_state_before(
    steps: list[tuple[bytes, bool, bool]], compact_at: int
) -> None:
    idx = KeyIndex()
    main = 1
    for key, tomb, _ in steps[: len(steps) // 2]:
        main += 1
        idx.add(key, make_rev(main, 0, tomb))
    before = {k: idx.all_revisions(k) for k in (b"a", b"b", b"c")}
    count = (len(idx), idx.revisions())
    idx.begin()
    for key, tomb, compact in steps[len(steps) // 2 :]:
        main += 1
        idx.add(key, make_rev(main, 0, tomb))
        if compact:
            idx.compact(key, compact_at)
    idx.rollback()
    assert {k: idx.all_revisions(k) for k in (b"a", b"b", b"c")} == before
    assert (len(idx), idx.revisions()) == count
    assert [k for k, _ in idx.live(b"", ALL_KEYS, None)] == sorted(
        k for k, revs in before.items() if revs and not revs[-1] & 1
    )


KEYS = [b"a", b"a\x00", b"b", b"bb", b"c", b"d\xff"]


def _filled(steps: list[tuple[int, bool]]) -> KeyIndex:
    idx = KeyIndex()
    for main, (k, tomb) in enumerate(steps, start=2):
        idx.add(KEYS[k], make_rev(main, 0, tomb))
    return idx


@given(
    st.lists(st.tuples(st.integers(0, len(KEYS) - 1), st.booleans()), max_size=40),
    st.sampled_from([b"a", b"a\x00", b"b", b"ba", b"c", b"z"]),
)
def test_split_off_moves_every_key_from_the_split_key_with_its_revisions(
    steps: list[tuple[int, bool]], at: bytes
) -> None:
    idx = _filled(steps)
    whole = {k: idx.all_revisions(k) for k in KEYS if idx.all_revisions(k)}
    right = idx.split_off(at)
    assert {k: right.all_revisions(k) for k in KEYS if right.all_revisions(k)} == {
        k: v for k, v in whole.items() if k >= at
    }
    assert {k: idx.all_revisions(k) for k in KEYS if idx.all_revisions(k)} == {
        k: v for k, v in whole.items() if k < at
    }
    assert idx.revisions() + right.revisions() == len(steps)
    assert right.revisions() == sum(len(v) for k, v in whole.items() if k >= at)
    assert [k for k, _ in right.live(b"\x00", ALL_KEYS, None)] == [
        k for k, v in sorted(whole.items()) if k >= at and not v[-1] & 1
    ]
    # both halves go on as indexes of their own
    right.add(b"zz", make_rev(1000, 0, False))
    idx.add(b"\x01", make_rev(1000, 0, False))
    assert right.pick(b"zz", None) == idx.pick(b"\x01", None) == make_rev(1000, 0, False)


@given(
    st.lists(st.tuples(st.integers(0, len(KEYS) - 1), st.booleans()), max_size=40),
    st.integers(0, 45),
)
def test_compactable_names_every_key_compaction_would_touch(
    steps: list[tuple[int, bool]], at: int
) -> None:
    idx = _filled(steps)
    candidates = set(idx.compactable(at))
    idx.begin()
    touched = {k for k in KEYS if idx.compact(k, at)}
    idx.rollback()
    assert touched <= candidates
    # and no key whose one revision is live, or above ``at``, is named
    for k in candidates:
        revs = idx.all_revisions(k)
        assert len(revs) > 1 or (revs[0] & 1 and rev_main(revs[0]) <= at)


def test_newest_remembers_only_the_record_add_was_told_of() -> None:
    idx = KeyIndex()
    r2, r5, r6 = make_rev(2, 0, False), make_rev(5, 0, False), make_rev(6, 0, True)
    assert idx.newest(b"a") is None
    idx.add(b"a", r2)
    assert idx.newest(b"a") == (r2, 0, 0)  # nothing told: read the record
    idx.add(b"a", r5, 0, 2, 2)
    assert idx.newest(b"a") == (r5, 2, 2)
    idx.add(b"a", r6)  # a tombstone, with nothing to remember
    assert idx.newest(b"a") == (r6, 0, 0)  # the memory names r5, no longer the newest
    assert idx.newest(b"b") is None


def test_newest_forgets_on_a_rollback_and_on_a_split() -> None:
    idx = KeyIndex()
    r2, r3 = make_rev(2, 0, False), make_rev(3, 0, False)
    idx.add(b"a", r2, 0, 2, 1)
    idx.add(b"m", r2 | 2, 0, 2, 1)
    idx.begin()
    idx.add(b"a", r3, 0, 2, 2)
    idx.rollback()
    # r3 is gone from the engine too: a later batch may write another record at r3
    assert idx.newest(b"a") == (r2, 0, 0)  # everything is forgotten, not only r3
    idx.begin()
    idx.add(b"a", r3, 0, 2, 2)
    idx.commit()
    right = idx.split_off(b"m")
    assert idx.newest(b"a") == (r3, 0, 0)
    assert right.newest(b"m") == (r2 | 2, 0, 0)


def test_remembered_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "REMEMBERED_KEYS", 2)
    idx = KeyIndex()
    revs = [make_rev(m, 0, False) for m in (2, 3, 4)]
    for key, rev in zip((b"a", b"b", b"c"), revs, strict=True):
        idx.add(key, rev, 0, rev_main(rev), 1)
    # the third key found the memory full: it started over with that key alone
    assert [idx.newest(k) for k in (b"a", b"b", b"c")] == [
        (revs[0], 0, 0),
        (revs[1], 0, 0),
        (revs[2], 4, 1),
    ]
    r5 = make_rev(5, 0, False)
    idx.add(b"c", r5, 0, 4, 2)  # a key already held never empties it
    assert idx.newest(b"c") == (r5, 4, 2)
