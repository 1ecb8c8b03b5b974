"""A store plus a log-index counter, so tests read like a sequence of requests; and a
range of a shared engine with a busy neighbour, for the same tests."""

from __future__ import annotations

from pathlib import Path

from quorumkv.kv import (
    Command,
    CompactionRequest,
    DeleteRangeRequest,
    Engine,
    MVCCStore,
    PutRequest,
    RangeRequest,
    Request,
    Result,
    encode_command,
    stamp_command,
)


class Harness:
    def __init__(self, path: Path, *, sync: bool = False) -> None:
        self.path = path
        self.sync = sync
        self.store = MVCCStore(path, map_size=1 << 30, sync=sync)
        self.index = self.store.applied_index()

    def entry(self, req: Request, client: int = 0, seq: int = 0) -> tuple[int, bytes]:
        self.index += 1
        return self.index, encode_command(Command(client, seq, req))

    def apply(self, *reqs: Request) -> list[Result | None]:
        return self.store.apply([self.entry(r) for r in reqs])

    def one(self, req: Request) -> Result | None:
        return self.apply(req)[0]

    def reopen(self) -> None:
        self.store.close()
        self.store = MVCCStore(self.path, map_size=1 << 30, sync=self.sync)
        self.index = self.store.applied_index()

    def close(self) -> None:
        self.store.close()


class RangeHarness:
    """A stamped range ``[b"a", end)`` of an engine whose other range, ``[b"", b"a")``,
    is kept busy between steps (``churn``): the two share ``rev``, and the neighbour's
    writes, deletes and compactions must never show in the range, nor the reverse. The
    range's stamps are given per request (a test stamps each write with the revision it
    expects); the neighbour's come from far above, so the two never collide."""

    RANGE, BUSY = 7, 8

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = Engine(path, map_size=1 << 30, sync=False)
        self.store = self.engine.create_range(self.RANGE, b"a", b"", stamped=True)
        self.busy = self.engine.create_range(self.BUSY, b"", b"a", stamped=True)
        self.index = 0
        self.busy_index = 0
        self.busy_rev = 1 << 40
        self.busy_state: dict[bytes, bytes] = {}

    def apply(self, reqs: list[Request], stamps: list[int]) -> list[Result | None]:
        entries = []
        for req, stamp in zip(reqs, stamps, strict=True):
            self.index += 1
            entries.append((self.index, stamp_command(stamp, encode_command(Command(0, 0, req)))))
        return self.store.apply(entries)

    def churn(self, n: int) -> None:
        """``n`` writes to the neighbour, then a compaction of it at its newest revision."""
        entries = []
        for i in range(n):
            key = b"0%d" % ((self.busy_rev + i) % 5)
            req: Request
            if i % 4 == 3:
                req = DeleteRangeRequest(key)
                self.busy_state.pop(key, None)
            else:
                req = PutRequest(key, b"%d" % self.busy_rev)
                self.busy_state[key] = b"%d" % self.busy_rev
            self.busy_rev += 1
            self.busy_index += 1
            entries.append(
                (self.busy_index, stamp_command(self.busy_rev, encode_command(Command(0, 0, req))))
            )
        self.busy.apply(entries)
        self.busy_index += 1
        compact = CompactionRequest(self.busy.revision())
        self.busy.apply([(self.busy_index, stamp_command(self.busy_rev + 1, encode_command(
            Command(0, 0, compact))))])  # fmt: skip
        self.busy_rev += 1

    def check_busy(self) -> None:
        got = self.busy.range(RangeRequest(b"0", b"a")).kvs
        assert {kv.key: kv.value for kv in got} == self.busy_state
        # compacted at its newest revision: one record per live key, nothing else
        assert self.busy.stats()["rev"] == len(self.busy_state)

    def reopen(self) -> None:
        self.engine.close()
        self.engine = Engine(self.path, map_size=1 << 30, sync=False)
        self.store = self.engine.range(self.RANGE)
        self.busy = self.engine.range(self.BUSY)
        assert self.engine.orphans == 0

    def restore(self) -> None:
        """Install the range's own snapshot over it, in place."""
        before = self.store
        assert self.engine.restore_range(self.RANGE, list(before.snapshot())) is before

    def close(self) -> None:
        self.engine.close()
