"""Shared helpers for the storage tests: small Raft values and file systems to run on."""

from __future__ import annotations

from quorumkv.consensus import (
    ConfState,
    Entry,
    GroupId,
    HardState,
    Index,
    NodeId,
    Ready,
    Snapshot,
    SnapshotMeta,
    Term,
)

G1, G2, G3 = GroupId(1), GroupId(2), GroupId(3)


def ents(first: int, last: int, term: int = 1, size: int = 8) -> tuple[Entry, ...]:
    return tuple(
        Entry(Term(term), Index(i), data=bytes([i % 251]) * size) for i in range(first, last + 1)
    )


def hs(term: int, vote: int = 0, commit: int = 0) -> HardState:
    return HardState(Term(term), NodeId(vote), Index(commit))


def snap(index: int, term: int = 1, data: bytes | None = None) -> Snapshot:
    conf = ConfState(voters=frozenset({NodeId(1), NodeId(2), NodeId(3)}))
    body = data if data is not None else f"state@{term}/{index}".encode()
    return Snapshot(SnapshotMeta(Index(index), Term(term), conf), body)


def ready(
    entries: tuple[Entry, ...] = (),
    hard_state: HardState | None = None,
    snapshot: Snapshot | None = None,
) -> Ready:
    return Ready(hard_state=hard_state, snapshot=snapshot, entries=entries, must_sync=True)
