"""The environment behind the Raft scenario scripts in ``testdata/``.

Each script drives a few ``RawNode``s by hand: nothing happens unless a command says so.
Messages wait in a mailbox until delivered; Ready batches are processed only on request,
persisted to a ``MemDisk`` (synced at once unless ``nosync``) and applied to a list.

Commands (arguments in brackets are optional):

    add-nodes N [voters=(1,2,3)] [learners=(4)] [prevote=true] [checkquorum=true]
              [lease=false] [inflight=256] [maxbytes=1048576] [election=10] [heartbeat=1]
        create nodes 1..N (or more, numbered on); founders get the voters/learners
        configuration, the rest start empty and must be added by a conf change
    campaign ID                      start an election on ID
    elect ID                         campaign ID and stabilize quietly (election.txt
                                     shows the messages); prints raft-state
    tick-election ID [n=1]           tick ID n election timeouts (2 * election_tick)
    tick-heartbeat ID [n=1]          tick ID n heartbeat intervals
    tick ID [n=1]                    tick ID n times
    propose ID DATA                  propose DATA on ID
    propose-conf-change ID [auto=false]   input: changes, e.g. "v4 l5 r2"; empty: leave joint
    read-index ID CTX                ask ID for a linearizable read
    transfer-leader FROM TO          ask FROM to hand leadership to TO
    compact ID INDEX                 snapshot ID's state machine at INDEX, compact the log
    process-ready ID...              take, print, persist and apply each node's Ready
    deliver-msgs [ID...] [drop=(IDS)]   deliver queued messages (to ID...), dropping those to drop
    stabilize [ID...] [quiet]        process and deliver until nothing is left to do;
                                     quiet: print only raft-state (for setup steps)
    nosync ID                        stop fsyncing ID's writes (a driver breaking the
                                     contract, or a disk that lies about fsync)
    crash ID                         lose ID's unsynced writes and its memory
    restart ID                       restart ID from its disk
    partition 1,2 3                  drop messages between the sides until heal
    heal
    status ID                        ID's role, term, lead, commit, applied, progress,
                                     and a leader transfer in progress
    raft-log ID                      ID's log
    raft-state                       one line per node
    applied ID                       the entries ID's state machine applied
    inject ID type=APP from=1 to=2 [group=1] [term=0] [logterm=0] [index=0] [commit=0]
           [reject=false] [hint=0] [entries=(2/3, 2/4)] [snap=2/5] [snapvoters=(1,2,3)]
           [ctx=abc]
        step a hand-built message into ID (``to`` may name another node); prints the
        error it raised, and whether ID's state changed
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from datadriven import TestCase
from quorumkv.consensus import (
    Change,
    ChangeType,
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    GroupId,
    Index,
    Message,
    MessageType,
    NodeId,
    RaftState,
    RawNode,
    ReadOnlyOption,
    Snapshot,
    SnapshotMeta,
    Term,
    bootstrap_state,
    describe_conf_state,
    describe_entries,
    describe_message,
    describe_ready,
)
from quorumkv.sim._disk import MemDisk


@dataclass
class Node:
    cfg: Config
    raw: RawNode
    disk: MemDisk
    rng: random.Random
    applied: list[tuple[int, str]] = field(default_factory=list)
    """(index, data) of each non-empty normal entry the state machine applied."""
    sync: bool = True

    def restore_applied(self, snap: Snapshot) -> None:
        idx = snap.meta.index
        self.applied = [(idx, s) for s in snap.data.decode().split(",") if s]


class Env:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.mailbox: list[Message] = []
        self.partition: list[set[int]] = []
        self.crashed: dict[int, Node] = {}

    # -- helpers --------------------------------------------------------------------

    def _cut(self, a: int, b: int) -> bool:
        if not self.partition:
            return False
        side = {n: i for i, grp in enumerate(self.partition) for n in grp}
        return a in side and b in side and side[a] != side[b]

    def _node(self, c: TestCase, pos: int = 0) -> Node:
        return self.nodes[int(c.args[pos].key)]

    def _ids(self, c: TestCase) -> list[int]:
        ids = [int(a.key) for a in c.args if not a.vals and a.key.isdigit()]
        return ids or sorted(self.nodes)

    def _start(self, nid: int, cfg: Config, disk: MemDisk, state: RaftState) -> Node:
        rng = random.Random(nid)
        node = Node(cfg, RawNode(cfg, state, rng), disk, rng)
        self.nodes[nid] = node
        return node

    # -- the handler -------------------------------------------------------------------

    def handle(self, c: TestCase) -> str:
        fn = getattr(self, "cmd_" + c.cmd.replace("-", "_"), None)
        if fn is None:
            raise ValueError(f"{c.pos}: unknown command {c.cmd}")
        out: str = fn(c)
        return out or "ok"

    def cmd_add_nodes(self, c: TestCase) -> str:
        n = int(c.args[0].key)
        voters = frozenset(NodeId(v) for v in (c.int_list("voters") or range(1, n + 1)))
        learners = frozenset(NodeId(v) for v in c.int_list("learners"))
        lease = c.str_arg("lease", "false") == "true"
        start = max(self.nodes, default=0) + 1
        for nid in range(start, start + n):
            cfg = Config(
                id=NodeId(nid),
                pre_vote=c.str_arg("prevote", "true") == "true",
                check_quorum=c.str_arg("checkquorum", "true") == "true",
                max_inflight_msgs=c.int_arg("inflight", 256),
                max_size_per_msg=c.int_arg("maxbytes", 1 << 20),
                read_only=ReadOnlyOption.LEASE_BASED if lease else ReadOnlyOption.SAFE,
                election_tick=c.int_arg("election", 10),
                heartbeat_tick=c.int_arg("heartbeat", 1),
            )
            if nid in voters or nid in learners:
                state = bootstrap_state(voters, learners=learners)
            else:
                state = RaftState()
            self._start(nid, cfg, MemDisk(state), state)
        return self.cmd_raft_state(c)

    def cmd_campaign(self, c: TestCase) -> str:
        self._node(c).raw.campaign()
        return ""

    def cmd_forget_leader(self, c: TestCase) -> str:
        return "forgot" if self._node(c).raw.forget_leader() else "no-op"

    def cmd_elect(self, c: TestCase) -> str:
        self._node(c).raw.campaign()
        self.cmd_stabilize(TestCase(c.pos, "stabilize", [], "", ""))
        return self.cmd_raft_state(c)

    def _tick(self, c: TestCase, per: int) -> str:
        node = self._node(c)
        for _ in range(c.int_arg("n", 1) * per):
            node.raw.tick()
        return ""

    def cmd_tick(self, c: TestCase) -> str:
        return self._tick(c, 1)

    def cmd_tick_election(self, c: TestCase) -> str:
        return self._tick(c, 2 * self._node(c).cfg.election_tick)

    def cmd_tick_heartbeat(self, c: TestCase) -> str:
        return self._tick(c, self._node(c).cfg.heartbeat_tick)

    def cmd_propose(self, c: TestCase) -> str:
        try:
            self._node(c).raw.propose(c.args[1].key.encode())
        except Exception as exc:  # the script shows the error
            return f"error: {type(exc).__name__}: {exc}"
        return ""

    def cmd_propose_conf_change(self, c: TestCase) -> str:
        kinds = {"v": ChangeType.ADD_VOTER, "l": ChangeType.ADD_LEARNER, "r": ChangeType.REMOVE}
        changes = tuple(Change(kinds[w[0]], NodeId(int(w[1:]))) for w in c.input.split())
        cc = ConfChange(changes, auto_leave=c.str_arg("auto", "false") == "true")
        try:
            self._node(c).raw.propose_conf_change(cc)
        except Exception as exc:
            return f"error: {type(exc).__name__}: {exc}"
        return ""

    def cmd_read_index(self, c: TestCase) -> str:
        try:
            self._node(c).raw.read_index(c.args[1].key.encode())
        except Exception as exc:
            return f"error: {type(exc).__name__}: {exc}"
        return ""

    def cmd_transfer_leader(self, c: TestCase) -> str:
        try:
            self._node(c).raw.transfer_leader(NodeId(int(c.args[1].key)))
        except Exception as exc:
            return f"error: {type(exc).__name__}: {exc}"
        return ""

    def cmd_compact(self, c: TestCase) -> str:
        node = self._node(c)
        index = Index(int(c.args[1].key))
        data = ",".join(d for i, d in node.applied if i <= index).encode()
        snap = node.raw.compact(index, data)
        node.disk.save_snapshot(snap)
        return ""

    def _process(self, nid: int) -> str:
        node = self.nodes[nid]
        if not node.raw.has_ready():
            return ""
        rd = node.raw.ready()
        node.disk.write_ready(rd)
        if node.sync:
            node.disk.sync()
        for m in rd.messages:
            self.mailbox.append(m)
        if rd.snapshot is not None:
            node.restore_applied(rd.snapshot)
        for e in rd.committed:
            if e.type is EntryType.NORMAL and e.data:
                node.applied.append((e.index, e.data.decode()))
        node.raw.advance(rd)
        body = describe_ready(rd)
        return f"> {nid} handling Ready\n" + "\n".join("  " + ln for ln in body.splitlines())

    def cmd_process_ready(self, c: TestCase) -> str:
        return "\n".join(s for s in (self._process(n) for n in self._ids(c)) if s)

    def _deliver(self, ids: list[int], drop: set[int]) -> str:
        out: list[str] = []
        keep: list[Message] = []
        for m in self.mailbox:
            if m.to not in ids:
                keep.append(m)
                continue
            if m.to in drop or self._cut(m.frm, m.to) or m.to not in self.nodes:
                out.append(f"  dropped: {describe_message(m)}")
                continue
            out.append(f"  {describe_message(m)}")
            try:
                self.nodes[m.to].raw.step(m)
            except Exception as exc:
                out.append(f"    error: {type(exc).__name__}: {exc}")
        self.mailbox = keep
        return "\n".join(out)

    def cmd_deliver_msgs(self, c: TestCase) -> str:
        return self._deliver(self._ids(c), set(c.int_list("drop")))

    def cmd_stabilize(self, c: TestCase) -> str:
        ids = self._ids(c)
        out: list[str] = []
        for _ in range(1000):
            step = [s for s in (self._process(n) for n in ids) if s]
            delivered = self._deliver(ids, set())
            if delivered:
                step.append("> delivering messages\n" + delivered)
            if not step:
                return self.cmd_raft_state(c) if c.has("quiet") else "\n".join(out)
            out.extend(step)
        raise AssertionError(f"{c.pos}: stabilize did not settle")

    def cmd_crash(self, c: TestCase) -> str:
        node = self._node(c)
        lost = node.disk.crash()
        del self.nodes[int(c.args[0].key)]
        self.crashed[int(c.args[0].key)] = node
        return f"lost {lost} unsynced writes"

    def cmd_restart(self, c: TestCase) -> str:
        nid = int(c.args[0].key)
        old = self.crashed.pop(nid)
        state = old.disk.load()
        node = self._start(nid, old.cfg, old.disk, state)
        if state.snapshot is not None:
            node.restore_applied(state.snapshot)
        return self.cmd_raft_state(c)

    def cmd_nosync(self, c: TestCase) -> str:
        self._node(c).sync = False
        return ""

    def cmd_partition(self, c: TestCase) -> str:
        self.partition = [{int(v) for v in a.key.split(",")} for a in c.args]
        return ""

    def cmd_heal(self, c: TestCase) -> str:
        self.partition = []
        return ""

    def cmd_status(self, c: TestCase) -> str:
        st = self._node(c).raw.status()
        lines = [
            f"{st.id} {st.role.value} term={st.term} lead={st.lead} commit={st.commit} "
            f"applied={st.applied} last={st.last_index}",
            "conf " + describe_conf_state(st.conf),
        ]
        if st.lead_transferee:
            lines.append(f"transferring leadership to {st.lead_transferee}")
        lines += [f"{n}: {p}" for n, p in st.progress.items()]
        return "\n".join(lines)

    def cmd_raft_log(self, c: TestCase) -> str:
        log = self._node(c).raw.raft.log
        return f"offset={log.offset_term}/{log.offset} " + describe_entries(log.entries)

    def cmd_raft_state(self, c: TestCase) -> str:
        lines = []
        for nid, node in sorted(self.nodes.items()):
            st = node.raw.status()
            lines.append(
                f"{nid}: {st.role.value} term={st.term} lead={st.lead} commit={st.commit} "
                f"conf={describe_conf_state(st.conf)}"
            )
        return "\n".join(lines)

    def cmd_applied(self, c: TestCase) -> str:
        return " ".join(d for _, d in self._node(c).applied) or "(nothing)"

    def cmd_inject(self, c: TestCase) -> str:
        node = self._node(c)
        m = _build_message(c)
        raw = node.raw
        before = (raw.status(), raw.has_ready(), tuple(raw.raft.log.entries))
        out = [describe_message(m)]
        try:
            raw.step(m)
        except Exception as exc:
            out.append(f"error: {type(exc).__name__}: {exc}")
        after = (raw.status(), raw.has_ready(), tuple(raw.raft.log.entries))
        out.append("state unchanged" if before == after else "state changed")
        return "\n".join(out)


def _build_message(c: TestCase) -> Message:
    """The message an ``inject`` command describes (see the module docstring)."""

    def num(key: str) -> int:
        return c.int_arg(key, 0)

    entries = []
    arg = c.arg("entries")
    for spec in arg.vals if arg is not None else []:
        term, index = spec.split("/")
        entries.append(Entry(Term(int(term)), Index(int(index)), EntryType.NORMAL, b""))
    snap = None
    if c.has("snap"):
        term, index = (c.str_arg("snap") or "").split("/")
        voters = c.int_list("snapvoters") if c.has("snapvoters") else [1, 2, 3]
        conf = ConfState(voters=frozenset(NodeId(n) for n in voters))
        snap = Snapshot(SnapshotMeta(Index(int(index)), Term(int(term)), conf))
    return Message(
        MessageType[c.str_arg("type") or ""],
        GroupId(c.int_arg("group", 1)),
        NodeId(num("from")),
        NodeId(num("to")),
        term=Term(num("term")),
        log_term=Term(num("logterm")),
        index=Index(num("index")),
        entries=tuple(entries),
        commit=Index(num("commit")),
        reject=c.str_arg("reject", "false") == "true",
        reject_hint=Index(num("hint")),
        snapshot=snap,
        context=(c.str_arg("ctx") or "").encode(),
    )
