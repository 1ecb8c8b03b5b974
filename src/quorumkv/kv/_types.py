"""The vocabulary of the key-value state machine: requests, responses, limits.

Theory of operation
-------------------
These are etcd v3's messages (``etcdserverpb``/``mvccpb``) as frozen, slotted
dataclasses, so that the etcd gRPC layer later stays a thin translation. Every request is
validated when it is built, and so also when it is decoded from the log: a request that
exists is well formed and within the limits below. The one limit that needs the encoded
form, the request size, is checked by ``quorumkv.kv.encode_command``/``decode_command``.

Revisions follow etcd: the store starts at revision 1; every write transaction (a put,
a delete-range that deletes something, a txn whose chosen branch writes) takes the next
revision; responses carry the store's revision after the request in ``revision`` (etcd's
``header.revision``).

Limits (``LIMITS``) are part of the replicated protocol: every replica must judge a log
entry the same way, so they are constants, not settings. etcd's defaults are the guide:

* request size 1.5 MiB and 128 operations per txn list: etcd's ``--max-request-bytes``
  and ``--max-txn-ops`` defaults.
* key size 511 bytes: etcd has no key limit of its own, but LMDB cannot store a key
  longer than 511 bytes and keys are LMDB keys here (that keeps ranges ordered without
  an indirection). Kubernetes, etcd's biggest user, keeps keys well under 400 bytes.
* value size 1 MiB: etcd bounds values only by the request size; a separate, round limit
  gives a clearer error and leaves room for key and framing inside one request.
* txn nesting depth 32: etcd has none; it stops a pathological request from exhausting
  the Python stack while it is checked and applied.

Building one of these is on every hot path (the client builds requests, every replica
decodes each log entry into them, the executor builds responses), so the classes used
per operation have a hand-written ``__init__``: one combined test accepts the common,
valid case, and only when it fails do the detailed checks run, which raise the precise
error (the same checks in the same order as always); fields are stored through the
slots' own setters (``_slot_setters``), since a frozen dataclass's ``__setattr__``
refuses assignments. The rarer classes (``Compare``, ``TxnRequest``,
``CompactionRequest``) keep the generated ``__init__`` and check in ``__post_init__``.

This module never touches the engine and never does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from quorumkv.kv._errors import DuplicateKeyError, KVLimitError, MalformedRequestError


@dataclass(frozen=True, slots=True)
class Limits:
    """The size limits every replica enforces; see the module docstring for the why."""

    max_key_bytes: int = 511
    max_value_bytes: int = 1024 * 1024
    max_request_bytes: int = 1536 * 1024
    max_txn_ops: int = 128
    max_txn_depth: int = 32


LIMITS = Limits()

ALL_KEYS = b"\x00"
"""As a ``range_end``: every key greater than or equal to ``key`` (etcd's convention)."""

_MAX_INT64 = (1 << 63) - 1
_MAX_UINT64 = (1 << 64) - 1
_MAX_KEY = LIMITS.max_key_bytes
_MAX_VALUE = LIMITS.max_value_bytes

_Setter = Callable[[Any, Any], None]


def _slot_setters(cls: type, *names: str) -> tuple[_Setter, ...]:
    """The setters of ``cls``'s slots ``names``: how a frozen, slotted dataclass's own
    ``__init__`` (and nothing else) fills a new instance."""
    return tuple(cls.__dict__[name].__set__ for name in names)


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that, with ``key=prefix``, selects every key starting with
    ``prefix`` (etcd's ``GetPrefixRangeEnd``)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return ALL_KEYS
    return stripped[:-1] + bytes([stripped[-1] + 1])


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class CompareOp(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


def _check_bytes(name: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise MalformedRequestError(f"{name} must be bytes, not {type(value).__name__}")


def _check_int(name: str, value: object, lo: int = 0, hi: int = _MAX_INT64) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise MalformedRequestError(f"{name} must be an integer in [{lo}, {hi}], not {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise MalformedRequestError(f"{name} must be a bool, not {value!r}")


def _check_enum(name: str, value: object, kind: type[enum.IntEnum]) -> None:
    if not isinstance(value, kind):
        raise MalformedRequestError(f"{name} must be a {kind.__name__}, not {value!r}")


def _check_key(key: object, range_end: object = b"") -> None:
    _check_bytes("key", key)
    _check_bytes("range_end", range_end)
    assert isinstance(key, bytes) and isinstance(range_end, bytes)
    if not key:
        raise MalformedRequestError("key is not provided")
    if len(key) > LIMITS.max_key_bytes:
        raise KVLimitError("key size", LIMITS.max_key_bytes, len(key))
    if len(range_end) > LIMITS.max_key_bytes:
        raise KVLimitError("range_end size", LIMITS.max_key_bytes, len(range_end))


@dataclass(frozen=True, slots=True, init=False)
class KeyValue:
    """One key at one revision, as etcd's ``mvccpb.KeyValue``."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    def __init__(
        self,
        key: bytes,
        value: bytes,
        create_revision: int,
        mod_revision: int,
        version: int,
        lease: int = 0,
    ) -> None:
        set_key, set_value, set_create, set_mod, set_version, set_lease = _KEY_VALUE_SLOTS
        set_key(self, key)
        set_value(self, value)
        set_create(self, create_revision)
        set_mod(self, mod_revision)
        set_version(self, version)
        set_lease(self, lease)


_KEY_VALUE_SLOTS = _slot_setters(
    KeyValue, "key", "value", "create_revision", "mod_revision", "version", "lease"
)


@dataclass(frozen=True, slots=True, init=False)
class PutRequest:
    key: bytes
    value: bytes
    lease: int = 0
    prev_kv: bool = False

    def __init__(self, key: bytes, value: bytes, lease: int = 0, prev_kv: bool = False) -> None:
        if not (
            type(key) is bytes
            and 0 < len(key) <= _MAX_KEY
            and type(value) is bytes
            and len(value) <= _MAX_VALUE
            and type(lease) is int
            and 0 <= lease <= _MAX_INT64
            and (prev_kv is False or prev_kv is True)
        ):
            _check_put(key, value, lease, prev_kv)
        set_key, set_value, set_lease, set_prev_kv = _PUT_SLOTS
        set_key(self, key)
        set_value(self, value)
        set_lease(self, lease)
        set_prev_kv(self, prev_kv)


_PUT_SLOTS = _slot_setters(PutRequest, "key", "value", "lease", "prev_kv")


def _check_put(key: object, value: object, lease: object, prev_kv: object) -> None:
    _check_key(key)
    _check_bytes("value", value)
    assert isinstance(value, bytes)
    if len(value) > LIMITS.max_value_bytes:
        raise KVLimitError("value size", LIMITS.max_value_bytes, len(value))
    _check_int("lease", lease)
    _check_bool("prev_kv", prev_kv)


@dataclass(frozen=True, slots=True, init=False)
class RangeRequest:
    """Read ``key`` alone (``range_end`` empty), or ``[key, range_end)``, or every key
    from ``key`` on (``range_end == ALL_KEYS``). ``revision`` 0 means the current one."""

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    keys_only: bool = False
    count_only: bool = False

    def __init__(
        self,
        key: bytes,
        range_end: bytes = b"",
        limit: int = 0,
        revision: int = 0,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> None:
        if not (
            type(key) is bytes
            and 0 < len(key) <= _MAX_KEY
            and type(range_end) is bytes
            and len(range_end) <= _MAX_KEY
            and type(limit) is int
            and 0 <= limit <= _MAX_INT64
            and type(revision) is int
            and 0 <= revision <= _MAX_INT64
            and type(sort_order) is SortOrder
            and type(sort_target) is SortTarget
            and (keys_only is False or keys_only is True)
            and (count_only is False or count_only is True)
        ):
            _check_range(
                key, range_end, limit, revision, sort_order, sort_target, keys_only, count_only
            )
        set_key, set_end, set_limit, set_rev, set_order, set_target, set_keys, set_count = (
            _RANGE_SLOTS
        )
        set_key(self, key)
        set_end(self, range_end)
        set_limit(self, limit)
        set_rev(self, revision)
        set_order(self, sort_order)
        set_target(self, sort_target)
        set_keys(self, keys_only)
        set_count(self, count_only)

    @staticmethod
    def prefix(prefix: bytes, **kwargs: object) -> RangeRequest:
        """Every key that starts with ``prefix`` (every key at all for ``b""``)."""
        key = prefix or ALL_KEYS
        return RangeRequest(key, prefix_end(prefix), **kwargs)  # type: ignore[arg-type]


def _check_range(
    key: object,
    range_end: object,
    limit: object,
    revision: object,
    sort_order: object,
    sort_target: object,
    keys_only: object,
    count_only: object,
) -> None:
    _check_key(key, range_end)
    _check_int("limit", limit)
    _check_int("revision", revision)
    _check_enum("sort_order", sort_order, SortOrder)
    _check_enum("sort_target", sort_target, SortTarget)
    _check_bool("keys_only", keys_only)
    _check_bool("count_only", count_only)


_RANGE_SLOTS = _slot_setters(
    RangeRequest,
    "key",
    "range_end",
    "limit",
    "revision",
    "sort_order",
    "sort_target",
    "keys_only",
    "count_only",
)


@dataclass(frozen=True, slots=True, init=False)
class DeleteRangeRequest:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False

    def __init__(self, key: bytes, range_end: bytes = b"", prev_kv: bool = False) -> None:
        if not (
            type(key) is bytes
            and 0 < len(key) <= _MAX_KEY
            and type(range_end) is bytes
            and len(range_end) <= _MAX_KEY
            and (prev_kv is False or prev_kv is True)
        ):
            _check_delete(key, range_end, prev_kv)
        set_key, set_end, set_prev_kv = _DELETE_SLOTS
        set_key(self, key)
        set_end(self, range_end)
        set_prev_kv(self, prev_kv)


_DELETE_SLOTS = _slot_setters(DeleteRangeRequest, "key", "range_end", "prev_kv")


def _check_delete(key: object, range_end: object, prev_kv: object) -> None:
    _check_key(key, range_end)
    _check_bool("prev_kv", prev_kv)


@dataclass(frozen=True, slots=True)
class Compare:
    """``target(key) op value``. ``value`` is bytes for ``VALUE`` and an int otherwise.
    A missing key has version, create and mod revision and lease 0, and fails every
    ``VALUE`` compare (as in etcd)."""

    target: CompareTarget
    op: CompareOp
    key: bytes
    value: bytes | int

    def __post_init__(self) -> None:
        _check_enum("compare target", self.target, CompareTarget)
        _check_enum("compare op", self.op, CompareOp)
        _check_key(self.key)
        if self.target is CompareTarget.VALUE:
            _check_bytes("compare value", self.value)
            assert isinstance(self.value, bytes)
            if len(self.value) > LIMITS.max_value_bytes:
                raise KVLimitError("compare value size", LIMITS.max_value_bytes, len(self.value))
        else:
            _check_int("compare value", self.value)


@dataclass(frozen=True, slots=True)
class TxnRequest:
    """If every compare holds, run ``success`` in order, else ``failure``. Atomic; all
    its writes share one revision. Compares, also those of nested txns on the chosen
    path, are judged against the state before the txn, as etcd does."""

    compare: tuple[Compare, ...] = ()
    success: tuple[Op, ...] = ()
    failure: tuple[Op, ...] = ()

    def __post_init__(self) -> None:
        for name in ("compare", "success", "failure"):
            items = getattr(self, name)
            if not isinstance(items, tuple):
                raise MalformedRequestError(f"txn {name} must be a tuple")
            if len(items) > LIMITS.max_txn_ops:
                raise KVLimitError(f"txn {name} operations", LIMITS.max_txn_ops, len(items), "ops")
        for c in self.compare:
            if not isinstance(c, Compare):
                raise MalformedRequestError(f"txn compare must be a Compare, not {c!r}")
        for op in self.success + self.failure:
            if not isinstance(op, PutRequest | RangeRequest | DeleteRangeRequest | TxnRequest):
                raise MalformedRequestError(f"txn operation of unknown type {op!r}")
        depth = _depth(self)
        if depth > LIMITS.max_txn_depth:
            raise KVLimitError("txn nesting depth", LIMITS.max_txn_depth, depth, "levels")
        _check_intervals(self.success)
        _check_intervals(self.failure)


Op: TypeAlias = PutRequest | RangeRequest | DeleteRangeRequest | TxnRequest
"""An operation allowed inside a txn."""


@dataclass(frozen=True, slots=True)
class CompactionRequest:
    """Forget the history before ``revision``: reads below it fail with
    ``CompactedError`` afterwards. Does not take a new revision."""

    revision: int

    def __post_init__(self) -> None:
        _check_int("compaction revision", self.revision)


Request: TypeAlias = Op | CompactionRequest


def _depth(txn: TxnRequest) -> int:
    inner = [_depth(op) for op in txn.success + txn.failure if isinstance(op, TxnRequest)]
    return 1 + max(inner, default=0)


def _interval(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """A delete's keys as ``[start, end)``; ``None`` is "no end"."""
    if not range_end:
        return key, key + b"\x00"
    return key, (None if range_end == ALL_KEYS else range_end)


def _covers(dels: list[tuple[bytes, bytes | None]], key: bytes) -> bool:
    return any(lo <= key and (hi is None or key < hi) for lo, hi in dels)


def _check_intervals(ops: tuple[Op, ...]) -> tuple[set[bytes], list[tuple[bytes, bytes | None]]]:
    """etcd's ``checkIntervals``: no path through a txn may put one key twice or put a
    key that a delete-range of the same txn covers. Returns (puts, deletes) of ``ops``."""
    dels = [_interval(op.key, op.range_end) for op in ops if isinstance(op, DeleteRangeRequest)]
    puts: set[bytes] = set()
    for op in ops:
        if not isinstance(op, TxnRequest):
            continue
        puts_then, dels_then = _check_intervals(op.success)
        puts_else, dels_else = _check_intervals(op.failure)
        for k in puts_then:
            if k in puts or _covers(dels, k):
                raise DuplicateKeyError(k)
            puts.add(k)
        for k in puts_else:
            # then and else exclude each other, so a key in both is fine
            if (k in puts and k not in puts_then) or _covers(dels, k):
                raise DuplicateKeyError(k)
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if isinstance(op, PutRequest):
            if op.key in puts or _covers(dels, op.key):
                raise DuplicateKeyError(op.key)
            puts.add(op.key)
    return puts, dels


@dataclass(frozen=True, slots=True, init=False)
class PutResponse:
    revision: int
    prev_kv: KeyValue | None = None

    def __init__(self, revision: int, prev_kv: KeyValue | None = None) -> None:
        set_revision, set_prev_kv = _PUT_RESPONSE_SLOTS
        set_revision(self, revision)
        set_prev_kv(self, prev_kv)


_PUT_RESPONSE_SLOTS = _slot_setters(PutResponse, "revision", "prev_kv")


@dataclass(frozen=True, slots=True, init=False)
class RangeResponse:
    """``count`` is the number of keys in the range, regardless of ``limit``; ``more``
    says whether ``limit`` cut the answer short."""

    revision: int
    kvs: tuple[KeyValue, ...] = ()
    more: bool = False
    count: int = 0

    def __init__(
        self, revision: int, kvs: tuple[KeyValue, ...] = (), more: bool = False, count: int = 0
    ) -> None:
        set_revision, set_kvs, set_more, set_count = _RANGE_RESPONSE_SLOTS
        set_revision(self, revision)
        set_kvs(self, kvs)
        set_more(self, more)
        set_count(self, count)


_RANGE_RESPONSE_SLOTS = _slot_setters(RangeResponse, "revision", "kvs", "more", "count")


@dataclass(frozen=True, slots=True, init=False)
class DeleteRangeResponse:
    revision: int
    deleted: int = 0
    prev_kvs: tuple[KeyValue, ...] = ()

    def __init__(
        self, revision: int, deleted: int = 0, prev_kvs: tuple[KeyValue, ...] = ()
    ) -> None:
        set_revision, set_deleted, set_prev_kvs = _DELETE_RESPONSE_SLOTS
        set_revision(self, revision)
        set_deleted(self, deleted)
        set_prev_kvs(self, prev_kvs)


_DELETE_RESPONSE_SLOTS = _slot_setters(DeleteRangeResponse, "revision", "deleted", "prev_kvs")


@dataclass(frozen=True, slots=True)
class TxnResponse:
    revision: int
    succeeded: bool
    responses: tuple[OpResponse, ...] = ()


@dataclass(frozen=True, slots=True)
class CompactionResponse:
    revision: int


OpResponse: TypeAlias = PutResponse | RangeResponse | DeleteRangeResponse | TxnResponse
Response: TypeAlias = OpResponse | CompactionResponse


_REQUEST_TYPES = frozenset(
    {PutRequest, RangeRequest, DeleteRangeRequest, TxnRequest, CompactionRequest}
)


@dataclass(frozen=True, slots=True, init=False)
class Command:
    """What goes into a log entry: a request stamped with the client's id and sequence
    number. A client retries a command with the same ``seq``; the state machine applies
    it once and answers the retry with the stored result (thesis 6.3). ``client`` 0
    means "no session": applied every time it appears."""

    client: int
    seq: int
    request: Request

    def __init__(self, client: int, seq: int, request: Request) -> None:
        if not (
            type(client) is int
            and 0 <= client <= _MAX_UINT64
            and type(seq) is int
            and 0 <= seq <= _MAX_UINT64
            and type(request) in _REQUEST_TYPES
        ):
            _check_command(client, seq, request)
        set_client, set_seq, set_request = _COMMAND_SLOTS
        set_client(self, client)
        set_seq(self, seq)
        set_request(self, request)


_COMMAND_SLOTS = _slot_setters(Command, "client", "seq", "request")


def _check_command(client: object, seq: object, request: object) -> None:
    _check_int("client", client, 0, _MAX_UINT64)
    _check_int("seq", seq, 0, _MAX_UINT64)
    if not isinstance(
        request,
        PutRequest | RangeRequest | DeleteRangeRequest | TxnRequest | CompactionRequest,
    ):
        raise MalformedRequestError(f"unknown request type {request!r}")
