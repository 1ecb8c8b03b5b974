"""Replica moves on real processes: a sharded cluster of 3 nodes grows by 2 under write
load and its ranges and leaders spread to the new nodes; then a node is killed, and its
replicas are made again on the others. Nothing acknowledged is lost, and every range's
Raft membership (as its leader reports it) ends equal to what the directory lists."""

from __future__ import annotations

import threading
import time
from typing import Any

from cluster_helpers import wait_for

from quorumkv.errors import ClientError

SPLIT_KEYS = 100
KEYS = 2000
DOWN_AFTER_S = 3


class _Writer(threading.Thread):
    """Puts over ``KEYS`` keys, round and round, until stopped; the value names the
    put's sequence number. Records, per key, the last acknowledged sequence number and
    every later one whose outcome is unknown."""

    def __init__(self, cluster: Any) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.seq = 0
        self.acked: dict[bytes, int] = {}
        self.unknown: dict[bytes, set[int]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        with self.cluster.client(timeout=20) as cl:
            while not self.halt.is_set():
                self.seq += 1
                key = b"user/%05d" % (self.seq % KEYS)
                try:
                    cl.put(key, b"%d" % self.seq)
                except ClientError:
                    self.unknown.setdefault(key, set()).add(self.seq)
                    continue
                self.acked[key] = self.seq
                self.unknown.pop(key, None)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)
        assert not self.is_alive()

    def lost(self, found: dict[bytes, bytes]) -> list[bytes]:
        """Keys whose value is neither the last acknowledged put nor a later one whose
        outcome is unknown."""
        bad = []
        for key, seq in self.acked.items():
            got = int(found[key]) if key in found else -1
            if got != seq and got not in self.unknown.get(key, ()):
                bad.append(key)
        return bad


def _led_ranges(cluster: Any, alive: list[int]) -> dict[int, dict[str, Any]]:
    """Each range as its leader reports it (voters and learners of its Raft group)."""
    out: dict[int, dict[str, Any]] = {}
    for n in alive:
        st = cluster.nodes[n].status()
        for r in (st or {}).get("ranges", []):
            if r["role"] == "leader":
                out[r["id"]] = {**r, "node": n}
    return out


def _settled(cluster: Any, cl: Any, alive: list[int], *, factor: int = 3) -> bool:
    """Every range has ``factor`` voters, all on live nodes, no learner, and its
    leader's Raft group agrees with the directory."""
    descs = cl.ranges()
    led = _led_ranges(cluster, alive)
    for d in descs:
        voters = sorted(int(v) for v in d.voters())
        if len(voters) != factor or d.learners() or not set(voters) <= set(alive):
            return False
        r = led.get(int(d.range_id))
        if r is None or r["voters"] != voters or r["learners"]:
            return False
    return True


def _spread(cl: Any, nodes: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    """Replicas and leaders per node, from the directory."""
    replicas = dict.fromkeys(nodes, 0)
    leaders = dict.fromkeys(nodes, 0)
    for d in cl.ranges():
        for v in d.voters():
            replicas[int(v)] = replicas.get(int(v), 0) + 1
        if int(d.leader) in leaders:
            leaders[int(d.leader)] += 1
    return replicas, leaders


def test_ranges_spread_to_new_nodes_and_a_dead_nodes_replicas_are_made_again(
    make_cluster: Any,
) -> None:
    args = ["--sharded", "--split-keys", str(SPLIT_KEYS), "--down-after", str(DOWN_AFTER_S)]
    cluster = make_cluster(3, extra_args=args, tick_ms=20, election_ticks=10)
    writer = _Writer(cluster)
    writer.start()
    try:
        with cluster.client(timeout=30) as cl:
            wait_for("a few writes", lambda: len(writer.acked) > 4 * SPLIT_KEYS, timeout=60)
            wait_for("the ranges to split", lambda: len(cl.ranges()) >= 4, timeout=60)
            added = [cluster.add_node(), cluster.add_node()]
            everyone = [1, 2, 3, *added]

            def spread_to_new() -> bool:
                replicas, leaders = _spread(cl, everyone)
                return all(replicas[n] >= 1 and leaders[n] >= 1 for n in added)

            def balanced() -> bool:
                # The planner moves a replica while two nodes differ by two or more.
                replicas, _ = _spread(cl, everyone)
                spread = max(replicas.values()) - min(replicas.values())
                return spread <= 2 and _settled(cluster, cl, everyone)

            wait_for("ranges and leaders on the new nodes", spread_to_new, timeout=120)
            t0 = time.monotonic()
            wait_for("the replicas to even out and settle", balanced, timeout=180)
            replicas, leaders = _spread(cl, everyone)
            print(f"after growing to 5 (balanced {time.monotonic() - t0:.0f} s after the "
                  f"first moves): replicas {replicas}, leaders {leaders}")  # fmt: skip

            victim = next(n for n in (1, 2, 3) if n != cluster.leader())
            cluster.kill(victim)
            alive = [n for n in everyone if n != victim]
            t0 = time.monotonic()
            wait_for(
                f"node {victim}'s replicas to be made again",
                lambda: _settled(cluster, cl, alive),
                timeout=180,
            )
            replicas, leaders = _spread(cl, alive)
            print(f"node {victim} killed; {time.monotonic() - t0:.0f} s later every range "
                  f"had 3 voters again: replicas {replicas}, leaders {leaders}")  # fmt: skip
            before = writer.seq
            wait_for("writes to go on", lambda: writer.seq > before + 100, timeout=60)
    finally:
        writer.stop()
    with cluster.client(timeout=30) as cl:
        got = cl.range(b"user/", prefix=True)
        found = {kv.key: kv.value for kv in got.kvs}
        lost = writer.lost(found)
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
        keys = [kv.key for kv in got.kvs]
        assert keys == sorted(keys) and len(keys) == len(writer.acked)
    logs = {n: cluster.nodes[n].log_path.read_text() for n in alive}
    for n, text in logs.items():
        assert "Traceback" not in text, f"node {n}'s log has a traceback:\n{text[-3000:]}"
    removed = sum(text.count("no longer hosts group") for text in logs.values())
    print(f"replicas deleted after moving away: {removed}")
    assert removed > 0  # the moves off the first three nodes deleted their replicas


def test_a_range_that_moved_still_splits(make_cluster: Any) -> None:
    # Until this was fixed, a split sent the range's own descriptor's epoch, whose
    # conf_ver never follows replica moves: every split of a range that had moved
    # (by the operator or the planner) was refused as stale, for good.
    cluster = make_cluster(3, extra_args=["--sharded"], tick_ms=20, election_ticks=10)
    with cluster.client(timeout=30) as cl:
        for key in (b"b", b"d", b"f"):
            cl.split(key)
        new = cluster.add_node()
        moved: list[Any] = []

        def a_range_moved_to_the_new_node() -> bool:
            moved[:] = [
                d
                for d in cl.ranges()
                if d.epoch.conf_ver > 1 and new in d.voters() and not d.learners()
            ]
            return bool(moved)

        wait_for("a range to move to the new node", a_range_moved_to_the_new_node, timeout=90)
        desc = moved[0]
        key = desc.start + b"x" if desc.start else b"a"  # inside it: ranges end at b, d, f
        left, right = cl.split(key, timeout=20)
        assert (left.range_id, left.end, right.start) == (desc.range_id, key, key)
        assert sorted(right.voters()) == sorted(desc.voters())
        everyone = [1, 2, 3, new]
        wait_for("the ranges to settle", lambda: _settled(cluster, cl, everyone), timeout=90)
