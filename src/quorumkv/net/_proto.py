"""quorumkv's wire protocol, version 2: handshakes, client requests and their answers.

Theory of operation
-------------------
One TCP address per node serves both peers and clients. Every connection starts with a
HELLO frame from the side that dialled::

    {"magic": "quorumkv", "version": 2, "kind": "client" | "peer" | "snap",
     "cluster": <cluster id, peers only>, "from": <node id, peers only>,
     "addr": <the dialler's own listen address, peers only>}

and the node answers ``{"ok": true, "node": id, "cluster": id}`` or
``{"ok": false, "code": ERR_*, "message": "..."}`` and closes. A wrong magic, another
version or another cluster is refused with a message that says which.

After the handshake a *client* connection carries pipelined requests and answers,
matched by a request id the client chooses (answers may come out of order)::

    request  [req_id, op, body]
    answer   [req_id, code, body]

Operations (``op``) and their bodies:

=================  =======================================  ==============================
op                 body                                     OK answer body
=================  =======================================  ==============================
OP_WRITE           encoded kv Command (``encode_command``)  encoded result (``encode_result``)
OP_READ            [encoded Command with a RangeRequest,    encoded result
                   serializable: bool]
OP_STATUS          None                                     status dict (see server)
OP_MEMBER_ADD      [node_id, "host:port", learner_only]     members list
OP_MEMBER_REMOVE   node_id                                  members list
OP_TRANSFER        target node id (0: the most caught-up)   {"leader": id}
OP_RANGE_WRITE     [range_id, version, encoded Command]     encoded result
OP_RANGE_READ      [range_id, version, encoded Command      encoded result
                   with a RangeRequest, serializable]
OP_RANGES          [start, end] (end b"": to the end of     {"ranges": [descriptor wire,
                   the keyspace)                            ...], "nodes": {"id": addr}}
OP_SPLIT           [range_id, version, split key]           {"left": descriptor wire,
                                                            "right": descriptor wire}
OP_META            internal, node to node: [kind, body]     depends on kind
OP_NODE_STATE      [node_id, "up" | "draining" |            [node_id, addr, capacity,
                   "removed"]                               state, last heartbeat]
=================  =======================================  ==============================

The ``OP_RANGE_*``, ``OP_RANGES``, ``OP_SPLIT`` and ``OP_NODE_STATE`` operations exist
only on a sharded cluster (the handshake's answer says ``"sharded": true``); there
``OP_WRITE`` and ``OP_READ`` are refused with ERR_BAD_REQUEST, and on an unsharded
cluster the sharded operations are. ``version`` is the descriptor version
(``Epoch.version``) the client routed by (descriptors travel as
``RangeDescriptor.to_wire()``). A range's replica checks the keys of every request
against its own bounds when it applies or serves it; a key outside them is an OK answer
whose result decodes to ``OutOfRangeError`` (nothing was done, and the session records
nothing: the client refreshes its range cache and retries elsewhere with the same
sequence number). ``OP_RANGES`` may be answered by any node that hosts the meta range,
from its copy of the directory (possibly a little stale: that is what the errors above
correct). ``OP_SPLIT`` goes to the range's leader. ``OP_NODE_STATE`` (an operator
draining, restoring or removing a node) may go to any node, which runs it through the
meta range's leader; a refusal (a node that still holds replicas cannot be removed, a
removed node cannot come back) is ERR_MEMBERSHIP with the directory's reason. The
``OP_RANGES`` answer also carries ``"states": {"id": state}`` for every registered node.

A kv error decided by the state machine or at the edge (a limit, a compacted revision)
is an OK answer whose result decodes to the error: the client raises it. The other codes
say why the node did not do the work; each says whether a retry elsewhere can help:

- ERR_NOT_LEADER ``[leader_id or 0, leader address or None]``: retry at the leader.
- ERR_UNAVAILABLE message: no leader known here; retry later or elsewhere.
- ERR_TIMEOUT message: the node gave up waiting; the outcome is unknown.
- ERR_TOO_MANY message: backpressure; nothing was done.
- ERR_SHUTTING_DOWN message: this node is stopping; retry elsewhere.
- ERR_BAD_REQUEST message: a request that can never succeed (unknown op, bad body).
- ERR_MEMBERSHIP message: a membership change was refused.
- ERR_WRONG_RANGE ``WrongRange.to_wire()``: this node holds no replica of the range the
  request named (it never did, or not yet: a split's right half is created when each
  replica applies the split); the hint lists descriptors it knows. Refresh the range
  cache (``OP_RANGES``) and retry.

A *peer* connection carries frames that are lists of encoded Raft messages, one way
(each node dials each peer and sends on its own connection). A *snap* connection
carries one snapshot: a frame with the SNAP message, then state-machine chunks as
``["chunk", bytes]`` frames, then ``["end"]``; the receiver answers ``["ok"]`` or
``["error", message]`` once it has installed (or refused) it.

This module defines names and shapes only; it must never open a socket.
"""

from __future__ import annotations

from typing import Any

MAGIC = "quorumkv"
VERSION = 2
"""Version 2 writes a plain put in its own layout (``quorumkv.kv._codec.PLAIN_PUT``),
which a node of version 1 would refuse when it applies the entry while the others apply
it: peers must speak the same version, or replicas would diverge. A client's commands
are read by every version that speaks its own, so a node still takes version 1 clients
(``CLIENT_VERSIONS``)."""
CLIENT_VERSIONS = (1, 2)

KIND_CLIENT, KIND_PEER, KIND_SNAP = "client", "peer", "snap"

MAX_CLIENT_FRAME = 4 << 20
"""A client frame: the largest request (1.5 MiB) and its framing, with room to spare."""
MAX_PEER_FRAME = 64 << 20
"""A peer frame: a batch of Raft messages, or one snapshot chunk."""

OP_WRITE, OP_READ, OP_STATUS, OP_MEMBER_ADD, OP_MEMBER_REMOVE, OP_TRANSFER = 1, 2, 3, 4, 5, 6
OP_RANGE_WRITE, OP_RANGE_READ, OP_RANGES, OP_SPLIT, OP_META = 7, 8, 9, 10, 11
OP_NODE_STATE = 12
OPS = frozenset(
    {
        OP_WRITE,
        OP_READ,
        OP_STATUS,
        OP_MEMBER_ADD,
        OP_MEMBER_REMOVE,
        OP_TRANSFER,
        OP_RANGE_WRITE,
        OP_RANGE_READ,
        OP_RANGES,
        OP_SPLIT,
        OP_META,
        OP_NODE_STATE,
    }
)

OK = 0
ERR_NOT_LEADER = 1
ERR_UNAVAILABLE = 2
ERR_TIMEOUT = 3
ERR_TOO_MANY = 4
ERR_SHUTTING_DOWN = 5
ERR_BAD_REQUEST = 6
ERR_MEMBERSHIP = 7
ERR_PROTOCOL = 8
"""Handshake refusals: wrong magic or version, wrong kind, another cluster."""
ERR_WRONG_RANGE = 9

RETRYABLE = frozenset(
    {ERR_NOT_LEADER, ERR_UNAVAILABLE, ERR_TOO_MANY, ERR_SHUTTING_DOWN, ERR_WRONG_RANGE}
)


def client_hello() -> dict[str, Any]:
    return {"magic": MAGIC, "version": VERSION, "kind": KIND_CLIENT}


def peer_hello(kind: str, cluster: int, frm: int, addr: str) -> dict[str, Any]:
    return {
        "magic": MAGIC,
        "version": VERSION,
        "kind": kind,
        "cluster": cluster,
        "from": frm,
        "addr": addr,
    }


def check_hello(doc: object, cluster: int) -> tuple[str, str]:
    """``(kind, "")`` for an acceptable hello, or ``("", reason)``. ``cluster`` 0 means
    this node does not know its cluster yet (it is joining) and accepts any."""
    if not isinstance(doc, dict) or doc.get("magic") != MAGIC:
        return "", "not a quorumkv handshake"
    version, kind = doc.get("version"), doc.get("kind")
    if kind == KIND_CLIENT and version in CLIENT_VERSIONS and type(version) is int:
        return kind, ""
    if version != VERSION or type(version) is not int:
        return "", f"protocol version {version!r} is not supported; this node speaks {VERSION}"
    if kind == KIND_CLIENT:
        return kind, ""
    if kind not in (KIND_PEER, KIND_SNAP):
        return "", f"unknown connection kind {kind!r}"
    theirs, frm, addr = doc.get("cluster"), doc.get("from"), doc.get("addr")
    if not isinstance(theirs, int) or not isinstance(frm, int) or frm <= 0:
        return "", "a peer handshake needs integer cluster and from fields"
    if not isinstance(addr, str):
        return "", "a peer handshake needs its listen address"
    if cluster and theirs != cluster:
        return "", (
            f"node {frm} belongs to cluster {theirs:016x}, this node to cluster "
            f"{cluster:016x}: it was started with another data dir or peer list"
        )
    return kind, ""


def refuse(code: int, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message}


def accept(node: int, cluster: int, sharded: bool = False) -> dict[str, Any]:
    return {"ok": True, "node": node, "cluster": cluster, "sharded": sharded}


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; raises ``ValueError`` saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {text!r} is not host:port")
    return host.strip("[]"), int(port)
