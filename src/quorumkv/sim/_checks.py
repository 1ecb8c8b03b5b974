"""Raft's safety properties (thesis figure 3.2), checked as the simulation runs.

Theory of operation
-------------------
The checker sees every Ready a node produces and every change of leadership, and keeps
a global record to compare each observation against:

* Election safety: ``leaders`` maps a term to the one node that led it.
* Log matching: ``entries`` maps (index, term) to the entry's content and the term of
  the entry before it. If two nodes ever hold different entries under the same index and
  term, or the same entry after different predecessors, logs have diverged. (By
  induction on the index this is the whole Log Matching property.)
* State machine safety and "a committed entry is never lost": ``committed`` maps an
  index to the entry first applied there; every later apply at that index, on any node,
  must be the same entry.
* Leader completeness: a node that becomes leader must hold every committed entry past
  its snapshot.

A violation raises ``SimulationError`` at once, naming the property, the node and the
index, so the trace ends where things went wrong. It never changes the cluster.
"""

from __future__ import annotations

from quorumkv.errors import SimulationError
from quorumkv.raft import Entry, EntryType, Ready, Term, describe_entry
from quorumkv.raft._log import RaftLog

_Content = tuple[EntryType, bytes]


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        self.entries: dict[tuple[int, int], tuple[_Content, int]] = {}
        self.committed: dict[int, Entry] = {}
        self.checks = 0

    def fail(self, prop: str, detail: str) -> None:
        raise SimulationError(f"{prop} violated: {detail}")

    def observe_leader(self, node: int, term: Term, log: RaftLog) -> None:
        self.checks += 1
        other = self.leaders.setdefault(term, node)
        if other != node:
            self.fail("election safety", f"nodes {other} and {node} both led term {term}")
        for index, entry in self.committed.items():
            if index <= log.offset:
                continue
            if log.term(index) != entry.term:
                have = log.term(index)
                self.fail(
                    "leader completeness",
                    f"node {node} leads term {term} without committed entry "
                    f"{describe_entry(entry)} (its log has term {have} at {index})",
                )

    def observe_ready(self, node: int, rd: Ready, log: RaftLog) -> None:
        """Call right after ``ready()``, before anything else changes the log."""
        entries = self.entries
        for e in rd.entries:
            self.checks += 1
            prev = log.term(e.index - 1)
            if prev is None:
                continue  # the predecessor was compacted, hence committed and checked
            key = (e.index, e.term)
            content = (e.type, e.data)
            seen = entries.setdefault(key, (content, prev))
            if seen != (content, prev):
                self.fail(
                    "log matching",
                    f"node {node} holds {describe_entry(e)} after term {prev}; another "
                    f"node held a different entry or predecessor (term {seen[1]}) there",
                )
        committed = self.committed
        for e in rd.committed:
            self.checks += 1
            first = committed.setdefault(e.index, e)
            if first != e:
                self.fail(
                    "state machine safety",
                    f"node {node} applies {describe_entry(e)} at {e.index}, but "
                    f"{describe_entry(first)} was applied there before",
                )
