"""A 3-member etcd cluster on loopback, one ``etcd`` process per member.

Each member gets its own data directory under the run's temp dir and ports the
kernel says are free, and keeps etcd's default durability (the WAL is fsynced before
a write is acknowledged). Its timing is set to quorumkv's (heartbeat 50 ms, election
timeout 500 ms, so elections after 0.5-1 s) so that the failover figures compare the
implementations rather than their defaults; nothing else is changed. Health is read
from ``/health`` and leadership from ``/metrics`` (``etcd_server_is_leader``), both
served on the client port.

Load is driven from a separate generator process (``_load``) through the gRPC KV
API; the generator connects to the leader, as quorumkv's client does.

What this module must never do: signal a process it did not spawn, or leave a member
running after ``stop``.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from quorumkv.bench._procs import Proc, http_get
from quorumkv.local import free_ports

ETCD_BIN = "etcd"
HEARTBEAT_MS = 50
ELECTION_MS = 500
_LEADER = re.compile(r"^etcd_server_is_leader\s+1(\.0+)?\s*$", re.MULTILINE)


def etcd_version(binary: str = ETCD_BIN) -> str | None:
    """``etcd --version``'s first line's version, or None if etcd is not installed."""
    exe = shutil.which(binary)
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"etcd Version:\s*(\S+)", out)
    return m.group(1) if m else out.strip().splitlines()[0] if out.strip() else "unknown"


def member_argv(
    exe: str,
    name: str,
    data_dir: Path,
    client_url: str,
    peer_url: str,
    initial_cluster: str,
    token: str,
) -> list[str]:
    """The command line of one member (etcd 3.4 flags)."""
    return [
        exe,
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", initial_cluster,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        "--heartbeat-interval", str(HEARTBEAT_MS),
        "--election-timeout", str(ELECTION_MS),
        "--logger", "zap",
        "--log-level", "warn",
    ]  # fmt: skip


class EtcdCluster:
    """``nodes`` etcd members on ``host`` with their data under ``root``."""

    def __init__(self, root: Path, nodes: int = 3, host: str = "127.0.0.1") -> None:
        exe = shutil.which(ETCD_BIN)
        if exe is None:
            raise RuntimeError("etcd is not installed (see 'qkv bench compare --help')")
        self._exe = exe
        self.root = root
        self.host = host
        ports = free_ports(host, 2 * nodes)
        self.client_ports = ports[:nodes]
        self.peer_ports = ports[nodes:]
        self.names = [f"etcd{i + 1}" for i in range(nodes)]
        self.procs = {n: Proc(n, root / f"{n}.log") for n in self.names}
        self._token = f"qkv-bench-{secrets.token_hex(4)}"

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.host}:{p}" for p in self.client_ports]

    def endpoint(self, name: str) -> str:
        return self.endpoints[self.names.index(name)]

    def _argv(self, i: int) -> list[str]:
        initial = ",".join(
            f"{n}=http://{self.host}:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        return member_argv(
            self._exe,
            self.names[i],
            self.root / self.names[i],
            f"http://{self.host}:{self.client_ports[i]}",
            f"http://{self.host}:{self.peer_ports[i]}",
            initial,
            self._token,
        )

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for i, name in enumerate(self.names):
                self.procs[name].spawn(self._argv(i))
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def restart(self, name: str, timeout: float = 30.0) -> None:
        self.procs[name].stop()
        self.procs[name].spawn(self._argv(self.names.index(name)))
        self.wait_healthy(timeout=timeout)

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items() if p.alive}

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running member's ``/health`` says true and one leads."""
        deadline = time.monotonic() + timeout
        while True:
            for name, p in self.procs.items():
                if not p.alive and p.popen.returncode not in (None, -9):
                    raise RuntimeError(
                        f"{name} exited {p.popen.returncode}; log {p.log_path}:\n{p.log_tail()}"
                    )
            up = [n for n, p in self.procs.items() if p.alive]
            ok = all(
                '"health":"true"' in http_get(f"http://{self.endpoint(n)}/health", 1.0)[1]
                for n in up
            )
            if ok and self.leader(0) is not None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy after {timeout:g} s (logs in {self.root})")
            time.sleep(0.1)

    def leader(self, timeout: float = 10.0) -> str | None:
        """The name of the member whose ``/metrics`` says it leads (None: none in time)."""
        deadline = time.monotonic() + timeout
        while True:
            for name, p in self.procs.items():
                if p.alive:
                    status, body = http_get(f"http://{self.endpoint(name)}/metrics", 1.0)
                    if status == 200 and _LEADER.search(body):
                        return name
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def require_leader(self) -> str:
        name = self.leader()
        if name is None:
            raise RuntimeError("no etcd leader within 10 s")
        return name
