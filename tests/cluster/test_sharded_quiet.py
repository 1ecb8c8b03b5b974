"""Idle ranges go quiet on real processes: every replica of a quiet range stops ticking
(no heartbeats), a request wakes the range and is served, and when the node leading
quiet ranges is killed, their followers notice its silence (node keepalives) and elect,
so writes to those ranges go on."""

from __future__ import annotations

from typing import Any

from cluster_helpers import wait_for


def _quiet(cluster: Any, nodes: list[int]) -> dict[int, tuple[int, int]]:
    """Per node: (ranges held, ranges quiet)."""
    out = {}
    for n in nodes:
        ranges = (cluster.nodes[n].status() or {}).get("ranges", [])
        out[n] = (len(ranges), sum(bool(r.get("quiet")) for r in ranges))
    return out


def _led(cluster: Any, n: int) -> int:
    return sum(r["role"] == "leader" for r in cluster.nodes[n].status()["ranges"])


def _all_quiet(cluster: Any, nodes: list[int], ranges: int) -> bool:
    return all(held == quiet == ranges for held, quiet in _quiet(cluster, nodes).values())


def test_idle_ranges_go_quiet_wake_on_requests_and_survive_their_leaders_death(
    make_cluster: Any,
) -> None:
    cluster = make_cluster(3, extra_args=["--sharded"], tick_ms=20, election_ticks=10)
    nodes = [1, 2, 3]
    with cluster.client(timeout=30) as cl:
        for key in (b"b", b"d", b"f", b"h", b"k"):
            cl.split(key)
        keys = (b"a1", b"c1", b"e1", b"g1", b"i1", b"m1")
        for key in keys:
            cl.put(key, b"before")
        ranges = len(cl.ranges())
        assert ranges == 6
        wait_for("every range to go quiet", lambda: _all_quiet(cluster, nodes, ranges))
        # A write wakes its range, is served, and the range goes quiet again.
        cl.put(b"c1", b"woken")
        assert cl.get(b"c1").value == b"woken"
        wait_for("the range to go quiet again", lambda: _all_quiet(cluster, nodes, ranges))
        # The node leading the most quiet ranges stops (SIGSTOP: its connections stay
        # open, so only the missing keepalives tell), then dies (SIGKILL: its
        # connections close): each time their followers wake and elect.
        for how, value in (("pause", b"paused"), ("kill", b"killed")):
            led = {n: _led(cluster, n) for n in nodes}
            victim = max(led, key=lambda n: led[n])
            assert led[victim] >= 1
            cluster.pause(victim) if how == "pause" else cluster.kill(victim)
            for key in keys:
                cl.put(key, value)
            for key in keys:
                assert cl.get(key).value == value
            if how == "pause":
                cluster.resume(victim)
                wait_for("every range to go quiet after the pause",
                         lambda: _all_quiet(cluster, nodes, ranges), timeout=60)  # fmt: skip
        # A range quiesces only with every member holding its whole log: once the
        # killed node is back and caught up, all go quiet again.
        cluster.restart(victim)
        wait_for("every range to go quiet after the restart",
                 lambda: _all_quiet(cluster, nodes, ranges), timeout=60)  # fmt: skip
