"""Running the system's tools (``ip``, ``mount``, ``umount``) for the torture harness.

``run`` runs one command with a timeout and turns its failure into a ``TortureError``
quoting the command and what it printed, so a run that cannot set up its environment
(not root, no ``ip``) stops with one clear line instead of a traceback from deep inside.

This module must never run a command through a shell, or change anything but what the
caller names (namespaces, links, routes and mounts the run created itself).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from quorumkv.errors import QuorumKVError


class TortureError(QuorumKVError):
    """The torture harness cannot set up or tear down its environment (network
    namespaces, links, routes, a tmpfs): usually not root, or a tool is missing. The
    message names the command and its error. Retrying as root can help."""


def is_root() -> bool:
    return os.geteuid() == 0


def require_root(what: str) -> None:
    """``TortureError`` naming ``what`` unless this process runs as root."""
    if not is_root():
        raise TortureError(
            f"{what} needs root (this process runs as uid {os.geteuid()}): run it as root, "
            f"or choose faults that need no privileges (--loopback, without disk-full)"
        )


def run(argv: list[str], *, check: bool = True, timeout: float = 20.0) -> tuple[int, str]:
    """Run ``argv``; returns ``(status, stderr)``. With ``check``, a non-zero status
    raises ``TortureError`` quoting the command and its stderr."""
    if shutil.which(argv[0]) is None:
        raise TortureError(f"{argv[0]} is not installed (needed to run {' '.join(argv)})")
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TortureError(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
    err = (proc.stderr or proc.stdout or "").strip()
    if check and proc.returncode != 0:
        raise TortureError(f"{' '.join(argv)} failed (status {proc.returncode}): {err}")
    return proc.returncode, err


def capture(argv: list[str], timeout: float = 20.0) -> str:
    """What ``argv`` prints on stdout ("" if it fails or is missing)."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return ""
    return proc.stdout if proc.returncode == 0 else ""
