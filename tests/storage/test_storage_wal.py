"""WAL round trips on real and in-memory files: groups, overwrites, rotation, gc."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from storage_helpers import G1, G2, G3, ents, hs, ready, snap

from quorumkv.consensus import GroupId, Index, RaftState
from quorumkv.storage import WAL, FileSystem, MemFileSystem, OSFileSystem, StorageError

Opener = Callable[..., WAL]


@pytest.fixture(params=["os", "mem"])
def open_wal(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    fs: FileSystem = OSFileSystem() if request.param == "os" else MemFileSystem()
    path = str(tmp_path / "wal") if request.param == "os" else "/node/wal"

    def opener(segment_bytes: int = 1 << 20) -> WAL:
        return WAL(fs, path, segment_bytes)

    return opener


def test_empty_wal_loads_nothing(open_wal: Opener) -> None:
    wal = open_wal()
    assert wal.groups() == []
    assert wal.load(G1) == RaftState()
    assert wal.sync().records == 0


def test_round_trip_many_groups_interleaved(open_wal: Opener) -> None:
    wal = open_wal()
    for step in range(10):
        for g in (G1, G2, G3):
            first = step * 3 + 1
            wal.append_ready(g, ready(ents(first, first + 2, term=g), hs(g, g, first)))
        stats = wal.sync()
        assert stats.records == 6
        assert stats.bytes > 0
    wal.close()
    again = open_wal()
    assert again.groups() == [G1, G2, G3]
    for g in (G1, G2, G3):
        st = again.load(g)
        assert st.entries == ents(1, 30, term=g)
        assert st.hard_state == hs(g, g, 28)
        assert st.snapshot is None
        assert st.applied == 0


def test_entries_replace_from_their_first_index(open_wal: Opener) -> None:
    wal = open_wal()
    wal.append_ready(G1, ready(ents(1, 10, term=1)))
    wal.sync()
    wal.append_ready(G1, ready(ents(6, 7, term=2)))
    wal.sync()
    expected = ents(1, 5, term=1) + ents(6, 7, term=2)
    assert wal.load(G1).entries == expected
    wal.close()
    assert open_wal().load(G1).entries == expected


def test_unsynced_writes_are_not_loaded(open_wal: Opener) -> None:
    wal = open_wal()
    wal.append_ready(G1, ready(ents(1, 3), hs(1)))
    assert wal.pending() == 2
    assert wal.load(G1) == RaftState()
    wal.sync()
    assert wal.load(G1).entries == ents(1, 3)


def test_install_drops_every_entry_and_compact_drops_up_to_it(open_wal: Opener) -> None:
    wal = open_wal()
    wal.append_ready(G1, ready(ents(1, 10)))
    wal.append_ready(G2, ready(ents(1, 10)))
    wal.sync()
    wal.save_snapshot_meta(G1, snap(4).meta)
    wal.append_ready(G2, ready(snapshot=snap(20), hard_state=hs(2, 0, 20)))
    wal.sync()
    wal.close()
    wal = open_wal()
    one, two = wal.load(G1), wal.load(G2)
    assert one.entries == ents(5, 10)
    assert one.snapshot is not None
    assert one.snapshot.meta == snap(4).meta
    assert one.applied == 4
    assert two.entries == ()
    assert two.applied == Index(20)


def test_snapshot_index_must_not_go_down(open_wal: Opener) -> None:
    wal = open_wal()
    wal.save_snapshot_meta(G1, snap(5).meta)
    with pytest.raises(StorageError, match="must only grow"):
        wal.save_snapshot_meta(G1, snap(4).meta)
    wal.sync()
    with pytest.raises(StorageError, match="must only grow"):
        wal.append_ready(G1, ready(snapshot=snap(3)))


def test_a_reset_keeps_term_and_vote_and_lets_a_lower_snapshot_in(open_wal: Opener) -> None:
    """A replica deleted from this node (its range moved away) and created again later:
    the old log and snapshot go, the term and vote stay, and the leader's snapshot may
    be older than the one the node had."""
    wal = open_wal(segment_bytes=400)
    wal.append_ready(G1, ready(snapshot=snap(50), hard_state=hs(4, 2, 50)))
    wal.append_ready(G1, ready(ents(51, 60, term=4, size=40), hs(4, 2, 60)))
    wal.sync()
    wal.reset(G1, hs(4, 2, 0))
    wal.sync()
    assert wal.load(G1) == RaftState(hs(4, 2, 0))
    wal.append_ready(G1, ready(snapshot=snap(20, term=5), hard_state=hs(5, 0, 20)))
    wal.append_ready(G1, ready(ents(21, 22, term=5), hs(5, 0, 22)))
    wal.sync()
    for w in (wal, open_wal(segment_bytes=400)):  # the same after a replay
        st = w.load(G1)
        assert st.snapshot is not None and st.snapshot.meta.index == 20
        assert st.entries == ents(21, 22, term=5) and st.hard_state == hs(5, 0, 22)


def test_records_before_a_reset_pin_no_segment(open_wal: Opener) -> None:
    wal = open_wal(segment_bytes=300)
    wal.append_ready(G2, ready(snapshot=snap(40), hard_state=hs(3, 1, 40)))
    for i in range(41, 61):  # entries above the snapshot: live until a reset
        wal.append_ready(G2, ready(ents(i, i, size=40), hs(3, 1, i)))
        wal.sync()
    wal.reset(G2, hs(3, 1, 0))
    for i in range(1, 30):
        wal.append_ready(G1, ready(ents(i, i, size=40), hs(1, 1, i)))
        wal.sync()
    wal.save_snapshot_meta(G1, snap(29).meta)
    wal.append_ready(G1, ready(hard_state=hs(1, 1, 29)))
    wal.sync()
    before = wal.segments()
    removed = wal.gc()
    assert removed and removed == before[: len(removed)]
    wal.close()
    again = open_wal(segment_bytes=300)
    assert again.load(G2) == RaftState(hs(3, 1, 0))
    assert again.load(G1).hard_state == hs(1, 1, 29)


def test_rotation_and_gc_after_compaction(open_wal: Opener) -> None:
    wal = open_wal(segment_bytes=400)
    for i in range(1, 41):
        wal.append_ready(G1, ready(ents(i, i, size=40), hs(1, 1, i)))
        wal.append_ready(G2, ready(ents(i, i, size=40), hs(1, 1, i)))
        wal.sync()
    before = wal.segments()
    many = len(before)
    assert many > 5
    assert wal.gc() == []  # nothing compacted yet
    wal.save_snapshot_meta(G1, snap(40).meta)
    wal.sync()
    assert wal.gc() == []  # G2 still needs its entries
    wal.save_snapshot_meta(G2, snap(30).meta)
    wal.append_ready(G1, ready(hard_state=hs(1, 1, 40)))
    wal.append_ready(G2, ready(hard_state=hs(1, 1, 40)))
    wal.sync()
    removed = wal.gc()
    assert 0 < len(removed) < many
    assert removed == before[: len(removed)]  # the oldest, in order
    wal.close()
    wal = open_wal(segment_bytes=400)
    assert wal.load(G1).entries == ()
    assert wal.load(G2).entries == ents(31, 40, size=40)
    assert wal.load(G2).hard_state == hs(1, 1, 40)


def test_an_idle_groups_hard_state_pins_its_segment(open_wal: Opener) -> None:
    wal = open_wal(segment_bytes=200)
    wal.append_ready(G3, ready(hard_state=hs(7, 3, 0)))
    for i in range(1, 30):
        wal.append_ready(G1, ready(ents(i, i, size=40), hs(1, 1, i)))
        wal.sync()
    wal.save_snapshot_meta(G1, snap(29).meta)
    wal.sync()
    assert wal.gc() == []
    wal.close()
    assert open_wal(segment_bytes=200).load(G3).hard_state == hs(7, 3, 0)


def test_a_failed_fsync_breaks_the_wal() -> None:
    fs = MemFileSystem()
    wal = WAL(fs, "/w")
    wal.append_ready(G1, ready(ents(1, 2)))
    fs.fail_next = "fsync"
    with pytest.raises(StorageError, match="failed"):
        wal.sync()
    with pytest.raises(StorageError, match="failed earlier"):
        wal.append_ready(G1, ready(ents(3, 3)))
    assert wal.load(G1) == RaftState()


def test_groups_are_independent_of_interleaving(open_wal: Opener) -> None:
    wal = open_wal()
    groups = [GroupId(g) for g in range(1, 51)]
    for g in groups:
        wal.append_ready(g, ready(ents(1, g % 5 + 1), hs(g, 1, 0)))
    assert wal.sync().records == 100
    wal.close()
    wal = open_wal()
    assert wal.groups() == groups
    assert all(wal.load(g).entries == ents(1, g % 5 + 1) for g in groups)


def test_recovery_logs_nothing_when_clean(
    open_wal: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    wal = open_wal()
    wal.append_ready(G1, ready(ents(1, 3)))
    wal.sync()
    wal.close()
    with caplog.at_level(logging.WARNING):
        open_wal()
    assert caplog.records == []


def test_gc_deletes_exactly_the_segments_below_the_snapshot(open_wal: Opener) -> None:
    wal = open_wal(segment_bytes=1)  # every sync starts a new segment
    for i in range(1, 11):
        wal.append_entries(G1, ents(i, i))
        wal.sync()
    segments = wal.segments()
    wal.save_snapshot_meta(G1, snap(5).meta)
    wal.sync()
    assert wal.gc() == segments[:5]
    wal.close()
    assert open_wal(segment_bytes=1).load(G1).entries == ents(6, 10)
