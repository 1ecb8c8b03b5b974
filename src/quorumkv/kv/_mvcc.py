"""``MVCCStore``: one replicated key-value state machine in its own LMDB environment.

The store of an unsharded node and of the tools and tests that want one state machine:
an ``Engine`` (``_engine``) at ``path`` holding one range, id 1, over the whole keyspace,
numbering its own revisions. Everything it does is the range's (``_range``): batches
applied in one transaction with the applied index, sessions for exactly-once, reads
from the in-memory key index, snapshots of the range streamed from one read
transaction. ``restore`` installs a snapshot in a fresh engine beside the store and
renames it into place (as before the engine existed), so it is safe while the old store
is still open in this process. A store written by an older version (format 1 or 2) is
upgraded in place when opened.

This module must never hold state of its own beyond the engine and the range.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from quorumkv.kv._engine import DEFAULT_MAP_SIZE, Engine
from quorumkv.kv._range import RangeStore
from quorumkv.kv._types import KeyValue, RangeRequest, RangeResponse

RANGE = 1
"""The id of the one range an ``MVCCStore`` holds."""


class MVCCStore:
    """etcd's data model on LMDB at ``path`` (a directory, created if missing).

    Not thread-safe: one thread calls ``apply`` and reads; ``snapshot`` chunks may be
    consumed on any thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
        metasync: bool = True,
    ) -> None:
        """``sync=False`` (LMDB's NOSYNC) can corrupt the store on a power loss;
        ``metasync=False`` only risks losing the last transaction, which a log replay
        restores: the right choice under a WAL."""
        self.path = Path(path)
        self.engine = Engine(path, map_size=map_size, sync=sync, metasync=metasync)
        try:
            if RANGE not in self.engine.ranges():
                self.engine.create_range(RANGE, b"", b"")  # refused next to other ranges
            self.rs: RangeStore = self.engine.range(RANGE)
        except BaseException:
            self.engine.close()
            raise

    def applied_index(self) -> int:
        """The last log index whose effects are in the engine."""
        return self.rs.applied_index()

    def revision(self) -> int:
        return self.rs.revision()

    def compacted_revision(self) -> int:
        return self.rs.compacted_revision()

    def stats(self) -> dict[str, int]:
        """Records per database (``rev`` counts stored revisions), the revisions and
        the keys the index holds, and the bytes of the LMDB file in use."""
        out = self.engine.stats()
        del out["map_size"]
        rs = self.rs.stats()
        out["index"], out["keys"] = rs["index"], rs["keys"]
        return out

    def sync(self) -> None:
        self.engine.sync()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> MVCCStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def apply(
        self,
        entries: Sequence[tuple[int, bytes]],
        *,
        encoded: bool = False,
        before_commit: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        """``RangeStore.apply`` of the one range."""
        return self.rs.apply(entries, encoded=encoded, before_commit=before_commit)

    def range(self, req: RangeRequest) -> RangeResponse:
        return self.rs.range(req)

    def get(self, key: bytes, revision: int = 0) -> KeyValue | None:
        return self.rs.get(key, revision)

    def snapshot(self) -> Iterator[bytes]:
        return self.rs.snapshot()

    @classmethod
    def restore(
        cls,
        path: str | os.PathLike[str],
        chunks: Iterable[bytes],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
    ) -> MVCCStore:
        """Build a store at ``path`` from ``snapshot`` chunks, replacing whatever was
        there only once the whole snapshot has been written and verified: it is
        installed in a fresh engine beside ``path`` (``restore_range``), which is then
        renamed into place, so a store still open at ``path`` is never written through
        a second environment (close it before using the returned store). Raises
        ``SnapshotError``; then ``path`` is intact."""
        target = Path(path)
        staging = target.with_name(target.name + ".restoring")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with Engine(staging, map_size=map_size, sync=sync) as engine:
                engine.restore_range(RANGE, chunks)
                if sync:
                    engine.sync()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        old = target.with_name(target.name + ".replaced")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
        _fsync_dir(target.parent)  # the renames must survive a power loss too
        shutil.rmtree(old, ignore_errors=True)
        return cls(target, map_size=map_size, sync=sync)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
