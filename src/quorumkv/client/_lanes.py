"""Session lanes: the ``(client id, seq)`` pairs that make writes exactly-once.

Theory of operation
-------------------
The state machine remembers, per client id, only the last sequence number it applied
and that command's result (thesis 6.3): a command with that seq again is answered from
the session and not applied twice; an older seq is ignored. A client with many writes
in flight therefore cannot share one id: a newer seq would make the state machine
forget the answer an older, retried write still needs.

So each write takes a *lane* from a pool: an id of its own and the next seq on it. The
write and every retry of it carry the same ``(client, seq)``; when the write is over,
whatever the outcome, the lane goes back with ``seq + 1``. A lane is used by one write
at a time, so every id's seqs reach the state machine in order, and a late copy of an
abandoned write (an older seq) is dropped there. The pool grows to the largest number
of writes ever in flight at once; idle lanes are reused last-in first-out.

Ids are 63 random bits from the operating system (``secrets``), never 0 (0 means "no
session"), so that clients in different processes, also forked ones, do not collide.

This module never does I/O and never decides when a write is over: the caller does.
"""

from __future__ import annotations

import secrets


class Lane:
    """One session: ``client`` id and the ``seq`` its next write carries."""

    __slots__ = ("client", "seq")

    def __init__(self, client: int, seq: int = 1) -> None:
        self.client = client
        self.seq = seq

    def __repr__(self) -> str:
        return f"Lane({self.client:#x}, seq={self.seq})"


def new_client_id() -> int:
    """A random, nonzero 63-bit session id."""
    while True:
        client = secrets.randbits(63)
        if client:
            return client


class Lanes:
    """The pool of lanes of one client. Not thread-safe: one event loop uses it."""

    __slots__ = ("_all", "_idle")

    def __init__(self) -> None:
        self._idle: list[Lane] = []
        self._all = 0

    def take(self) -> Lane:
        """An idle lane, or a new one; give it back with ``give`` when the write is over."""
        if self._idle:
            return self._idle.pop()
        self._all += 1
        return Lane(new_client_id())

    def give(self, lane: Lane) -> None:
        """The write on ``lane`` is over (any outcome): its next write takes seq + 1."""
        lane.seq += 1
        self._idle.append(lane)

    def __len__(self) -> int:
        """How many lanes exist, idle or in use."""
        return self._all
