"""What a msgpack message decodes to, measured before anything is decoded.

``measure(data, limit)`` walks a message's bytes without building a value and adds up what
decoding it would allocate in CPython: each array's list and its slots, each map's table,
each string, bin, number and extension value that is not a shared singleton (``None``,
booleans, integers from -5 to 256, empty and one-character strings), and each extension's
copy of its bytes, rounded as the allocator rounds. It raises ``SerializationError`` as soon
as the sum passes ``limit``, and for a message msgpack would refuse anyway (cut short, a
reserved byte, trailing bytes, nesting past msgpack's stack, an unknown extension type), so
a decoding bomb costs the walk and nothing more. The sums are upper bounds for distinct
values (a set of repeated values, or an interned map key, takes less).

The extension type codes live here: the wire's format is fixed by them, and their sizes are
measured here. ``_exttypes.py`` encodes and decodes them.
"""

from __future__ import annotations

import re

from .errors import SerializationError

__all__ = ["measure"]

Buffer = bytes | memoryview

# Extension type codes: fixed forever within a format version.
TUPLE, SET, FROZENSET, DATETIME, DATE, TIME = 1, 2, 3, 4, 5, 6
TIMEDELTA, DECIMAL, UUID_, COMPLEX, BIGINT, REGISTERED = 7, 8, 9, 10, 11, 12

#: Container nesting msgpack's unpacker accepts (its stack); deeper raises ``StackError``.
_STACK = 1024
#: Extension levels ``_exttypes`` accepts inside one another.
MAX_EXT_DEPTH = 32

_LIST, _TUPLE_HEAD, _STR, _NONASCII_STR, _BYTES = 56, 40, 49, 80, 33
# Extension values: what the object keeps (an aware date/time adds its timezone and offset).
_EXT_OBJECT = {DATETIME: 48, DATE: 32, TIME: 48, TIMEDELTA: 48, UUID_: 112, COMPLEX: 32, -1: 64}
_EXT_NAIVE = {DATETIME: 12, TIME: 8}  # their length without an offset
_TIMEZONE = 112


def _fixed(codes: bytes, width: int, cost: int) -> list[tuple[int, int, int, re.Pattern[bytes]]]:
    """Table rows for values of ``width`` bytes after their type byte, each decoding to
    ``cost`` bytes, with the pattern of a run of them (matched to skip a run at once)."""
    one = b"[" + b"".join(re.escape(bytes([c])) for c in codes) + b"]"
    run = re.compile(one + b"*" if width == 0 else b"(?:" + one + b"[\x00-\xff]{%d})*" % width)
    return [(c, width, cost, run) for c in codes]


# Fixed-width scalars by type byte: (bytes after it, bytes decoded, run pattern). One-byte
# values that decode to shared objects (0..127, -5..-1, nil, false, true) cost nothing
# beyond their slot; ints and floats 32 (48 past 2**60); ints up to 255 are shared.
_SCALARS: list[tuple[int, int, re.Pattern[bytes]] | None] = [None] * 256
for _byte, _width, _cost, _pattern in (
    _fixed(bytes(range(0x80)) + bytes(range(0xFB, 0x100)) + b"\xc0\xc2\xc3", 0, 0)
    + _fixed(bytes(range(0xE0, 0xFB)), 0, 32)
    + _fixed(b"\xcc", 1, 0)
    + _fixed(b"\xd0", 1, 32)
    + _fixed(b"\xcd\xd1", 2, 32)
    + _fixed(b"\xca\xce\xd2", 4, 32)
    + _fixed(b"\xcb", 8, 32)
    + _fixed(b"\xcf\xd3", 8, 48)
):
    _SCALARS[_byte] = (_width, _cost, _pattern)
_ARRAYS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
_MAPS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_STRS = frozenset(range(0xA0, 0xC0)) | {0xD9, 0xDA, 0xDB}
_KEY, _KEYS = 66, 1024  # map keys remembered: up to 64 characters, the first 1024 distinct
_INTERNED = 96  # a new key's slot in the interpreter's table of interned strings, and its
# share of that table's growth (the old table lives while the new one is filled)
_CHUNK = 1024  # values matched at once: a run's pattern keeps a stack as it goes


def _round(n: int) -> int:
    return (n + 15) & ~15


def _dict(n: int) -> int:
    """A dict of ``n`` entries, as msgpack builds it (one insertion at a time)."""
    if n == 0:
        return 64
    slots = 8
    while slots * 2 // 3 < n:
        slots *= 2
    index = 1 if slots <= 128 else 2 if slots <= 1 << 15 else 4 if slots <= 1 << 31 else 8
    return 96 + slots * index + slots * 2 // 3 * 24


def _set(n: int) -> int:
    """A set of ``n`` distinct values, as ``set(list)`` grows its table."""
    slots = 8
    while n >= (3 * (slots - 1) + 4) // 5:  # full: resized to 4 (past 50,000: 2) times used
        used = (3 * (slots - 1) + 4) // 5
        wanted, slots = used * (4 if used <= 50_000 else 2), 8
        while slots <= wanted:
            slots *= 2
    return 216 + 16 * slots if n > 4 else 216


def _str(body: Buffer) -> int:
    n = len(body)
    if n <= 1:  # empty and one-character strings are shared
        return 0
    ascii_ = n <= 64 and bytes(body).isascii()  # a longer one is charged as non-ASCII
    return _round((_STR if ascii_ else _NONASCII_STR) + n + 1)


def _refuse(why: str) -> SerializationError:
    return SerializationError(f"malformed message: {why}")


def measure(data: Buffer, limit: int, ext_depth: int = 0) -> int:
    """What decoding ``data`` allocates (bytes, an upper bound); raises
    ``SerializationError`` once that passes ``limit`` or where ``data`` is malformed."""
    try:
        return _walk(memoryview(data), limit, ext_depth)[1]  # a view: slices are not copies
    except _TooLarge:
        raise SerializationError(
            f"message of {len(data)} bytes decodes to more than {limit} bytes "
            "(send large data as bytes, or in several calls)"
        ) from None


class _TooLarge(SerializationError):
    """The sum passed the limit (reworded by ``measure`` with the whole message's)."""


def _walk(data: Buffer, limit: int, ext_depth: int) -> tuple[int, int, int]:
    """What decoding ``data`` keeps and holds at its peak, and the length of the top value
    if it is an array (else -1)."""
    end, p, total, high, top = len(data), 0, 0, 0, -1
    stack: list[tuple[int, bool]] = []
    left, in_map = 1, False  # values still to read in the innermost open container
    keys: set[bytes] = set()  # map keys seen: msgpack interns them, so a repeat is free
    while left or stack:
        if not left:
            left, in_map = stack.pop()
            continue
        if p >= end:
            raise _refuse("cut short")
        b = data[p]
        left -= 1
        scalar = _SCALARS[b]
        if scalar is not None:
            p, n = _run(data, p + 1, left, scalar[0], scalar[2])
            left -= n
            total += scalar[1] * (1 + n)
            continue  # past the end: refused as cut short, at the next value or below
        start = p
        p, cost, inside, spike = _value(b, data, p + 1, limit - total, ext_depth)
        if in_map and left & 1 and b in _STRS and p - start <= _KEY:
            cost = _key(bytes(data[start:p]), cost, keys)
        high = max(high, total + spike)
        total += cost
        if total > limit and p <= end:  # past the end: cut short, refused as that
            raise _TooLarge
        if not stack and b in _ARRAYS:  # the top value
            top = inside
        if inside:
            if len(stack) >= _STACK:
                raise SerializationError(f"message nested deeper than {_STACK} levels")
            stack.append((left, in_map))
            left, in_map = inside, b in _MAPS
    if p > end:
        raise _refuse("cut short")
    if p < end:
        raise _refuse(f"{end - p} bytes after its value")
    return total, max(high, total), top


def _key(key: bytes, cost: int, keys: set[bytes]) -> int:
    """What a str map key costs: msgpack interns it, so a key seen before is free."""
    if key in keys:
        return 0
    if len(keys) < _KEYS:
        keys.add(key)
    return cost + _INTERNED


def _run(
    data: Buffer, p: int, left: int, width: int, pattern: re.Pattern[bytes]
) -> tuple[int, int]:
    """Skip a fixed-width scalar's bytes at ``p`` and the run of its type that follows (up
    to ``left`` values): where the run ends, and how many values it held."""
    p += width
    if p > len(data):  # cut short: the caller refuses it
        return p, 0
    step, n = width + 1, 0
    while left > n:
        chunk = min(left - n, _CHUNK)
        match = pattern.match(data, p, p + step * chunk)
        ran = (match.end() - p) // step if match else 0
        p, n = p + step * ran, n + ran
        if ran < chunk:
            break
    return p, n


def _value(b: int, data: Buffer, p: int, limit: int, ext_depth: int) -> tuple[int, int, int, int]:
    """The value of type byte ``b`` whose header goes on at ``p``: where it ends (its
    contents, for a container), what it decodes to, how many values it contains, and what
    decoding it holds at its peak (an extension's copies)."""
    if b in _STRS:
        width = 0 if b <= 0xBF else 1 << (b - 0xD9)
        n = b & 0x1F if b <= 0xBF else int.from_bytes(data[p : p + width], "big")
        p += width
        return p + n, _str(data[p : p + n]), 0, 0
    if b in _ARRAYS or b in _MAPS:
        width = 0 if b <= 0x9F else 2 if b in (0xDC, 0xDE) else 4
        n = b & 0x0F if b <= 0x9F else int.from_bytes(data[p : p + width], "big")
        p += width
        inside = n if b in _ARRAYS else 2 * n
        if inside > len(data) - p:  # each value takes a byte at least
            raise _refuse(f"a container of {inside} values in {len(data) - p} bytes")
        cost = _round(_LIST) + _round(8 * n) if b in _ARRAYS else _dict(n)
        return p, cost, inside, 0
    if 0xC4 <= b <= 0xC6:  # bin
        width = 1 << (b - 0xC4)
        n = int.from_bytes(data[p : p + width], "big")
        return p + width + n, _round(_BYTES + n) if n else 0, 0, 0
    if 0xD4 <= b <= 0xD8 or 0xC7 <= b <= 0xC9:  # ext
        width = 0 if b >= 0xD4 else 1 << (b - 0xC7)
        n = 1 << (b - 0xD4) if b >= 0xD4 else int.from_bytes(data[p : p + width], "big")
        p += width
        if p >= len(data):
            raise _refuse("cut short")
        code = data[p] - 256 * (data[p] > 127)
        kept, peak = _ext(code, data[p + 1 : p + 1 + n], limit, ext_depth)
        if peak > limit:
            raise _TooLarge
        return p + 1 + n, kept, 0, peak
    raise _refuse(f"reserved byte 0x{b:02x}")  # 0xC1, never used


def _ext(code: int, body: Buffer, limit: int, ext_depth: int) -> tuple[int, int]:
    """What an extension value keeps once decoded, and what decoding it holds at its peak:
    the copy of its bytes msgpack hands over, what is decoded from them, the value made."""
    copy, n = _round(_BYTES + len(body)), len(body)
    if code in (TUPLE, SET, FROZENSET, REGISTERED):
        if ext_depth >= MAX_EXT_DEPTH:
            raise SerializationError(f"message nested deeper than {MAX_EXT_DEPTH} extension levels")
        inner, inner_peak, count = _walk(body, limit - copy, ext_depth + 1)
        if code == REGISTERED:  # [name, encoded], made into a value: as large again, say
            return inner, copy + inner_peak + inner
        if count < 0:
            raise _refuse("a collection extension that is not an array")
        made = _round(_TUPLE_HEAD + 8 * count) if code == TUPLE else _round(_set(count))
        items = inner - _round(_LIST) - _round(8 * count)  # the list is let go
        growing = made // 2 if code != TUPLE else 0  # a set's last table, while it grows
        return items + made, copy + max(inner_peak, inner + made + growing)
    if code == DECIMAL:  # the digits as a str, then the Decimal
        return _round(104 + n), copy + _round(_STR + n) + _round(104 + n)
    if code == BIGINT:
        return _round(32 + n + n // 8), copy + _round(32 + n + n // 8)
    if code in _EXT_OBJECT:
        aware = code in _EXT_NAIVE and n > _EXT_NAIVE[code] and any(body[-8:])  # UTC is shared
        kept = _EXT_OBJECT[code] + (_TIMEZONE if aware else 0)
        return kept, copy + kept
    raise SerializationError(f"unknown extension type {code} in message")
