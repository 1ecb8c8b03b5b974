"""quorumkv: a highly available, strongly consistent, sharded key-value store.

``quorumkv.Client`` is the blocking client, ``quorumkv.aio.Client`` the asyncio one.
The client is imported on first use, so ``import quorumkv`` stays light (no asyncio).
"""

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quorumkv.client import Client

__all__ = ["Client"]

# A library logs but never decides where logs go: without this, Python's last-resort
# handler would print quorumkv's warnings to stderr in programs that set up no logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> object:
    # PEP 562: resolve the client lazily, so importing quorumkv does not import asyncio.
    if name == "Client":
        from quorumkv.client import Client  # noqa: PLC0415

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
