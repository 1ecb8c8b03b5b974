"""Crash recovery: torn tails are cut, damage to durable records stops the node."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest
from storage_helpers import G1, G2, ents, hs, ready

from quorumkv.consensus import RaftState
from quorumkv.storage import WAL, CorruptWALError, MemFileSystem, OSFileSystem


def _write_batches(wal: WAL, batches: int, first: int = 1) -> int:
    """``batches`` synced batches of two groups' entries; returns the next index."""
    for i in range(first, first + batches):
        wal.append_ready(G1, ready(ents(i, i, size=30), hs(1, 1, i)))
        wal.append_ready(G2, ready(ents(i, i, term=2, size=30)))
        wal.sync()
    return first + batches


@pytest.mark.parametrize("torn", [False, True])
def test_crash_at_many_points_keeps_exactly_what_was_synced(torn: bool) -> None:
    for seed in range(60):
        rng = random.Random(seed)
        fs = MemFileSystem()
        wal = WAL(fs, "/n/wal", segment_bytes=rng.choice((150, 600, 1 << 20)))
        synced = rng.randint(0, 8)
        nxt = _write_batches(wal, synced)
        before_g1, before_g2 = wal.load(G1), wal.load(G2)
        # more writes, some of them written to the file but never fsynced
        extra = rng.randint(1, 5)
        for i in range(nxt, nxt + extra):
            wal.append_ready(G1, ready(ents(i, i, size=30), hs(1, 1, i)))
            if rng.random() < 0.5:
                wal.flush()
        fs.crash(rng if torn else None)
        again = WAL(fs, "/n/wal", segment_bytes=150)
        after = again.load(G1)
        assert again.load(G2) == before_g2, seed
        if not torn:
            assert after == before_g1, seed
        # whole unsynced records may survive a crash, in order; never a part of one
        last = len(after.entries)
        assert nxt - 1 <= last < nxt + extra, seed
        assert after.entries == ents(1, last, size=30), seed
        assert after.hard_state.commit in (last, last - 1) or synced == last == 0, seed
        assert after.hard_state.commit >= before_g1.hard_state.commit, seed
        # and the recovered WAL keeps working
        _write_batches(again, 1, first=last + 1)
        assert again.load(G1).entries == ents(1, last + 1, size=30)


def _wal_on_disk(tmp_path: Path, batches: int = 5) -> tuple[str, list[int]]:
    """A WAL in one segment; returns its path and the start offset of every record."""
    wal = WAL(OSFileSystem(), str(tmp_path / "wal"))
    offsets = []
    for i in range(1, batches + 1):
        offsets.append(wal._active.size())
        wal.append_ready(G1, ready(ents(i, i, size=20)))
        wal.sync()
    wal.close()
    (path,) = wal.segments()
    return path, offsets


def test_truncating_the_last_record_at_every_offset_recovers_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, offsets = _wal_on_disk(tmp_path)
    whole = Path(path).read_bytes()
    for cut in range(offsets[-1], len(whole)):
        Path(path).write_bytes(whole[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="quorumkv.storage.wal"):
            wal = WAL(OSFileSystem(), str(tmp_path / "wal"))
        assert wal.load(G1).entries == ents(1, 4, size=20), cut
        assert os.path.getsize(path) == offsets[-1]
        if cut > offsets[-1]:
            assert f"{path}: torn tail at byte offset {offsets[-1]}" in caplog.text
        wal.close()


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    path, _ = _wal_on_disk(tmp_path)
    with open(path, "ab") as f:
        f.write(bytes(4096))
    assert WAL(OSFileSystem(), str(tmp_path / "wal")).load(G1).entries == ents(1, 5, size=20)


@pytest.mark.parametrize("record", [0, 2, 3])
@pytest.mark.parametrize("where", ["length", "crc", "payload"])
def test_a_flipped_bit_before_valid_records_is_corruption(
    tmp_path: Path, record: int, where: str
) -> None:
    path, offsets = _wal_on_disk(tmp_path)
    at = offsets[record] + {"length": 0, "crc": 5, "payload": 12}[where]
    raw = bytearray(Path(path).read_bytes())
    raw[at] ^= 0x10
    Path(path).write_bytes(bytes(raw))
    with pytest.raises(CorruptWALError) as info:
        WAL(OSFileSystem(), str(tmp_path / "wal"))
    assert info.value.path == path
    assert info.value.offset == offsets[record]
    assert f"{path} at byte offset {offsets[record]}" in str(info.value)
    assert Path(path).read_bytes() == bytes(raw)  # nothing was cut


def test_a_flipped_bit_in_the_final_record_reads_as_a_torn_tail(tmp_path: Path) -> None:
    # Documented choice: a checksum mismatch with nothing valid after it cannot be told
    # from a torn write, so the record is cut (it was the last write, maybe unacknowledged).
    path, offsets = _wal_on_disk(tmp_path)
    raw = bytearray(Path(path).read_bytes())
    raw[offsets[-1] + 12] ^= 1
    Path(path).write_bytes(bytes(raw))
    assert WAL(OSFileSystem(), str(tmp_path / "wal")).load(G1).entries == ents(1, 4, size=20)


def test_damage_in_a_sealed_segment_is_corruption_even_at_its_end() -> None:
    fs = MemFileSystem()
    wal = WAL(fs, "/w", segment_bytes=100)
    _write_batches(wal, 6)
    first, *rest = wal.segments()
    assert rest
    fs.flip_bit(first, fs.size(first) - 1)
    with pytest.raises(CorruptWALError, match="sealed segment") as info:
        WAL(fs, "/w", segment_bytes=100)
    assert info.value.path == first


def test_a_missing_middle_segment_is_corruption() -> None:
    fs = MemFileSystem()
    wal = WAL(fs, "/w", segment_bytes=100)
    _write_batches(wal, 8)
    segments = wal.segments()
    assert len(segments) >= 3
    fs.remove(segments[1])
    with pytest.raises(CorruptWALError, match="missing"):
        WAL(fs, "/w", segment_bytes=100)


def test_a_crash_before_the_first_sync_leaves_an_empty_wal() -> None:
    fs = MemFileSystem()
    wal = WAL(fs, "/w")
    wal.append_ready(G1, ready(ents(1, 3), hs(1)))
    fs.crash(random.Random(1))
    assert WAL(fs, "/w").load(G1) == RaftState()
