"""quorumkv.client: the clients of a quorumkv cluster, blocking and asyncio.

``Client`` (also ``quorumkv.Client``) blocks; ``AsyncClient`` (also
``quorumkv.aio.Client``) is its asyncio twin with the same methods::

    with quorumkv.Client("10.0.0.1:7000,10.0.0.2:7000") as kv:
        kv.put("greeting", "hello")
        kv.get("greeting").value            # b"hello"

    async with quorumkv.aio.Client(["10.0.0.1:7000"]) as kv:
        await kv.compare_and_swap("lock", None, "me")

What a caller can rely on:

- Any node's address will do: the client follows the cluster's redirects to the leader,
  and after a failover finds the new one. Writes and linearizable reads go to the
  leader; ``serializable=True`` reads are answered by the node the client talks to.
  A client built with ``read_from="follower"`` (or ``"any"``) spreads its reads over
  the followers (or every voter) of the cluster or of the key's range instead, the
  leader taking over when none can answer; a linearizable read stays linearizable (the
  follower asks the leader for a read index and answers once it has applied up to it).
- A call retries until its deadline (``timeout``, per call or the client's default)
  and then raises by its last failure: ``NotLeaderError``, ``UnavailableError``,
  ``TooManyRequestsError`` or ``RequestTimeoutError`` (then a write's outcome is
  unknown). Every write is applied at most once, also across those retries.
- On a sharded cluster (the handshake says so) the same methods route each request to
  the leader of the range holding its keys, from a cache of the ranges that stale
  answers refresh; a write keeps its one session and sequence number across every
  reroute. A scan or delete over several ranges runs range by range (a delete is atomic
  per range only); a transaction over several ranges raises ``CrossRangeError`` before
  anything is sent. ``ranges()`` and ``split(key)`` exist for sharded clusters only.
- Requests are validated before they are sent: an oversized value raises
  ``KVLimitError``, a malformed one ``MalformedRequestError``, without network I/O.
  What the state machine refuses (compacted or future revisions, limits) raises the
  same ``KVError`` classes. A node that does not speak the protocol raises
  ``ProtocolError``, and a refused membership change ``MembershipError``.

Modules, bottom up: ``_conn`` (one pipelined connection), ``_lanes`` (exactly-once
sessions), ``_policy`` (what each answer code means for a retry), ``_replicas`` (which replica a
spread read tries), ``_requests``
(arguments to requests, answers to responses), ``_route`` (connections, routing and
the retry loop), ``_pool`` (one connection per node for every range), ``_scan`` (reads
over several ranges), ``_shards`` (routing by range), ``_aio`` (the asyncio API),
``_sync`` (the blocking shell). The
package depends on ``quorumkv.kv``, ``quorumkv.net``, ``quorumkv.shard`` (range
descriptors and the range cache) and ``quorumkv.errors`` only, never on the server.
"""

from quorumkv.client._aio import AsyncClient
from quorumkv.client._replicas import READ_FROM, ReadFrom, check_read_from
from quorumkv.client._sync import Client

__all__ = ["READ_FROM", "AsyncClient", "Client", "ReadFrom", "check_read_from"]
