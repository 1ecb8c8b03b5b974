"""The seed request's example, for real: a Raft-replicated store of JSON records.

::

    from quorumkv import raft

    cluster = raft.Cluster(nodes=3)
    cluster.start()
    cluster.update_data('user:1', {'name': 'Alice', 'age': 30})
    print(cluster.get_data('user:1'))        # {'name': 'Alice', 'age': 30}
    cluster.stop()

``Cluster(nodes=3)`` is not a simulation: ``start()`` launches three real quorumkv node
processes on loopback (``python -m quorumkv.server --sharded``, on free ports, data in
a temporary directory unless ``data_dir`` is given), waits until they have elected
leaders, and connects a client to all three. ``update_data`` returns once a majority of the nodes
hold the write on disk (fsync); ``get_data`` is a linearizable read (it sees every write
acknowledged before it began, whichever node answers). Kill one of the three processes
(``cluster.local.kill(id)``) and both keep working. ``stop()`` stops every process it
started. It is also a context manager: ``with raft.Cluster() as cluster: ...``.

Values are stored as JSON (UTF-8), so the same records are readable with ``qkv get``.
This module is a thin facade over ``quorumkv.local.LocalCluster`` and ``quorumkv.Client``;
it must never hold data itself or talk to the nodes any other way. ``quorumkv.consensus``
is the Raft algorithm; this module only carries the seed's name for it.

One deployment, two views. The seed writes through ``raft.Cluster`` and reads through
``sharding.Cluster``, and expects the record back: they are two views of ONE
deployment. A quorumkv deployment of this kind is built from Raft groups (a meta range,
and ranges of keys that split as they grow); ``raft.Cluster`` addresses it as one
replicated store, ``sharding.Cluster`` also shows and splits its ranges. In one process,
views created without a ``data_dir`` and with the same number of nodes share one set of
node processes: the first ``start()`` launches them, later views attach, and the last
``stop()`` stops them. A view given a ``data_dir`` has that deployment to itself. (An
unsharded cluster, one Raft group holding every key as etcd does, is ``qkv up`` or
``quorumkv.local.LocalCluster``; the benchmarks run that one.)
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from quorumkv.client import Client
from quorumkv.local import LocalCluster

__all__ = ["Cluster", "decode_value", "encode_value"]


def encode_value(key: str | bytes, value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON. ``TypeError`` naming ``key`` if JSON cannot
    represent it (a set, bytes, an object, NaN or infinity, a circular structure)."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"cannot store the value for key {key!r}: it is not JSON-serializable ({e})"
        ) from e
    return text.encode("utf-8")


def decode_value(key: str | bytes, data: bytes) -> Any:
    """The JSON value stored under ``key``; ``ValueError`` naming the key if the stored
    bytes are not UTF-8 JSON (written by something other than ``update_data``)."""
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"the value of key {key!r} is not UTF-8 JSON: {e}") from e


@dataclass
class _Shared:
    local: LocalCluster
    views: int = 0
    started: bool = False


_SHARED: dict[int, _Shared] = {}
"""The deployments of views without a ``data_dir``, by number of nodes."""
_SHARED_LOCK = threading.Lock()


class Cluster:
    """A real cluster of ``nodes`` node processes on this machine, holding JSON values
    by key, addressed as one replicated store. See the module docstring."""

    def __init__(
        self,
        nodes: int = 3,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._shared: _Shared | None = None
        if data_dir is None:
            with _SHARED_LOCK:
                shared = _SHARED.get(nodes)
                if shared is None:
                    shared = _SHARED[nodes] = _Shared(LocalCluster(nodes, sharded=True))
                self._shared = shared
            self.local = shared.local
        else:
            self.local = LocalCluster(nodes, data_dir, sharded=True)
        """The node processes: kill, pause, restart them to see fault tolerance."""
        self._timeout = timeout
        self._client: Client | None = None
        self._joined = False

    @property
    def endpoints(self) -> list[str]:
        """The nodes' client addresses (for ``qkv --endpoints`` or ``quorumkv.Client``)."""
        return self.local.endpoints

    def start(self, timeout: float = 30.0) -> None:
        """Launch the node processes (or attach to those another view of this process
        launched), wait for leaders, connect a client."""
        shared = self._shared
        if self._joined:
            return
        if shared is None:
            self.local.start(timeout)
        else:
            with _SHARED_LOCK:
                if not shared.started:
                    self.local.start(timeout)
                    shared.started = True
                shared.views += 1
        self._joined = True
        try:
            self._client = self.local.client(timeout=self._timeout)
        except BaseException:
            self.stop()
            raise

    def update_data(self, key: str | bytes, value: Any) -> None:
        """Store ``value`` (anything JSON can represent) under ``key`` through Raft."""
        data = encode_value(key, value)
        self._connected().put(key, data)

    def get_data(self, key: str | bytes) -> Any:
        """The value stored under ``key`` (a linearizable read), or None if none is."""
        kv = self._connected().get(key)
        return None if kv is None else decode_value(key, kv.value)

    def delete_data(self, key: str | bytes) -> bool:
        """Delete ``key``; whether it existed."""
        return self._connected().delete(key).deleted > 0

    def stop(self) -> None:
        """Close this view's client; stop the node processes unless another view of
        this process still uses them. Safe to call twice."""
        client, self._client = self._client, None
        try:
            if client is not None:
                client.close()
        finally:
            self._leave()

    def _leave(self) -> None:
        joined, self._joined = self._joined, False
        shared = self._shared
        if shared is None:
            self.local.stop()
            return
        with _SHARED_LOCK:
            if joined:
                shared.views -= 1
            if shared.views > 0:
                return
            for n, entry in list(_SHARED.items()):
                if entry is shared:
                    del _SHARED[n]
        self.local.stop()

    def __enter__(self) -> Cluster:
        if self._client is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _connected(self) -> Client:
        if self._client is None:
            raise RuntimeError("the cluster is not started: call start() first")
        return self._client
