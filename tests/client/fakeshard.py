"""A fake sharded cluster for client tests: real TCP on localhost, real ranges of keys.

``FakeShardedCluster`` is N ``fakenode.FakeNode`` servers (each on its own port, with
the scripted faults of ``fakenode``) that answer the sharded half of ``quorumkv.net``
exactly as the protocol's docstring says a sharded node does:

* the handshake says ``"sharded": true``; ``OP_WRITE`` and ``OP_READ`` are refused
  (ERR_BAD_REQUEST);
* ``OP_RANGES [start, end]``, at a node hosting the meta range (``meta_nodes``), lists
  the directory's descriptors overlapping ``[start, end)`` and the nodes' addresses; any
  other node answers ERR_NOT_LEADER naming one that has it. The directory is what the
  cluster last ``publish``-ed (every change publishes unless ``auto_publish`` is off,
  which is how a test makes it stale);
* ``OP_RANGE_WRITE`` / ``OP_RANGE_READ [range_id, version, ...]``: a node with no
  replica of the range answers ERR_WRONG_RANGE (``WrongRange`` with the directory's
  descriptor of the range as its hint); a replica that does not lead it answers
  ERR_NOT_LEADER with that range's leader (ERR_UNAVAILABLE when it has none), except a
  serializable read, and any read when ``followers_read`` is set (a follower read);
  the leader looks the command's session up (per range and client id: the same seq
  is answered from it, an older one refused), then checks every key
  against the range's bounds (``OutOfRangeError`` result, no session recorded), then
  applies it and records the session;
* ``OP_SPLIT [range_id, version, key]`` at the range's leader splits it (the right
  half gets the next id, the same replicas and leader, and a copy of the sessions) and
  answers both descriptors.
* ``OP_META ["transfer", [range_id, to]]`` (the placement driver's leader transfer)
  at the range's leader makes ``to`` its leader and answers ``{"leader": to}``; a
  target that is not a voter of the range is answered ERR_UNAVAILABLE, as a real
  leader's transfer that timed out.

The data of every range lives in one ``MVCCStore`` (so revisions are one sequence, as
the meta range's allocator makes them), applied without its own sessions; each range's
sessions, bounds and current revision (its last write's; a split's right half starts
at its parent's), and compacted revision are the fake's. As on a real range, a read or
a compaction at a revision above the range's current one is answered
``FutureRevisionError``, and one below its compacted revision ``CompactedError`` (the
shared store itself is never compacted). The bounds
check here is written independently of the client's span logic, so a client that sends
a piece beyond a range is caught.
``stale_stamps[range_id] = n`` makes the next n writes of a range answer
``StaleStampError`` (nothing done, no session). ``after_write`` holds callbacks, the
first of which runs (and is removed) after the next write is applied: a range moving
or splitting just after a write. What each node received is in its ``seen`` list, as
with ``FakeCluster``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from fakenode import FakeNode, Seen

from quorumkv.consensus import NodeId
from quorumkv.errors import (
    CompactedError,
    FutureRevisionError,
    KVError,
    OutOfRangeError,
    StaleStampError,
)
from quorumkv.kv import (
    ALL_KEYS,
    Command,
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    MVCCStore,
    PutRequest,
    RangeRequest,
    Request,
    TxnRequest,
    encode_command,
    encode_result,
)
from quorumkv.net import (
    ERR_BAD_REQUEST,
    ERR_NOT_LEADER,
    ERR_UNAVAILABLE,
    ERR_WRONG_RANGE,
    OK,
    OP_META,
    OP_RANGE_READ,
    OP_RANGE_WRITE,
    OP_RANGES,
    OP_SPLIT,
    OP_STATUS,
)
from quorumkv.shard import Epoch, RangeDescriptor, RangeId, Replica, WrongRange


def first_outside(req: Request, start: bytes, end: bytes) -> bytes | None:
    """The first key ``req`` touches outside ``[start, end)`` (end b"": unbounded)."""

    def inside(key: bytes) -> bool:
        return start <= key and (not end or key < end)

    if isinstance(req, PutRequest):
        return None if inside(req.key) else req.key
    if isinstance(req, RangeRequest | DeleteRangeRequest):
        if not inside(req.key):
            return req.key
        if req.range_end == ALL_KEYS:
            return end or None
        if req.range_end and end and req.range_end > end:
            return end
        return None
    if isinstance(req, TxnRequest):
        for c in req.compare:
            if not inside(c.key):
                return c.key
        for op in (*req.success, *req.failure):
            bad = first_outside(op, start, end)
            if bad is not None:
                return bad
    return None


class FakeShardedCluster:
    """``n`` fake nodes of a sharded cluster; ``splits`` cut range 2 (the whole
    keyspace) at those keys, and ``leaders`` gives each range's leader in order
    (default: range i is led by node ``(i - 2) % n + 1``)."""

    sharded = True

    def __init__(
        self,
        path: Path,
        n: int = 3,
        splits: tuple[bytes, ...] = (),
        leaders: tuple[int, ...] = (),
    ) -> None:
        self.store = MVCCStore(path / "kv", map_size=1 << 26, sync=False)
        self.index = 0
        self.nodes = {i: FakeNode(self, i) for i in range(1, n + 1)}
        replicas = tuple(Replica(NodeId(i)) for i in self.nodes)
        self.descs: dict[int, RangeDescriptor] = {
            2: RangeDescriptor(RangeId(2), b"", b"", Epoch(), replicas)
        }
        self.leaders: dict[int, int] = {2: 1}
        self.sessions: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.stale_stamps: dict[int, int] = {}
        self.revisions: dict[int, int] = {2: 0}
        """Each range's current revision."""
        self.compacted: dict[int, int] = {2: 0}
        self.after_write: list[Callable[[], object]] = []
        self.applied = 0
        """Writes applied (each once, whatever the retries)."""
        self.meta_nodes = set(self.nodes)
        self.followers_read = False
        """Every replica of a range answers its reads (a follower read, ``read_from``)."""
        self.auto_publish = True
        self.directory: dict[int, RangeDescriptor] = {}
        self.publish()
        for key in splits:
            self.split(key)
        for i, rid in enumerate(sorted(self.descs)):
            self.leaders[rid] = leaders[i] if i < len(leaders) else (rid - 2) % n + 1
        self.publish()

    # -- what tests do to it -----------------------------------------------------------

    def __getitem__(self, node_id: int) -> FakeNode:
        return self.nodes[node_id]

    def addr_of(self, node_id: int) -> str | None:
        node = self.nodes.get(node_id)
        return node.addr if node is not None else None

    def range_of(self, key: bytes) -> RangeDescriptor:
        (desc,) = [d for d in self.descs.values() if d.contains(key)]
        return desc

    def publish(self) -> None:
        """The directory (``OP_RANGES``) now shows the ranges as they are, with each
        range's leader as its hint."""
        self.directory = {
            rid: d.with_leader(NodeId(self.leaders.get(rid, 0))) for rid, d in self.descs.items()
        }

    def _changed(self) -> None:
        if self.auto_publish:
            self.publish()

    def split(self, key: bytes) -> tuple[RangeDescriptor, RangeDescriptor]:
        """Split the range holding ``key`` at ``key``; the right half copies the
        sessions and the leader."""
        parent = self.range_of(key)
        new = max(self.descs) + 1
        left, right = parent.split_at(key, RangeId(new))
        self.descs[parent.range_id], self.descs[new] = left, right
        self.leaders[new] = self.leaders.get(parent.range_id, 0)
        self.revisions[new] = self.revisions.get(parent.range_id, 0)
        self.compacted[new] = self.compacted.get(parent.range_id, 0)
        for (rid, client), session in list(self.sessions.items()):
            if rid == parent.range_id:
                self.sessions[(new, client)] = session
        self._changed()
        return left, right

    def set_leader(self, range_id: int, node_id: int) -> None:
        """A new leader for one range (the directory's hint follows if publishing)."""
        self.leaders[range_id] = node_id
        self._changed()

    def move(self, range_id: int, to: tuple[int, ...], leader: int) -> None:
        """Put the range's replicas on nodes ``to`` only, led by ``leader``."""
        self.descs[range_id] = self.descs[range_id].with_replicas(
            tuple(Replica(NodeId(i)) for i in to)
        )
        self.leaders[range_id] = leader
        self._changed()

    def writes(self) -> list[Seen]:
        """Every ``OP_RANGE_WRITE`` any node received, in node order."""
        return [s for node in self.nodes.values() for s in node.ops(OP_RANGE_WRITE)]

    def ops(self, op: int) -> list[Seen]:
        return [s for node in self.nodes.values() for s in node.ops(op)]

    # -- serving -----------------------------------------------------------------------

    def work(self, node: FakeNode, seen: Seen) -> tuple[int, Any]:
        op, body = seen.op, seen.body
        if op == OP_STATUS:
            return OK, self.status(node.node_id)
        if op == OP_RANGES:
            return self._ranges(node, body)
        if op == OP_META and body[0] == "transfer":
            rid, version, to = int(body[1][0]), 0, int(body[1][1])
        elif op not in (OP_RANGE_WRITE, OP_RANGE_READ, OP_SPLIT):
            return ERR_BAD_REQUEST, "a sharded cluster takes requests routed by range"
        else:
            rid, version = int(body[0]), int(body[1])
        desc = self.descs.get(rid)
        if desc is None or not any(r.node_id == node.node_id for r in desc.replicas):
            known = self.directory.get(rid)
            hint = (known,) if known is not None else ()
            return ERR_WRONG_RANGE, WrongRange(RangeId(rid), Epoch(0, version), hint).to_wire()
        leader = self.leaders.get(rid, 0)
        follower_read = self.followers_read and op == OP_RANGE_READ
        if node.node_id != leader and not seen.serializable and not follower_read:
            if not leader:
                return ERR_UNAVAILABLE, f"range {rid} has no leader"
            return ERR_NOT_LEADER, [leader, self.addr_of(leader)]
        if op == OP_SPLIT:
            return self._split(desc, bytes(body[2]))
        if op == OP_META:
            if to not in desc.voters():
                return ERR_UNAVAILABLE, "transfer failed: TimeoutError()"
            self.set_leader(rid, to)
            return OK, {"leader": to}
        assert seen.command is not None
        if op == OP_RANGE_READ:
            return self._read(desc, seen.command)
        return self._write(desc, seen.command)

    def _ranges(self, node: FakeNode, body: Any) -> tuple[int, Any]:
        if node.node_id not in self.meta_nodes:
            other = min(self.meta_nodes)
            return ERR_NOT_LEADER, [other, self.addr_of(other)]
        start, end = bytes(body[0]), bytes(body[1])
        descs = sorted(
            (d for d in self.directory.values() if d.overlaps(start, end or b"")),
            key=lambda d: d.start,
        )
        nodes = {str(i): n.addr for i, n in self.nodes.items()}
        return OK, {"ranges": [d.to_wire() for d in descs], "nodes": nodes}

    def _write(self, desc: RangeDescriptor, cmd: Command) -> tuple[int, Any]:
        rid = int(desc.range_id)
        if cmd.client:
            last = self.sessions.get((rid, cmd.client))
            if last is not None and cmd.seq == last[0]:
                return OK, last[1]
            if last is not None and cmd.seq < last[0]:
                return ERR_BAD_REQUEST, "stale session sequence"
        bad = first_outside(cmd.request, desc.start, desc.end)
        if bad is not None:
            return OK, encode_result(OutOfRangeError(rid, bad, desc.start, desc.end))
        if self.stale_stamps.get(rid, 0) > 0:
            self.stale_stamps[rid] -= 1
            return OK, encode_result(StaleStampError(1, self.store.revision()))
        current, compacted = self.revisions.get(rid, 0), self.compacted.get(rid, 0)
        req = cmd.request
        if isinstance(req, CompactionRequest) and req.revision > current:
            result = encode_result(FutureRevisionError(req.revision, current))
        elif isinstance(req, CompactionRequest) and req.revision <= compacted:
            result = encode_result(CompactedError(req.revision, compacted))
        elif isinstance(req, CompactionRequest):
            self.compacted[rid] = req.revision
            result = encode_result(CompactionResponse(self.store.revision()))
        else:
            self.index += 1
            data = encode_command(Command(0, 0, req))
            before = self.store.revision()
            result = encode_result(self.store.apply([(self.index, data)])[0])
            if self.store.revision() > before:
                self.revisions[rid] = self.store.revision()
        self.applied += 1
        if cmd.client:
            self.sessions[(rid, cmd.client)] = (cmd.seq, result)
        if self.after_write:
            self.after_write.pop(0)()
        return OK, result

    def _read(self, desc: RangeDescriptor, cmd: Command) -> tuple[int, Any]:
        req = cmd.request
        assert isinstance(req, RangeRequest)
        bad = first_outside(req, desc.start, desc.end)
        if bad is not None:
            err = OutOfRangeError(int(desc.range_id), bad, desc.start, desc.end)
            return OK, encode_result(err)
        current = self.revisions.get(int(desc.range_id), 0)
        compacted = self.compacted.get(int(desc.range_id), 0)
        if req.revision > current:
            return OK, encode_result(FutureRevisionError(req.revision, current))
        if 0 < req.revision < compacted:
            return OK, encode_result(CompactedError(req.revision, compacted))
        try:
            return OK, encode_result(self.store.range(req))
        except KVError as e:
            return OK, encode_result(e)

    def _split(self, desc: RangeDescriptor, key: bytes) -> tuple[int, Any]:
        if not (desc.start < key and (not desc.end or key < desc.end)):
            return ERR_BAD_REQUEST, f"range {desc.range_id} cannot split at {key!r}"
        left, right = self.split(key)
        return OK, {"left": left.to_wire(), "right": right.to_wire()}

    def status(self, node_id: int) -> dict[str, Any]:
        meta = min(self.meta_nodes)
        ranges = [
            {
                "id": rid,
                "start": d.start.decode(errors="replace"),
                "end": d.end.decode(errors="replace"),
                "version": d.epoch.version,
                "role": "leader" if self.leaders.get(rid) == node_id else "follower",
                "leader": self.leaders.get(rid, 0),
                "term": 1,
                "applied": 10 + rid,
                "keys": self.store.range(RangeRequest(d.start or b"\x00", d.end or ALL_KEYS,
                                                      count_only=True)).count,
                "bytes": 1000 * rid,
            }
            for rid, d in sorted(self.descs.items())
            if any(r.node_id == node_id for r in d.replicas)
        ]  # fmt: skip
        return {
            "id": node_id,
            "cluster_id": "5eed",
            "role": "leader" if node_id == meta else "follower",
            "term": 1,
            "leader": meta,
            "leader_addr": self.addr_of(meta),
            "commit": 7,
            "applied": 7,
            "members": [{"id": i, "addr": n.addr, "voter": True} for i, n in self.nodes.items()],
            "addr": self.addr_of(node_id),
            "sharded": True,
            "ranges": ranges,
        }

    async def __aenter__(self) -> FakeShardedCluster:
        for node in self.nodes.values():
            await node.start()
        self.publish()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for node in self.nodes.values():
            await node.stop()
        self.store.close()
