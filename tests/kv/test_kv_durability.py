"""What survives: restart, a crash in the middle of a batch, snapshots taken while
writes go on, damaged snapshots, and a full engine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kvharness import Harness

from quorumkv.kv import (
    ALL_KEYS,
    Command,
    MVCCStore,
    PutRequest,
    RangeRequest,
    SnapshotError,
    StoreFullError,
    encode_command,
    snapshot_index,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def everything(revision: int = 0) -> RangeRequest:
    return RangeRequest(b"\x00", ALL_KEYS, revision=revision)


def test_restart_keeps_applied_index_with_data(tmp_path: Path) -> None:
    h = Harness(tmp_path / "kv", sync=True)
    h.apply(*(PutRequest(b"k%d" % i, b"v") for i in range(10)))
    before = h.store.range(everything())
    h.reopen()
    assert h.store.applied_index() == 10 and h.store.revision() == 11
    assert h.store.range(everything()) == before
    h.close()


CRASH = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {src!r})
    from quorumkv.kv import Command, MVCCStore, PutRequest, encode_command
    import quorumkv.kv._exec as ex

    store = MVCCStore({path!r}, map_size=1 << 30)
    def e(i):
        return i, encode_command(Command(0, 0, PutRequest(b"k%d" % i, b"v")))
    store.apply([e(i) for i in range(1, 6)])
    real, calls = ex.Executor._write, [0]
    def dying_write(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            os._exit(0)  # the process dies mid-batch: no commit, no abort
        real(self, *args, **kwargs)
    ex.Executor._write = dying_write
    store.apply([e(i) for i in range(6, 11)])
    raise SystemExit("should have died")
    """
)


def test_crash_mid_batch_leaves_nothing_of_it(tmp_path: Path) -> None:
    path = tmp_path / "kv"
    script = CRASH.format(src=str(SRC), path=str(path))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with MVCCStore(path, map_size=1 << 30) as store:
        assert store.applied_index() == 5 and store.revision() == 6
        assert [kv.key for kv in store.range(everything()).kvs] == [b"k%d" % i for i in range(1, 6)]


def test_snapshot_is_consistent_while_writes_continue(tmp_path: Path) -> None:
    h = Harness(tmp_path / "a")
    h.apply(*(PutRequest(b"k%03d" % i, b"x" * 3000) for i in range(800)))  # several chunks
    h.apply(PutRequest(b"k001", b"new"))
    chunks = h.store.snapshot()
    first = next(chunks)
    assert snapshot_index(first) == 801
    later = [h.entry(PutRequest(b"k%03d" % i, b"later")) for i in range(0, 800, 7)]
    h.store.apply(later)  # the snapshot's read transaction does not block this
    state_at_snapshot = h.store.range(everything(revision=802))
    restored = MVCCStore.restore(tmp_path / "b", [first, *chunks], map_size=1 << 30)
    assert restored.applied_index() == 801 and restored.revision() == 802
    assert restored.range(everything()).kvs == state_at_snapshot.kvs
    assert restored.get(b"k001", revision=3) is not None  # history came along too
    restored.apply(later)  # the follower then replays the log after the snapshot
    assert restored.range(everything()) == h.store.range(everything())
    assert restored.stats() | {"used_bytes": 0} == h.store.stats() | {"used_bytes": 0}
    restored.close()
    h.close()


def test_damaged_snapshot_is_refused_and_target_kept(tmp_path: Path) -> None:
    h = Harness(tmp_path / "a")
    h.apply(*(PutRequest(b"k%d" % i, b"v") for i in range(50)))
    chunks = list(h.store.snapshot())
    h.close()
    target = Harness(tmp_path / "b")
    target.apply(PutRequest(b"mine", b"1"))
    target.close()
    damaged = [*chunks[:1], chunks[1][:-1] + bytes([chunks[1][-1] ^ 1]), *chunks[2:]]
    for bad, why in [(damaged, "damaged"), (chunks[:-1], "ended early"), ([], "empty")]:
        with pytest.raises(SnapshotError, match=why):
            MVCCStore.restore(tmp_path / "b", bad, map_size=1 << 30)
    with MVCCStore(tmp_path / "b", map_size=1 << 30) as kept:
        assert kept.get(b"mine") is not None and kept.applied_index() == 1
    assert not (tmp_path / "b.restoring").exists()


def test_full_map_rolls_back_the_batch(tmp_path: Path) -> None:
    store = MVCCStore(tmp_path / "kv", map_size=4 << 20, sync=False)
    big = b"v" * (512 * 1024)
    ok = [(i, encode_command(Command(0, 0, PutRequest(b"k%d" % i, big)))) for i in (1, 2)]
    store.apply(ok)
    too_much = [
        (i, encode_command(Command(0, 0, PutRequest(b"k%d" % (i % 4), big)))) for i in range(3, 20)
    ]
    with pytest.raises(StoreFullError, match="map is full"):
        store.apply(too_much)
    # The in-memory key index is rolled back with the engine: k1 still has only its
    # first revision, and the keys the batch created are gone.
    assert store.applied_index() == 2 and store.revision() == 3
    assert store.range(RangeRequest(b"k", ALL_KEYS, count_only=True)).count == 2
    k1 = store.get(b"k1")
    assert k1 is not None and k1.mod_revision == 2 and k1.version == 1
    assert store.stats()["index"] == store.stats()["rev"] == 2
    store.close()


def _old_store(path: Path, fmt: int, session: bytes) -> None:
    """Write, by hand, the layout of a store of format ``fmt`` (1 or 2): one state
    machine, its metadata under plain names, one put of ``a`` at revision 2 by client 9
    (seq 1), with its session in that format's form."""
    import lmdb

    from quorumkv.kv._codec import pack

    def u64(n: int) -> bytes:
        return n.to_bytes(8, "big")

    env = lmdb.open(str(path), max_dbs=8, map_size=1 << 30)
    with env.begin(write=True) as txn:
        rev, meta = env.open_db(b"rev", txn=txn), env.open_db(b"meta", txn=txn)
        sessions = env.open_db(b"sessions", txn=txn)
        if fmt == 1:
            old = env.open_db(b"index", txn=txn, dupsort=True)
            txn.put(b"a", b"\0" * 17, db=old)
        txn.put(u64(2) + u64(0), pack([b"a", b"1", 2, 2, 1, 0, False]), db=rev)
        for name, value in ((b"applied", 1), (b"revision", 2), (b"compacted", 0)):
            txn.put(name, u64(value), db=meta)
        txn.put(b"format", u64(fmt), db=meta)
        txn.put(u64(9), pack([1, session]) if fmt == 1 else u64(1) + session, db=sessions)
    env.close()


@pytest.mark.parametrize("fmt", [1, 2])
def test_older_stores_are_upgraded_in_place(tmp_path: Path, fmt: int) -> None:
    """A store of format 1 (the key index in LMDB) or 2 (one state machine per
    environment) opens as format 3: range 1 over the whole keyspace, its session kept."""
    import lmdb

    from quorumkv.kv import PutResponse, encode_result

    path = tmp_path / "kv"
    path.mkdir()
    put = encode_command(Command(9, 1, PutRequest(b"a", b"1")))
    answer = encode_result(PutResponse(2, None))
    _old_store(path, fmt, answer)
    with MVCCStore(path, map_size=1 << 30) as store:
        kv = store.get(b"a")
        assert kv is not None and kv.value == b"1"
        assert store.stats()["keys"] == 1 and store.applied_index() == 1
        # The retried command is answered from its upgraded session, not applied again.
        assert store.apply([(2, put)], encoded=True) == [answer]
        assert store.revision() == 2
    env = lmdb.open(str(path), max_dbs=8, map_size=1 << 30, readonly=True)
    with env.begin() as txn:
        names = {bytes(k) for k, _ in txn.cursor().iternext()}
        fmt_now = txn.get(b"format", db=env.open_db(b"meta", txn=txn, create=False))
    env.close()
    assert b"index" not in names and int.from_bytes(fmt_now, "big") == 3
