"""Routing: a cache of range descriptors, and the answer for a request routed wrongly.

Theory of operation
-------------------
Clients (and nodes forwarding requests) keep a ``RangeCache``: descriptors they learned
from the meta range or from error hints, sorted by start key, never overlapping each
other, possibly with gaps (parts of the keyspace they have not looked up yet).

Every request carries the range id and epoch it was routed by. A node serves it only if it
holds that range at that ``version`` and the keys lie inside it (``route_is_current``); a
``conf_ver`` difference does not matter to a read or a write, only to replica changes.
Otherwise it answers ``WrongRange``: the id and epoch the client used, and the node's
newest descriptors around the key as a hint. The client feeds that answer to
``RangeCache.handle_wrong_range`` and retries; if the hint does not cover the key, it
looks the key up in the meta range.

``update`` keeps the newer of two overlapping descriptors: the one with the higher
``version`` (of the same range, the higher epoch). Since every split raises the version of
the range holding a key, a stale entry never wins over a fresh one, whatever order the
answers arrive in. An incoming descriptor older than anything it overlaps is dropped;
otherwise everything it overlaps is evicted.

This module must never do I/O or ask anyone anything: it only remembers what it is told.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from quorumkv.shard._errors import MalformedShardDataError, ShardError
from quorumkv.shard._range import (
    KEYSPACE_END,
    Epoch,
    RangeDescriptor,
    RangeId,
    descriptors_from_wire,
    descriptors_to_wire,
    end_le,
    key_below_end,
)
from quorumkv.shard._wire import as_int, as_list


def route_is_current(
    current: RangeDescriptor | None,
    range_id: RangeId,
    epoch: Epoch,
    start: bytes,
    end: bytes | None = None,
) -> bool:
    """Whether a request for ``[start, end)`` (or the single key ``start`` when ``end``
    is None) routed to ``range_id`` at ``epoch`` may be served by a node whose own
    descriptor of that range is ``current`` (None: it holds no such range)."""
    if current is None or current.range_id != range_id:
        return False
    if epoch.version != current.epoch.version:
        return False
    if end is None:
        return current.contains(start)
    return current.covers(start, end)


@dataclass(frozen=True, slots=True)
class WrongRange:
    """A node's answer to a request it cannot serve as routed: the range id and epoch the
    request named, and the newest descriptors the node holds for the requested keys."""

    range_id: RangeId
    epoch: Epoch
    hint: tuple[RangeDescriptor, ...] = ()

    def describe(self) -> str:
        hints = "; ".join(d.describe() for d in self.hint) or "none"
        return f"wrong range: routed to r{self.range_id} at {self.epoch.describe()}; newer: {hints}"

    def to_wire(self) -> list[object]:
        return [self.range_id, self.epoch.to_wire(), descriptors_to_wire(self.hint)]

    @classmethod
    def from_wire(cls, doc: object) -> WrongRange:
        f = as_list(doc, "wrong range", 3)
        try:
            return cls(
                RangeId(as_int(f[0], "range id", 1)),
                Epoch.from_wire(f[1]),
                descriptors_from_wire(f[2]),
            )
        except MalformedShardDataError:
            raise
        except ShardError as e:
            raise MalformedShardDataError(f"wrong range: {e}") from None


def _supersedes(old: RangeDescriptor, new: RangeDescriptor) -> bool:
    """Whether cached ``old`` is strictly newer than incoming ``new`` (so ``new`` loses)."""
    if old.range_id == new.range_id:
        return old.epoch.newer_than(new.epoch)
    return old.epoch.version > new.epoch.version


class RangeCache:
    """Descriptors sorted by start key, never overlapping; gaps are cache misses."""

    __slots__ = ("_descs", "_start_of", "_starts")

    def __init__(self, descriptors: Iterable[RangeDescriptor] = ()) -> None:
        self._starts: list[bytes] = []
        self._descs: list[RangeDescriptor] = []
        self._start_of: dict[RangeId, bytes] = {}
        self.update(descriptors)

    def __len__(self) -> int:
        return len(self._descs)

    def descriptors(self) -> list[RangeDescriptor]:
        """Every cached descriptor, in key order."""
        return list(self._descs)

    def get(self, range_id: RangeId) -> RangeDescriptor | None:
        start = self._start_of.get(range_id)
        if start is None:
            return None
        return self._descs[bisect_right(self._starts, start) - 1]

    def lookup(self, key: bytes) -> RangeDescriptor | None:
        """The cached descriptor holding ``key``, or None (a miss)."""
        i = bisect_right(self._starts, key) - 1
        if i >= 0 and self._descs[i].contains(key):
            return self._descs[i]
        return None

    def spans(
        self, start: bytes, end: bytes = KEYSPACE_END
    ) -> tuple[list[RangeDescriptor], bytes | None]:
        """The cached descriptors covering ``[start, end)`` from ``start`` on, in order, and
        the first key of the span that no cached descriptor holds (None when the whole
        span is covered). A scan sends one request per descriptor, clipped to the span,
        and looks the gap key up in the meta range."""
        out: list[RangeDescriptor] = []
        if not key_below_end(start, end):
            return out, None
        key = start
        while True:
            d = self.lookup(key)
            if d is None:
                return out, key
            out.append(d)
            if end_le(end, d.end):
                return out, None
            key = d.end

    def update(self, descriptors: Iterable[RangeDescriptor]) -> int:
        """Insert each descriptor unless an overlapping cached one is newer; evict the
        stale ones it overlaps (and any older entry of the same range). Returns how many
        were inserted."""
        return sum(self._insert(d) for d in descriptors)

    def _insert(self, new: RangeDescriptor) -> bool:
        victims = self._overlapping(new.start, new.end)
        same = self._start_of.get(new.range_id)
        if same is not None:
            j = bisect_right(self._starts, same) - 1
            if j not in victims:
                victims.append(j)
        if any(_supersedes(self._descs[j], new) for j in victims):
            return False
        for j in sorted(victims, reverse=True):
            del self._start_of[self._descs[j].range_id]
            del self._descs[j]
            del self._starts[j]
        i = bisect_right(self._starts, new.start)
        self._starts.insert(i, new.start)
        self._descs.insert(i, new)
        self._start_of[new.range_id] = new.start
        return True

    def _overlapping(self, start: bytes, end: bytes) -> list[int]:
        i = max(bisect_right(self._starts, start) - 1, 0)
        out = []
        while i < len(self._descs) and key_below_end(self._starts[i], end):
            if self._descs[i].overlaps(start, end):
                out.append(i)
            i += 1
        return out

    def invalidate(self, range_id: RangeId) -> bool:
        """Forget a range; returns whether it was cached."""
        start = self._start_of.pop(range_id, None)
        if start is None:
            return False
        j = bisect_right(self._starts, start) - 1
        del self._descs[j]
        del self._starts[j]
        return True

    def handle_wrong_range(self, answer: WrongRange) -> None:
        """Forget the range the failed request was routed by and learn the hint."""
        cached = self.get(answer.range_id)
        if cached is not None and not cached.epoch.newer_than(answer.epoch):
            self.invalidate(answer.range_id)
        self.update(answer.hint)

    def check(self) -> None:
        """Raise ``AssertionError`` if entries overlap, are unsorted, or the index is off."""
        for i, d in enumerate(self._descs):
            if self._starts[i] != d.start or self._start_of.get(d.range_id) != d.start:
                raise AssertionError(f"range cache index is off at r{d.range_id}")
            if i and self._starts[i - 1] >= d.start:
                raise AssertionError("range cache entries are not sorted by start key")
            if i and not end_le(self._descs[i - 1].end, d.start):
                raise AssertionError(
                    f"range cache entries overlap: {self._descs[i - 1].describe()} and "
                    f"{d.describe()}"
                )
            if i and self._descs[i - 1].end == KEYSPACE_END:
                raise AssertionError("a range cache entry follows one that ends the keyspace")
        if len(self._start_of) != len(self._descs):
            raise AssertionError("range cache id index and entries differ in size")
