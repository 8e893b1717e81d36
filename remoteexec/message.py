"""The wire format: a versioned msgpack envelope, extension types and HMAC signing.

Every message (a ``Call`` from a client, a ``Reply`` from a worker) travels as the msgpack
array ``[version, kind, payload, signature]``:

* ``version`` -- ``FORMAT_VERSION``; any other value is refused.
* ``kind`` -- 1 for a call, 2 for a reply, so one cannot be replayed as the other.
* ``payload`` -- the msgpack-encoded fields (bin), decoded only after the signature passed:
  a call is ``[id, name, method, args, kwargs, deadline, max_attempts, time_limit]``, a reply
  ``[id, value, failure]`` with ``failure`` nil or ``[kind, type_name, message, traceback]``.
* ``signature`` -- HMAC-SHA256 over ``b"remoteexec" + version + kind + payload`` with the
  first secret, or nil. With secrets, a message must carry a signature made with any of
  them (rotation). Without secrets, signatures are neither made nor checked.

Beyond msgpack's own types, tuple, set, frozenset, datetime, date, time, timedelta, Decimal,
UUID, complex and integers beyond 64 bits travel as extension types, nested anywhere and as
dict keys. Subclasses of list, dict, tuple, set, frozenset, str, bytes, int and float travel
as their base type (a namedtuple arrives as a tuple, an ``IntEnum`` as an int); bytearray and
memoryview arrive as bytes. An aware datetime or time keeps its UTC offset but comes back
with a fixed-offset ``datetime.timezone`` (a ``ZoneInfo`` zone's name is not sent).
``register_type`` adds more. Nothing from a message is ever imported, evaluated or unpickled:
registered types are found by name in this module's registry only.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import msgpack

from .errors import ConfigurationError, PayloadTooLarge, SerializationError, SignatureError

__all__ = ["FORMAT_VERSION", "Call", "Codec", "Failure", "Reply", "register_type"]

T = TypeVar("T")

FORMAT_VERSION = 1
_CALL = 1
_REPLY = 2
_KIND_NAMES = {_CALL: "call", _REPLY: "reply"}
_MAX_DEPTH = 32  # nested extension values; each level costs C stack in msgpack's unpacker

# Extension type codes: fixed forever within a format version.
_TUPLE, _SET, _FROZENSET, _DATETIME, _DATE, _TIME = 1, 2, 3, 4, 5, 6
_TIMEDELTA, _DECIMAL, _UUID, _COMPLEX, _BIGINT, _REGISTERED = 7, 8, 9, 10, 11, 12

_DATETIME_S = struct.Struct(">HBBBBBIB")  # year..second, microsecond, flags
_TIME_S = struct.Struct(">BBBIB")  # hour, minute, second, microsecond, flags
_OFFSET_S = struct.Struct(">q")  # UTC offset in microseconds
_DATE_S = struct.Struct(">HBB")
_TIMEDELTA_S = struct.Struct(">iII")
_COMPLEX_S = struct.Struct(">dd")
_FOLD, _AWARE = 1, 2


@dataclass(frozen=True, slots=True)
class Call:
    """A request to run ``name.method(*args, **kwargs)`` on a worker.

    Attributes:
        id: the task id, 32 hex characters.
        name: the task type's registered name.
        method: the method to call.
        args: positional arguments.
        kwargs: keyword arguments.
        deadline: epoch seconds after which a worker drops the call unrun, or None.
        max_attempts: how many expired leases the call survives.
        time_limit: seconds the task may run before it is stopped, or None.
    """

    id: str
    name: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    deadline: float | None
    max_attempts: int
    time_limit: float | None


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a call produced no value.

    Attributes:
        kind: ``"remote"`` (the task raised) or a key of ``errors.ERROR_KINDS``.
        type_name: the exception's class name, e.g. ``"ValueError"``.
        message: the exception's message.
        traceback: the formatted traceback from the worker, or ``""``.
    """

    kind: str
    type_name: str
    message: str
    traceback: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The outcome of a call: ``value`` when ``failure`` is None."""

    id: str
    value: Any
    failure: Failure | None


# --- encoding -----------------------------------------------------------------------------


def _type_name(cls: type) -> str:
    name = cls.__qualname__
    return name if cls.__module__ == "builtins" else f"{cls.__module__}.{name}"


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.packers: list[msgpack.Packer] = []
        self.depth = 0


_state = _ThreadState()


def _pack(obj: Any) -> bytes:
    """Pack ``obj`` with a per-thread packer; re-entrant (extension values nest)."""
    state = _state
    if state.depth >= _MAX_DEPTH:
        raise SerializationError(f"value nested deeper than {_MAX_DEPTH} extension levels")
    packers = state.packers
    if packers:
        packer = packers.pop()
    else:
        packer = msgpack.Packer(use_bin_type=True, strict_types=True, default=_default)
    state.depth += 1
    try:
        data = packer.pack(obj)
    finally:
        state.depth -= 1
    packers.append(packer)  # not reached on error: a failed packer is dropped
    return data


def _offset(v: datetime | time) -> bytes:
    """An aware value's UTC offset in microseconds, packed; b"" for a naive one."""
    if v.tzinfo is None:
        return b""
    offset = v.utcoffset()
    if offset is None:
        raise SerializationError(f"{v!r}: its tzinfo gives no fixed UTC offset")
    return _OFFSET_S.pack((offset.days * 86400 + offset.seconds) * 10**6 + offset.microseconds)


def _enc_datetime(v: datetime) -> msgpack.ExtType:
    flags = v.fold | (_AWARE if v.tzinfo is not None else 0)
    fields = (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, flags)
    return msgpack.ExtType(_DATETIME, _DATETIME_S.pack(*fields) + _offset(v))


def _enc_time(v: time) -> msgpack.ExtType:
    flags = v.fold | (_AWARE if v.tzinfo is not None else 0)
    fields = (v.hour, v.minute, v.second, v.microsecond, flags)
    return msgpack.ExtType(_TIME, _TIME_S.pack(*fields) + _offset(v))


def _enc_bigint(v: int) -> msgpack.ExtType:
    # msgpack calls the default hook for integers outside [-2**63, 2**64).
    return msgpack.ExtType(_BIGINT, v.to_bytes(v.bit_length() // 8 + 1, "big", signed=True))


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    tuple: lambda v: msgpack.ExtType(_TUPLE, _pack(list(v))),
    set: lambda v: msgpack.ExtType(_SET, _pack(list(v))),
    frozenset: lambda v: msgpack.ExtType(_FROZENSET, _pack(list(v))),
    datetime: _enc_datetime,
    date: lambda v: msgpack.ExtType(_DATE, _DATE_S.pack(v.year, v.month, v.day)),
    time: _enc_time,
    timedelta: lambda v: msgpack.ExtType(
        _TIMEDELTA, _TIMEDELTA_S.pack(v.days, v.seconds, v.microseconds)
    ),
    Decimal: lambda v: msgpack.ExtType(_DECIMAL, str(v).encode("ascii")),
    UUID: lambda v: msgpack.ExtType(_UUID, v.bytes),
    complex: lambda v: msgpack.ExtType(_COMPLEX, _COMPLEX_S.pack(v.real, v.imag)),
    int: _enc_bigint,
}
_BUILTIN_TYPES = frozenset(_ENCODERS) | {type(None), bool, float, str, bytes, list, dict}
# Subclasses that travel as their base type; order matters only for bool (never reached).
_BASES: tuple[type, ...] = (list, dict, tuple, set, frozenset, str, bytes, int, float)


def _default(obj: Any) -> Any:
    """msgpack's hook for every value it does not pack natively under ``strict_types``."""
    encode = _ENCODERS.get(type(obj))
    if encode is not None:
        return encode(obj)
    for base in _BASES:
        if isinstance(obj, base):
            return base(obj)
    raise SerializationError(
        f"cannot serialize a {_type_name(type(obj))} object; "
        "use a supported type or remoteexec.register_type()"
    )


# --- decoding -----------------------------------------------------------------------------


def _unpack(data: bytes) -> Any:
    """Unpack a payload or an extension's body, applying the extension decoders."""
    state = _state
    if state.depth >= _MAX_DEPTH:
        raise SerializationError(f"message nested deeper than {_MAX_DEPTH} extension levels")
    state.depth += 1
    try:
        # unpackb bounds every str/bin/array/map/ext length by len(data) itself.
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)
    finally:
        state.depth -= 1


def _unpack_items(data: bytes) -> list[Any]:
    items = _unpack(data)
    if type(items) is not list:
        raise SerializationError("malformed collection extension")
    return items


def _dec_offset(data: bytes, start: int, aware: bool) -> timezone | None:
    if not aware:
        if len(data) != start:
            raise SerializationError("malformed date/time extension")
        return None
    (offset,) = _OFFSET_S.unpack(data[start:])
    return timezone(timedelta(microseconds=offset))


def _dec_datetime(data: bytes) -> datetime:
    year, month, day, hour, minute, second, us, flags = _DATETIME_S.unpack_from(data)
    tz = _dec_offset(data, _DATETIME_S.size, bool(flags & _AWARE))
    return datetime(year, month, day, hour, minute, second, us, tz, fold=flags & _FOLD)


def _dec_time(data: bytes) -> time:
    hour, minute, second, us, flags = _TIME_S.unpack_from(data)
    tz = _dec_offset(data, _TIME_S.size, bool(flags & _AWARE))
    return time(hour, minute, second, us, tz, fold=flags & _FOLD)


def _dec_decimal(data: bytes) -> Decimal:
    if not data.isascii():
        raise SerializationError("malformed Decimal extension")
    return Decimal(data.decode("ascii"))


def _dec_registered(data: bytes) -> Any:
    item = _unpack(data)
    if type(item) is not list or len(item) != 2 or type(item[0]) is not str:
        raise SerializationError("malformed registered-type extension")
    entry = _REGISTRY.get(item[0])
    if entry is None:
        raise SerializationError(f"unknown registered type {item[0][:200]!r} in message")
    return entry[2](item[1])


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    _TUPLE: lambda d: tuple(_unpack_items(d)),
    _SET: lambda d: set(_unpack_items(d)),
    _FROZENSET: lambda d: frozenset(_unpack_items(d)),
    _DATETIME: _dec_datetime,
    _DATE: lambda d: date(*_DATE_S.unpack(d)),
    _TIME: _dec_time,
    _TIMEDELTA: lambda d: timedelta(*_TIMEDELTA_S.unpack(d)),
    _DECIMAL: _dec_decimal,
    _UUID: lambda d: UUID(bytes=d),
    _COMPLEX: lambda d: complex(*_COMPLEX_S.unpack(d)),
    _BIGINT: lambda d: int.from_bytes(d, "big", signed=True),
    _REGISTERED: _dec_registered,
}


def _ext_hook(code: int, data: bytes) -> Any:
    decode = _DECODERS.get(code)
    if decode is None:
        raise SerializationError(f"unknown extension type {code} in message")
    return decode(data)


# --- registered types ---------------------------------------------------------------------

# name -> (class, encode, decode)
_REGISTRY: dict[str, tuple[type, Callable[[Any], Any], Callable[[Any], Any]]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_type(cls: type[T], encode: Callable[[T], Any], decode: Callable[[Any], T]) -> None:
    """Teach the codec a new type.

    On the wire the type is named ``f"{cls.__module__}.{cls.__qualname__}"``; a receiver
    finds it in its own registry only, so both sides must register it. Registering the
    same class again replaces its functions.

    Args:
        cls: the type; only instances of exactly this class use it (not subclasses).
        encode: turns an instance into any value the codec can serialize.
        decode: turns that value back into an instance.

    Raises:
        ConfigurationError: ``cls`` is not a class, is a type the codec already handles,
            or another class is registered under the same name.
    """
    if not isinstance(cls, type):
        raise ConfigurationError(f"register_type() needs a class, not {cls!r}")
    if not (callable(encode) and callable(decode)):
        raise ConfigurationError(f"register_type({cls.__qualname__}): encode/decode not callable")
    if cls in _BUILTIN_TYPES:
        raise ConfigurationError(f"{_type_name(cls)} is already supported by the codec")
    name = f"{cls.__module__}.{cls.__qualname__}"
    with _REGISTRY_LOCK:
        known = _REGISTRY.get(name)
        if known is not None and known[0] is not cls:
            raise ConfigurationError(f"another class is already registered as {name!r}")
        _REGISTRY[name] = (cls, encode, decode)
        _ENCODERS[cls] = _registered_encoder(name, encode)


def _registered_encoder(name: str, encode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def encoder(obj: Any) -> msgpack.ExtType:
        try:
            value = encode(obj)
        except Exception as exc:
            raise SerializationError(f"encoding a {name} failed: {exc!r}") from exc
        return msgpack.ExtType(_REGISTERED, _pack([name, value]))

    return encoder


# --- the codec ----------------------------------------------------------------------------


class _Key:
    """An HMAC-SHA256 key with its padded inner and outer states hashed once (RFC 2104)."""

    __slots__ = ("inner", "outer")

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def sign(self, prefix: bytes, payload: bytes) -> bytes:
        inner = self.inner.copy()
        inner.update(prefix)
        inner.update(payload)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_PREFIX = {kind: b"remoteexec" + bytes((FORMAT_VERSION, kind)) for kind in (_CALL, _REPLY)}


class Codec:
    """Encodes and decodes calls and replies, signing them when secrets are set.

    Args:
        secrets: HMAC keys. With one or more, every message is signed with the first and
            accepted if signed with any (rotation); unsigned or forged messages raise
            ``SignatureError`` before their payload is decoded. With none, messages are not
            signed and any signature on an incoming message is ignored.
        max_message_size: the largest body, in bytes, encoded or accepted.

    A codec holds no per-message state and is safe to share between threads.
    """

    __slots__ = ("_keys", "_max_size")

    def __init__(
        self, *, secrets: Sequence[str | bytes] = (), max_message_size: int = 64 * 2**20
    ) -> None:
        if isinstance(secrets, (str, bytes)):
            secrets = (secrets,)
        if any(not s for s in secrets):
            raise ConfigurationError("a secret must not be empty")
        self._keys = tuple(_Key(s) for s in secrets)
        self._max_size = max_message_size

    def encode_call(self, call: Call) -> bytes:
        """Encode a call for the backend.

        Raises:
            SerializationError: an argument's type is not supported.
            PayloadTooLarge: the message exceeds ``max_message_size``.
        """
        c = call
        fields = [c.id, c.name, c.method, list(c.args), c.kwargs, c.deadline, c.max_attempts]
        fields.append(c.time_limit)
        return self._seal(_CALL, fields)

    def decode_call(self, body: bytes) -> Call:
        """Decode a call a worker claimed.

        Raises:
            SerializationError: the body is malformed, of another format version, or holds
                an unknown extension or registered type.
            SignatureError: secrets are set and the body is unsigned or forged.
            PayloadTooLarge: the body exceeds ``max_message_size``.
        """
        fields = self._open(_CALL, body)
        try:
            id_, name, method, args, kwargs, deadline, max_attempts, time_limit = fields
        except (TypeError, ValueError):
            raise SerializationError("malformed call: wrong field count") from None
        if not (
            type(id_) is str
            and type(name) is str
            and type(method) is str
            and type(args) is list
            and type(kwargs) is dict
            and all(type(k) is str for k in kwargs)
            and (deadline is None or type(deadline) in (float, int))
            and type(max_attempts) is int
            and (time_limit is None or type(time_limit) in (float, int))
        ):
            raise SerializationError("malformed call: a field has the wrong type")
        return Call(id_, name, method, tuple(args), kwargs, deadline, max_attempts, time_limit)

    def encode_reply(self, reply: Reply) -> bytes:
        """Encode a worker's reply.

        Raises:
            SerializationError: the value's type is not supported (the worker then sends a
                ``Failure(kind="serialization")`` instead).
            PayloadTooLarge: the message exceeds ``max_message_size``.
        """
        f = reply.failure
        failure = None if f is None else [f.kind, f.type_name, f.message, f.traceback]
        return self._seal(_REPLY, [reply.id, reply.value, failure])

    def decode_reply(self, body: bytes) -> Reply:
        """Decode a reply a client received.

        Raises:
            SerializationError, SignatureError, PayloadTooLarge: as for ``decode_call``.
        """
        fields = self._open(_REPLY, body)
        if type(fields) is not list or len(fields) != 3 or type(fields[0]) is not str:
            raise SerializationError("malformed reply")
        id_, value, f = fields
        if f is None:
            return Reply(id_, value, None)
        if type(f) is not list or len(f) != 4 or any(type(x) is not str for x in f):
            raise SerializationError("malformed reply: bad failure")
        return Reply(id_, value, Failure(*f))

    def peek_id(self, body: bytes) -> str | None:
        """Best effort: the task id of a reply that ``decode_reply`` rejected.

        Returns the id only if the envelope is well formed and, with secrets, properly
        signed; the value is not decoded. Returns None otherwise. Never raises.
        """
        try:
            payload = self._verified_payload(_REPLY, body)
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(payload))
            unpacker.feed(payload)
            if unpacker.read_array_header() != 3:
                return None
            id_ = unpacker.unpack()
        except Exception:
            return None
        return id_ if type(id_) is str else None

    # -- envelope --

    def _seal(self, kind: int, fields: list[Any]) -> bytes:
        try:
            payload = _pack(fields)
        except SerializationError:
            raise
        except Exception as exc:  # OverflowError, UnicodeEncodeError, ValueError (depth)
            raise SerializationError(f"cannot serialize {_KIND_NAMES[kind]}: {exc}") from exc
        self._check_size(len(payload))  # fail before copying a huge payload once more
        signature = self._keys[0].sign(_PREFIX[kind], payload) if self._keys else None
        body = _pack([FORMAT_VERSION, kind, payload, signature])
        self._check_size(len(body))
        return body

    def _check_size(self, size: int) -> None:
        if size > self._max_size:
            raise PayloadTooLarge(
                f"message of {size} bytes exceeds max_message_size ({self._max_size} bytes)"
            )

    def _verified_payload(self, kind: int, body: bytes) -> bytes:
        self._check_size(len(body))
        try:
            envelope = msgpack.unpackb(body, raw=False)
        except Exception as exc:
            raise SerializationError(f"malformed message: {exc!r}") from None
        if type(envelope) is not list or not envelope:
            raise SerializationError("malformed message: not an envelope")
        if envelope[0] != FORMAT_VERSION or type(envelope[0]) is not int:
            raise SerializationError(
                f"unsupported message format version {envelope[0]!r:.40} "
                f"(this side speaks {FORMAT_VERSION})"
            )
        if len(envelope) != 4:
            raise SerializationError("malformed message: wrong envelope length")
        _, got_kind, payload, signature = envelope
        if type(payload) is not bytes or not (signature is None or type(signature) is bytes):
            raise SerializationError("malformed message: bad envelope fields")
        if got_kind != kind or type(got_kind) is not int:
            raise SerializationError(
                f"expected a {_KIND_NAMES[kind]} message, got kind {got_kind!r:.40}"
            )
        if self._keys:
            if signature is None:
                raise SignatureError(f"unsigned {_KIND_NAMES[kind]} message rejected")
            prefix = _PREFIX[kind]
            if not any(hmac.compare_digest(k.sign(prefix, payload), signature) for k in self._keys):
                raise SignatureError(f"{_KIND_NAMES[kind]} message with a bad signature rejected")
        return payload

    def _open(self, kind: int, body: bytes) -> Any:
        payload = self._verified_payload(kind, body)
        try:
            return _unpack(payload)
        except SerializationError:
            raise
        except Exception as exc:  # msgpack's errors, TypeError, ValueError, RecursionError...
            raise SerializationError(f"malformed {_KIND_NAMES[kind]}: {exc!r:.200}") from None
