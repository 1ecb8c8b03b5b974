"""A node's disk fills up (a small tmpfs, filled with a filler file) under load.

Documented behaviour (README, "If the disk fails under a node"): the node stops
answering writes, answers what is pending with an error, and exits with status 3;
restarted once the disk is fixed, it recovers from what was durable. The other nodes
keep serving meanwhile. These tests need root (mount); without it they fail, saying so.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from fault_helpers import mounts_under

from quorumkv.client import Client
from quorumkv.errors import QuorumKVError
from quorumkv.torture import FaultKind, Loopback, TortureCluster, TortureConfig, run_torture


def test_a_full_wal_disk_stops_the_node_with_status_3_and_it_recovers(tmp_path: Path) -> None:
    out = tmp_path / "run"
    lines: list[str] = []
    summary = run_torture(
        TortureConfig(
            out=out,
            nodes=3,
            duration=10.0,
            seed=4,  # two disk-full faults, at 1.0 s (2.6 s) and 6.0 s (2.3 s)
            faults=(FaultKind.DISK_FULL,),
            disk_mb=32,
            disk_at="wal",
            recovery_timeout=30.0,
        ),
        echo=lines.append,
    )
    assert summary.passed, "\n".join(lines[-80:])
    assert summary.faults == {"disk-full": 2}
    events = [json.loads(line) for line in (out / "faults.jsonl").read_text().splitlines()]
    filled = [e for e in events if e["event"] == "start"]
    exits = [e for e in events if e["event"] == "observe"]
    assert len(filled) == len(exits) == 2
    for start, seen in zip(filled, exits, strict=True):
        assert seen["nodes"] == start["nodes"]
        assert "exited with status 3" in seen["detail"], seen
        assert seen["t"] - start["t"] < 5.0, "the node went on too long with a full disk"
        log = (out / "cluster" / f"node-{seen['nodes'][0]}.log").read_text()
        assert "WAL write or fsync failed" in log
        assert "No space left on device" in log
    ends = [e for e in events if e["event"] == "end"]
    assert all("restarted node" in e["detail"] for e in ends)
    # the others kept serving: acknowledged writes never stopped for long
    assert summary.windows["disk-full"].length < 5.0
    assert not mounts_under(str(tmp_path))


def test_a_full_state_machine_disk_stops_the_node_with_status_3(tmp_path: Path) -> None:
    # Only the store's disk is full, so LMDB (not the WAL) meets ENOSPC first. Until
    # 84b2d1e, lmdb.DiskError escaped the node's Ready cycle: it kept running, wedged
    # ("ready() called again before advance()"), instead of exiting.
    cluster = TortureCluster(tmp_path / "c", 3, Loopback(), disk_bytes=8 << 20, disk_at="kv")
    halt = threading.Event()
    acked: list[float] = []

    def write() -> None:
        with Client(cluster.endpoints(), timeout=5.0) as c:
            n = 0
            while not halt.is_set():
                n += 1
                try:
                    c.put(f"k{n % 5}", f"v{n}")
                    acked.append(time.monotonic())
                except QuorumKVError:
                    pass

    writer = threading.Thread(target=write)
    try:
        cluster.start()
        writer.start()
        lead = cluster.leader(timeout=10.0)
        victim = next(i for i in cluster.ids() if i != lead)
        proc = cluster.procs[victim]
        cluster.disks[victim].fill()
        deadline = time.monotonic() + 6.0  # a full WAL disk stops a node within 1 s
        while proc.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        log = proc.log_path.read_text()
        assert not proc.alive, f"node {victim} still runs 6 s after its store's disk filled"
        assert proc.returncode == 3, log[-2000:]
        assert "No space left on device" in log
    finally:
        halt.set()
        if writer.is_alive():
            writer.join()
        cluster.stop()
    assert not mounts_under(str(tmp_path))
