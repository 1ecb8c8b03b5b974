"""What a node of a sharded cluster does beyond hosting groups: route, allocate, split.

Theory of operation
-------------------
A sharded cluster's group 1 is the meta range (``MetaMachine``: the directory and the
revision allocator); groups 2 and up are ranges of keys (``KVMachine``). Founding the
cluster (``bootstrap``) writes, identically on every founding node, a directory with
the founding nodes registered and range 2 covering the whole keyspace on all of them,
and the Raft state of groups 1 and 2. ``Shards`` is the node's part that is about
ranges, not about Raft:

* **Routing.** ``OP_RANGE_WRITE`` and ``OP_RANGE_READ`` go to the replica of the range
  they name (ERR_WRONG_RANGE if this node holds none); the replica checks the keys
  against its bounds when it applies or serves them (``OutOfRangeError``).
  ``OP_RANGES`` is answered from this node's copy of the directory (its meta replica):
  possibly a little stale, which the errors above correct.
* **The meta range's services.** ``meta_call`` runs one meta entry (a directory command
  or a revision allocation) through the meta leader: proposed here if this node leads
  the meta range, else sent to its leader with ``OP_META`` and retried across leader
  changes until a deadline. ``allocate_revisions`` batches every range's requests of a
  moment into one allocation entry.
* **Splits.** ``split`` (from ``OP_SPLIT`` at the range's leader) first records the
  split in the directory (a compare-and-swap on the range's epoch, which also hands
  out the new range's id), then proposes it in the range's own log as an admin entry.
  Every replica that applies it (``apply_admin``) writes the new range's Raft state (a
  bootstrap at index 1, the same voters), cuts the engine's range in two (no data is
  copied: only the in-memory key index is cut) and starts the new group's replica;
  the node that led the parent campaigns for the child at once. If the leader fails
  between the two steps, the directory is ahead of the range: the range's next leader
  sees it (``_reconcile``, every second) and proposes the split the directory recorded.
* **Heartbeats and placement.** Every second each node reports to the meta range
  (``shard.Heartbeat``) that it is alive, with the stats of the ranges it leads: keys,
  write rate (smoothed over about five seconds), and the middle key of its index (stats
  that did not change since they were last sent go again only every 30 s). A
  range's leader also records itself as the range's leader hint, so clients find
  leaders from ``OP_RANGES`` without a redirect. The meta range's leader runs the
  planner (``shard.plan``) every two seconds on what the directory holds and carries
  out what it returns, one operation per range at a time: a split (at the range's
  leader, by ``OP_SPLIT``), a leader transfer (``OP_META`` ``transfer`` to the range's
  leader), or a replica move (add a learner, promote, remove), which is recorded in the
  directory and carried out by every node converging to it (``_moves``). Heartbeat
  times are wall-clock seconds (``time.time()``) of the reporting node, compared with
  the meta leader's.

This module must never apply an entry itself, touch the Raft core beyond proposing and
campaigning, or answer a write before the replica applied it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

from quorumkv.consensus import GroupId, NodeId, Role, bootstrap_state
from quorumkv.errors import ServerError
from quorumkv.kv import ADMIN_PREFIX, Engine
from quorumkv.net import (
    ERR_BAD_REQUEST,
    ERR_MEMBERSHIP,
    ERR_PROTOCOL,
    ERR_TIMEOUT,
    ERR_UNAVAILABLE,
    ERR_WRONG_RANGE,
    OK,
    OP_META,
    OP_NODE_STATE,
    OP_RANGE_READ,
    OP_RANGE_WRITE,
    OP_RANGES,
    OP_SPLIT,
    pack,
    unpack,
)
from quorumkv.shard import (
    KEYSPACE_END,
    REMOVED_REFUSAL,
    Bootstrap,
    Directory,
    Epoch,
    Heartbeat,
    NodeInfo,
    NodeState,
    PlacementConfig,
    RangeDescriptor,
    RangeId,
    RangeStats,
    RegisterNode,
    SetLeaderHint,
    SetNodeState,
    ShardCommandError,
    ShardError,
    Split,
    SplitRange,
    StaleEpochError,
    TransferLeader,
    WrongRange,
    decode_command,
    encode_command,
    plan,
)
from quorumkv.storage import NodeStorage

from ._machines import KVMachine, MetaMachine, alloc_entry, encode_desc
from ._moves import Mover
from ._rpc import RpcConn

if TYPE_CHECKING:
    from ._conn import ClientConn
    from ._node import Node
    from ._replica import Replica

log = logging.getLogger("quorumkv.server")

META = GroupId(1)
FIRST_RANGE = GroupId(2)
_SPLIT = "split"
_META_DEADLINE_S = 5.0
_HOUSEKEEPING_S = 1.0
_PLAN_EVERY = 2
"""Housekeeping rounds between two placement rounds of the meta leader."""
_STATS_REFRESH_S = 30.0
"""Unchanged stats of a led range are sent again this often."""
_RATE_ALPHA = 0.2
"""Weight of the last second in a range's smoothed write rate (about a 5 s average)."""


def bootstrap(storage: NodeStorage, engine: Engine, members: dict[int, str]) -> None:
    """Found a sharded cluster on this node (every founding node does the same): the
    engine's state first, then the Raft state of both groups, so a crash in between
    leaves a node that simply founds again."""
    d = Directory(next_range_id=FIRST_RANGE)
    for nid, addr in sorted(members.items()):
        d.apply(RegisterNode(NodeId(nid), addr, 0, 0.0))
    desc = d.apply(Bootstrap(RangeId(FIRST_RANGE), tuple(NodeId(n) for n in sorted(members))))
    engine.put_state(META, 1, MetaMachine.initial_state(d))
    if FIRST_RANGE not in engine.ranges():
        engine.create_range(
            FIRST_RANGE, b"", KEYSPACE_END, applied=1, desc=encode_desc(desc), stamped=True
        )
    data = members_blob(members)
    for group in (META, FIRST_RANGE):
        storage.bootstrap(group, bootstrap_state(list(members), data=data))


def members_blob(members: dict[int, str]) -> bytes:
    """What a group's Raft snapshots carry: the member addresses."""
    return pack({"members": {str(k): v for k, v in members.items()}})


def machine_for(engine: Engine, group: GroupId) -> KVMachine | MetaMachine | None:
    """The state machine of a group found in the WAL; None if the engine holds none
    (a split's child whose engine half did not commit: the parent applies it again)."""
    if group == META:
        return MetaMachine(engine, int(META))
    if int(group) in engine.ranges():
        return KVMachine(engine, engine.range(int(group)))
    return None


class FutureConn:
    """Stands in for a client connection when the node proposes something itself: the
    replica's answer resolves the future registered under the request id."""

    closed = False
    transport = None

    def __init__(self) -> None:
        self.futures: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self._ids = itertools.count(1)

    def new(self) -> tuple[int, asyncio.Future[tuple[int, Any]]]:
        req_id = next(self._ids)
        fut: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self.futures[req_id] = fut
        return req_id, fut

    def reply(self, req_id: Any, code: int, body: Any) -> None:
        fut = self.futures.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_result((code, body))

    def flush(self) -> int:
        return 0


def _replication_factor(d: Directory) -> int:
    """Replicas per range: 3, or every node that is not removed when there are fewer."""
    kept = sum(1 for i in d.nodes.values() if i.state is not NodeState.REMOVED)
    return max(1, min(3, kept))


def result_to_wire(res: Any) -> list[Any]:
    """A meta entry's result as msgpack (for ``OP_META`` answers)."""
    if isinstance(res, int):
        return ["rev", res]
    if isinstance(res, RangeDescriptor):
        return ["desc", res.to_wire()]
    if isinstance(res, tuple) and len(res) == 2 and isinstance(res[0], RangeDescriptor):
        return ["split", res[0].to_wire(), res[1].to_wire()]
    if isinstance(res, StaleEpochError):
        return ["stale", str(res)]
    if isinstance(res, ShardError):
        return ["error", str(res)]
    if isinstance(res, NodeInfo):
        return ["node", res.to_wire()]
    return ["ok"]


def result_from_wire(doc: Any) -> Any:
    kind = doc[0]
    if kind == "rev":
        return int(doc[1])
    if kind == "desc":
        return RangeDescriptor.from_wire(doc[1])
    if kind == "split":
        return RangeDescriptor.from_wire(doc[1]), RangeDescriptor.from_wire(doc[2])
    if kind == "stale":
        return _StaleEpoch(doc[1])
    if kind == "error":
        return ShardCommandError(doc[1])
    if kind == "node":
        return NodeInfo.from_wire(doc[1])
    return None


class _StaleEpoch(ShardError):
    """A ``StaleEpochError`` that crossed the wire (its fields did not)."""


class MetaUnavailable(ServerError):
    """The meta range could not run an entry before the deadline."""


class RangeBusy(MetaUnavailable):
    """The range is in the middle of another split: nothing was done; retry."""


class Shards:
    """A sharded node's routing, meta services and splits."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.conn = FutureConn()
        self.rpcs: dict[int, RpcConn] = {}
        self._alloc_pending: list[tuple[int, asyncio.Future[int]]] = []
        self._alloc_running = False
        self._busy: set[tuple[str, int]] = set()
        self._task: asyncio.Task[None] | None = None
        self.splits = 0
        self._rounds = 0
        self._writes: dict[int, tuple[int, float]] = {}
        """Per led range: applied writes at the last heartbeat, and the smoothed rate."""
        self._sent: dict[int, tuple[int, RangeStats, float]] = {}
        self._told_removed = False
        """Per led range: applied writes when its stats were made, the stats, and when
        they were last sent (monotonic)."""
        self.mover = Mover(self)

    def start(self) -> None:
        self._task = self.node.loop.create_task(self._housekeeping())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for rpc in self.rpcs.values():
            rpc.close()
        for _, fut in self._alloc_pending:
            if not fut.done():
                fut.set_exception(MetaUnavailable("the node is stopping"))
        self._alloc_pending.clear()

    # -- helpers ---------------------------------------------------------------------

    @property
    def meta(self) -> Replica | None:
        return self.node.replicas.get(META)

    @property
    def directory(self) -> Directory | None:
        """This node's copy of the directory (None until a joining node's meta replica
        has its first snapshot)."""
        meta = self.meta
        if meta is None or not isinstance(meta.sm, MetaMachine) or meta.sm.is_pending:
            return None
        return meta.sm.directory

    def spawn(self, key: tuple[str, int], coro: Any) -> None:
        """Run ``coro`` unless one with the same key runs already."""
        if key in self._busy:
            coro.close()
            return
        self._busy.add(key)

        async def run() -> None:
            try:
                await coro
            except Exception as e:
                log.info("node %d: %s %d did not complete: %s", self.node.node_id, *key, e)
            finally:
                self._busy.discard(key)

        self.node.loop.create_task(run())

    # -- client requests -------------------------------------------------------------

    def request(self, conn: ClientConn, req_id: Any, op: int, body: Any) -> None:
        node = self.node
        if op == OP_RANGE_WRITE:
            rid, _version, cmd = body
            r = self._range(conn, req_id, rid, _version)
            if r is not None:
                r.write(conn, req_id, cmd)
        elif op == OP_RANGE_READ:
            rid, _version, cmd, serializable = body
            r = self._range(conn, req_id, rid, _version)
            if r is not None:
                r.read(conn, req_id, [cmd, serializable])
        elif op == OP_RANGES:
            self._ranges(conn, req_id, body)
        elif op == OP_SPLIT:
            node.loop.create_task(self._split_request(conn, req_id, body))
        elif op == OP_META:
            node.loop.create_task(self._meta_request(conn, req_id, body))
        elif op == OP_NODE_STATE:
            node.loop.create_task(self._node_state(conn, req_id, body))
        else:
            node.reply_error(conn, req_id, ERR_BAD_REQUEST, f"operation {op} is not a range op")

    def _range(self, conn: ClientConn, req_id: Any, rid: Any, version: Any) -> Replica | None:
        r = self.node.replicas.get(GroupId(int(rid))) if int(rid) != META else None
        if r is not None and isinstance(r.sm, KVMachine) and r.sm.is_pending:
            r = None  # hosted, but its snapshot has not come yet: it holds nothing
        if r is None:
            d = self.directory
            known = d.get(RangeId(int(rid))) if d is not None else None
            self._wrong_range(conn, req_id, int(rid), version, known)
        return r

    def _wrong_range(
        self, conn: ClientConn, req_id: Any, rid: int, version: Any, hint: RangeDescriptor | None
    ) -> None:
        """Answer ERR_WRONG_RANGE for a request routed to range ``rid`` at ``version``,
        with ``hint`` (what this node knows of that range now) if any."""
        epoch = Epoch(0, max(0, int(version)))
        wrong = WrongRange(RangeId(rid), epoch, (hint,) if hint is not None else ())
        self.node.reply_error(conn, req_id, ERR_WRONG_RANGE, wrong.to_wire())

    def rpc(self, node_id: int) -> RpcConn | None:
        """The connection to node ``node_id`` (made, or re-aimed at its current address);
        None if its address is unknown."""
        addr = self.node.members.get(node_id)
        if addr is None:
            return None
        rpc = self.rpcs.get(node_id)
        if rpc is None or rpc.addr != addr:
            if rpc is not None:
                rpc.close()
            rpc = self.rpcs[node_id] = RpcConn(addr)
        return rpc

    def _ranges(self, conn: ClientConn, req_id: Any, body: Any) -> None:
        start, end = body
        d = self.directory
        if d is None:
            self.node.reply_error(
                conn, req_id, ERR_UNAVAILABLE, f"node {self.node.node_id} has no directory"
            )
            return
        descs = d.overlapping(bytes(start), bytes(end))
        nodes = {str(n): info.address for n, info in d.nodes.items()}
        for n, addr in self.node.members.items():
            nodes.setdefault(str(n), addr)
        states = {str(n): info.state.value for n, info in d.nodes.items()}
        conn.reply(
            req_id, OK, {"ranges": [x.to_wire() for x in descs], "nodes": nodes, "states": states}
        )

    async def _node_state(self, conn: ClientConn, req_id: Any, body: Any) -> None:
        """An operator drains a node, brings it back up, or removes it for good (the
        directory refuses to remove a node that still holds replicas)."""
        try:
            node_id, state = body
            cmd = SetNodeState(NodeId(int(node_id)), NodeState(str(state)))
        except (TypeError, ValueError, ShardError) as e:
            self.node.reply_error(conn, req_id, ERR_BAD_REQUEST, f"bad node state request: {e}")
            return
        d = self.directory
        if cmd.state is NodeState.DRAINING and d is not None and cmd.node_id in d.nodes:
            factor = _replication_factor(d)
            up = [n for n, i in d.nodes.items() if i.state is NodeState.UP and n != cmd.node_id]
            if len(up) < factor:
                why = (
                    f"draining node {cmd.node_id} would never finish: each range keeps "
                    f"{factor} replicas on distinct nodes that are up, and only {len(up)} "
                    "other nodes are up; add a node first"
                )
                self.node.reply_error(conn, req_id, ERR_MEMBERSHIP, why)
                self.node.flush_clients()
                return
        try:
            res = await self.meta_call(encode_command(cmd))
        except MetaUnavailable as e:
            self.node.reply_error(conn, req_id, ERR_UNAVAILABLE, str(e))
        else:
            if isinstance(res, ShardError):
                self.node.reply_error(conn, req_id, ERR_MEMBERSHIP, str(res))
            elif isinstance(res, NodeInfo):
                conn.reply(req_id, OK, res.to_wire())
            else:
                self.node.reply_error(conn, req_id, ERR_PROTOCOL, f"unexpected result {res!r}")
        self.node.flush_clients()

    async def _meta_request(self, conn: ClientConn, req_id: Any, body: Any) -> None:
        """Another node's meta entry: run it if this node leads the meta range."""
        meta = self.meta
        try:
            kind, data = body
            if kind == "transfer":
                rid, target = int(data[0]), int(data[1])
            elif kind == "conf":
                rid = int(data)
            elif kind == "register":
                if not isinstance(data, bytes) or not isinstance(
                    decode_command(data), RegisterNode
                ):
                    raise ValueError("a registration carries a RegisterNode command")
            elif kind != "propose" or not isinstance(data, bytes):
                raise ValueError(f"unknown meta request {kind!r}")
        except (TypeError, ValueError, IndexError, ShardError) as e:
            self.node.reply_error(conn, req_id, ERR_BAD_REQUEST, f"bad meta request: {e}")
            return
        if kind == "transfer":
            await self._transfer_request(conn, req_id, rid, target)
            return
        if kind == "conf":  # a node asks whether this range's group still has it
            r = self._range(conn, req_id, rid, 0)
            if r is not None:
                if r.raw.raft.role is not Role.LEADER:
                    r.not_leader(conn, req_id)
                else:
                    conf = r.raw.raft.trk.conf
                    voters = sorted(int(v) for v in conf.voters | conf.voters_outgoing)
                    learners = sorted(int(v) for v in conf.learners | conf.learners_next)
                    conn.reply(req_id, OK, [voters, learners])
            self.node.flush_clients()
            return
        if kind == "register":  # a joining node, which knows no meta leader yet
            try:
                res = await self.meta_call(data)
            except MetaUnavailable as e:
                self.node.reply_error(conn, req_id, ERR_UNAVAILABLE, str(e))
            else:
                if isinstance(res, ShardError):
                    self.node.reply_error(conn, req_id, ERR_BAD_REQUEST, str(res))
                else:
                    conn.reply(req_id, OK, None)
            self.node.flush_clients()
            return
        if meta is None or meta.raw.raft.role is not Role.LEADER:
            if meta is None:
                self.node.reply_error(conn, req_id, ERR_UNAVAILABLE, "no meta replica here")
            else:
                meta.not_leader(conn, req_id)
            return
        code, res = await self._propose(meta, data)
        conn.reply(req_id, code, result_to_wire(res) if code == OK else res)
        self.node.flush_clients()

    async def _transfer_request(self, conn: ClientConn, req_id: Any, rid: int, to: int) -> None:
        """The placement driver asks this node to hand range ``rid``'s leadership to
        node ``to``."""
        r = self._range(conn, req_id, rid, 0)
        if r is None:
            return
        if r.raw.raft.role is not Role.LEADER:
            r.not_leader(conn, req_id)
        else:
            try:
                conn.reply(req_id, OK, await r.transfer(to))
            except Exception as e:
                self.node.reply_error(conn, req_id, ERR_UNAVAILABLE, f"transfer failed: {e!r}")
        self.node.flush_clients()

    # -- the meta range's services -----------------------------------------------------

    async def _propose(self, r: Replica, data: bytes, admin: bool = False) -> tuple[int, Any]:
        req_id, fut = self.conn.new()
        if admin:
            r.propose_admin(self.conn, req_id, data)  # type: ignore[arg-type]
        else:
            r.write(self.conn, req_id, data)  # type: ignore[arg-type]
        try:
            return await asyncio.wait_for(fut, self.node.cfg.request_timeout_s)
        except TimeoutError:
            self.conn.futures.pop(req_id, None)
            return ERR_TIMEOUT, "no answer in time"

    async def meta_call(self, data: bytes, deadline_s: float = _META_DEADLINE_S) -> Any:
        """Run one meta entry through the meta leader; its result (a directory command's
        ``ShardError`` is returned, not raised). Raises ``MetaUnavailable``."""
        node = self.node
        deadline = time.monotonic() + deadline_s
        why = "no meta leader"
        pause = node.cfg.tick_ms / 1000
        while time.monotonic() < deadline:
            meta = self.meta
            if meta is None:
                raise MetaUnavailable(f"node {node.node_id} hosts no meta replica")
            lead = int(meta.raw.raft.lead)
            try:
                if meta.raw.raft.role is Role.LEADER:
                    code, res = await self._propose(meta, data)
                elif lead and (rpc := self.rpc(lead)) is not None:
                    code, res = await rpc.call(OP_META, ["propose", data])
                    if code == OK:
                        res = result_from_wire(res)
                else:
                    code, res = ERR_UNAVAILABLE, why
            except (OSError, ConnectionError, TimeoutError) as e:
                code, res = ERR_UNAVAILABLE, f"meta leader {lead}: {e!r}"
            if code == OK:
                return res
            why = str(res)
            await asyncio.sleep(pause)
        raise MetaUnavailable(f"the meta range did not answer in {deadline_s:g} s: {why}")

    def allocate_revisions(self, count: int) -> asyncio.Future[int]:
        """The first of ``count`` fresh revisions, from the meta range's allocator. The
        requests of a moment share one allocation entry."""
        fut: asyncio.Future[int] = self.node.loop.create_future()
        self._alloc_pending.append((count, fut))
        if not self._alloc_running:
            self._alloc_running = True
            self.node.loop.create_task(self._allocate())
        return fut

    async def _allocate(self) -> None:
        try:
            while self._alloc_pending:
                batch, self._alloc_pending = self._alloc_pending, []
                total = sum(n for n, _ in batch)
                try:
                    first = await self.meta_call(alloc_entry(total))
                except Exception as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(MetaUnavailable(f"no revisions: {e}"))
                    continue
                for n, fut in batch:
                    if not fut.done():
                        fut.set_result(first)
                    first += n
        finally:
            self._alloc_running = False

    # -- splits ----------------------------------------------------------------------

    async def _split_request(self, conn: ClientConn, req_id: Any, body: Any) -> None:
        node = self.node
        try:
            rid, version, key = body
            key = bytes(key)
        except (TypeError, ValueError):
            node.reply_error(conn, req_id, ERR_BAD_REQUEST, "a split is [range_id, version, key]")
            return
        r = self._range(conn, req_id, rid, version)
        if r is None:
            return
        desc = r.sm.desc
        if desc is not None and key != desc.start and not desc.contains(key):
            # Routed by a stale cache (the range split since): say where to go.
            self._wrong_range(conn, req_id, desc.range_id, version, desc)
            node.flush_clients()
            return
        try:
            if r.raw.raft.role is not Role.LEADER:
                r.not_leader(conn, req_id)
                return
            left, right = await self.split(r, key)
            conn.reply(req_id, OK, {"left": left.to_wire(), "right": right.to_wire()})
        except ShardCommandError as e:
            node.reply_error(conn, req_id, ERR_BAD_REQUEST, str(e))
        except (MetaUnavailable, ShardError) as e:
            node.reply_error(conn, req_id, ERR_UNAVAILABLE, str(e))
        finally:
            node.flush_clients()

    async def split(self, r: Replica, key: bytes) -> tuple[RangeDescriptor, RangeDescriptor]:
        """Split the range ``r`` leads at ``key``: directory first, then the range's log."""
        desc = r.sm.desc
        assert desc is not None
        desc.split_at(key, RangeId(desc.range_id + 1))  # checks the key; raises if bad
        busy = ("split", int(desc.range_id))
        if busy in self._busy:
            raise RangeBusy(f"range {desc.range_id} is splitting already; retry")
        self._busy.add(busy)  # the reconciler leaves this range alone meanwhile
        try:
            return await self._split(r, desc, key)
        finally:
            self._busy.discard(busy)

    async def _split(
        self, r: Replica, desc: RangeDescriptor, key: bytes
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        # The replica's descriptor changes only with splits (its version); replica
        # moves change the directory's conf_ver, which the group learns from the conf
        # changes it applies (``r.conf_ver``). Expecting the descriptor's own conf_ver
        # made every split of a range that had moved a StaleEpochError, for good. A
        # group behind the directory (a move half done) still fails the compare, and
        # the split is tried again later.
        epoch = Epoch(max(desc.epoch.conf_ver, r.conf_ver), desc.epoch.version)
        res = await self.meta_call(encode_command(SplitRange(desc.range_id, epoch, key)))
        if isinstance(res, ShardError):
            d = self.directory
            now = d.get(desc.range_id) if d is not None else None
            if now is not None and now.end == key and now.epoch.version == desc.epoch.version + 1:
                # Our own earlier attempt got through (its answer was lost): finish it.
                res = (now, d.lookup(key))  # type: ignore[union-attr]
            else:
                raise res
        left, right = res
        return await self._apply_split(r, left, right)

    async def _apply_split(
        self, r: Replica, left: RangeDescriptor, right: RangeDescriptor
    ) -> tuple[RangeDescriptor, RangeDescriptor]:
        data = ADMIN_PREFIX + pack([_SPLIT, left.to_wire(), right.to_wire()])
        code, res = await self._propose(r, data, admin=True)
        if code != OK:
            raise MetaUnavailable(f"range {left.range_id}: the split was not applied: {res}")
        if isinstance(res, ShardError):
            raise res
        return left, right

    def apply_admin(self, r: Replica, index: int, data: bytes) -> Any:
        """Apply an admin entry of range ``r`` (every replica does); the proposer's
        result. Always moves the range's applied index to ``index``."""
        try:
            doc = unpack(data[len(ADMIN_PREFIX) :])
            kind = doc[0]
            if kind != _SPLIT:
                raise ShardCommandError(f"unknown admin entry {kind!r}")
            left, right = RangeDescriptor.from_wire(doc[1]), RangeDescriptor.from_wire(doc[2])
        except Exception as e:
            r.sm.apply([(index, b"")])
            return ShardCommandError(f"undecodable admin entry at {index}: {e!r}")
        cur = r.sm.desc
        if (
            cur is not None
            and cur.range_id == left.range_id
            and cur.epoch.version == left.epoch.version
            and (cur.start, cur.end) == (left.start, left.end)
        ):
            # The same split, proposed twice (by its requester and by the reconciler
            # that saw the directory ahead): the second is a no-op that reports success.
            r.sm.apply([(index, b"")])
            return (left, right)
        if (
            cur is None
            or left.range_id != cur.range_id
            or left.epoch.version != cur.epoch.version + 1
            or left.start != cur.start
            or right.end != cur.end
            or left.end != right.start
        ):
            r.sm.apply([(index, b"")])
            return ShardCommandError(
                f"range {r.group}: a split of another epoch or other bounds was not applied"
            )
        node = self.node
        child = GroupId(right.range_id)
        if child not in node.storage.groups():
            node.storage.bootstrap(
                child,
                bootstrap_state(
                    [int(v) for v in right.voters()],
                    data=members_blob(node.members),
                    learners=[int(v) for v in right.learners()],
                ),
            )
        assert isinstance(r.sm, KVMachine)
        rs = r.sm.rs.split(
            index,
            right.start,
            int(child),
            desc_left=encode_desc(left),
            desc_right=encode_desc(right),
            child_applied=1,
        )
        replica = node.add_replica(child, KVMachine(r.sm.engine, rs))
        self.splits += 1
        node.metrics.splits.inc()
        if r.raw.raft.role is Role.LEADER:
            replica.raw.campaign()  # the parent's leader leads the child too, at once
        log.info("node %d: range %d split at %r: range %d is [%r, %r)",
                 node.node_id, r.group, right.start, child, right.start, right.end)  # fmt: skip
        return (left, right)

    # -- housekeeping ----------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            if self.node.stopping:
                return
            self._rounds += 1
            try:
                removed = self._removed()
                if removed and self._may_retire():
                    return
                self._reconcile()
                self.mover.step(self.directory, self.node.cfg.down_after_s)
                if removed:
                    continue  # hand over and collect what is left; report nothing
                self._heartbeat()
                if self._rounds % _PLAN_EVERY == 0:
                    self._place()
            except Exception:
                log.exception("node %d: sharding housekeeping failed", self.node.node_id)

    def _removed(self) -> bool:
        """Whether this node was removed: its copy of the directory says so, or the
        meta range refused its heartbeat for that reason."""
        if self._told_removed:
            return True
        d = self.directory
        info = d.nodes.get(NodeId(self.node.node_id)) if d is not None else None
        return info is not None and info.state is NodeState.REMOVED

    def _may_retire(self) -> bool:
        """A removed node retires (stops) only once no Raft group still counts it: the
        directory lists no replica here, but the groups' own configurations follow the
        directory a step at a time, and a node that stopped while still a voter would
        leave its groups one failure from unavailable. So: no replica here that is not
        pending (each goes once it applied its removal or its leader confirmed it), and
        no vote in the meta range (a drained node's is demoted to a learner)."""
        node = self.node
        me = NodeId(node.node_id)
        for group, r in node.replicas.items():
            if group == META:
                conf = r.raw.raft.trk.conf
                if me in conf.voters or me in conf.voters_outgoing:
                    return False
            elif not (isinstance(r.sm, KVMachine) and r.sm.is_pending):
                return False
        node.retired = f"node {node.node_id} was removed from the cluster"
        return True

    def _heartbeat(self) -> None:
        """Tell the meta range this node is alive, with the stats of its led ranges."""
        node = self.node
        d = self.directory
        if d is None or NodeId(node.node_id) not in d.nodes:
            return  # a joining node, not registered yet
        stats = []
        fresh: dict[int, tuple[int, RangeStats, float]] = {}
        now = time.monotonic()
        for group, r in list(node.replicas.items()):
            if group == META or not isinstance(r.sm, KVMachine):
                continue
            desc = r.sm.desc
            if r.raw.raft.role is not Role.LEADER or desc is None:
                self._writes.pop(int(group), None)
                self._sent.pop(int(group), None)
                continue
            known = d.get(desc.range_id)
            epoch, pending = desc.epoch, tuple[NodeId, ...]()
            if known is not None and known.epoch.version == desc.epoch.version:
                # Reported at the directory's epoch, so the planner trusts ``pending``:
                # the learners this leader does not replicate to with a short lag yet.
                epoch = known.epoch
                pending = tuple(n for n in known.learners() if not r.caught_up(int(n)))
            count = r.applied_writes
            last, rate = self._writes.get(int(group), (count, 0.0))
            rate += _RATE_ALPHA * ((count - last) / _HOUSEKEEPING_S - rate)
            self._writes[int(group)] = (count, rate)
            prev = self._sent.get(int(group))
            if (
                prev is not None
                and prev[0] == count
                and prev[1].epoch == epoch
                and prev[1].pending == pending
                and prev[1].write_ops == round(rate, 1)
            ):
                st = prev[1]  # nothing applied since: size, keys and middle key as they were
            else:
                keys = r.sm.keys()
                st = RangeStats(
                    desc.range_id,
                    epoch,
                    NodeId(node.node_id),
                    size_bytes=r.sm.size_bytes(),
                    keys=keys,
                    write_ops=round(rate, 1),
                    middle_key=r.sm.middle_key() if keys > 1 else None,
                    pending=pending,
                )
            # The directory keeps each range's last stats: unchanged ones are sent again
            # only every ``_STATS_REFRESH_S`` (a thousand quiet ranges cost the meta range
            # a thousand stats to apply every second otherwise).
            # A stats record counts as sent once the meta range took the heartbeat.
            if prev is None or st != prev[1] or now - prev[2] >= _STATS_REFRESH_S:
                stats.append(st)
                fresh[int(group)] = (count, st, now)
            else:
                self._sent[int(group)] = (count, st, prev[2])
        beat = Heartbeat(NodeId(node.node_id), time.time(), tuple(stats))
        self.spawn(("heartbeat", 0), self._beat(beat, fresh))

    async def _beat(self, beat: Heartbeat, fresh: dict[int, tuple[int, RangeStats, float]]) -> None:
        res = await self.meta_call(encode_command(beat))
        if isinstance(res, Exception):
            if REMOVED_REFUSAL in str(res):
                # Removed while it was down or cut off: its directory copy may never
                # say so (its meta learner may be gone), the meta range's refusal does.
                self._told_removed = True
            return
        self._sent.update(fresh)

    def _place(self) -> None:
        """The meta leader's placement round: plan, then carry out splits and leader
        transfers (one operation per range at a time)."""
        node = self.node
        meta, d = self.meta, self.directory
        if meta is None or d is None or meta.raw.raft.role is not Role.LEADER:
            return
        factor = _replication_factor(d)
        cfg = PlacementConfig(
            replication_factor=factor,
            split_keys=node.cfg.split_keys,
            split_bytes=node.cfg.split_bytes,
            hot_write_ops=node.cfg.hot_write_ops,
            down_after=node.cfg.down_after_s,
        )
        busy = {RangeId(k[1]) for k in self._busy if k[0] in ("place", "split")}
        for op in plan(d, d.stats, time.time(), cfg, busy):
            desc = d.get(op.range_id)
            if desc is None:
                continue
            if isinstance(op, Split):
                body = [int(op.range_id), op.epoch.version, op.key]
                coro = self._at_leader(desc, OP_SPLIT, body, op.describe())
            elif isinstance(op, TransferLeader):
                body = ["transfer", [int(op.range_id), int(op.to)]]
                coro = self._at_leader(desc, OP_META, body, op.describe())
            else:
                self.mover.carry_out(op)  # a replica move: recorded in the directory
                continue
            self.spawn(("place", int(op.range_id)), coro)

    async def _at_leader(self, desc: RangeDescriptor, op: int, body: Any, what: str) -> None:
        """Send a placement operation to the range's leader (as the directory knows it)."""
        node = self.node
        lead = int(desc.leader)
        if not lead:
            return
        log.info("node %d (placement): %s", node.node_id, what)
        if lead == node.node_id:
            conn = FutureConn()
            req_id, fut = conn.new()
            self.request(conn, req_id, op, body)  # type: ignore[arg-type]
            code, res = await asyncio.wait_for(fut, 30.0)
        else:
            rpc = self.rpc(lead)
            if rpc is None:
                return
            code, res = await rpc.call(op, body, timeout=30.0)
        if code != OK:
            log.info("node %d (placement): %s did not happen: %s", node.node_id, what, res)

    def _reconcile(self) -> None:
        """For every range this node leads: record the leader in the directory, and
        finish a split the directory recorded but the range never applied."""
        node = self.node
        d = self.directory
        if d is None or node.stopping:
            return
        for group, r in list(node.replicas.items()):
            if group == META or r.raw.raft.role is not Role.LEADER:
                continue
            desc = r.sm.desc
            known = d.get(RangeId(int(group)))
            if desc is None or known is None:
                continue
            if known.leader != node.node_id and known.epoch.version == desc.epoch.version:
                cmd = SetLeaderHint(RangeId(int(group)), NodeId(node.node_id))
                self.spawn(("leader hint", int(group)), self.meta_call(encode_command(cmd)))
            if (
                known.epoch.version == desc.epoch.version + 1
                and known.start == desc.start
                and known.end != desc.end
            ):
                right = d.lookup(known.end)
                if right.start == known.end and right.end == desc.end:
                    log.info("node %d: range %d finishes the split the directory recorded",
                             node.node_id, group)  # fmt: skip
                    self.spawn(("split", int(group)), self._apply_split(r, known, right))
