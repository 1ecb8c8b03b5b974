"""RaftLog: terms at the snapshot boundary, the follower's append check, slicing,
compaction and snapshot restore.

``maybe_append`` is also checked against a list model over random logs and random
AppendEntries (which often match the log for a while, then switch to a later term).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.consensus import ConfState, Entry, Index, Snapshot, SnapshotMeta, Term
from quorumkv.consensus._log import RaftLog


def snap(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMeta(Index(index), Term(term), ConfState()))


def ents(first: int, terms: list[int], sizes: list[int] | None = None) -> list[Entry]:
    sizes = sizes or [0] * len(terms)
    return [
        Entry(Term(t), Index(first + n), data=b"x" * s)
        for n, (t, s) in enumerate(zip(terms, sizes, strict=True))
    ]


def make_log(terms: list[int], offset: int = 0, offset_term: int = 0) -> RaftLog:
    s = snap(offset, offset_term) if offset else None
    return RaftLog(s, tuple(ents(offset + 1, terms)))


def log_terms(log: RaftLog) -> list[int]:
    return [e.term for e in log.entries]


# -- construction and reading -------------------------------------------------------------


def test_new_log_marks() -> None:
    log = make_log([2, 2, 3], offset=5, offset_term=2)
    assert (log.first_index(), log.last_index(), log.last_term()) == (6, 8, 3)
    assert log.committed == log.applied == log.applying == 5
    assert log.stable == log.persisting == 8
    empty = RaftLog(None)
    assert (empty.first_index(), empty.last_index(), empty.last_term()) == (1, 0, 0)


def test_new_log_skips_entries_in_the_snapshot_and_refuses_gaps() -> None:
    log = RaftLog(snap(2, 1), tuple(ents(1, [1, 1, 1, 2])))
    assert [e.index for e in log.entries] == [3, 4]
    with pytest.raises(ValueError, match="not contiguous"):
        RaftLog(snap(2, 1), tuple(ents(4, [1])))
    with pytest.raises(ValueError, match="not contiguous"):
        RaftLog(None, (*ents(1, [1]), *ents(3, [1])))


@pytest.mark.parametrize(
    ("index", "term"),
    [
        (0, None),  # compacted
        (4, None),  # compacted
        (5, 2),  # the snapshot's own index: its term
        (6, 2),
        (7, 3),
        (8, 3),
        (9, None),  # beyond the log
        (100, None),
    ],
)
def test_term(index: int, term: int | None) -> None:
    log = make_log([2, 3, 3], offset=5, offset_term=2)
    assert log.term(index) == term
    assert log.match_term(index, term if term is not None else -1) is (term is not None)


def test_term_without_snapshot() -> None:
    log = make_log([1, 1])
    assert [log.term(i) for i in range(4)] == [0, 1, 1, None]


@pytest.mark.parametrize(
    ("last_index", "last_term", "up_to_date"),
    [
        (1, 4, True),  # a later last term wins, however short
        (3, 3, True),  # same term, equally long
        (9, 3, True),
        (2, 3, False),  # same term, shorter
        (9, 2, False),  # earlier term, however long
    ],
)
def test_is_up_to_date(last_index: int, last_term: int, up_to_date: bool) -> None:
    assert make_log([1, 2, 3]).is_up_to_date(last_index, last_term) is up_to_date


# -- maybe_append --------------------------------------------------------------------------


def test_maybe_append_leaves_matching_entries_alone() -> None:
    log = make_log([1, 2, 3])
    assert log.maybe_append(1, 1, 0, tuple(ents(2, [2]))) == 2
    assert log_terms(log) == [1, 2, 3]  # entry 3 is kept: the message says nothing of it
    assert log.maybe_append(0, 0, 0, tuple(ents(1, [1, 2, 3]))) == 3
    assert log_terms(log) == [1, 2, 3]
    assert (log.stable, log.persisting) == (3, 3)  # nothing to persist again


def test_maybe_append_truncates_at_the_first_conflict() -> None:
    log = make_log([1, 2, 3, 3])
    assert log.maybe_append(1, 1, 0, tuple(ents(2, [2, 4, 4, 4, 4]))) == 6
    assert log_terms(log) == [1, 2, 4, 4, 4, 4]
    # Index 3 on has to be written again.
    assert (log.stable, log.persisting) == (2, 2)


def test_maybe_append_pulls_back_only_marks_past_the_conflict() -> None:
    log = make_log([1, 1, 1, 1, 1])
    log.stable = Index(2)  # 3..5 handed to the driver, not yet durable
    assert log.maybe_append(3, 1, 0, tuple(ents(4, [2]))) == 4
    assert log_terms(log) == [1, 1, 1, 2]
    assert (log.stable, log.persisting) == (2, 3)


def test_maybe_append_extends_without_pulling_back() -> None:
    log = make_log([1, 2])
    assert log.maybe_append(2, 2, 0, tuple(ents(3, [2, 3]))) == 4
    assert log_terms(log) == [1, 2, 2, 3]
    assert (log.stable, log.persisting) == (2, 2)


@pytest.mark.parametrize(
    ("prev_index", "prev_term"),
    [(2, 3), (3, 2), (4, 3), (9, 3)],  # wrong term at prev, or prev beyond the log
)
def test_maybe_append_rejects_a_mismatch(prev_index: int, prev_term: int) -> None:
    log = make_log([1, 2, 3])
    assert log.maybe_append(prev_index, prev_term, 3, tuple(ents(prev_index + 1, [3]))) is None
    assert log_terms(log) == [1, 2, 3]
    assert log.committed == 0


def test_maybe_append_at_the_snapshot_boundary() -> None:
    log = make_log([], offset=5, offset_term=2)
    assert log.maybe_append(5, 2, 6, tuple(ents(6, [2, 3]))) == 7
    assert log.committed == 6
    assert log.maybe_append(5, 3, 0, tuple(ents(6, [3]))) is None


@pytest.mark.parametrize(
    ("commit", "committed"),
    [(0, 1), (2, 2), (3, 3), (9, 3)],  # only as far as the message vouches for
)
def test_maybe_append_commit(commit: int, committed: int) -> None:
    log = make_log([1, 1, 1, 1, 1])
    log.commit_to(1)
    assert log.maybe_append(1, 1, commit, tuple(ents(2, [1, 1]))) == 3
    assert log.committed == committed  # never past 3, although the log goes to 5


def test_maybe_append_refuses_to_truncate_committed_entries() -> None:
    log = make_log([1, 1, 1])
    log.commit_to(2)
    with pytest.raises(AssertionError, match="committed"):
        log.maybe_append(1, 1, 0, tuple(ents(2, [2, 2])))
    assert log_terms(log) == [1, 1, 1]
    assert log.committed == 2
    # Matching committed entries, and a conflict after them, are fine.
    assert log.maybe_append(1, 1, 0, tuple(ents(2, [1, 2]))) == 3
    assert log_terms(log) == [1, 1, 2]


def test_append_refuses_gaps_and_committed_truncation() -> None:
    log = make_log([1, 1])
    with pytest.raises(AssertionError, match="gap"):
        log.append(ents(4, [1]))
    log.commit_to(1)
    with pytest.raises(AssertionError, match="committed"):
        log.append(ents(1, [2]))
    log.append([])
    assert log_terms(log) == [1, 1]


def test_commit_to_never_goes_back_nor_past_the_log() -> None:
    log = make_log([1, 1, 1])
    log.commit_to(2)
    log.commit_to(1)
    assert log.committed == 2
    with pytest.raises(AssertionError, match="beyond last index"):
        log.commit_to(4)
    assert log.committed == 2


@st.composite
def logs_and_appends(
    draw: st.DrawFn,
) -> tuple[int, list[int], int, int, int, list[int], int]:
    """(offset, log terms, stable, prev_index, prev_term, message terms, commit)."""
    offset = draw(st.sampled_from([0, 3]))
    offset_term = 1 if offset else 0
    terms = sorted(draw(st.lists(st.integers(1, 4), max_size=8)))
    last = offset + len(terms)
    stable = draw(st.integers(offset, last))

    def term_at(i: int) -> int | None:
        if i == offset:
            return offset_term
        return terms[i - offset - 1] if offset < i <= last else None

    prev = draw(st.integers(offset, last + 1))
    real = term_at(prev)
    prev_term = real if real is not None and draw(st.booleans()) else draw(st.integers(0, 5))
    # The message matches our log up to ``switch``, then carries a later leader's term.
    n = draw(st.integers(0, 5))
    switch = draw(st.integers(0, n))
    later = max(terms, default=1) + draw(st.integers(0, 1))
    msg_terms = []
    for k in range(n):
        t = term_at(prev + 1 + k)
        msg_terms.append(t if k < switch and t is not None else later)
    commit = draw(st.integers(0, last + n + 1))
    return offset, terms, stable, prev, prev_term, msg_terms, commit


@settings(max_examples=200, deadline=None)
@given(case=logs_and_appends())
def test_maybe_append_against_a_list_model(
    case: tuple[int, list[int], int, int, int, list[int], int],
) -> None:
    offset, terms, stable, prev, prev_term, msg_terms, commit = case
    log = make_log(terms, offset=offset, offset_term=1 if offset else 0)
    log.stable = Index(stable)
    before = list(log.entries)
    msg = tuple(ents(prev + 1, msg_terms))
    matches = log.term(prev) == prev_term

    got = log.maybe_append(prev, prev_term, commit, msg)

    if not matches:
        assert got is None
        assert log.entries == before
        assert (log.stable, log.persisting) == (stable, offset + len(terms))
        assert log.committed == offset
        return
    assert got == prev + len(msg)
    by_index = {e.index: e for e in before}
    conflict = next((e.index for e in msg if by_index.get(e.index) != e), None)
    if conflict is None:
        assert log.entries == before  # nothing to change: the tail stays
        assert (log.stable, log.persisting) == (stable, offset + len(terms))
    else:
        assert log.entries == [e for e in before if e.index < conflict] + [
            e for e in msg if e.index >= conflict
        ]
        assert log.stable == min(stable, conflict - 1)
        assert log.persisting == min(offset + len(terms), conflict - 1)
    assert log.committed == max(offset, min(commit, got))


# -- find_conflict_by_term -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "term", "want"),
    [
        # Log terms by index: 1:1 2:1 3:2 4:2 5:4 6:4 7:5
        (7, 5, (7, 5)),
        (7, 4, (6, 4)),
        (7, 3, (4, 2)),  # no entry of term 3: the last one of an earlier term
        (4, 3, (4, 2)),
        (6, 2, (4, 2)),
        (7, 1, (2, 1)),
        (7, 0, (0, 0)),  # nothing at or below term 0 but the empty start
        (10, 4, (6, 4)),  # an index beyond the log starts at the last entry
        (2, 9, (2, 1)),
        (0, 9, (0, 0)),
    ],
)
def test_find_conflict_by_term(index: int, term: int, want: tuple[int, int]) -> None:
    assert make_log([1, 1, 2, 2, 4, 4, 5]).find_conflict_by_term(index, term) == want


def test_find_conflict_by_term_stops_at_the_snapshot() -> None:
    log = make_log([3, 3, 5], offset=4, offset_term=2)
    assert log.find_conflict_by_term(7, 4) == (6, 3)
    assert log.find_conflict_by_term(7, 2) == (4, 2)
    assert log.find_conflict_by_term(4, 9) == (4, 2)


# -- slice -----------------------------------------------------------------------------------

# Entries 1..4 of 16, 26, 36 and 46 bytes (data plus 16).
SIZED = tuple(ents(1, [1, 1, 2, 2], [0, 10, 20, 30]))


@pytest.mark.parametrize(
    ("lo", "hi", "max_bytes", "want"),
    [
        (1, 5, 0, [1, 2, 3, 4]),  # 0: no limit
        (1, 5, 124, [1, 2, 3, 4]),  # exactly the total fits
        (1, 5, 123, [1, 2, 3]),
        (1, 5, 42, [1, 2]),
        (1, 5, 41, [1]),
        (1, 5, 1, [1]),  # always at least one entry, even one over the limit
        (4, 5, 1, [4]),
        (2, 4, 0, [2, 3]),
        (3, 99, 0, [3, 4]),  # hi is clipped to the log
        (3, 3, 0, []),
        (5, 9, 0, []),  # past the log
    ],
)
def test_slice(lo: int, hi: int, max_bytes: int, want: list[int]) -> None:
    log = RaftLog(None, SIZED)
    got = log.slice(lo, hi, max_bytes)
    assert got is not None
    assert [e.index for e in got] == want


def test_slice_of_compacted_entries_is_none() -> None:
    log = make_log([1, 1], offset=5, offset_term=1)
    assert log.slice(5, 8) is None
    assert log.slice(1, 8) is None
    got = log.slice(6, 8)
    assert got is not None
    assert [e.index for e in got] == [6, 7]


# -- compact and restore ---------------------------------------------------------------------


def test_compact() -> None:
    log = make_log([1, 1, 2, 2, 3])
    log.commit_to(4)
    log.applied = Index(3)
    with pytest.raises(ValueError, match="only 3 is applied"):
        log.compact(snap(4, 2))
    with pytest.raises(ValueError, match="does not match"):
        log.compact(snap(3, 1))
    assert log.first_index() == 1

    s = snap(3, 2)
    log.compact(s)
    assert (log.offset, log.offset_term, log.first_index(), log.last_index()) == (3, 2, 4, 5)
    assert log.snapshot is s
    assert log.pending_snapshot is None  # the driver made it; nothing to hand out
    assert [log.term(i) for i in range(2, 7)] == [None, 2, 2, 3, None]
    assert log.slice(3, 6) is None
    assert log.committed == 4  # compaction moves no other mark
    # Compacting to the offset or below is a no-op.
    log.compact(snap(2, 1))
    log.compact(snap(3, 2))
    assert (log.offset, log.snapshot) == (3, s)


def test_restore_replaces_the_log() -> None:
    log = make_log([1, 1, 2])
    log.commit_to(2)
    log.applied = log.applying = Index(2)
    s = snap(10, 4)
    log.restore(s)
    assert (log.offset, log.first_index(), log.last_index(), log.last_term()) == (10, 11, 10, 4)
    assert log.entries == []
    assert log.snapshot is s
    assert log.pending_snapshot is s  # the driver must persist and install it
    assert log.committed == log.stable == log.persisting == log.applying == 10
    assert log.term(10) == 4
    assert log.term(3) is None
    assert log.maybe_append(10, 4, 11, tuple(ents(11, [4]))) == 11
    assert log.committed == 11
