"""Out-of-band payloads: arguments and results above ``blob_threshold`` go to a blob store.

Each top-level argument, keyword value and result whose packed size is above the
threshold is stored once in a blob store (``blobstores``) and replaced, in the message,
by a ``BlobRef``: the store's kind, a random blob id, the size, the SHA-256 digest and
how the value is encoded (``RAW_BYTES`` for bytes, bytearray and memoryview, ``RAW_STR``
for str as UTF-8, ``MSGPACK`` for anything else, packed as in a message). The reference
travels inside the payload, so a signed message covers it. bytes and str are streamed
into the store from the caller's own buffer (memoryview slices, or UTF-8 slices of the
str) while they are hashed, never packed whole.

On the other side, ``resolve_call`` and ``resolve_value`` put the values back: the
reference is checked (its size within ``max_blob_size``), the blob read as one bytes
object and checked against the size and digest before anything decodes it. A blob that
is missing (it expired or was removed), altered or of the wrong size raises
``SerializationError``; a reference claiming more than ``max_blob_size``,
``PayloadTooLarge``. References nested inside a value are not resolved: only those that
stand for a whole argument or result are.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._exttypes import pack, unpack
from .blobstores import BlobStore, Chunk, check_id, new_id
from .errors import (
    BackendUnavailable,
    ConfigurationError,
    PayloadTooLarge,
    RemoteExecError,
    SerializationError,
)
from .message import Call, Codec, Reply, register_type

if TYPE_CHECKING:
    from .backends import Backend
    from .config import Settings

__all__ = ["MSGPACK", "RAW_BYTES", "RAW_STR", "BlobRef", "Payloads", "open_blob_store"]

log = logging.getLogger("remoteexec.blobs")

RAW_BYTES, RAW_STR, MSGPACK = 0, 1, 2
_RAW: dict[type, int] = {
    bytes: RAW_BYTES,
    bytearray: RAW_BYTES,
    memoryview: RAW_BYTES,
    str: RAW_STR,
}
_KINDS = ("backend", "file")
_DIGEST = 32
#: Seconds a blob outlives its call's deadline (the clocks of client, worker and store
#: may differ by that much).
DEADLINE_GRACE = 60.0
_KEPT_GRACE = 5.0  # a kept result's blob outlives it: it is stored before the result


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A value kept in a blob store: where, how long, its digest and encoding."""

    store: str
    id: str
    size: int
    sha256: bytes
    encoding: int


def _encode_ref(ref: BlobRef) -> list[Any]:
    return [ref.store, ref.id, ref.size, ref.sha256, ref.encoding]


def _decode_ref(item: Any) -> BlobRef:
    """A reference read from a message: untrusted, so every field is checked."""
    try:
        store, blob_id, size, digest, encoding = item
    except (TypeError, ValueError):
        raise SerializationError("malformed blob reference") from None
    if not (
        store in _KINDS
        and type(size) is int
        and 0 <= size < 2**63
        and type(digest) is bytes
        and len(digest) == _DIGEST
        and encoding in (RAW_BYTES, RAW_STR, MSGPACK)
        and type(encoding) is int
    ):
        raise SerializationError("malformed blob reference")
    try:
        check_id(blob_id)
    except ValueError as exc:
        raise SerializationError(f"malformed blob reference: {exc}") from None
    return BlobRef(store, blob_id, size, digest, encoding)


register_type(BlobRef, _encode_ref, _decode_ref)


def open_blob_store(url: str | None, backend: Backend) -> BlobStore:
    """The store ``url`` names (``file:///path``), or ``backend``'s own when it is None.

    Raises:
        ConfigurationError: an unknown kind of URL, a missing folder, or a backend
            without a store of its own.
    """
    if not url:
        return backend.blob_store()
    if url.lower().startswith("file://"):
        from .blobstores.files import FileBlobStore

        return FileBlobStore.from_url(url)
    raise ConfigurationError(f"blob_url must be a file:/// URL, not {url[:80]!r}")


class Payloads:
    """Moves the large values of calls and replies out of band, and back.

    Args:
        settings: ``blob_threshold``, ``max_blob_size``, ``blob_url``, ``result_ttl``.
        backend: whose own store holds the blobs when ``blob_url`` is not set.

    The store is opened on first use. Safe to share between threads.
    """

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.threshold = settings.blob_threshold
        self.max_size = settings.max_blob_size
        self.result_ttl = settings.result_ttl
        self._url = settings.blob_url
        self._backend = backend
        self._store: BlobStore | None = None

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            self._store = open_blob_store(self._url, self._backend)
        return self._store

    def ttl(self, deadline: float | None) -> float:
        """Seconds a blob of a call with ``deadline`` is kept: ``result_ttl``, or less."""
        if deadline is None:
            return self.result_ttl
        return min(self.result_ttl, max(0.0, deadline - time.time()) + DEADLINE_GRACE)

    # -- the sending side ----------------------------------------------------------------

    def encode_call(self, codec: Codec, call: Call) -> tuple[bytes, list[BlobRef]]:
        """``codec.encode_call(call)``, its large arguments stored first; the references.

        Raises:
            SerializationError, PayloadTooLarge: as ``encode_call``, or an argument above
                ``max_blob_size`` (nothing is stored then).
            BackendUnavailable: the store cannot be reached.
        """
        if not self._raw_above(call):
            body = self._fits(codec.encode_call, call, False)  # most calls: small
            if body is not None:
                return body, []
        ttl = self.ttl(call.deadline)
        args, kwargs = list(call.args), dict(call.kwargs)
        slots: list[tuple[Any, Any]] = [(args, i) for i in range(len(args))]
        slots += [(kwargs, k) for k in kwargs]
        refs: list[BlobRef] = []
        try:
            for packed in (False, True):  # raw values first; packing the rest if need be
                for target, key in slots:
                    ref = self._offload(target[key], ttl, packed)
                    if ref is not None:
                        target[key] = ref
                        refs.append(ref)
                call.args, call.kwargs = tuple(args), kwargs
                body = self._fits(codec.encode_call, call, packed)
                if body is not None:
                    return body, refs
            raise AssertionError("unreachable")  # the second pass returns or raises
        except BaseException:
            self.delete(refs)
            raise

    def encode_reply(
        self, codec: Codec, reply: Reply, key: int, deadline: float | None, keep: float = 0.0
    ) -> tuple[bytes, BlobRef | None]:
        """``codec.encode_reply(reply, key=key)``, a large value stored first, for as long
        as the reply is kept (``keep`` seconds: ``keep_result``) if that is longer.

        Raises:
            as ``encode_call``.
        """
        value = reply.value
        if type(value) not in _RAW or len(value) <= self.threshold:  # the usual reply
            try:
                body = codec.encode_reply(reply, key=key)
            except PayloadTooLarge:
                pass
            else:
                if len(body) <= self.threshold:
                    return body, None
        ref = None
        try:
            for packed in (False, True):
                if reply.failure is None and not isinstance(reply.value, BlobRef):
                    ttl = max(self.ttl(deadline), keep + _KEPT_GRACE if keep else 0.0)
                    ref = self._offload(reply.value, ttl, packed)
                    reply.value = reply.value if ref is None else ref
                fitting = self._fits(lambda r: codec.encode_reply(r, key=key), reply, packed)
                if fitting is not None:
                    return fitting, ref
            raise AssertionError("unreachable")
        except BaseException:
            self.delete([ref] if ref is not None else [])
            raise

    def _raw_above(self, call: Call) -> bool:
        """Whether an argument of ``call`` is bytes or str (...) longer than the threshold."""
        limit = self.threshold
        for value in call.args:
            if type(value) in _RAW and len(value) > limit:
                return True
        if call.kwargs:
            for value in call.kwargs.values():
                if type(value) in _RAW and len(value) > limit:
                    return True
        return False

    def _fits(self, encode: Any, message: Any, last: bool) -> bytes | None:
        """``encode(message)`` if it is small enough to go as it is (or ``last``), else
        None: its values are to be packed one by one."""
        try:
            body: bytes = encode(message)
        except PayloadTooLarge:
            if last:
                raise
            return None
        return body if last or len(body) <= self.threshold else None

    def _offload(self, value: Any, ttl: float, packed: bool) -> BlobRef | None:
        """Store ``value`` if it is above the threshold; its reference, else None. Raw
        values are measured without packing; others only when ``packed``."""
        encoding = _RAW.get(type(value), MSGPACK)
        if encoding == RAW_BYTES:
            data = value
            size = value.nbytes if type(value) is memoryview else len(value)
        elif encoding == RAW_STR:
            data = value
            size = len(value) if value.isascii() or len(value) > self.threshold else _utf8(value)
        elif packed and not isinstance(value, BlobRef):
            data = _pack(value)
            size = len(data)
        else:
            return None
        if size <= self.threshold:
            return None
        if size > self.max_size:
            raise PayloadTooLarge(
                f"an argument or result of {size} bytes exceeds max_blob_size "
                f"({self.max_size} bytes)"
            )
        store = self.store
        chunks = _str_chunks(data, store.chunk_size) if encoding == RAW_STR else None
        return self.put(chunks or _slices(data, store.chunk_size), ttl, encoding)

    def put(self, chunks: Iterator[Chunk], ttl: float, encoding: int) -> BlobRef:
        """Stream ``chunks`` into the store, hashing them; the reference to the blob."""
        store, blob_id = self.store, new_id()
        digest, size = hashlib.sha256(), 0

        def counted() -> Iterator[Chunk]:
            nonlocal size
            for chunk in chunks:
                size += len(chunk)
                if size > self.max_size:
                    raise PayloadTooLarge(f"a value exceeds max_blob_size ({self.max_size} bytes)")
                digest.update(chunk)
                yield chunk

        try:
            store.write(blob_id, counted(), ttl)
        except BaseException as exc:
            self._delete_ids(store, [blob_id])
            if isinstance(exc, OSError):  # a folder's: full, read-only, gone...
                raise BackendUnavailable(f"cannot store a blob: {exc}") from exc
            raise
        return BlobRef(store.kind, blob_id, size, digest.digest(), encoding)

    # -- the receiving side --------------------------------------------------------------

    def resolve_call(self, call: Call) -> None:
        """Put the values of ``call``'s references back in place.

        Raises:
            SerializationError: a blob is missing, altered, of the wrong size or kind.
            PayloadTooLarge: a reference claims more than ``max_blob_size``.
            BackendUnavailable: the store cannot be reached.
        """
        if any(isinstance(v, BlobRef) for v in (*call.args, *call.kwargs.values())):
            call.args = tuple(self.resolve_value(v) for v in call.args)
            call.kwargs = {k: self.resolve_value(v) for k, v in call.kwargs.items()}

    def resolve_value(self, value: Any) -> Any:
        """``value``, or if it is a reference, the value it stands for (see above)."""
        if not isinstance(value, BlobRef):
            return value
        ref, store = value, self.store
        if ref.store != store.kind:
            raise SerializationError(
                f"blob {ref.id} is in a {ref.store!r} store, but this side uses a "
                f"{store.kind!r} one: set the same blob_url on clients and workers"
            )
        if ref.size > self.max_size:
            raise PayloadTooLarge(
                f"blob {ref.id} of {ref.size} bytes exceeds max_blob_size ({self.max_size} bytes)"
            )
        try:
            data = store.read(ref.id, ref.size)
        except RemoteExecError:
            raise
        except Exception as exc:  # a folder's OSError, MemoryError...
            raise SerializationError(f"blob {ref.id} cannot be read: {exc!r:.200}") from exc
        if data is None:
            raise SerializationError(
                f"blob {ref.id} of {ref.size} bytes is missing: it expired (result_ttl) "
                "or was removed"
            )
        if len(data) != ref.size or hashlib.sha256(data).digest() != ref.sha256:
            raise SerializationError(f"blob {ref.id} does not match its size and digest")
        if ref.encoding == RAW_BYTES:
            return data
        try:
            return data.decode("utf-8") if ref.encoding == RAW_STR else unpack(data)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"malformed blob {ref.id}: {exc!r:.200}") from None

    # -- cleaning up ---------------------------------------------------------------------

    def delete(self, refs: Sequence[BlobRef]) -> None:
        """Remove the blobs of ``refs``, best effort (what is left expires anyway)."""
        if refs:
            self._delete_ids(self.store, [r.id for r in refs])

    def _delete_ids(self, store: BlobStore, ids: list[str]) -> None:
        try:
            store.delete(ids)
        except Exception as exc:  # BackendUnavailable, a folder's OSError
            log.warning("could not delete %d blob(s), they will expire: %s", len(ids), exc)

    def sweep(self) -> None:
        """Remove expired blobs from a store that does not expire them by itself (a
        folder: the backend's own sweep covers the backend's store)."""
        if self._url:
            try:
                self.store.sweep()
            except Exception as exc:  # best effort: the next sweep tries again
                log.warning("sweeping the blob folder failed: %s", exc)


def refs_of(call: Call) -> list[BlobRef]:
    """The references standing for ``call``'s arguments."""
    return [v for v in (*call.args, *call.kwargs.values()) if isinstance(v, BlobRef)]


def _utf8(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise SerializationError(f"cannot serialize a str: {exc}") from None


def _pack(value: Any) -> bytes:
    try:
        return pack(value)
    except SerializationError:
        raise
    except Exception as exc:  # OverflowError, UnicodeEncodeError, ValueError (depth)
        raise SerializationError(f"cannot serialize a value: {exc}") from exc


def _slices(data: Any, size: int) -> Iterator[Chunk]:
    view = memoryview(data)
    if not view.c_contiguous or view.format != "B" or view.ndim != 1:
        view = memoryview(view.tobytes())  # a rare kind of buffer: one copy
    for start in range(0, len(view), size):
        yield view[start : start + size]


def _str_chunks(text: str, size: int) -> Iterator[Chunk]:
    step = max(1, size // 4)  # characters: at most 4 UTF-8 bytes each
    for start in range(0, len(text), step):
        try:
            yield text[start : start + step].encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SerializationError(f"cannot serialize a str: {exc}") from None
