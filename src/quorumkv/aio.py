"""quorumkv.aio: the asyncio client, ``quorumkv.aio.Client``.

The same methods as the blocking ``quorumkv.Client``, as coroutines, on the caller's
event loop (uvloop if the application installed it; this module installs nothing).
"""

from quorumkv.client._aio import AsyncClient as Client

__all__ = ["Client"]
