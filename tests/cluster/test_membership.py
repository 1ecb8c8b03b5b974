"""Membership from the outside, on real processes: grow under load, shrink, replace."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cluster_helpers import caught_up, wait_for

from quorumkv.client import Client
from quorumkv.local import LocalCluster

MakeCluster = Callable[..., LocalCluster]


class _Writer(threading.Thread):
    """Puts numbered keys until stopped; records every acknowledged one."""

    def __init__(self, endpoints: list[str], prefix: str) -> None:
        super().__init__(daemon=True)
        self.client = Client(endpoints, timeout=30)
        self.prefix = prefix
        self.acked: list[str] = []
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            key = f"{self.prefix}{i:05d}"
            try:
                self.client.put(key, key)
            except Exception as e:
                self.errors.append(e)
                return
            self.acked.append(key)
            i += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(60)
        self.client.close()


def _voters(cl: Client) -> list[int]:
    return sorted(m["id"] for m in cl.members() if m["voter"])


def test_grow_to_five_under_load_then_shrink_back(make_cluster: MakeCluster) -> None:
    c = make_cluster(3)
    writer = _Writer(c.endpoints, "w")
    writer.start()
    try:
        with c.client(timeout=60) as cl:
            added = []
            for _ in range(2):
                new = c.add_node()
                cl.member_add(new, c.nodes[new].addr)
                added.append(new)
            assert _voters(cl) == sorted([*range(1, 4), *added])
            wait_for("a few writes after growing", lambda: len(writer.acked) > 50)
            for node in added:
                wait_for(f"node {node} to catch up", lambda n=node: caught_up(c, n))  # type: ignore[misc]
            for node in added:
                c.remove_node(node)
            assert _voters(cl) == [1, 2, 3]
    finally:
        writer.stop()
    assert not writer.errors, writer.errors
    with c.client(timeout=20) as cl:
        got = cl.range(writer.prefix, prefix=True, keys_only=True)
        assert [kv.key.decode() for kv in got.kvs] == writer.acked


def test_replace_a_dead_node(make_cluster: MakeCluster) -> None:
    c = make_cluster(3)
    with c.client(timeout=60) as cl:
        cl.put("before", "1")
        lead = c.leader()
        dead = next(i for i in c.nodes if i != lead)
        c.kill(dead)
        new = c.add_node()
        cl.member_add(new, c.nodes[new].addr)
        cl.member_remove(dead)
        assert _voters(cl) == sorted({1, 2, 3, new} - {dead})
        cl.put("after", "2")
        wait_for(f"node {new} to catch up", lambda: caught_up(c, new))
        with Client([c.nodes[new].addr], timeout=10) as one:
            assert one.get("before", serializable=True).value == b"1"  # type: ignore[union-attr]
            assert one.get("after", serializable=True).value == b"2"  # type: ignore[union-attr]
        # The new node now counts towards the quorum: the cluster survives losing another.
        c.kill(lead)
        cl.put("after-kill", "3")
        assert cl.get("after-kill").value == b"3"  # type: ignore[union-attr]
