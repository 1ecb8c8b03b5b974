"""A leader paused by SIGSTOP, seen by a client that writes all the time.

The cluster elects a new leader within about an election timeout (0.5-1 s), and the
design's target is that writes go on within about that long. A client's request that
was sent to the paused leader must therefore not wait for the pause to end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from quorumkv.client import Client
from quorumkv.errors import QuorumKVError
from quorumkv.local import LocalCluster
from quorumkv.torture import FaultInterval, unavailability

PAUSE = 4.0


# Regression: a request sent to the paused leader (its TCP connection stays open) waited
# until the call's whole deadline: there was no per-try timeout (found by qkv torture,
# seed 1: pause-leader windows equal to the pause).
def test_writes_resume_soon_after_the_leader_is_paused(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    c = make_cluster(3)
    halt = threading.Event()
    acked: list[float] = []

    def write() -> None:
        with Client(c.endpoints, timeout=20.0) as cl:
            n = 0
            while not halt.is_set():
                n += 1
                try:
                    cl.put("k", f"v{n}")
                    acked.append(time.monotonic())
                except QuorumKVError:
                    pass

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while len(acked) < 20:  # the client has found the leader
            assert time.monotonic() < deadline, "no writes before the pause"
            time.sleep(0.01)
        lead = c.leader()
        start = time.monotonic()
        c.pause(lead)
        time.sleep(PAUSE)  # the fault itself
        c.resume(lead)
        end = time.monotonic()
        deadline = end + 10
        while not acked or acked[-1] < end + 0.5:
            assert time.monotonic() < deadline, "no writes after the pause"
            time.sleep(0.01)
    finally:
        halt.set()
        writer.join()
    gap = unavailability(acked, [FaultInterval(0, "pause-leader", start, end)], start - 1, end + 1)
    assert gap["pause-leader"].length < 2.5, f"no write for {gap['pause-leader'].length:.2f} s"
