"""The replicated log as one Raft node sees it.

Theory of operation
-------------------
The log is ``snapshot | entries``: everything up to ``offset`` has been compacted into a
snapshot (whose index is ``offset`` and term ``offset_term``), and ``entries`` holds
indexes ``offset + 1 .. last_index()`` in memory. The driver persists what the core
hands it and reloads it on restart, so the core never reads a disk.

Five marks move through the log, and these invariants hold between calls::

    offset <= applied <= applying <= committed <= last_index()
    stable <= persisting <= last_index()

``stable`` is the last index known to be on disk (acknowledged by ``advance``);
``persisting`` the last index handed to the driver for writing; ``applying`` the last
committed index handed to the driver for applying; ``applied`` the last it confirmed.
A conflicting append truncates the log and pulls ``stable`` and ``persisting`` back, so
the new entries are handed out again. Committed entries are never truncated: trying to
is a broken invariant and raises ``AssertionError`` (Raft's Log Matching and Leader
Completeness properties say it cannot happen).

This module must never decide anything about terms or roles; it only keeps the log.
"""

from __future__ import annotations

from ._types import Entry, Index, Snapshot, Term


class RaftLog:
    __slots__ = (
        "applied",
        "applying",
        "committed",
        "entries",
        "offset",
        "offset_term",
        "pending_snapshot",
        "persisting",
        "snapshot",
        "stable",
    )

    def __init__(self, snapshot: Snapshot | None, entries: tuple[Entry, ...] = ()) -> None:
        self.snapshot: Snapshot | None = snapshot
        self.pending_snapshot: Snapshot | None = None
        self.offset = snapshot.meta.index if snapshot else Index(0)
        self.offset_term = snapshot.meta.term if snapshot else Term(0)
        self.entries: list[Entry] = []
        for e in entries:
            if e.index <= self.offset:
                continue
            if e.index != self.last_index() + 1:
                raise ValueError(f"log entries not contiguous at index {e.index}")
            self.entries.append(e)
        self.committed = self.offset
        self.applied = self.offset
        self.applying = self.offset
        self.stable = self.last_index()
        self.persisting = self.stable

    # -- reading --------------------------------------------------------------------

    def first_index(self) -> Index:
        return Index(self.offset + 1)

    def last_index(self) -> Index:
        return Index(self.offset + len(self.entries))

    def last_term(self) -> Term:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> Term | None:
        """The term of ``index``; None if it is compacted away or beyond the log."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index():
            return None
        return self.entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def slice(self, lo: int, hi: int, max_bytes: int = 0) -> list[Entry] | None:
        """Entries [lo, hi), at least one, at most ``max_bytes`` (0: no limit).
        None if ``lo`` is compacted away."""
        if lo <= self.offset:
            return None
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        ents = self.entries[lo - self.offset - 1 : hi - self.offset - 1]
        if max_bytes > 0:
            size = 0
            for n, e in enumerate(ents):
                size += e.size()
                if size > max_bytes and n > 0:
                    return ents[:n]
        return ents

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (last_index, last_term) is at least as up to date as
        ours (thesis 3.6.1): a later last term wins, then a longer log."""
        lt = self.last_term()
        return last_term > lt or (last_term == lt and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[Index, Term]:
        """The largest index <= ``index`` whose term is <= ``term``, with that term.

        Used by a follower to hint where the leader should probe next, and by the leader
        to jump over a whole term of mismatched entries (thesis 3.5, fast back-off)."""
        index = min(index, self.last_index())
        if index < self.offset:
            return Index(index), Term(0)  # compacted: we cannot say, so claim nothing
        while index > self.offset:
            t = self.entries[index - self.offset - 1].term
            if t <= term:
                return Index(index), t
            index -= 1
        return Index(self.offset), self.offset_term

    # -- writing --------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append entries that follow the log or overwrite its uncommitted tail."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise AssertionError(f"truncating committed entry {first} <= {self.committed}")
        if first > self.last_index() + 1:
            raise AssertionError(f"gap in log: appending {first} after {self.last_index()}")
        if first <= self.last_index():
            del self.entries[first - self.offset - 1 :]
            self.stable = Index(min(self.stable, first - 1))
            self.persisting = Index(min(self.persisting, first - 1))
        self.entries.extend(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> Index | None:
        """A follower's AppendEntries consistency check (thesis 3.5). Returns the index of
        the last entry the message vouches for, or None if our log does not match at
        ``prev_index``. Entries we already hold are left alone; the first conflicting one
        and all after it are replaced."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = Index(prev_index + len(entries))
        for n, e in enumerate(entries):
            t = self.term(e.index)
            if t is None and e.index <= self.offset:
                continue  # already compacted, hence committed and matching
            if t != e.term:
                self.append(list(entries[n:]))
                break
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = Index(index)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (a follower installing one)."""
        self.snapshot = snapshot
        self.pending_snapshot = snapshot
        self.offset = snapshot.meta.index
        self.offset_term = snapshot.meta.term
        self.entries = []
        self.committed = self.offset
        self.stable = self.persisting = self.offset
        # Applying restarts at the snapshot once the driver has installed it.
        self.applying = self.offset

    def compact(self, snapshot: Snapshot) -> None:
        """Drop entries up to the snapshot's index, which the driver has made durable."""
        index = snapshot.meta.index
        if index <= self.offset:
            return
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} is applied")
        if self.term(index) != snapshot.meta.term:
            raise ValueError(f"snapshot term {snapshot.meta.term} does not match log at {index}")
        del self.entries[: index - self.offset]
        self.offset = index
        self.offset_term = snapshot.meta.term
        self.snapshot = snapshot
