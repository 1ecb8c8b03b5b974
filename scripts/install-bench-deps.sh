#!/usr/bin/env bash
# Installs what `qkv bench compare` needs besides quorumkv itself:
#   - etcd, from Debian's etcd-server and etcd-client packages (apt-get, as root);
#   - the Python packages of quorumkv's `bench` extra (PySyncObj, grpcio,
#     grpcio-tools, protobuf), from the package index pip is set up for.
# Run from anywhere inside a quorumkv checkout: bash scripts/install-bench-deps.sh
# quorumkv is installed editable (-e), as `pip install -e '.[test]'` does, so the
# checkout stays the code that runs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y etcd-server etcd-client
    # On a machine with systemd the package also starts a system etcd on the default
    # ports; the benchmark runs its own members on free ports and needs none of it.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
        $sudo systemctl disable --now etcd || true
    fi
fi

python -m pip install -e '.[bench]'
echo "bench dependencies installed: $(etcd --version | head -n 1); $(python -m pip show pysyncobj | grep '^Version')"
