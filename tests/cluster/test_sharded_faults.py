"""A sharded cluster on real processes under faults: ranges split by themselves while
writers run, a node is killed with SIGKILL (the meta range's leader, which also leads
ranges) and comes back; every acknowledged write is then read back, the ranges still
tile the keyspace, and a scan across them is ordered and complete."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from cluster_helpers import wait_for

from quorumkv.errors import ClientError


def _key(i: int) -> bytes:
    return b"user/%05d" % i


def test_kill_the_meta_leader_while_ranges_split_under_load(make_cluster: Any) -> None:
    cluster = make_cluster(
        3, extra_args=["--sharded", "--split-keys", "150"], tick_ms=20, election_ticks=10
    )
    acked: dict[bytes, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def writer(first: int) -> None:
        with cluster.client(timeout=20) as cl:
            for i in range(first, 1500, 3):
                if stop.is_set():
                    return
                value = b"v%d" % i
                try:
                    cl.put(_key(i), value)
                except ClientError as e:  # unknown outcome: not acknowledged
                    errors.append(str(e))
                    continue
                with lock:
                    acked[_key(i)] = value

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    with cluster.client(timeout=20) as cl:
        wait_for("a few acknowledged writes", lambda: len(acked) > 300, timeout=60)
        victim = cluster.leader()  # the meta range's leader
        cluster.kill(victim)
        wait_for("writes to go on without it", lambda: len(acked) > 700, timeout=60)
        cluster.restart(victim)
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        # Splits are planned every 2 s from heartbeats: on a fast machine the writers
        # can finish before the planner has split more than once.
        wait_for("the ranges to split past --split-keys", lambda: len(cl.ranges()) >= 3)
        descs = cl.ranges()
        assert len(descs) >= 3, descs
        assert descs[0].start == b"" and descs[-1].end == b""
        assert all(a.end == b.start for a, b in itertools.pairwise(descs))
        scan = cl.range(b"user/", prefix=True)
        found = {kv.key: kv.value for kv in scan.kvs}
        keys = [kv.key for kv in scan.kvs]
        assert keys == sorted(keys)
        missing = [k for k, v in acked.items() if found.get(k) != v]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
        assert len(acked) + len(errors) == 1500
        # The restarted node catches up on every range.
        deadline = time.monotonic() + 60

        def restarted_has_every_range() -> bool:
            st = cluster.nodes[victim].status()
            return bool(st) and {r["id"] for r in st["ranges"]} == {d.range_id for d in descs}

        wait_for("the restarted node to hold every range", restarted_has_every_range, timeout=120)
        assert time.monotonic() < deadline
