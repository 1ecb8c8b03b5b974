"""quorumkv.server: one node process, the only place with a server-side event loop.

``main(argv)`` runs ``qkv server``; ``Node`` is the store and its asyncio driver
(``_node``: the WAL, links, clients, tick and drive loop shared by every group), hosting
one ``Replica`` per Raft group (``_replica``: the core, the MVCC store and the requests
of one group); ``_conn`` and ``_peers`` are its connections; ``_http`` and ``_metrics``
serve /health, /status and /metrics; ``_config`` reads flags and the TOML file.
"""

from quorumkv.server._config import ServerConfig, parse_config
from quorumkv.server._main import main
from quorumkv.server._node import Node

__all__ = ["Node", "ServerConfig", "main", "parse_config"]
