"""The simulator's checks can fail: plant a known Raft bug and watch it get caught.

Each test plants one bug, runs seeds of the crash-heavy profile (crashes at chosen
points, quick restarts, one entry per append) until one fails, and checks that the
failure names the property the bug breaks. Seeds are searched rather than pinned so the
tests survive changes to the simulator; the search stops at the first catch.
"""

from __future__ import annotations

from typing import Any

import pytest

from quorumkv.consensus import _raft
from quorumkv.sim import SimResult
from quorumkv.sim._runner import iter_results

CRASH_HEAVY: dict[str, Any] = {
    "crash_points": 0.5,
    "restart_us": (1_000, 30_000),
    "max_size_per_msg": 1,
    "nodes": 3,
}


def first_caught(overrides: dict[str, Any], limit: int) -> SimResult | None:
    for r in iter_results(1, limit, 2, overrides):
        if r.violation is not None:
            return r
    return None


def test_forgetting_the_vote_is_caught() -> None:
    # A node that does not persist its vote can vote twice in a term after a restart.
    caught = first_caught({**CRASH_HEAVY, "forget_vote": True}, limit=300)
    assert caught is not None, "300 seeds did not catch a vote lost in a crash"
    assert "election safety violated" in (caught.violation or "")


def _commit_by_counting_any_term(self: _raft.Raft) -> bool:
    # The bug of the thesis's figure 3.7: commit whatever a quorum holds, even an entry
    # of an earlier term, which a later leader may still overwrite.
    index = self.trk.committed()
    if index <= self.log.committed:
        return False
    self.log.commit_to(index)
    self._release_pending_reads()
    return True


def test_committing_an_earlier_term_by_counting_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_raft.Raft, "_maybe_commit", _commit_by_counting_any_term)
    caught = first_caught(CRASH_HEAVY, limit=1_000)
    assert caught is not None, "1000 seeds did not catch an earlier-term commit"
    violation = caught.violation or ""
    assert "leader completeness violated" in violation or "state machine safety" in violation
