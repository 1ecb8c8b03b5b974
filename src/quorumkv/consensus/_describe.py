"""One-line renderings of messages, entries and Ready batches, for logs and golden tests.

The format is stable on purpose: scenario scripts under ``tests/consensus/testdata`` compare
against it. Entries show as ``term/index``, followed by their data when short.
"""

from __future__ import annotations

from ._confchange import decode_conf_change
from ._types import Entry, EntryType, HardState, Message, MessageType, Ready

_MAX_DATA = 24


def _data(data: bytes) -> str:
    if len(data) > _MAX_DATA:
        return f"<{len(data)} bytes>"
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return data.hex()
    return f'"{text}"' if text.isprintable() else data.hex()


def describe_entry(e: Entry) -> str:
    if e.type is EntryType.CONF_CHANGE:
        try:
            cc = decode_conf_change(e.data)
        except ValueError:
            return f"{e.term}/{e.index} conf(malformed)"
        if cc.leave_joint:
            return f"{e.term}/{e.index} conf(leave-joint)"
        changes = " ".join(f"{c.type.value}:{c.node}" for c in cc.changes)
        return f"{e.term}/{e.index} conf({changes})"
    if not e.data:
        return f"{e.term}/{e.index}"
    return f"{e.term}/{e.index} {_data(e.data)}"


def describe_entries(entries: tuple[Entry, ...] | list[Entry]) -> str:
    return "[" + ", ".join(describe_entry(e) for e in entries) + "]"


def describe_hard_state(hs: HardState) -> str:
    return f"term={hs.term} vote={hs.vote} commit={hs.commit}"


def describe_message(m: Message) -> str:
    t = m.type
    out = f"{m.frm}->{m.to} {t.name} term={m.term}"
    if t in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        out += f" log={m.log_term}/{m.index}"
    elif t in (MessageType.APP_RESP, MessageType.READ_INDEX_RESP, MessageType.TRANSFER_LEADER):
        out += f" index={m.index}"
    if t in (MessageType.APP, MessageType.HEARTBEAT):
        out += f" commit={m.commit}"
    if t in (MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP) and m.index:
        out += f" tick={m.index}"  # the leader's tick when sent: the lease's clock
    if m.reject:
        out += " rejected"
        if t is MessageType.APP_RESP:
            out += f" hint={m.log_term}/{m.reject_hint}"
    if m.entries:
        out += " entries=" + describe_entries(m.entries)
    if m.snapshot is not None:
        meta = m.snapshot.meta
        out += f" snapshot={meta.term}/{meta.index}"
    if m.context:
        out += f" ctx={_data(m.context)}"
    if m.group != 1:
        out += f" group={m.group}"
    return out


def describe_ready(rd: Ready) -> str:
    """A multi-line rendering of a Ready batch, one item per line."""
    lines: list[str] = []
    if rd.soft_state is not None:
        lines.append(f"lead={rd.soft_state.leader} role={rd.soft_state.role.value}")
    if rd.hard_state is not None:
        lines.append("hard-state " + describe_hard_state(rd.hard_state))
    if rd.snapshot is not None:
        meta = rd.snapshot.meta
        lines.append(f"snapshot {meta.term}/{meta.index}")
    if rd.entries:
        lines.append("persist " + describe_entries(rd.entries))
    if rd.committed:
        lines.append("apply " + describe_entries(rd.committed))
    for rs in rd.read_states:
        lines.append(f"read-state index={rs.index} ctx={_data(rs.context)}")
    for m in rd.messages:
        lines.append("send " + describe_message(m))
    return "\n".join(lines)
