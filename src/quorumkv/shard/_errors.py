"""The errors of the sharding core, one small tree under ``quorumkv.errors.QuorumKVError``.

::

    ShardError                  the range model refused something
    ├── StaleEpochError         a command computed from an old epoch (compare-and-swap lost)
    ├── UnknownRangeError       a range id the directory does not hold
    ├── ShardCommandError       a well-formed command that cannot apply to this state
    └── MalformedShardDataError bytes (a log entry, a snapshot, a wire payload) that do
                                not decode into the range model

A refused command leaves the directory exactly as it was: nothing is half-applied. These
classes belong in ``quorumkv.errors``'s one tree; they live here until that module can be
edited, and move there without changing their names.

This module must never import anything above ``quorumkv.errors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quorumkv.errors import QuorumKVError

if TYPE_CHECKING:
    from quorumkv.shard._range import Epoch, RangeId


class ShardError(QuorumKVError):
    """Base of every error of ``quorumkv.shard``."""


class StaleEpochError(ShardError):
    """Raised when a command names an epoch other than the range's current one: it was
    computed from a descriptor that a split or a replica change has since replaced.
    Nothing changed. Retrying helps only after re-reading the descriptor and re-deciding.
    """

    def __init__(self, range_id: RangeId, expected: Epoch, current: Epoch) -> None:
        super().__init__(
            f"range {range_id}: command computed at epoch {expected.describe()}, "
            f"but the range is at {current.describe()}"
        )
        self.range_id = range_id
        self.expected = expected
        self.current = current


class UnknownRangeError(ShardError):
    """Raised when a command names a range id the directory does not hold (never
    allocated, or the directory is not bootstrapped). Retrying cannot help."""

    def __init__(self, range_id: RangeId) -> None:
        super().__init__(f"no range {range_id} in the directory")
        self.range_id = range_id


class ShardCommandError(ShardError):
    """Raised when a command cannot apply to the current state: a split key outside the
    range, a replica on an unknown or removed node, removing the last voter, bootstrapping
    twice. The message says which. Nothing changed; retrying the same command cannot help.
    """


class MalformedShardDataError(ShardError):
    """Raised when bytes or a decoded msgpack document do not describe a valid range
    model object (wrong shape, wrong type, an invariant broken). Retrying cannot help."""
