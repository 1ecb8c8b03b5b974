"""Routing: the range cache against a naive model and against the directory's truth, under
random splits and answers arriving in any order; the wrong-range answer; route checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.consensus import NodeId
from quorumkv.shard import (
    Bootstrap,
    ChangeReplicas,
    Directory,
    Epoch,
    MalformedShardDataError,
    RangeCache,
    RangeDescriptor,
    RangeId,
    RegisterNode,
    Replica,
    SplitRange,
    WrongRange,
    route_is_current,
)
from quorumkv.shard._wire import dumps, loads


def desc(rid: int, start: bytes, end: bytes, version: int = 1, conf: int = 1) -> RangeDescriptor:
    return RangeDescriptor(RangeId(rid), start, end, Epoch(conf, version), (Replica(NodeId(1)),))


# -- route checks and the wrong-range answer ---------------------------------------------


def test_route_is_current_checks_id_version_and_keys_but_not_conf_ver() -> None:
    d = desc(3, b"c", b"m", version=4, conf=7)
    ok = Epoch(7, 4)
    assert route_is_current(d, RangeId(3), ok, b"c")
    assert route_is_current(d, RangeId(3), Epoch(1, 4), b"f")  # replica change: still fine
    assert route_is_current(d, RangeId(3), ok, b"c", b"m")
    assert not route_is_current(d, RangeId(3), Epoch(7, 3), b"f")  # split since
    assert not route_is_current(d, RangeId(3), ok, b"m")  # key outside
    assert not route_is_current(d, RangeId(3), ok, b"c", b"n")  # span leaves the range
    assert not route_is_current(d, RangeId(3), ok, b"c", b"")
    assert not route_is_current(d, RangeId(2), ok, b"f")
    assert not route_is_current(None, RangeId(3), ok, b"f")


def test_wrong_range_wire_round_trip_and_refusals() -> None:
    answer = WrongRange(RangeId(3), Epoch(2, 5), (desc(3, b"", b"m", 6), desc(9, b"m", b"", 6)))
    assert WrongRange.from_wire(loads(dumps(answer.to_wire()))) == answer
    assert "routed to r3" in answer.describe()
    assert "r9" in answer.describe()
    for bad in (
        [3, [2, 5]],
        [0, [2, 5], []],
        [3, [2, 5], [[1, b"b", b"a", [1, 1], [[1, False]], 0]]],
        [3, "epoch", []],
    ):
        with pytest.raises(MalformedShardDataError):
            WrongRange.from_wire(bad)


# -- the cache, by example --------------------------------------------------------------


def test_lookup_misses_in_gaps_and_spans_name_the_first_gap() -> None:
    c = RangeCache([desc(1, b"", b"c"), desc(2, b"c", b"f"), desc(4, b"k", b"")])
    c.check()
    assert c.lookup(b"a") == desc(1, b"", b"c")
    assert c.lookup(b"c").range_id == 2  # type: ignore[union-attr]
    assert c.lookup(b"g") is None
    assert c.lookup(b"zz").range_id == 4  # type: ignore[union-attr]
    got, gap = c.spans(b"b", b"e")
    assert ([d.range_id for d in got], gap) == ([1, 2], None)
    got, gap = c.spans(b"b", b"")
    assert ([d.range_id for d in got], gap) == ([1, 2], b"f")
    got, gap = c.spans(b"g", b"h")
    assert (got, gap) == ([], b"g")
    got, gap = c.spans(b"k")
    assert ([d.range_id for d in got], gap) == ([4], None)
    assert c.spans(b"e", b"a") == ([], None)
    assert c.get(RangeId(2)) == desc(2, b"c", b"f")
    assert c.get(RangeId(3)) is None


def test_newer_descriptors_evict_stale_ones_and_older_ones_are_dropped() -> None:
    c = RangeCache([desc(1, b"", b"")])
    left, right = desc(1, b"", b"m", 2), desc(2, b"m", b"", 2)
    assert c.update([right]) == 1  # evicts the parent, leaves [b"", b"m") a miss
    assert c.lookup(b"a") is None
    assert c.update([desc(1, b"", b"", 1)]) == 0  # the parent is older than the right half
    assert c.update([left]) == 1
    assert [d.range_id for d in c.descriptors()] == [1, 2]
    # same range, newer replica set: replaced; an older one: dropped
    assert c.update([desc(2, b"m", b"", 2, conf=3)]) == 1
    assert c.update([desc(2, b"m", b"", 2, conf=2)]) == 0
    assert c.get(RangeId(2)).epoch == Epoch(3, 2)  # type: ignore[union-attr]
    assert c.invalidate(RangeId(2))
    assert not c.invalidate(RangeId(2))
    assert c.lookup(b"z") is None
    assert len(c) == 1
    c.check()


def test_handle_wrong_range_forgets_the_route_and_learns_the_hint() -> None:
    c = RangeCache([desc(1, b"", b"")])
    answer = WrongRange(RangeId(1), Epoch(1, 1), (desc(2, b"m", b"", 2),))
    c.handle_wrong_range(answer)
    assert c.lookup(b"a") is None  # the stale parent is gone, the client asks the meta range
    assert c.lookup(b"q") == desc(2, b"m", b"", 2)
    # an answer about a route the cache already replaced does not drop the newer entry
    c.update([desc(1, b"", b"m", 3)])
    c.handle_wrong_range(WrongRange(RangeId(1), Epoch(1, 2), ()))
    assert c.lookup(b"a") == desc(1, b"", b"m", 3)


def test_check_catches_overlapping_entries() -> None:
    c = RangeCache([desc(1, b"", b"m"), desc(2, b"m", b"")])
    c._descs[0] = desc(1, b"", b"n")
    with pytest.raises(AssertionError, match="overlap"):
        c.check()


# -- the cache against a model, under random splits --------------------------------------


class ModelCache:
    """The same rules, by linear scans: keep the newer of overlapping descriptors."""

    def __init__(self) -> None:
        self.entries: list[RangeDescriptor] = []

    def update(self, new: RangeDescriptor) -> None:
        clash = [
            c for c in self.entries if c.range_id == new.range_id or c.overlaps(new.start, new.end)
        ]
        for c in clash:
            if c.range_id == new.range_id and c.epoch.newer_than(new.epoch):
                return
            if c.range_id != new.range_id and c.epoch.version > new.epoch.version:
                return
        self.entries = [c for c in self.entries if c not in clash] + [new]

    def invalidate(self, rid: RangeId) -> None:
        self.entries = [c for c in self.entries if c.range_id != rid]

    def lookup(self, key: bytes) -> RangeDescriptor | None:
        hits = [c for c in self.entries if c.contains(key)]
        assert len(hits) <= 1
        return hits[0] if hits else None


ALPHABET = b"bdfhjlnprtvx"
PROBES = [b""] + [bytes([a]) for a in b"abcdefghijklmnopqrstuvwxyz"] + [b"mm", b"\xff"]


def _ident(d: RangeDescriptor | None) -> object:
    return None if d is None else (d.range_id, d.start, d.end, d.epoch)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_cache_matches_model_and_never_prefers_stale_entries(data: st.DataObject) -> None:
    truth = Directory()
    for n in (1, 2, 3, 4):
        truth.apply(RegisterNode(NodeId(n), f"h{n}:1", 0, 0.0))
    truth.apply(Bootstrap(RangeId(1), (NodeId(1), NodeId(2), NodeId(3))))
    seen: list[RangeDescriptor] = list(truth.ranges())
    cache, model = RangeCache(), ModelCache()
    fed: set[object] = set()  # (id, start, end, epoch) of descriptors given to the cache
    for _ in range(data.draw(st.integers(1, 40))):
        action = data.draw(st.sampled_from(["split", "split", "conf", "feed", "feed", "drop"]))
        ranges = list(truth.ranges())
        r = data.draw(st.sampled_from(ranges))
        if action == "split":
            k = bytes(data.draw(st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=2)))
            if r.contains(k) and k != r.start:
                seen.extend(truth.apply(SplitRange(r.range_id, r.epoch, k)))
        elif action == "conf":
            change = {"remove": (NodeId(4),)} if r.replica(NodeId(4)) else {"add": (NodeId(4),)}
            seen.append(truth.apply(ChangeReplicas(r.range_id, r.epoch, **change)))
        elif action == "feed":
            batch = data.draw(st.lists(st.sampled_from(seen), max_size=6))
            cache.update(batch)
            for d in batch:
                model.update(d)
                fed.add(_ident(d))
        else:
            rid = data.draw(st.sampled_from(seen)).range_id
            cache.invalidate(rid)
            model.invalidate(rid)
            fed = {f for f in fed if f[0] != rid}  # type: ignore[index]
        truth.check()
        cache.check()
        assert sorted(map(_ident, cache.descriptors()), key=str) == sorted(
            map(_ident, model.entries), key=str
        )
        for k in PROBES:
            got = cache.lookup(k)
            assert _ident(got) == _ident(model.lookup(k))
            current = truth.lookup(k)
            if _ident(current) in fed:
                assert _ident(got) == _ident(current), f"stale entry wins for {k!r}"
            if got is not None:
                assert got.contains(k)
                assert not got.epoch.newer_than(current.epoch) or got.range_id != current.range_id
    # fed every current descriptor, the cache is exactly the directory
    cache.update(truth.ranges())
    assert list(map(_ident, cache.descriptors())) == list(map(_ident, truth.ranges()))
    covered, gap = cache.spans(b"c", b"w")
    assert gap is None
    assert [d.range_id for d in covered] == [d.range_id for d in truth.overlapping(b"c", b"w")]
