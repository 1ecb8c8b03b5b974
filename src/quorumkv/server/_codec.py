"""Raft messages on the peer wire: compact msgpack lists, validated on the way in.

A message is ``[type, group, frm, to, term, log_term, index, commit, reject,
reject_hint, context, entries, snapshot]`` with a snapshot as ``[meta, data]`` (meta as
the WAL encodes it). ``entries`` is msgpack *bytes* of a list of ``[term, index, type,
data]``: a leader sends the same entries to every follower, so they are packed once per
batch (``EntryCache``) and each follower's frame only copies the bytes.

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
from quorumkv.net import FrameError, pack, unpack
from quorumkv.storage import decode_meta, encode_meta

_FIELDS = 13
# Enum calls cost about 1 us each (EntryType(0)); these lookups, a tenth of that. An
# unknown value raises KeyError, which decode_message turns into MessageRejected.
_MESSAGE_TYPES = {t.value: t for t in MessageType}
_ENTRY_TYPES = {t.value: t for t in EntryType}


class EntryCache:
    """Packed entry lists of one Ready, keyed by the entries' identity: the messages
    of one batch to several followers usually carry the very same entry objects."""

    __slots__ = ("_packed",)

    def __init__(self) -> None:
        self._packed: dict[tuple[int, int], bytes] = {}

    def pack(self, entries: tuple[Entry, ...]) -> bytes:
        key = (id(entries[0]), len(entries))
        blob = self._packed.get(key)
        if blob is None:
            blob = pack([[e.term, e.index, e.type.value, e.data] for e in entries])
            self._packed[key] = blob
        return blob


def encode_message(m: Message, cache: EntryCache | None = None) -> list[Any]:
    if m.entries:
        ents = (cache or EntryCache()).pack(m.entries)
    else:
        ents = b""
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
        ents,
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
        if not isinstance(ents, bytes):
            raise TypeError("entries must be packed bytes")
        entries = _entries(unpack(ents)) if ents else ()
        snapshot = None
        if snap is not None:
            meta, data = snap
            if not isinstance(data, bytes):
                raise TypeError("snapshot data must be bytes")
            snapshot = Snapshot(decode_meta(meta), data)
        return Message(
            _MESSAGE_TYPES[t],
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
    except (TypeError, ValueError, KeyError, IndexError, FrameError) as e:
        raise MessageRejected(f"malformed peer message: {e}") from None


def _entries(docs: Any) -> tuple[Entry, ...]:
    """The entries of an append, from their ``[term, index, type, data]`` lists; one
    loop, no call per entry but the entry's own: a follower runs it for every write."""
    if type(docs) is not list:
        raise TypeError("entries must be a list")
    types = _ENTRY_TYPES
    out = []
    for term, index, etype, data in docs:
        if type(term) is not int or type(index) is not int or type(data) is not bytes:
            raise TypeError("entry fields must be int, int, int, bytes")
        out.append(Entry(Term(term), Index(index), types[etype], data))
    return tuple(out)
