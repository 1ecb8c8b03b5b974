"""Raft messages on the peer wire: compact msgpack lists, validated on the way in.

A message is ``[type, group, frm, to, term, log_term, index, commit, reject,
reject_hint, context, entries, snapshot]`` with entries as ``[term, index, type, data]``
and a snapshot as ``[meta, data]`` (meta as the WAL encodes it). Trailing fields at
their defaults could be trimmed later; the list keeps decoding one ``len`` check away.

``decode_message`` turns anything malformed into ``MessageRejected``, the error the core
itself raises for a bad message, so the connection handler has one error to catch. It
checks shapes and types only; whether the message makes sense is the core's business
(``validate_message`` runs inside ``step``). This module must never send or log.
"""

from __future__ import annotations

from typing import Any

from quorumkv.consensus import (
    Entry,
    EntryType,
    GroupId,
    Index,
    Message,
    MessageRejected,
    MessageType,
    NodeId,
    Snapshot,
    Term,
)
from quorumkv.storage import decode_meta, encode_meta

_FIELDS = 13


def encode_message(m: Message) -> list[Any]:
    snap = None
    if m.snapshot is not None:
        snap = [encode_meta(m.snapshot.meta), m.snapshot.data]
    return [
        m.type.value,
        m.group,
        m.frm,
        m.to,
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.reject,
        m.reject_hint,
        m.context,
        [[e.term, e.index, e.type.value, e.data] for e in m.entries],
        snap,
    ]


def decode_message(doc: Any) -> Message:
    """Raises ``MessageRejected`` for anything that is not a well-formed message."""
    try:
        if not isinstance(doc, list) or len(doc) != _FIELDS:
            raise TypeError("not a message list")
        (t, group, frm, to, term, log_term, index, commit, reject, hint, ctx, ents, snap) = doc
        for name, v in (
            ("group", group),
            ("frm", frm),
            ("to", to),
            ("term", term),
            ("log_term", log_term),
            ("index", index),
            ("commit", commit),
            ("reject_hint", hint),
        ):
            if type(v) is not int or v < 0:
                raise TypeError(f"{name} must be a non-negative int")
        if not isinstance(reject, bool) or not isinstance(ctx, bytes):
            raise TypeError("reject must be a bool and context bytes")
        entries = tuple(_entry(e) for e in ents)
        snapshot = None
        if snap is not None:
            meta, data = snap
            if not isinstance(data, bytes):
                raise TypeError("snapshot data must be bytes")
            snapshot = Snapshot(decode_meta(meta), data)
        return Message(
            MessageType(t),
            GroupId(group),
            NodeId(frm),
            NodeId(to),
            term=Term(term),
            log_term=Term(log_term),
            index=Index(index),
            entries=entries,
            commit=Index(commit),
            reject=reject,
            reject_hint=Index(hint),
            snapshot=snapshot,
            context=ctx,
        )
    except MessageRejected:
        raise
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise MessageRejected(f"malformed peer message: {e}") from None


def _entry(doc: Any) -> Entry:
    term, index, etype, data = doc
    if type(term) is not int or type(index) is not int or not isinstance(data, bytes):
        raise TypeError("entry fields must be int, int, int, bytes")
    return Entry(Term(term), Index(index), EntryType(etype), data)
