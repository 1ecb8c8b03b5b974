"""What ``qkv bench compare`` needs besides quorumkv, whether it is here, how to get it.

etcd comes from Debian's ``etcd-server`` and ``etcd-client`` packages (apt-get, as
root); the Python packages from quorumkv's ``bench`` extra (their pins live in
``pyproject.toml`` only; ``bench_requirements`` reads them from the installed
metadata). ``install`` runs ``scripts/install-bench-deps.sh`` when quorumkv runs from a
checkout that has it, and otherwise the same steps itself.

What this module must never do: install anything unless asked (``--install``), or
reach any package source other than apt's and pip's own configuration.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import quorumkv

MODULES = {
    "etcd": ("grpc", "grpc_tools", "google.protobuf"),
    "pysyncobj": ("pysyncobj",),
}
"""Python modules each system's driver imports."""
BINARIES = {"etcd": ("etcd",)}
APT_PACKAGES = ("etcd-server", "etcd-client")
SCRIPT = "scripts/install-bench-deps.sh"
FALLBACK_REQUIREMENTS = ("pysyncobj", "grpcio", "grpcio-tools", "protobuf")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing(systems: tuple[str, ...]) -> list[str]:
    """What the given systems need and this machine lacks, one phrase each."""
    out = []
    for system in systems:
        out += [f"the '{b}' program" for b in BINARIES.get(system, ()) if shutil.which(b) is None]
        out += [f"the Python module '{m}'" for m in MODULES.get(system, ()) if not _has_module(m)]
    return out


def checkout_script() -> Path | None:
    """``scripts/install-bench-deps.sh`` of the checkout quorumkv runs from, if any."""
    root = Path(quorumkv.__file__).resolve().parent.parent.parent
    script = root / SCRIPT
    return script if script.is_file() and (root / "pyproject.toml").is_file() else None


def install_hint() -> str:
    """How to install the missing pieces, as one paragraph."""
    return (
        f"install them with 'qkv bench compare --install', or 'bash {SCRIPT}' from a "
        f"quorumkv checkout, or by hand: apt-get update && apt-get install -y "
        f"{' '.join(APT_PACKAGES)}; python -m pip install 'quorumkv[bench]'"
    )


def extra_requirements(reqs: list[str], extra: str) -> list[str]:
    """The requirements of ``extra`` among a distribution's ``Requires-Dist`` lines."""
    out = []
    for r in reqs:
        spec, _, marker = r.partition(";")
        if re.search(rf"""extra\s*==\s*['"]{re.escape(extra)}['"]""", marker):
            out.append(spec.strip())
    return out


def bench_requirements() -> list[str]:
    """The requirements of quorumkv's ``bench`` extra, from the installed metadata."""
    try:
        reqs = requires("quorumkv") or []
    except PackageNotFoundError:
        reqs = []
    return extra_requirements(reqs, "bench") or list(FALLBACK_REQUIREMENTS)


def install(systems: tuple[str, ...]) -> None:
    """Install what ``systems`` lack (CalledProcessError if a step fails)."""
    if not missing(systems):
        return
    script = checkout_script()
    if script is not None:
        subprocess.run(["bash", str(script)], check=True)
        return
    if any(shutil.which(b) is None for s in systems for b in BINARIES.get(s, ())):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "update"], check=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run([*sudo, "apt-get", "install", "-y", *APT_PACKAGES], check=True, env=env)
    subprocess.run([sys.executable, "-m", "pip", "install", *bench_requirements()], check=True)
