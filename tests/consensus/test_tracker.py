"""The progress tracker: the in-flight window, and each follower's Progress states.

A Progress moves PROBE -> REPLICATE (an append was acknowledged) -> SNAPSHOT (the
follower needs compacted entries) -> PROBE (the snapshot was reported). These tests pin
each transition, the staleness rules of ``maybe_decr_to`` in both sending states, and
which state pauses sending when.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.consensus import ConfState, Index, NodeId
from quorumkv.consensus._quorum import VoteResult
from quorumkv.consensus._tracker import Inflights, Progress, ProgressState, ProgressTracker

# -- Inflights ---------------------------------------------------------------------------


def test_inflights_fill_and_overflow() -> None:
    inf = Inflights(3)
    assert len(inf) == 0
    assert not inf.full()
    for i in (5, 7, 9):
        inf.add(i)
    assert len(inf) == 3
    assert inf.full()
    with pytest.raises(AssertionError, match="overflow"):
        inf.add(11)
    assert len(inf) == 3


def test_inflights_free_le() -> None:
    inf = Inflights(10)
    for i in range(1, 8):
        inf.add(i * 2)  # 2 4 6 8 10 12 14
    inf.free_le(1)
    assert len(inf) == 7
    inf.free_le(6)
    assert len(inf) == 4  # 8 10 12 14
    inf.free_le(9)
    assert len(inf) == 3  # 10 12 14
    inf.free_le(9)  # a stale acknowledgement frees nothing more
    assert len(inf) == 3
    inf.free_le(100)
    assert len(inf) == 0
    inf.free_le(200)  # freeing an empty window is harmless
    assert len(inf) == 0


def test_inflights_free_first_one_makes_room() -> None:
    inf = Inflights(2)
    inf.add(3)
    inf.add(4)
    assert inf.full()
    inf.free_first_one()
    assert not inf.full()
    inf.add(5)
    inf.free_le(4)  # frees 4, the oldest left; 5 stays
    assert len(inf) == 1
    inf.free_first_one()
    inf.free_first_one()  # on an empty window: a no-op
    assert len(inf) == 0
    inf.add(6)
    inf.reset()
    assert len(inf) == 0


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 5),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 3)),
            st.tuples(st.just("free_le"), st.integers(0, 40)),
            st.tuples(st.just("free_first_one"), st.just(0)),
        ),
        max_size=20,
    ),
)
def test_inflights_against_a_list_model(capacity: int, ops: list[tuple[str, int]]) -> None:
    """Appends are sent in increasing index order; the window behaves like a FIFO list."""
    inf = Inflights(capacity)
    model: list[int] = []
    last = 0
    for op, arg in ops:
        if op == "add":
            last += arg + 1
            if len(model) >= capacity:
                with pytest.raises(AssertionError):
                    inf.add(last)
            else:
                inf.add(last)
                model.append(last)
        elif op == "free_le":
            inf.free_le(arg)
            model = [i for i in model if i > arg]
        else:
            inf.free_first_one()
            model = model[1:]
        assert len(inf) == len(model)
        assert inf.full() is (len(model) >= capacity)


# -- Progress: state transitions -----------------------------------------------------------


def _progress(match: int, next_: int, state: ProgressState, inflight: int = 4) -> Progress:
    pr = Progress(next_, inflight, is_learner=False)
    pr.match = Index(match)
    pr.next = Index(next_)
    if state is ProgressState.REPLICATE:
        pr.become_replicate()
        pr.next = Index(next_)
    elif state is ProgressState.SNAPSHOT:
        pr.become_snapshot(next_ - 1)
    return pr


def test_new_progress_probes() -> None:
    pr = Progress(7, 4, is_learner=True)
    assert (pr.state, pr.match, pr.next) == (ProgressState.PROBE, 0, 7)
    assert pr.is_learner
    assert not pr.probe_sent
    assert not pr.is_paused()


def test_probe_replicate_snapshot_probe_cycle() -> None:
    pr = Progress(11, 4, is_learner=False)
    # PROBE: one append at a time.
    pr.sent_entries(12)
    # Probing does not advance next; it waits for the answer.
    assert (pr.probe_sent, pr.next, pr.is_paused()) == (True, 11, True)
    # The follower acknowledges 10: it matches there, so stream from 11.
    assert pr.maybe_update(10)
    assert (pr.probe_sent, pr.is_paused()) == (False, False)
    pr.become_replicate()
    assert (pr.state, pr.match, pr.next) == (ProgressState.REPLICATE, 10, 11)
    pr.sent_entries(13)
    pr.sent_entries(15)
    assert pr.next == 16
    assert len(pr.inflights) == 2
    # The follower turns out to need compacted entries: a snapshot at 20 goes out.
    pr.become_snapshot(20)
    assert (pr.state, pr.pending_snapshot) == (ProgressState.SNAPSHOT, 20)
    assert len(pr.inflights) == 0
    assert pr.is_paused()
    pr.sent_entries(30)  # nothing is sent while a snapshot is on its way
    assert pr.next == 16
    assert len(pr.inflights) == 0
    # The snapshot was reported: probe just after it (it is presumed installed).
    pr.become_probe()
    assert (pr.state, pr.match, pr.next) == (ProgressState.PROBE, 10, 21)
    assert pr.pending_snapshot == 0
    assert not pr.probe_sent


def test_become_probe_after_failed_snapshot_uses_match() -> None:
    pr = _progress(10, 11, ProgressState.SNAPSHOT)
    pr.pending_snapshot = Index(0)  # what report_snapshot(ok=False) does
    pr.become_probe()
    assert (pr.state, pr.next) == (ProgressState.PROBE, 11)


def test_become_probe_from_snapshot_keeps_a_later_match() -> None:
    pr = _progress(3, 4, ProgressState.SNAPSHOT)
    pr.become_snapshot(5)
    assert pr.maybe_update(8)  # an ack beyond the snapshot arrived meanwhile
    pr.become_probe()
    assert pr.next == 9


def test_become_probe_from_replicate_rewinds_next() -> None:
    pr = _progress(5, 6, ProgressState.REPLICATE)
    pr.sent_entries(9)
    pr.sent_entries(12)
    pr.become_probe()
    assert (pr.state, pr.match, pr.next) == (ProgressState.PROBE, 5, 6)
    assert len(pr.inflights) == 0


def test_become_replicate_resets_window_and_next() -> None:
    pr = _progress(5, 6, ProgressState.REPLICATE)
    pr.sent_entries(9)
    pr.become_replicate()
    assert (pr.next, len(pr.inflights)) == (6, 0)


# -- Progress: maybe_update ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "updated", "match", "next_"),
    [
        (3, False, 5, 10),  # stale: below match
        (5, False, 5, 10),  # equal to match: nothing new
        (7, True, 7, 10),  # new match below next: next stays
        (9, True, 9, 10),
        (12, True, 12, 13),  # beyond next: next follows
    ],
)
def test_maybe_update(index: int, updated: bool, match: int, next_: int) -> None:
    pr = _progress(5, 10, ProgressState.PROBE)
    pr.probe_sent = True
    assert pr.maybe_update(index) is updated
    assert (pr.match, pr.next) == (match, next_)
    # Only news resumes a paused probe.
    assert pr.probe_sent is not updated


# -- Progress: maybe_decr_to -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rejected", "hint", "decremented", "next_"),
    [
        (4, 4, False, 10),  # stale: at or below match, the follower has it
        (5, 5, False, 10),
        (6, 6, True, 6),  # next falls back to match + 1, whatever the hint
        (9, 0, True, 6),
        (20, 20, True, 6),
    ],
)
def test_maybe_decr_to_in_replicate(
    rejected: int, hint: int, decremented: bool, next_: int
) -> None:
    pr = _progress(5, 10, ProgressState.REPLICATE)
    assert pr.maybe_decr_to(rejected, hint) is decremented
    assert pr.next == next_
    assert pr.match == 5


@pytest.mark.parametrize(
    ("rejected", "hint", "decremented", "next_"),
    [
        (8, 3, False, 10),  # stale: not the append we are waiting on (next - 1 = 9)
        (10, 3, False, 10),
        (9, 7, True, 8),  # go back to just after the hint
        (9, 20, True, 9),  # a hint beyond the rejected index: step back by one
        (9, 2, True, 6),  # never below match + 1
        (9, 0, True, 6),
    ],
)
def test_maybe_decr_to_in_probe(rejected: int, hint: int, decremented: bool, next_: int) -> None:
    pr = _progress(5, 10, ProgressState.PROBE)
    pr.probe_sent = True
    assert pr.maybe_decr_to(rejected, hint) is decremented
    assert pr.next == next_
    # An answer to the probe in flight resumes probing; a stale one does not.
    assert pr.probe_sent is not decremented


def test_maybe_decr_to_in_probe_from_scratch() -> None:
    pr = Progress(10, 4, is_learner=False)
    assert pr.maybe_decr_to(9, 0)
    assert pr.next == 1
    assert not pr.maybe_decr_to(9, 0)  # the same rejection again is now stale


# -- Progress: is_paused ----------------------------------------------------------------------


def test_is_paused_per_state() -> None:
    probe = _progress(5, 6, ProgressState.PROBE)
    assert not probe.is_paused()
    probe.sent_entries(8)
    assert probe.is_paused()
    probe.maybe_decr_to(5, 5)  # the probe was answered
    assert not probe.is_paused()

    repl = _progress(5, 6, ProgressState.REPLICATE, inflight=2)
    repl.sent_entries(7)
    assert not repl.is_paused()
    repl.sent_entries(8)
    assert repl.is_paused()  # the window is full
    repl.inflights.free_le(7)
    assert not repl.is_paused()
    repl.probe_sent = True  # irrelevant while replicating
    assert not repl.is_paused()

    snap = _progress(5, 6, ProgressState.SNAPSHOT)
    assert snap.is_paused()


def test_describe() -> None:
    pr = Progress(3, 1, is_learner=True)
    assert pr.describe() == "probe match=0 next=3 learner"
    pr.become_snapshot(9)
    assert pr.describe() == "snapshot match=0 next=3 learner paused pending-snap=9"


# -- ProgressTracker --------------------------------------------------------------------------


def test_tracker_apply_conf_keeps_demoted_voter_voting_until_joint_is_left() -> None:
    n1, n2, n3, n4 = (NodeId(n) for n in (1, 2, 3, 4))
    trk = ProgressTracker(max_inflight=8)
    trk.apply_conf(ConfState(voters=frozenset({n1, n2, n3})), next_index=5)
    assert set(trk.progress) == {n1, n2, n3}
    trk.progress[n2].match = Index(4)
    # Joint: 3 is being demoted, 4 added as a learner.
    joint = ConfState(
        voters=frozenset({n1, n2}),
        voters_outgoing=frozenset({n1, n2, n3}),
        learners=frozenset({n4}),
        learners_next=frozenset({n3}),
    )
    trk.apply_conf(joint, next_index=9)
    assert trk.progress[n2].match == 4  # progress of members that stay is kept
    assert trk.progress[n4].next == 9
    assert trk.progress[n4].is_learner
    assert not trk.progress[n3].is_learner  # still votes in the outgoing half
    assert trk.voters() == {n1, n2, n3}
    trk.apply_conf(ConfState(voters=frozenset({n1, n2}), learners=frozenset({n3, n4})), 9)
    assert trk.progress[n3].is_learner
    trk.apply_conf(ConfState(voters=frozenset({n1, n2})), 9)
    assert set(trk.progress) == {n1, n2}


def test_tracker_committed_and_votes_use_the_joint_config() -> None:
    n = [NodeId(i) for i in range(6)]
    trk = ProgressTracker(max_inflight=8)
    conf = ConfState(voters=frozenset(n[3:6]), voters_outgoing=frozenset(n[1:4]))
    trk.apply_conf(conf, next_index=1)
    for node, m in zip(n[1:6], (9, 9, 2, 8, 0), strict=True):
        trk.progress[node].match = Index(m)
    assert trk.committed() == 2  # new half (2, 8, 0) -> 2; old half (9, 9, 2) -> 9
    trk.record_vote(n[1], True)
    trk.record_vote(n[2], True)
    trk.record_vote(n[1], False)  # the first vote of a node counts
    assert trk.votes[n[1]] is True
    assert trk.tally_votes() is VoteResult.PENDING
    trk.record_vote(n[4], True)
    trk.record_vote(n[5], True)
    assert trk.tally_votes() is VoteResult.WON
    trk.reset_votes()
    assert trk.tally_votes() is VoteResult.PENDING
