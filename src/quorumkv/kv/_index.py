"""``KeyIndex``: every user key's surviving revisions, in memory (etcd's ``treeIndex``).

Theory of operation
-------------------
The engine stores records by revision only (``rev``: appended in revision order, so a
batch dirties a few tail pages, not one random page per key). What a read needs first,
"which revision of key K is newest at or below R", is answered here, from memory, and
then one record is read by revision. The index is rebuilt at start by one pass over the
records (``rebuild``), as etcd rebuilds its ``treeIndex`` from bbolt.

A revision is one int: ``main << 33 | sub << 1 | tombstone``, so ints sort as etcd's
``(main, sub)`` pairs and the low bit says whether the write was a delete. A key with
one surviving revision maps to that int, a key with more to a list of them in
ascending order (most keys have one: this halves the memory). ``keys`` keeps the keys
sorted (``sortedcontainers.SortedList``) for range reads.

The index also counts the bytes of the records its revisions point at (``size_bytes``:
the 16-byte revision key and the packed record, as the engine stores them), a sharded
range's size for the placement planner's ``split_bytes``. The engine tells it each
record's size when it adds (``add``), drops (``shrink``) or loads (``from_revs``) one,
and a split is told the size of each record it moves (``split_off``).

Changes made while applying a batch are journaled (``begin`` ... ``commit`` or
``rollback``), so a batch whose engine transaction aborts leaves the index exactly as
the engine is.

It also remembers, for the keys written last, the create revision and version of the
record at their newest revision (told to ``add``, answered by ``newest``), as etcd's
``keyIndex`` keeps them in memory: an overwrite needs both, and reading the old record
back from the engine for them cost about 8% of the instructions of applying a put. The memory
is a cache, checked against the revision asked for: a record is named for good by its
key and revision (a store's revisions only grow, and a sharded cluster's are stamped
once for all its ranges), except after a rollback, which forgets everything, as a
split does. The indexes of one engine share one memory (``share_memory``), which holds
at most ``REMEMBERED_KEYS`` keys for the whole node and starts over when full.

This module owns the in-memory index only: it never touches the engine
and never decides what is live at a revision beyond the rules above.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sortedcontainers import SortedList

from quorumkv.kv._types import ALL_KEYS

_SUB_BITS = 32
_SUB_MASK = (1 << _SUB_BITS) - 1
_MAIN_SHIFT = _SUB_BITS + 1
_REV = struct.Struct(">QQ")
REV_KEY_BYTES = _REV.size
"""The bytes of a record's engine key (``rev_key``), counted in its size."""

_ADDED = object()  # journal: this key got one revision appended

REMEMBERED_KEYS = 1 << 17
"""The most keys whose newest record's create revision and version the indexes of one
engine remember together (about 200 bytes each: at most about 26 MB a node); over it,
they forget them all and start over."""


def make_rev(main: int, sub: int, tombstone: bool) -> int:
    """The index's int for revision ``(main, sub)``."""
    return (main << _MAIN_SHIFT) | (sub << 1) | tombstone


def rev_main(rev: int) -> int:
    return rev >> _MAIN_SHIFT


def rev_key(rev: int) -> bytes:
    """The engine key of ``rev``'s record: ``(main, sub)`` as 16 big-endian bytes."""
    return _REV.pack(rev >> _MAIN_SHIFT, (rev >> 1) & _SUB_MASK)


def rev_from_key(key: bytes, tombstone: bool) -> int:
    main, sub = _REV.unpack(key)
    return make_rev(main, sub, tombstone)


def append_rev(revs: dict[bytes, Any], key: bytes, rev: int) -> None:
    """Add ``rev``, above every revision ``key`` has in ``revs``, in the index's form:
    an int for a key with one revision, a list for more."""
    old = revs.get(key)
    if old is None:
        revs[key] = rev
    elif type(old) is int:
        revs[key] = [old, rev]
    else:
        old.append(rev)


def upper(at: int) -> int:
    """The smallest revision int above every revision whose main is ``at``."""
    return (at + 1) << _MAIN_SHIFT


class KeyIndex:
    """Key -> surviving revisions, for one store. Not thread-safe: the applying thread
    writes; reads run on the same thread."""

    __slots__ = (
        "_bytes", "_bytes_at_begin", "_journal", "_keys", "_latest", "_revisions", "_revs",
    )  # fmt: skip

    def __init__(self) -> None:
        self._revs: dict[bytes, int | list[int]] = {}
        self._keys: Any = SortedList()
        self._revisions = 0
        self._bytes = 0
        self._bytes_at_begin = 0
        self._journal: list[tuple[bytes, Any]] | None = None
        self._latest: dict[bytes, tuple[int, int, int]] = {}

    @classmethod
    def rebuild(cls, records: Iterable[tuple[bytes, int]]) -> KeyIndex:
        """An index of ``(key, rev)`` pairs given in ascending revision order."""
        revs: dict[bytes, Any] = {}
        n = 0
        for key, rev in records:
            n += 1
            append_rev(revs, key, rev)
        return cls.from_revs(revs, n)

    @classmethod
    def from_revs(cls, revs: dict[bytes, Any], count: int, nbytes: int = 0) -> KeyIndex:
        """An index over ``revs``, taken as it is (not copied): key -> its one revision
        as an int, or its revisions as an ascending list, as ``rebuild`` makes them;
        ``count`` revisions in all, whose records take ``nbytes``. How ``Engine`` builds
        many indexes in one pass."""
        idx = cls()
        idx._revs = revs
        idx._revisions = count
        idx._bytes = nbytes
        idx._keys = SortedList(revs)
        return idx

    # -- reads ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Keys with at least one surviving revision (tombstones count)."""
        return len(self._revs)

    def revisions(self) -> int:
        """Surviving revisions of every key: the records the engine holds."""
        return self._revisions

    def size_bytes(self) -> int:
        """The bytes of those records, as the engine was told them."""
        return self._bytes

    def pick(self, key: bytes, at: int | None) -> int | None:
        """``key``'s newest revision with main at or below ``at`` (None: newest of all),
        tombstones included; None if it has none."""
        v = self._revs.get(key)
        if v is None:
            return None
        if type(v) is int:
            return v if at is None or v >> _MAIN_SHIFT <= at else None
        assert isinstance(v, list)
        if at is None:
            return v[-1]
        i = bisect_right(v, upper(at) - 1)
        return v[i - 1] if i else None

    def share_memory(self, memory: dict[bytes, tuple[int, int, int]]) -> None:
        """Remember into ``memory``, the one of every index of the same engine."""
        self._latest = memory

    def newest(self, key: bytes) -> tuple[int, int, int] | None:
        """``(rev, create, version)`` for ``key``'s newest revision, tombstones included:
        ``create`` and ``version`` of its record if remembered, else 0 and 0 (read the
        record). None if the key has no revision. The hot path of an overwrite."""
        v = self._revs.get(key)
        if v is None:
            return None
        rev = v if type(v) is int else v[-1]  # type: ignore[index]
        got = self._latest.get(key)
        if got is not None and got[0] == rev:
            return got
        return rev, 0, 0

    def live(self, key: bytes, range_end: bytes, at: int | None) -> Iterator[tuple[bytes, int]]:
        """``(key, rev)`` of every key live at ``at`` in etcd's range ``[key, range_end)``
        (``range_end`` empty: ``key`` alone; ``ALL_KEYS``: everything from ``key``), in
        key order. Do not change the index while iterating."""
        pick = self.pick
        if not range_end:
            rev = pick(key, at)
            if rev is not None and not rev & 1:
                yield key, rev
            return
        end = None if range_end == ALL_KEYS else range_end
        for k in self._keys.irange(key, end, inclusive=(True, False)):
            rev = pick(k, at)
            if rev is not None and not rev & 1:
                yield k, rev

    def all_revs(self) -> list[int]:
        """Every surviving revision of every key (unordered)."""
        out: list[int] = []
        for v in self._revs.values():
            if type(v) is int:
                out.append(v)
            else:
                out.extend(v)  # type: ignore[arg-type]
        return out

    def compactable(self, at: int) -> list[bytes]:
        """The keys a compaction at ``at`` may drop revisions of: those with several
        revisions, the oldest at or below ``at``, and those whose one revision is a
        tombstone at or below ``at`` (``compact`` decides). One pass over the keys."""
        out: list[bytes] = []
        limit = upper(at)
        for key, v in self._revs.items():
            if type(v) is int:
                if v & 1 and v < limit:
                    out.append(key)
            elif v[0] < limit:  # type: ignore[index]
                out.append(key)
        return out

    def middle_key(self) -> bytes | None:
        """The key with as many keys below it as above (None: fewer than two keys)."""
        n = len(self._keys)
        return self._keys[n // 2] if n > 1 else None

    def split_off(self, key: bytes, size: Callable[[int], int] | None = None) -> KeyIndex:
        """Move every key at or above ``key``, with its revisions, to a new index (the
        right half of a split); O(keys moved). ``size(rev)`` is the bytes of a moved
        revision's record (its half's ``size_bytes``: one call per revision moved; None:
        counted as 0). Not while a journal is open."""
        assert self._journal is None, "split an index between batches, not inside one"
        i = self._keys.bisect_left(key)
        moved = list(self._keys.islice(i))
        right = KeyIndex()
        n = 0
        revs = self._revs
        nbytes = 0
        for k in moved:
            v = revs.pop(k)
            right._revs[k] = v
            n += 1 if type(v) is int else len(v)  # type: ignore[arg-type]
            if size is not None:
                nbytes += sum(map(size, [v] if type(v) is int else v))  # type: ignore[arg-type]
        del self._keys[i:]
        self._latest.clear()
        right._keys = SortedList(moved)
        right._revisions = n
        self._revisions -= n
        right._bytes = nbytes
        self._bytes -= nbytes
        return right

    def all_revisions(self, key: bytes) -> list[int]:
        v = self._revs.get(key)
        if v is None:
            return []
        return [v] if type(v) is int else list(v)  # type: ignore[arg-type]

    # -- writes --------------------------------------------------------------------------

    def begin(self) -> None:
        """Start journaling changes (one engine transaction)."""
        self._journal = []
        self._bytes_at_begin = self._bytes

    def commit(self) -> None:
        self._journal = None

    def rollback(self) -> None:
        """Undo every change since ``begin``."""
        journal, self._journal = self._journal, None
        self._latest.clear()  # it may name revisions the engine no longer has
        if journal is not None:
            self._bytes = self._bytes_at_begin
        for key, old in reversed(journal or ()):
            if old is _ADDED:
                self._unadd(key)
            else:
                self._set(key, old)

    def add(self, key: bytes, rev: int, size: int = 0, create: int = 0, version: int = 0) -> None:
        """Record ``rev``, above every revision ``key`` has; its record takes ``size``
        bytes. With ``create`` (a live record's), remember that record's ``create`` and
        ``version`` for ``newest``."""
        self._bytes += size
        revs = self._revs
        old = revs.get(key)
        if self._journal is not None:
            self._journal.append((key, _ADDED))
        if old is None:
            revs[key] = rev
            self._keys.add(key)
        elif type(old) is int:
            revs[key] = [old, rev]
        else:
            old.append(rev)  # type: ignore[union-attr]
        self._revisions += 1
        if create:
            latest = self._latest
            if len(latest) >= REMEMBERED_KEYS and key not in latest:
                latest.clear()
            latest[key] = (rev, create, version)

    def shrink(self, size: int) -> None:
        """A record of ``size`` bytes was deleted (its revision compacted)."""
        self._bytes -= size

    def compact(self, key: bytes, at: int) -> list[int]:
        """Drop ``key``'s revisions that no read at ``at`` or later can see: all with main
        at or below ``at`` but the newest, and that one too if it is a tombstone.
        Returns the dropped revisions (their records must go too)."""
        revs = self.all_revisions(key)
        cut = bisect_right(revs, upper(at) - 1)
        old = revs[:cut]
        drop = old[:-1] if old and not old[-1] & 1 else old
        if not drop:
            return []
        if self._journal is not None:
            prev = self._revs.get(key)
            self._journal.append((key, list(prev) if isinstance(prev, list) else prev))
        keep = revs[len(drop) :]
        self._set(key, keep[0] if len(keep) == 1 else (keep or None))
        return drop

    def _unadd(self, key: bytes) -> None:
        v = self._revs[key]
        self._revisions -= 1
        if type(v) is int:
            del self._revs[key]
            self._keys.remove(key)
            return
        assert isinstance(v, list)
        v.pop()
        if len(v) == 1:
            self._revs[key] = v[0]

    def _set(self, key: bytes, value: int | list[int] | None) -> None:
        old = self._revs.get(key)
        self._revisions -= 0 if old is None else 1 if type(old) is int else len(old)  # type: ignore[arg-type]
        if value is None:
            if old is not None:
                del self._revs[key]
                self._keys.remove(key)
            return
        if old is None:
            self._keys.add(key)
        self._revs[key] = value
        self._revisions += 1 if type(value) is int else len(value)  # type: ignore[arg-type]
