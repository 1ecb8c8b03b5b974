"""Every error quorumkv raises on purpose, in one tree.

::

    QuorumKVError
    ├── RaftError                  the consensus core refused something
    │   ├── ProposalDropped        a proposal or read could not be accepted here, now
    │   ├── ConfChangeError        a membership change that cannot apply
    │   ├── MessageRejected        a peer sent a message that is malformed or not ours
    │   └── RaftUsageError         the driver broke the core's contract (a bug)
    └── SimulationError            the simulator found a violated invariant

Each says when it is raised and whether retrying can help. Broken *internal* invariants
are not in this tree: they raise ``AssertionError`` and must stop the process.
"""

from __future__ import annotations


class QuorumKVError(Exception):
    """Base of every error quorumkv raises on purpose."""


class RaftError(QuorumKVError):
    """The consensus core refused an input."""


class ProposalDropped(RaftError):
    """Raised when a proposal, read or transfer cannot be accepted by this node now:
    it is not the leader, a leader transfer is in progress, or a membership change is
    still pending. Retrying can help: at ``leader`` if it is known (non-zero), or later.
    """

    def __init__(self, reason: str, leader: int = 0) -> None:
        hint = f" (leader is {leader})" if leader else ""
        super().__init__(f"{reason}{hint}")
        self.reason = reason
        self.leader = leader


class ConfChangeError(RaftError):
    """Raised when a membership change cannot apply to the current configuration (for
    example entering a joint configuration twice). Retrying the same change cannot help.
    """


class MessageRejected(RaftError):
    """Raised by ``step`` for a message that is malformed, addressed to another node or
    group, or of a type a peer may not send. The node's state is unchanged; the driver
    should log it and may drop the connection. Retrying cannot help.
    """


class RaftUsageError(RaftError):
    """Raised when the driver breaks the core's contract, such as asking for a new
    Ready before advancing the last one. A bug in the caller; retrying cannot help."""


class SimulationError(QuorumKVError):
    """Raised by the simulator when a safety invariant is violated; its message names
    the invariant, the seed and the command that replays it."""
