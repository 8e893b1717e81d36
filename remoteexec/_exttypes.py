"""msgpack extension types: the values beyond msgpack's own that cross the wire exactly.

tuple, set, frozenset, datetime, date, time, timedelta, Decimal, UUID, complex and integers
beyond 64 bits each travel as an msgpack ExtType with a fixed code (below), nested anywhere
and as dict keys. Subclasses of list, dict, tuple, set, frozenset, str, bytes, int and float
travel as their base type (a namedtuple arrives as a tuple, an ``IntEnum`` as an int);
bytearray and memoryview arrive as bytes. An aware datetime or time keeps its UTC offset but
comes back with a fixed-offset ``datetime.timezone`` (a ``ZoneInfo`` zone's name is not
sent); a time whose tzinfo has no fixed offset is refused. Anything else raises
``SerializationError`` naming its type, unless ``register_type`` taught it: registered
types travel under one code as ``[name, encoded]`` and are found by name in this module's
registry only. Nothing is ever imported, evaluated or unpickled.

``pack`` and ``unpack`` are the package's msgpack entry points (``message.py`` builds the
envelope with them). Both are thread-safe; ``unpack`` keeps its state in the call.

Decoding is bounded before the work is done. A message over ``_UNMETERED`` bytes is first
measured (``_wire_size.measure``): its bytes are walked, without building anything, and what
decoding them would allocate is summed (containers, strings, numbers, extension values and
the copies of their bytes). One that would pass ``AMPLIFICATION`` times its size plus
``_SLACK`` bytes, or that is malformed, raises ``SerializationError`` before any of it is
built: a body of empty arrays (one byte each, 64 decoded) or a stack of nested extensions
(each level a copy of the rest) costs the walk and nothing more. While it decodes, every
array, map and extension value is charged again as it is built (``sys.getsizeof``), a
second line should the estimate fall short. A list of small integers decodes to 8 bytes a
byte, records (small maps whose keys repeat, each key counted once, as msgpack interns
it) to 7 to 12, short lists of numbers and short strings to 15 to 25: the slack lets those
through up to a MiB or so, and larger ones travel better as bytes or in several calls.
Messages up to ``_UNMETERED`` bytes (most calls, and at most a few MiB decoded) skip both,
and their cost. ``unpack`` reads any buffer: a large message's payload is decoded where it
lies (see ``message.py``).
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

import msgpack
from msgpack import ExtType

from ._records import derived
from ._wire_size import (
    BIGINT,
    COMPLEX,
    DATE,
    DATETIME,
    DECIMAL,
    FROZENSET,
    MAX_EXT_DEPTH,
    REGISTERED,
    SET,
    TIME,
    TIMEDELTA,
    TUPLE,
    UUID_,
    measure,
)
from .errors import ConfigurationError, SerializationError

__all__ = ["pack", "register_type", "unpack"]

T = TypeVar("T")

# Nesting depth is explicit: level d packs with packers whose hook is _DEFAULTS[d] and
# unpacks with an ext hook bound to d, so no per-thread state is needed and hostile nesting
# stops at MAX_DEPTH (each level costs C stack in msgpack's unpacker).
MAX_DEPTH = MAX_EXT_DEPTH

#: A message decodes to at most this many times its size, plus ``_SLACK`` bytes.
AMPLIFICATION = 8
_SLACK = 16 << 20
#: Messages up to this size are not metered: even of one-byte sets (216 bytes decoded) or
#: nested 32 extension levels deep, they decode to a few MiB at most.
_UNMETERED = 16 * 1024
_BYTES = sys.getsizeof(b"")  # what a bytes object costs beyond its contents

_DATETIME_S = struct.Struct(">HBBBBBIB")  # year..second, microsecond, flags
_TIME_S = struct.Struct(">BBBIB")  # hour, minute, second, microsecond, flags
_OFFSET_S = struct.Struct(">q")  # UTC offset in microseconds
_DATE_S = struct.Struct(">HBB")
_TIMEDELTA_S = struct.Struct(">iII")
_COMPLEX_S = struct.Struct(">dd")
_FOLD, _AWARE = 1, 2


def _type_name(cls: type) -> str:
    name = cls.__qualname__
    return name if cls.__module__ == "builtins" else f"{cls.__module__}.{name}"


def pack(obj: Any, depth: int = 0) -> bytes:
    """Pack ``obj`` to msgpack bytes, extension types included.

    Packers are pooled per depth (``list.pop``/``append`` are atomic, so this is
    thread-safe and re-entrant). Raises ``SerializationError`` for an unsupported type or
    too deep a nesting; msgpack's own errors (a lone surrogate in a str, lists nested past
    msgpack's limit) propagate for the caller to wrap.
    """
    if depth > MAX_DEPTH:
        raise SerializationError(f"value nested deeper than {MAX_DEPTH} extension levels")
    pool = _POOLS[depth]
    try:
        packer = pool.pop()
    except IndexError:
        packer = msgpack.Packer(use_bin_type=True, strict_types=True, default=_DEFAULTS[depth])
    data = packer.pack(obj)
    pool.append(packer)  # not reached on error: a failed packer is dropped
    return data


def unpack(data: bytes | memoryview, depth: int = 0, budget: _Budget | None = None) -> Any:
    """Unpack msgpack bytes, extension types included.

    Every str/bin/array/map/ext length is bounded by ``len(data)`` (msgpack's ``unpackb``
    default), and what the decoded value occupies by ``budget`` (by default
    ``AMPLIFICATION`` times ``len(data)``, plus ``_SLACK``). Raises ``SerializationError``
    for an unknown extension or registered type, too deep a nesting or a value past the
    budget; other malformed input raises msgpack's, ``TypeError`` or ``ValueError`` for
    the caller to wrap.
    """
    if depth > MAX_DEPTH:
        raise SerializationError(f"message nested deeper than {MAX_DEPTH} extension levels")
    if budget is None:
        if len(data) <= _UNMETERED:  # and so is everything inside it
            hook = _UNMETERED_HOOKS[depth]
            return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=hook)
        budget = _Budget(len(data))
        measure(data, budget.left, depth)  # refuses a bomb before any of it is built
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        ext_hook=partial(_decode_ext, depth, budget),
        list_hook=budget.keep,
        object_hook=budget.keep,
    )


class _Budget:
    """The bytes one message may still decode to; every container is charged on the way."""

    __slots__ = ("left", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.left = AMPLIFICATION * size + _SLACK

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise SerializationError(
                f"message of {self.size} bytes decodes to more than {AMPLIFICATION} times "
                f"its size and {_SLACK >> 20} MiB"
            )

    def keep(self, value: T) -> T:
        """msgpack's hook for each array and map, once it is built."""
        self.left -= sys.getsizeof(value)
        if self.left < 0:
            self.spend(0)
        return value


def _decode_ext(depth: int, budget: _Budget | None, code: int, data: bytes) -> Any:
    """msgpack's hook for each extension value at nesting level ``depth``."""
    decode = _DECODERS.get(code)
    if decode is None:
        raise SerializationError(f"unknown extension type {code} in message")
    if budget is None:
        return decode(data, depth, None)
    # The copy of ``data`` lives while its contents decode: nested levels add up.
    copy = _BYTES + len(data)
    budget.spend(copy)
    value = decode(data, depth, budget)
    budget.spend(sys.getsizeof(value) - copy)
    return value


def _offset(v: datetime | time) -> bytes:
    """An aware value's UTC offset in microseconds, packed; b"" for a naive one."""
    if v.tzinfo is None:
        return b""
    offset = v.utcoffset()
    if offset is None:
        raise SerializationError(f"{v!r}: its tzinfo gives no fixed UTC offset")
    return _OFFSET_S.pack((offset.days * 86400 + offset.seconds) * 10**6 + offset.microseconds)


def _enc_datetime(v: datetime, _: int) -> ExtType:
    flags = v.fold | (_AWARE if v.tzinfo is not None else 0)
    fields = (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, flags)
    return ExtType(DATETIME, _DATETIME_S.pack(*fields) + _offset(v))


def _enc_time(v: time, _: int) -> ExtType:
    flags = v.fold | (_AWARE if v.tzinfo is not None else 0)
    fields = (v.hour, v.minute, v.second, v.microsecond, flags)
    return ExtType(TIME, _TIME_S.pack(*fields) + _offset(v))


def _enc_bigint(v: int, _: int) -> ExtType:
    # msgpack calls the hook for integers outside [-2**63, 2**64).
    return ExtType(BIGINT, v.to_bytes(v.bit_length() // 8 + 1, "big", signed=True))


_Encoder = Callable[[Any, int], Any]
_ENCODERS: dict[type, _Encoder] = {
    tuple: lambda v, d: ExtType(TUPLE, pack(list(v), d + 1)),
    set: lambda v, d: ExtType(SET, pack(list(v), d + 1)),
    frozenset: lambda v, d: ExtType(FROZENSET, pack(list(v), d + 1)),
    datetime: _enc_datetime,
    date: lambda v, _: ExtType(DATE, _DATE_S.pack(v.year, v.month, v.day)),
    time: _enc_time,
    timedelta: lambda v, _: ExtType(
        TIMEDELTA, _TIMEDELTA_S.pack(v.days, v.seconds, v.microseconds)
    ),
    Decimal: lambda v, _: ExtType(DECIMAL, str(v).encode("ascii")),
    UUID: lambda v, _: ExtType(UUID_, v.bytes),
    complex: lambda v, _: ExtType(COMPLEX, _COMPLEX_S.pack(v.real, v.imag)),
    int: _enc_bigint,
}
_BUILTIN_TYPES = frozenset(_ENCODERS) | {type(None), bool, float, str, bytes, list, dict}
# Subclasses travel as their base type (bool never gets here: msgpack packs it natively).
_BASES: tuple[type, ...] = (list, dict, tuple, set, frozenset, str, bytes, int, float)


def _encode(obj: Any, depth: int) -> Any:
    """msgpack's hook for every value it does not pack natively under ``strict_types``."""
    encode = _ENCODERS.get(type(obj))
    if encode is not None:
        return encode(obj, depth)
    for base in _BASES:
        if isinstance(obj, base):
            value = base(obj)
            # msgpack calls the hook once per value: finish the job for the base type.
            if base in (tuple, set, frozenset) or (base is int and not -(2**63) <= value < 2**64):
                return _ENCODERS[base](value, depth)
            return value
    raise SerializationError(
        f"cannot serialize a {_type_name(type(obj))} object; "
        "use a supported type or remoteexec.register_type()"
    )


def _items(data: bytes, depth: int, budget: _Budget | None) -> list[Any]:
    items = unpack(data, depth + 1, budget)
    if type(items) is not list:
        raise SerializationError("malformed collection extension")
    if budget is not None:  # the list is made into the tuple or set charged instead
        budget.left += sys.getsizeof(items)
    return items


def _dec_tz(data: bytes, start: int, flags: int) -> timezone | None:
    if not flags & _AWARE:
        if len(data) != start:
            raise SerializationError("malformed date/time extension")
        return None
    return timezone(timedelta(microseconds=_OFFSET_S.unpack(data[start:])[0]))


def _dec_datetime(data: bytes, *_: Any) -> datetime:
    year, month, day, hour, minute, second, us, flags = _DATETIME_S.unpack_from(data)
    tz = _dec_tz(data, _DATETIME_S.size, flags)
    return datetime(year, month, day, hour, minute, second, us, tz, fold=flags & _FOLD)


def _dec_time(data: bytes, *_: Any) -> time:
    hour, minute, second, us, flags = _TIME_S.unpack_from(data)
    return time(hour, minute, second, us, _dec_tz(data, _TIME_S.size, flags), fold=flags & _FOLD)


def _dec_decimal(data: bytes, *_: Any) -> Decimal:
    if not data.isascii():
        raise SerializationError("malformed Decimal extension")
    return Decimal(data.decode("ascii"))


def _dec_registered(data: bytes, depth: int, budget: _Budget | None) -> Any:
    item = unpack(data, depth + 1, budget)
    if type(item) is not list or len(item) != 2 or type(item[0]) is not str:
        raise SerializationError("malformed registered-type extension")
    entry = _REGISTRY.get(item[0])
    if entry is None:
        raise SerializationError(f"unknown registered type {item[0][:200]!r} in message")
    return entry[2](item[1])


_DECODERS: dict[int, Callable[[bytes, int, _Budget | None], Any]] = {
    TUPLE: lambda b, d, k: tuple(_items(b, d, k)),
    SET: lambda b, d, k: set(_items(b, d, k)),
    FROZENSET: lambda b, d, k: frozenset(_items(b, d, k)),
    DATETIME: _dec_datetime,
    DATE: lambda b, *_: date(*_DATE_S.unpack(b)),
    TIME: _dec_time,
    TIMEDELTA: lambda b, *_: timedelta(*_TIMEDELTA_S.unpack(b)),
    DECIMAL: _dec_decimal,
    UUID_: lambda b, *_: UUID(bytes=b),
    COMPLEX: lambda b, *_: complex(*_COMPLEX_S.unpack(b)),
    BIGINT: lambda b, *_: int.from_bytes(b, "big", signed=True),
    REGISTERED: _dec_registered,
}


def _default(depth: int) -> Callable[[Any], Any]:
    def default(obj: Any) -> Any:
        return _encode(obj, depth)

    return default


_DEFAULTS = [_default(d) for d in range(MAX_DEPTH + 1)]
_UNMETERED_HOOKS = [partial(_decode_ext, d, None) for d in range(MAX_DEPTH + 1)]
_POOLS: list[list[msgpack.Packer]] = [[] for _ in range(MAX_DEPTH + 1)]


# --- registered types ---------------------------------------------------------------------

# name -> (class, encode, decode)
_REGISTRY: dict[str, tuple[type, Callable[[Any], Any], Callable[[Any], Any]]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_type(
    cls: type[T],
    encode: Callable[[T], Any] | None = None,
    decode: Callable[[Any], T] | None = None,
) -> None:
    """Teach the codec a new type.

    On the wire the type is named ``f"{cls.__module__}.{cls.__qualname__}"``; a receiver
    finds it in its own registry only, so both sides must register it. Registering the
    same class again replaces its functions.

    A dataclass or an Enum needs no functions: ``register_type(Point)`` sends a dataclass
    as its fields by name and an Enum member as its value (``_records.py``).

    Args:
        cls: the type; only instances of exactly this class use it (not subclasses).
        encode: turns an instance into any value the codec can serialize.
        decode: turns that value back into an instance.

    Raises:
        ConfigurationError: ``cls`` is not a class, is a type the codec already handles,
            another class is registered under the same name, or the functions are missing
            for a class that is neither a dataclass nor an Enum.
    """
    if not isinstance(cls, type):
        raise ConfigurationError(f"register_type() needs a class, not {cls!r}")
    if encode is None and decode is None:
        encode, decode = derived(cls)
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


def _registered_encoder(name: str, encode: Callable[[Any], Any]) -> _Encoder:
    def encoder(obj: Any, depth: int) -> ExtType:
        try:
            value = encode(obj)
        except Exception as exc:
            raise SerializationError(f"encoding a {name} failed: {exc!r}") from exc
        return ExtType(REGISTERED, pack([name, value], depth + 1))

    return encoder
