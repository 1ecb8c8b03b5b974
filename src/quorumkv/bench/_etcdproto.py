"""etcd's v3 KV API (Range and Put only), compiled at bench time into fast stubs.

The ``etcd3`` package's generated modules need protobuf's pure-Python parser, which
would make the load generator, not etcd, the bottleneck. So this module carries a
minimal ``.proto`` of its own, written for this benchmark: package ``etcdserverpb``,
service ``KV`` with ``Range`` and ``Put``, and the messages they use, with etcd's
field numbers (``api/etcdserverpb/rpc.proto`` and ``api/mvccpb/kv.proto`` of
etcd-io/etcd; unused fields are left out, which protobuf allows). ``load_stubs``
compiles it with grpcio-tools once into a cache directory keyed by the text and the
tool versions, and imports the result (protobuf's native ``upb`` backend parses it).

``EtcdKV`` is the typed wrapper the rest of the package uses: one ``grpc.aio``
channel, every concurrent call multiplexed on it (HTTP/2 streams).

What this module must never do: import ``grpc`` or the stubs at import time (the
bench package must import without its optional dependencies), or write anywhere but
its cache directory.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

KV_PROTO = """\
syntax = "proto3";
package mvccpb;

message KeyValue {
  bytes key = 1;
  int64 create_revision = 2;
  int64 mod_revision = 3;
  int64 version = 4;
  bytes value = 5;
  int64 lease = 6;
}
"""

RPC_PROTO = """\
syntax = "proto3";
package etcdserverpb;

import "qkvbench_etcd_kv.proto";

service KV {
  rpc Range(RangeRequest) returns (RangeResponse) {}
  rpc Put(PutRequest) returns (PutResponse) {}
}

message ResponseHeader {
  uint64 cluster_id = 1;
  uint64 member_id = 2;
  int64 revision = 3;
  uint64 raft_term = 4;
}

message RangeRequest {
  bytes key = 1;
  bytes range_end = 2;
  int64 limit = 3;
  int64 revision = 4;
  bool serializable = 7;
  bool keys_only = 8;
  bool count_only = 9;
}

message RangeResponse {
  ResponseHeader header = 1;
  repeated mvccpb.KeyValue kvs = 2;
  bool more = 3;
  int64 count = 4;
}

message PutRequest {
  bytes key = 1;
  bytes value = 2;
  int64 lease = 3;
  bool prev_kv = 4;
}

message PutResponse {
  ResponseHeader header = 1;
  mvccpb.KeyValue prev_kv = 2;
}
"""

_FILES = {"qkvbench_etcd_kv.proto": KV_PROTO, "qkvbench_etcd_rpc.proto": RPC_PROTO}


@dataclass(frozen=True)
class Stubs:
    """The generated modules: messages (``rpc``) and the service stub (``grpc``)."""

    rpc: ModuleType
    grpc: ModuleType


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "quorumkv" / "bench"


def _stamp() -> str:
    h = hashlib.sha256()
    for name in sorted(_FILES):
        h.update(name.encode() + b"\0" + _FILES[name].encode() + b"\0")
    for dist in ("grpcio-tools", "protobuf"):
        h.update(version(dist).encode() + b"\0")
    return h.hexdigest()[:12]


def compile_stubs(cache_dir: Path | None = None) -> Path:
    """Compile the protos (if not done yet) and return the directory of the modules."""
    from grpc_tools import protoc  # noqa: PLC0415 -- an optional dependency

    root = cache_dir or default_cache_dir()
    out = root / f"etcd-proto-{_stamp()}"
    if (out / "qkvbench_etcd_rpc_pb2_grpc.py").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="etcd-proto-", dir=root))
    try:
        for name, text in _FILES.items():
            (tmp / name).write_text(text)
        include = str(Path(protoc.__file__).resolve().parent / "_proto")
        for name in _FILES:
            args = ["protoc", f"-I{tmp}", f"-I{include}", f"--python_out={tmp}"]
            args += [f"--grpc_python_out={tmp}", str(tmp / name)]
            if protoc.main(args) != 0:
                raise RuntimeError(f"grpc_tools.protoc failed on {name} (in {tmp})")
        try:
            tmp.rename(out)
        except OSError:  # another run made it meanwhile
            if not (out / "qkvbench_etcd_rpc_pb2_grpc.py").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_stubs(cache_dir: Path | None = None) -> Stubs:
    """Compile if needed, then import the generated modules."""
    where = str(compile_stubs(cache_dir))
    if where not in sys.path:
        sys.path.insert(0, where)  # the generated rpc module imports its kv module by name
    return Stubs(
        rpc=importlib.import_module("qkvbench_etcd_rpc_pb2"),
        grpc=importlib.import_module("qkvbench_etcd_rpc_pb2_grpc"),
    )


class EtcdKV:
    """An asyncio client of etcd's KV service on one endpoint (``host:port``).

    ``put`` and ``get`` are etcd's ``Put`` and a single-key ``Range``; ``get`` is
    linearizable (``serializable=false``) unless asked otherwise. Errors are grpc's
    ``AioRpcError``. Close it with ``close()``.
    """

    def __init__(self, endpoint: str, stubs: Stubs) -> None:
        import grpc  # noqa: PLC0415 -- an optional dependency

        self.endpoint = endpoint
        self._rpc = stubs.rpc
        self._channel: Any = grpc.aio.insecure_channel(endpoint)
        self._kv: Any = stubs.grpc.KVStub(self._channel)

    async def put(self, key: bytes, value: bytes, *, timeout: float | None = None) -> int:
        """Store ``value`` at ``key``; the revision of the write."""
        resp = await self._kv.Put(self._rpc.PutRequest(key=key, value=value), timeout=timeout)
        return int(resp.header.revision)

    async def get(
        self, key: bytes, *, serializable: bool = False, timeout: float | None = None
    ) -> bytes | None:
        """The value at ``key``, or None."""
        req = self._rpc.RangeRequest(key=key, serializable=serializable)
        resp = await self._kv.Range(req, timeout=timeout)
        return bytes(resp.kvs[0].value) if resp.kvs else None

    async def close(self) -> None:
        await self._channel.close()
