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
  index to the entry first known committed there, from the moment any node persists a
  commit index covering it; every later commit or apply at that index, on any node,
  must be the same entry.
* Leader completeness: a node that becomes leader of term T must hold every entry past
  its snapshot that was committed in a term before T. The commit term recorded is the
  observing node's term when it persisted the commit index, which is never below the
  true one, so the check never accuses a leader wrongly. (A leader of an *older* term,
  say a candidate paused mid-election that wins once resumed, owes nothing to entries
  committed after its term; the first version of this checker said otherwise.)

A violation raises ``SimulationError`` at once, naming the property, the node and the
index, so the trace ends where things went wrong. It never changes the cluster.
"""

from __future__ import annotations

from quorumkv.consensus import Entry, EntryType, Ready, Term, describe_entry
from quorumkv.consensus._log import RaftLog
from quorumkv.errors import SimulationError

_Content = tuple[EntryType, bytes]


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        self.entries: dict[tuple[int, int], tuple[_Content, int]] = {}
        self.committed: dict[int, Entry] = {}
        self.commit_term: dict[int, int] = {}
        self._commit_seen: dict[int, int] = {}
        self.checks = 0

    def fail(self, prop: str, detail: str) -> None:
        raise SimulationError(f"{prop} violated: {detail}")

    def observe_leader(self, node: int, term: Term, log: RaftLog) -> None:
        self.checks += 1
        other = self.leaders.setdefault(term, node)
        if other != node:
            self.fail("election safety", f"nodes {other} and {node} both led term {term}")
        for index, entry in self.committed.items():
            if index <= log.offset or self.commit_term[index] >= term:
                continue
            if log.term(index) != entry.term:
                have = log.term(index)
                self.fail(
                    "leader completeness",
                    f"node {node} leads term {term} without committed entry "
                    f"{describe_entry(entry)} (its log has term {have} at {index})",
                )

    def observe_ready(self, node: int, rd: Ready, log: RaftLog, term: int) -> None:
        """Call right after ``ready()``, before anything else changes the log; ``term``
        is the node's current term."""
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
        if rd.hard_state is not None:
            # Everything up to a commit index about to be persisted is committed.
            start = max(self._commit_seen.get(node, 0), log.offset) + 1
            ents = log.slice(start, rd.hard_state.commit + 1) or []
            for e in ents:
                self._record_commit(node, e, "commits", rd.hard_state.term)
            self._commit_seen[node] = max(self._commit_seen.get(node, 0), rd.hard_state.commit)
        for e in rd.committed:
            self._record_commit(node, e, "applies", term)

    def _record_commit(self, node: int, e: Entry, verb: str, term: int) -> None:
        self.checks += 1
        self.commit_term[e.index] = min(self.commit_term.get(e.index, term), term)
        first = self.committed.setdefault(e.index, e)
        if first != e:
            self.fail(
                "state machine safety",
                f"node {node} {verb} {describe_entry(e)} at {e.index}, but "
                f"{describe_entry(first)} was committed there before",
            )

    def forget_node_commit(self, node: int) -> None:
        """A restarted node reloads its commit index from disk; start over for it."""
        self._commit_seen.pop(node, None)
