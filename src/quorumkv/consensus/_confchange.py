"""Membership changes by joint consensus, as pure functions over ``ConfState``.

Theory of operation (thesis 4.3)
--------------------------------
A change never moves a group straight from one voter set to another: that could let two
disjoint majorities exist at once. Instead the group first *enters* a joint
configuration ``C_old,new`` in which every decision (an election, a commit) needs a
majority of ``C_old`` *and* a majority of ``C_new``, then *leaves* it for ``C_new``.
Each step is one log entry, and takes effect on a node when that node applies it; the
leader refuses a new change while one is still unapplied, so at most one is in flight.
Because each configuration overlaps the previous one in a majority, a crash at any step
leaves a group that can still elect exactly one leader.

A node demoted from voter to learner keeps voting in the outgoing half until the group
leaves the joint configuration; it sits in ``learners_next`` meanwhile.

Also the codec of the change as it travels in a log entry: JSON, since conf changes are
rare and must be readable in a trace. This module raises ``ConfChangeError`` for a
change that cannot apply, and never touches progress, roles or messages.
"""

from __future__ import annotations

import json

from quorumkv.errors import ConfChangeError

from ._types import Change, ChangeType, ConfChange, ConfState, NodeId


def apply_conf_change(cs: ConfState, cc: ConfChange) -> ConfState:
    """The configuration that results from applying ``cc`` to ``cs``."""
    if cc.leave_joint:
        return leave_joint(cs)
    return enter_joint(cs, cc)


def enter_joint(cs: ConfState, cc: ConfChange) -> ConfState:
    if cs.joint:
        raise ConfChangeError("already in a joint configuration; leave it first")
    if not cs.voters:
        raise ConfChangeError("cannot change an empty configuration")
    outgoing = cs.voters
    voters = set(cs.voters)
    learners = set(cs.learners)
    learners_next: set[NodeId] = set()
    for ch in cc.changes:
        if ch.node <= 0:
            raise ConfChangeError(f"invalid node id {ch.node}")
        voters.discard(ch.node)
        learners.discard(ch.node)
        learners_next.discard(ch.node)
        if ch.type is ChangeType.ADD_VOTER:
            voters.add(ch.node)
        elif ch.type is ChangeType.ADD_LEARNER:
            # A voter of the outgoing half keeps voting there until the joint
            # configuration is left; only then does it become a learner.
            (learners_next if ch.node in outgoing else learners).add(ch.node)
    if not voters:
        raise ConfChangeError("a change may not remove every voter")
    return ConfState(
        voters=frozenset(voters),
        learners=frozenset(learners),
        voters_outgoing=outgoing,
        learners_next=frozenset(learners_next),
        auto_leave=cc.auto_leave,
    )


def leave_joint(cs: ConfState) -> ConfState:
    if not cs.joint:
        raise ConfChangeError("not in a joint configuration")
    return ConfState(voters=cs.voters, learners=cs.learners | cs.learners_next)


def encode_conf_change(cc: ConfChange) -> bytes:
    doc: dict[str, object] = {
        "changes": [[c.type.value, c.node] for c in cc.changes],
        "auto_leave": cc.auto_leave,
    }
    if cc.context:
        doc["context"] = cc.context
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_conf_change(data: bytes) -> ConfChange:
    """Raises ConfChangeError on anything that is not a well-formed change."""
    try:
        doc = json.loads(data)
        changes = tuple(Change(ChangeType(t), NodeId(int(n))) for t, n in doc["changes"])
        context = doc.get("context", "")
        if not isinstance(context, str):
            raise TypeError(f"context must be a string, not {type(context).__name__}")
        return ConfChange(changes=changes, auto_leave=bool(doc["auto_leave"]), context=context)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise ConfChangeError(f"malformed conf change entry: {exc}") from exc


def describe_conf_state(cs: ConfState) -> str:
    def ids(s: frozenset[NodeId]) -> str:
        return "(" + " ".join(str(n) for n in sorted(s)) + ")"

    out = f"voters={ids(cs.voters)}"
    if cs.joint:
        out += f"&&{ids(cs.voters_outgoing)}"
    if cs.learners:
        out += f" learners={ids(cs.learners)}"
    if cs.learners_next:
        out += f" learners_next={ids(cs.learners_next)}"
    if cs.auto_leave:
        out += " autoleave"
    return out
