"""A message body's envelope, ``[version, kind, payload, signature]``, decoded within bounds
from an untrusted body (``message.py`` checks its fields and verifies the signature).
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import SerializationError


def _flat(items: list[Any]) -> list[Any]:
    """The envelope's ``list_hook``: an array inside it is refused as soon as it is built."""
    if list in map(type, items):
        raise SerializationError("malformed message: nested arrays in the envelope")
    return items


_LIMITS: dict[str, Any] = {
    "raw": False,
    "max_array_len": 4,
    "max_map_len": 0,
    "max_ext_len": 0,
    "max_str_len": 1024,
}
_BIN_LENGTH = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # bin 8/16/32: how many bytes its length takes
_LARGE = 16 * 1024  # a body up to this size cannot decode to much: copied and decoded


def unpack_envelope(body: bytes) -> Any:
    """The envelope array of ``body``: no maps or extensions, at most four fields, and (in
    a body over ``_LARGE`` bytes) an array nested in it refused once built and the
    payload a view into ``body``, so a hostile body decodes to about its own size and a
    large one is not copied while its payload decodes."""
    if len(body) <= _LARGE:  # the per-call path: keywords spelled out, no dict to unpack
        return msgpack.unpackb(
            body, raw=False, max_array_len=4, max_map_len=0, max_ext_len=0, max_str_len=1024
        )
    fields = _split(body)
    if fields is None:  # not the usual layout: decoded (and refused) field by field
        return msgpack.unpackb(body, **_LIMITS, list_hook=_flat)
    return fields


def _split(body: bytes) -> list[Any] | None:
    """``[version, kind, payload, signature]`` of a large body whose payload is a bin
    behind a small version and kind, the payload a memoryview of ``body``; None when the
    body is laid out otherwise."""
    head = msgpack.Unpacker(**_LIMITS, list_hook=_flat)
    head.feed(body[:64])  # an array header and two small ints take a few bytes
    try:
        if head.read_array_header() != 4:
            return None
        version, kind = head.unpack(), head.unpack()
    except Exception:  # left to the field-by-field decoding, which says what is wrong
        return None
    at = head.tell()
    width = _BIN_LENGTH.get(body[at], 0) if at < len(body) else 0
    start = at + 1 + width
    if not width or start > len(body):
        return None
    end = start + int.from_bytes(body[at + 1 : start], "big")
    view = memoryview(body)
    signature = msgpack.unpackb(view[end:], **_LIMITS, list_hook=_flat)  # raises if cut
    return [version, kind, view[start:end], signature]
