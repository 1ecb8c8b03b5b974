"""Snapshot files: atomic install, checksums, streaming, cleanup; NodeStorage ordering."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from storage_helpers import G1, G2, ents, hs, ready, snap

from quorumkv.storage import (
    CorruptSnapshotError,
    MemFileSystem,
    NodeStorage,
    OSFileSystem,
    SnapshotStore,
)


def test_save_and_load_on_real_files(tmp_path: Path) -> None:
    store = SnapshotStore(OSFileSystem(), str(tmp_path / "snap"))
    store.save(G1, snap(10))
    store.save(G2, snap(5, term=2))
    assert store.load(G1, snap(10).meta) == snap(10)
    assert store.load_latest(G2) == snap(5, term=2)
    assert store.load_latest(G1) == snap(10)
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == ["1-1-10.snap", "2-2-5.snap"]


def test_a_crash_before_the_rename_leaves_the_old_snapshot() -> None:
    fs = MemFileSystem()
    store = SnapshotStore(fs, "/s")
    store.save(G1, snap(10))
    fs.fail_next = "fsync"  # the new file's fsync fails: no rename happens
    with pytest.raises(OSError, match="injected"):
        store.save(G1, snap(20))
    assert fs.listdir("/s") == ["1-1-10.snap", "1-1-20.snap.tmp"]
    fs.crash(random.Random(3))
    store = SnapshotStore(fs, "/s")
    assert fs.listdir("/s") == ["1-1-10.snap"]  # the leftover .tmp is gone
    assert store.load_latest(G1) == snap(10)


def test_a_rename_not_followed_by_a_dir_fsync_may_be_lost() -> None:
    fs = MemFileSystem()
    store = SnapshotStore(fs, "/s")
    store.save(G1, snap(10))
    fs.fail_next = "fsync"
    fs.open_append("/s/1-1-20.snap.tmp").write(b"x")
    fs.rename("/s/1-1-20.snap.tmp", "/s/1-1-20.snap")
    fs.crash()
    assert fs.listdir("/s") == ["1-1-10.snap"]


@pytest.mark.parametrize("where", [0, 20, 40, -1])
def test_a_damaged_snapshot_raises_naming_the_file(where: int) -> None:
    fs = MemFileSystem()
    store = SnapshotStore(fs, "/s")
    path = store.save(G1, snap(10, data=b"d" * 100))
    fs.flip_bit(path, where % fs.size(path), 3)
    with pytest.raises(CorruptSnapshotError, match=path):
        store.load_latest(G1)


def test_a_truncated_snapshot_raises() -> None:
    fs = MemFileSystem()
    store = SnapshotStore(fs, "/s")
    path = store.save(G1, snap(10))
    fs.truncate(path, fs.size(path) - 1)
    with pytest.raises(CorruptSnapshotError, match="size"):
        store.load(G1, snap(10).meta)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_streaming_round_trip(tmp_path: Path, chunk: int) -> None:
    big = snap(42, term=3, data=bytes(range(256)) * 40)
    sender = SnapshotStore(OSFileSystem(), str(tmp_path / "a"))
    sender.save(G1, big)
    receiver_store = SnapshotStore(MemFileSystem(), "/b")
    rx = receiver_store.receiver(G1)
    pieces = list(sender.chunks(G1, 42, chunk_bytes=chunk))
    assert all(len(p) <= chunk for p in pieces)
    for piece in pieces:
        rx.write(piece)
    assert rx.finish() == big
    assert receiver_store.load_latest(G1) == big
    assert receiver_store.fs.listdir("/b") == ["1-3-42.snap"]


def test_a_damaged_stream_is_never_installed() -> None:
    sender = SnapshotStore(MemFileSystem(), "/a")
    sender.save(G1, snap(42, data=b"z" * 500))
    store = SnapshotStore(MemFileSystem(), "/b")
    rx = store.receiver(G1)
    data = b"".join(sender.chunks(G1, 42, chunk_bytes=100))
    rx.write(data[:300] + bytes([data[300] ^ 1]) + data[301:])
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        rx.finish()
    assert store.fs.listdir("/b") == []
    rx2 = store.receiver(G1)
    rx2.write(data[:50])
    rx2.abort()
    assert store.fs.listdir("/b") == []


def test_purge_keeps_only_the_named_snapshot() -> None:
    store = SnapshotStore(MemFileSystem(), "/s")
    for i in (5, 10, 15):
        store.save(G1, snap(i))
    store.save(G2, snap(7))
    assert len(store.purge(G1, snap(10).meta)) == 2
    assert store.metas(G1) == [(10, 1)]
    assert store.metas(G2) == [(7, 1)]


# -- NodeStorage ---------------------------------------------------------------------------


def test_node_storage_round_trip_with_compaction(tmp_path: Path) -> None:
    ns = NodeStorage(OSFileSystem(), str(tmp_path / "node"), segment_bytes=300)
    for i in range(1, 31):
        ns.write_ready(G1, ready(ents(i, i, size=20), hs(1, 1, i)))
        ns.write_ready(G2, ready(ents(i, i, size=20), hs(2, 2, i)))
        ns.sync()
    segments = len(ns.wal.segments())
    ns.save_snapshot(G1, snap(25))
    ns.save_snapshot(G2, snap(30))
    ns.save_snapshot(G1, snap(28))
    assert len(ns.wal.segments()) < segments
    ns.close()
    ns = NodeStorage(OSFileSystem(), str(tmp_path / "node"), segment_bytes=300)
    one, two = ns.load(G1), ns.load(G2)
    assert one.snapshot == snap(28)
    assert one.entries == ents(29, 30, size=20)
    assert one.applied == 28
    assert two.snapshot == snap(30)
    assert two.entries == ()
    assert two.hard_state == hs(2, 2, 30)
    assert ns.snapshots.metas(G1) == [(28, 1)]


def test_an_installed_snapshot_is_lost_with_its_unsynced_batch() -> None:
    fs = MemFileSystem()
    ns = NodeStorage(fs, "/n")
    ns.write_ready(G1, ready(ents(1, 5), hs(1, 0, 5)))
    ns.save_snapshot(G1, snap(3))
    ns.write_ready(G1, ready(snapshot=snap(50, term=2), hard_state=hs(2, 0, 50)))
    fs.crash(random.Random(0))
    ns = NodeStorage(fs, "/n")
    st = ns.load(G1)
    assert st.snapshot == snap(3)
    assert st.entries == ents(4, 5)
    assert ns.snapshots.metas(G1) == [(3, 1)]  # the orphaned newer file is gone


def test_the_wal_record_of_a_snapshot_follows_its_durable_file() -> None:
    fs = MemFileSystem()
    ns = NodeStorage(fs, "/n")
    ns.save_snapshot(G1, snap(3))
    fs.fail_next = "fsync"  # the snapshot file's fsync fails
    with pytest.raises(OSError, match="injected"):
        ns.save_snapshot(G1, snap(9))
    assert ns.wal.pending() == 0  # no WAL record was written for it
    fs.crash()
    assert NodeStorage(fs, "/n").load(G1).snapshot == snap(3)
