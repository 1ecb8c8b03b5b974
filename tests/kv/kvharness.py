"""A store plus a log-index counter, so tests read like a sequence of requests."""

from __future__ import annotations

from pathlib import Path

from quorumkv.kv import Command, MVCCStore, Request, Result, encode_command


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
