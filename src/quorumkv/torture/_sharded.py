"""What a torture run makes of a sharded cluster: its ranges as the nodes report them.

Theory of operation
-------------------
A sharded node's ``/status`` lists, beside the meta range's role, term and indexes,
every range it holds a replica of (``ranges``: id, bounds, version, role, leader,
term, commit and applied index, the voters and learners of its Raft group).
``replicas`` turns the statuses of the running nodes into ``ReplicaView``s, and the
functions here answer the harness's questions from them (and, for ``check_ranges``,
from the directory as a client reads it), with no I/O:

* **Which leader a ``-leader`` fault means** (``leader_targets``): in a sharded cluster
  a node leads many groups, so "the leader" is one of the groups the load depends
  on: the meta range (its leader allocates every write's revision and serves the
  directory) or a range holding torture keys. The candidates are those whose leader
  is known (the highest term reported for the group), the meta range first, then the
  ranges in key order; the fault's ``pick`` chooses one, each equally likely, and
  its leader's node is the target.
* **Where a forced split goes** (``split_point``): a torture key that does not yet
  start a range, so that the split cuts a range while the clients hammer that key;
  once every torture key starts a range, a key just after one of them
  (``<key>/<n>``), which cuts a range that holds torture keys all the same.
* **Whether the ranges are whole** (``check_ranges``, for ``converge``): the
  directory's ranges tile the keyspace; every range has ``factor`` voters, all on
  running nodes; every node the directory lists hosts the range, with the same bounds
  and version; all its replicas agree on one leader and term, and that leader says so;
  every replica's Raft group has exactly the directory's voters and learners; every
  replica has applied its commit index, and all of them the same one; and no node
  hosts a replica the directory does not list on it.

This module must never do I/O, read a clock, or use randomness other than a
``random.Random`` seeded with the caller's ``pick``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quorumkv.shard import KEYSPACE_END, RangeDescriptor

META_RANGE = 1


def show_key(key: bytes) -> str:
    """A key as a node's ``/status`` shows it (UTF-8, undecodable bytes escaped)."""
    return key.decode("utf-8", "backslashreplace")


def _key(text: str) -> bytes:
    """A bound as ``/status`` shows it, back as bytes (exact for UTF-8 keys, which the
    torture keys are)."""
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica of one range, as its node's ``/status`` reports it."""

    node: int
    range_id: int
    start: bytes
    end: bytes
    version: int
    role: str
    leader: int
    term: int
    commit: int
    applied: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]

    @staticmethod
    def from_status(node: int, doc: Mapping[str, Any]) -> ReplicaView:
        """From one entry of a node's ``ranges`` status (``ValueError`` if malformed)."""
        try:
            return ReplicaView(
                node=node,
                range_id=int(doc["id"]),
                start=_key(str(doc["start"])),
                end=_key(str(doc["end"])),
                version=int(doc["version"]),
                role=str(doc["role"]),
                leader=int(doc["leader"]),
                term=int(doc["term"]),
                commit=int(doc["commit"]),
                applied=int(doc["applied"]),
                voters=tuple(sorted(int(v) for v in doc["voters"])),
                learners=tuple(sorted(int(v) for v in doc["learners"])),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"node {node} reports a malformed range {doc!r}: {e!r}") from None

    def holds(self, key: bytes) -> bool:
        return self.start <= key and (self.end == KEYSPACE_END or key < self.end)


def replicas(statuses: Mapping[int, Mapping[str, Any]]) -> list[ReplicaView]:
    """Every range replica the nodes report, by node then range."""
    return [
        ReplicaView.from_status(node, doc)
        for node, st in sorted(statuses.items())
        for doc in st.get("ranges", [])
    ]


def _leaders(views: Iterable[ReplicaView]) -> dict[int, ReplicaView]:
    """Per range, the replica that says it leads in the highest term reported."""
    out: dict[int, ReplicaView] = {}
    for v in views:
        if v.role != "leader":
            continue
        old = out.get(v.range_id)
        if old is None or v.term > old.term:
            out[v.range_id] = v
    return out


def meta_leader(statuses: Mapping[int, Mapping[str, Any]]) -> int | None:
    """The node that leads the meta range in the highest term reported, if any."""
    best: tuple[int, int] | None = None
    for node, st in sorted(statuses.items()):
        if st.get("role") == "leader":
            term = int(st.get("term", 0))
            if best is None or term > best[0]:
                best = (term, node)
    return None if best is None else best[1]


def key_ranges(
    keys: Sequence[bytes], statuses: Mapping[int, Mapping[str, Any]]
) -> dict[int, list[bytes]]:
    """The torture keys of each range that holds any, by the bounds its leader
    reports (ranges whose leader is unknown are left out)."""
    out: dict[int, list[bytes]] = {}
    for rid, lead in sorted(_leaders(replicas(statuses)).items(), key=lambda x: x[1].start):
        held = [k for k in keys if lead.holds(k)]
        if held:
            out[rid] = held
    return out


@dataclass(frozen=True, slots=True)
class Target:
    """A group whose leader a fault may act on: ``range_id`` 1 is the meta range."""

    range_id: int
    node: int
    """The node that leads it."""
    voters: tuple[int, ...]
    """Its Raft group's voters, as its leader reports them."""
    keys: tuple[bytes, ...] = ()
    """The torture keys it holds (none for the meta range)."""

    def describe(self) -> str:
        """``leader of range 3 (keys k2,k3)``, ``leader of the meta range``."""
        if self.range_id == META_RANGE:
            return "leader of the meta range"
        shown = ",".join(show_key(k) for k in self.keys)
        return f"leader of range {self.range_id} (keys {shown})"


def leader_targets(
    statuses: Mapping[int, Mapping[str, Any]], keys: Sequence[bytes]
) -> list[Target]:
    """The groups a ``-leader`` fault or a transfer may act on (see the module
    docstring): the meta range, then each range holding torture keys, in key order;
    only those whose leader is known."""
    out = []
    lead = meta_leader(statuses)
    if lead is not None:
        members = statuses[lead].get("members", [])
        voters = tuple(sorted(int(m["id"]) for m in members if m.get("voter")))
        out.append(Target(META_RANGE, lead, voters))
    leaders = _leaders(replicas(statuses))
    for rid, held in key_ranges(keys, statuses).items():
        view = leaders[rid]
        out.append(Target(rid, view.node, view.voters, tuple(held)))
    return out


def pick_target(pick: int, targets: Sequence[Target]) -> Target | None:
    """The target ``pick`` designates (None if there is none)."""
    if not targets:
        return None
    return targets[pick % len(targets)]


def pick_other_voter(pick: int, target: Target, running: Collection[int]) -> int | None:
    """A voter of ``target``'s group other than its leader, on a node of ``running``,
    designated by ``pick`` (a draw independent of the one that chose the target)."""
    others = [v for v in target.voters if v != target.node and v in running]
    if not others:
        return None
    return random.Random(pick).choice(others)


def split_point(pick: int, keys: Sequence[bytes], starts: Iterable[bytes]) -> bytes:
    """Where a forced split goes (see the module docstring): a torture key that starts
    no range yet, else a key just after a torture key. ``starts``: the ranges' first
    keys now."""
    if not keys:
        raise ValueError("no torture keys to split among")
    taken = set(starts)
    rng = random.Random(pick)
    free = sorted(k for k in set(keys) if k not in taken)
    if free:
        return rng.choice(free)
    while True:  # a fresh point after a torture key; some draw is always free
        point = rng.choice(sorted(set(keys))) + b"/%d" % rng.randrange(1 << 20)
        if point not in taken:
            return point


def initial_splits(keys: Sequence[bytes]) -> list[bytes]:
    """Where the harness splits before the load starts, so that the colliding keys
    lie in two ranges from the first operation: at the middle torture key. The
    nodes' split threshold and the forced splits cut further during the run."""
    ordered = sorted(set(keys))
    if len(ordered) < 2:
        raise ValueError("a sharded torture run needs at least 2 keys, to spread them")
    return [ordered[len(ordered) // 2]]


def check_ranges(
    directory: Sequence[RangeDescriptor],
    statuses: Mapping[int, Mapping[str, Any]],
    factor: int,
) -> list[str]:
    """What keeps the ranges from being whole (see the module docstring); empty when
    they are. ``statuses``: every running node's; ``factor``: voters per range."""
    problems = _tiling(directory)
    views = replicas(statuses)
    by_range: dict[int, dict[int, ReplicaView]] = {}
    for v in views:
        by_range.setdefault(v.range_id, {})[v.node] = v
    listed: set[tuple[int, int]] = set()
    for d in directory:
        rid = int(d.range_id)
        nodes = sorted(int(n) for n in d.nodes())
        listed.update((rid, n) for n in nodes)
        problems += _one_range(d, by_range.get(rid, {}), set(statuses), factor)
    extra = sorted((v.node, v.range_id) for v in views if (v.range_id, v.node) not in listed)
    for node, rid in extra:
        problems.append(f"node {node} still hosts range {rid}, which the directory does not "
                        f"list there")  # fmt: skip
    return problems


def _tiling(directory: Sequence[RangeDescriptor]) -> list[str]:
    if not directory:
        return ["the directory lists no range"]
    ds = sorted(directory, key=lambda d: d.start)
    out = []
    if ds[0].start != b"":
        out.append(f"the first range ({ds[0].range_id}) starts at {ds[0].start!r}, not at -inf")
    for a, b in itertools.pairwise(ds):
        if a.end != b.start:
            out.append(
                f"range {a.range_id} ends at {a.end!r} but the next, {b.range_id}, starts at "
                f"{b.start!r}"
            )
    if ds[-1].end != KEYSPACE_END:
        out.append(f"the last range ({ds[-1].range_id}) ends at {ds[-1].end!r}, not at +inf")
    return out


def _one_range(
    d: RangeDescriptor, hosted: Mapping[int, ReplicaView], running: set[int], factor: int
) -> list[str]:
    rid = int(d.range_id)
    voters = tuple(sorted(int(v) for v in d.voters()))
    learners = tuple(sorted(int(v) for v in d.learners()))
    out = []
    if len(voters) != factor:
        out.append(f"range {rid} has voters {list(voters)} in the directory, not {factor}")
    away = sorted(set(voters + learners) - running)
    if away:
        out.append(f"range {rid} has replicas on nodes {away}, which do not run")
    missing = sorted(n for n in set(voters + learners) & running if n not in hosted)
    if missing:
        out.append(f"range {rid} is listed on nodes {missing}, which do not host it")
    for n, v in sorted(hosted.items()):
        if (v.start, v.end, v.version) != (d.start, d.end, d.epoch.version):
            out.append(
                f"node {n} has range {rid} as [{show_key(v.start)!r}, {show_key(v.end)!r}) "
                f"version {v.version}; the directory: [{show_key(d.start)!r}, "
                f"{show_key(d.end)!r}) version {d.epoch.version}"
            )
        if (v.voters, v.learners) != (voters, learners):
            out.append(
                f"node {n}'s replica of range {rid} has voters {list(v.voters)} and learners "
                f"{list(v.learners)}; the directory: {list(voters)} and {list(learners)}"
            )
    if not hosted:
        return out
    views = {(v.term, v.leader) for v in hosted.values()}
    if len(views) != 1:
        out.append(f"range {rid}'s replicas disagree on (term, leader): {sorted(views)}")
    else:
        ((term, lead),) = views
        if lead not in hosted or hosted[lead].role != "leader":
            out.append(f"range {rid}'s replicas name node {lead} as leader in term {term}, "
                       f"and it does not lead")  # fmt: skip
        elif lead not in voters:
            out.append(f"range {rid} is led by node {lead}, not a voter in the directory")
    indexes = {n: (v.applied, v.commit) for n, v in sorted(hosted.items())}
    if len({a for a, _ in indexes.values()} | {c for _, c in indexes.values()}) != 1:
        shown = ", ".join(f"node {n} {a}/{c}" for n, (a, c) in indexes.items())
        out.append(f"range {rid} applied/commit differ: {shown}")
    return out


def describe_ranges(directory: Sequence[RangeDescriptor], keys: Sequence[bytes]) -> str:
    """One line: how many ranges, and which of them hold the torture keys."""
    holding: dict[int, list[bytes]] = {}
    for k in keys:
        for d in directory:
            if d.contains(k):
                holding.setdefault(int(d.range_id), []).append(k)
    shown = "; ".join(
        f"range {rid}: {','.join(show_key(k) for k in ks)}" for rid, ks in holding.items()
    )
    return (
        f"{len(directory)} ranges tile the keyspace; the {len(keys)} torture keys lie in "
        f"{len(holding)} of them ({shown})"
    )
