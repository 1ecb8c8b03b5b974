"""The seed request's example, for real: a Raft-replicated store of JSON records.

::

    from quorumkv import raft

    cluster = raft.Cluster(nodes=3)
    cluster.start()
    cluster.update_data('user:1', {'name': 'Alice', 'age': 30})
    print(cluster.get_data('user:1'))        # {'name': 'Alice', 'age': 30}
    cluster.stop()

``Cluster(nodes=3)`` is not a simulation: ``start()`` launches three real quorumkv node
processes on loopback (``python -m quorumkv.server``, on free ports, data in a temporary
directory unless ``data_dir`` is given), waits until they have elected a leader, and
connects a client to all three. ``update_data`` returns once a majority of the nodes
hold the write on disk (fsync); ``get_data`` is a linearizable read (it sees every write
acknowledged before it began, whichever node answers). Kill one of the three processes
(``cluster.local.kill(id)``) and both keep working. ``stop()`` stops every process it
started. It is also a context manager: ``with raft.Cluster() as cluster: ...``.

Values are stored as JSON (UTF-8), so the same records are readable with ``qkv get``.
This module is a thin facade over ``quorumkv.local.LocalCluster`` and ``quorumkv.Client``;
it must never hold data itself or talk to the nodes any other way. ``quorumkv.consensus``
is the Raft algorithm; this module only carries the seed's name for it. (The seed's
``sharding.Cluster`` is not built yet.)
"""

from __future__ import annotations

import json
import os
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


class Cluster:
    """A real Raft cluster of ``nodes`` node processes on this machine, holding JSON
    values by key. See the module docstring."""

    def __init__(
        self,
        nodes: int = 3,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.local = LocalCluster(nodes, data_dir)
        """The node processes: kill, pause, restart them to see fault tolerance."""
        self._timeout = timeout
        self._client: Client | None = None

    @property
    def endpoints(self) -> list[str]:
        """The nodes' client addresses (for ``qkv --endpoints`` or ``quorumkv.Client``)."""
        return self.local.endpoints

    def start(self, timeout: float = 30.0) -> None:
        """Launch the node processes, wait for a leader, connect a client."""
        self.local.start(timeout)
        try:
            self._client = self.local.client(timeout=self._timeout)
        except BaseException:
            self.local.stop()
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
        """Close the client and stop every node process. Safe to call twice."""
        client, self._client = self._client, None
        try:
            if client is not None:
                client.close()
        finally:
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
