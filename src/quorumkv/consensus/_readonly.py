"""Linearizable reads without log writes: the ReadIndex protocol (thesis 6.4).

Theory of operation
-------------------
A leader answers a read request with an index that is safe to read at: its commit index
at the moment the request arrived, *provided* it is still the leader then. It proves the
latter by a round of heartbeats: each pending request gets a sequence number, the
heartbeat carries the newest number, and once a quorum has echoed a number every request
up to it is confirmed. The requester then waits until its state machine has applied the
index and serves the read locally (which is how followers serve reads too: they forward
the request, get the index back, and wait for their own apply).

A new leader does not know the commit index of its term until it has committed an entry
of that term; reads arriving before that wait (the core holds them back).

This module only keeps the queue of pending requests; it sends nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ._types import Index, NodeId


@dataclass(slots=True)
class ReadRequest:
    seq: int
    index: Index
    requester: NodeId
    context: bytes
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    __slots__ = ("_next_seq", "pending", "queue")

    def __init__(self) -> None:
        self.pending: dict[int, ReadRequest] = {}
        self.queue: deque[int] = deque()
        self._next_seq = 1

    def add(self, index: Index, requester: NodeId, context: bytes) -> ReadRequest:
        req = ReadRequest(self._next_seq, index, requester, context)
        self._next_seq += 1
        self.pending[req.seq] = req
        self.queue.append(req.seq)
        return req

    def last_seq(self) -> int | None:
        return self.queue[-1] if self.queue else None

    def recv_ack(self, node: NodeId, seq: int) -> set[NodeId] | None:
        """Record that ``node`` confirmed leadership as of request ``seq``; returns the
        acknowledgements of that request, or None if it is not pending."""
        req = self.pending.get(seq)
        if req is None:
            return None
        req.acks.add(node)
        return req.acks

    def advance(self, seq: int) -> list[ReadRequest]:
        """Every request up to and including ``seq``, now confirmed, removed."""
        if seq not in self.pending:
            return []
        done: list[ReadRequest] = []
        while self.queue:
            s = self.queue.popleft()
            done.append(self.pending.pop(s))
            if s == seq:
                break
        return done

    def reset(self) -> None:
        self.pending.clear()
        self.queue.clear()

    @staticmethod
    def encode_seq(seq: int) -> bytes:
        return seq.to_bytes(8, "big")

    @staticmethod
    def decode_seq(ctx: bytes) -> int | None:
        return int.from_bytes(ctx, "big") if len(ctx) == 8 else None
