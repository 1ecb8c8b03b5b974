"""quorumkv.server: one node process, the only place with a server-side event loop.

``main(argv)`` runs ``qkv server``; ``Node`` is the asyncio driver around the Raft core
(``_node``); ``_conn`` and ``_peers`` are its connections; ``_http`` and ``_metrics``
serve /health, /status and /metrics; ``_config`` reads flags and the TOML file.
"""

from quorumkv.server._config import ServerConfig, parse_config
from quorumkv.server._main import main
from quorumkv.server._node import Node

__all__ = ["Node", "ServerConfig", "main", "parse_config"]
