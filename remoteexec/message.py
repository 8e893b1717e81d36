"""The wire format: a versioned msgpack envelope around calls and replies, and signing.

Every message (a ``Call`` from a client, a ``Reply`` from a worker) travels as the msgpack
array ``[version, kind, payload, signature]`` (decoded within bounds: ``envelope.py``):

* ``version`` -- ``FORMAT_VERSION``; any other value is refused.
* ``kind`` -- 1 for a call, 2 for a reply, so one cannot be replayed as the other.
* ``payload`` -- the msgpack-encoded fields (bin), decoded only after the signature passed:
  a call is ``[id, name, method, args, kwargs, deadline, max_attempts, time_limit, queue,
  reply_to, created]``, followed by a map of optional fields when it has any (``trace``:
  the caller's trace context, ``tracing.py``; ``retry``: the retry policy and the tries so
  far, ``retry_policy.py``; ``keep_result``: seconds the outcome is kept under the call's
  id; keys it does not know are ignored), a reply ``[id, value, failure]`` with ``failure``
  nil or ``[kind, type_name, message, traceback]``, followed by the failures of the earlier
  tries of a retried call (``[type_name, message, traceback]`` each) when there are any.
* ``signature`` -- HMAC-SHA256 over ``b"remoteexec" + bytes([version, kind]) + payload`` with
  the first secret, or nil. With secrets, a message must carry a signature made with any of
  them (rotation). Without secrets, signatures are neither made nor checked.

A signed call thus covers everything that decides where, whether and how often it runs and
where its result goes: its id (the one its reply is bound to), queue, reply address,
deadline, creation time, attempt limit and time limit. The backend's copies of the id,
queue and reply address are unsigned; the worker runs a call only where they match the
signed ones (``replay.py``). A reply is signed with the key that verified its call
(``Call.key``), so a client that knows only an older key of a rotation accepts it.

Numbers in a call are checked on decoding: finite, and within ``MAX_SECONDS`` (time limit),
``MAX_EPOCH`` (deadline, creation time), ``MAX_ATTEMPTS`` and ``MAX_KEEP_RESULT``.

Values inside the payload are msgpack's own types plus the extension types of
``_exttypes.py`` (tuple, set, datetime, Decimal, UUID, ... and ``register_type``). Nothing
from a message is ever imported, evaluated or unpickled. Any malformed body raises
``SerializationError``; nothing else escapes a decode.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ._exttypes import pack, register_type, unpack
from .config import MAX_ATTEMPTS, MAX_KEEP_RESULT
from .envelope import unpack_envelope
from .errors import ConfigurationError, PayloadTooLarge, SerializationError, SignatureError
from .retry_policy import Retry, Tries, carried_retry, carried_tries, tries_wire
from .tracing import carried

__all__ = ["FORMAT_VERSION", "Call", "Codec", "Failure", "Reply", "register_type"]

FORMAT_VERSION = 2
_CALL, _REPLY = 1, 2
_KIND_NAMES = {_CALL: "call", _REPLY: "reply"}
_NUMBER = (float, int)
_BINARY = (bytes, memoryview)  # a payload as ``unpack_envelope`` hands it over
MAX_SECONDS = 366 * 86400.0  # the longest time_limit a call may carry: a year
MAX_EPOCH = 2.0**33  # deadlines and creation times lie before the year 2242


# Call, Failure and Reply are made once per call: read-only by convention, not frozen (see
# backends/base.py: a frozen dataclass's __init__ is six times slower).


@dataclass(slots=True)
class Call:
    """A request to run ``name.method(*args, **kwargs)`` on a worker.

    Attributes:
        id: the task id, unique (made by the client).
        name: the task type's registered name.
        method: the method to call.
        args: positional arguments.
        kwargs: keyword arguments.
        deadline: epoch seconds after which a worker drops the call unrun, or None.
        max_attempts: how many times the call may be started (1 to ``MAX_ATTEMPTS``).
        time_limit: seconds the task may run before it is stopped, or None.
        queue: the queue the client sent it to.
        reply_to: the client's reply address.
        created: epoch seconds when the client made it.
        key: the index of the secret that verified it (set by ``decode_call``, not sent);
            its reply is signed with the same one.
        trace: the caller's trace context (``tracing.py``), or None.
        retry: the retry policy and the failed tries so far (``retry_policy.py``), or None.
        keep_result: seconds the outcome is kept under ``id`` (0: not kept).
    """

    id: str
    name: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    deadline: float | None
    max_attempts: int
    time_limit: float | None
    queue: str = ""
    reply_to: str = ""
    created: float = 0.0
    key: int = field(default=0, compare=False)
    trace: dict[str, str] | None = None
    retry: Retry | None = None
    keep_result: float = 0.0


@dataclass(slots=True)
class Failure:
    """Why a call produced no value.

    Attributes:
        kind: ``"remote"`` (the task raised) or a key of ``errors.ERROR_KINDS``.
        type_name: the exception's class name, e.g. ``"ValueError"``.
        message: the exception's message.
        traceback: the formatted traceback from the worker, or ``""``.
        earlier: the failures of the earlier tries of a retried call, oldest first.
        retryable: the task raised an exception its call's retry policy lists (the worker's
            own mark, not sent).
    """

    kind: str
    type_name: str
    message: str
    traceback: str
    earlier: Tries = ()
    retryable: bool = field(default=False, compare=False)


@dataclass(slots=True)
class Reply:
    """The outcome of a call: ``value`` when ``failure`` is None."""

    id: str
    value: Any
    failure: Failure | None


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

    @property
    def signing(self) -> bool:
        """True when secrets are set: messages are signed and verified."""
        return bool(self._keys)

    def encode_call(self, call: Call) -> bytes:
        """Encode a call for the backend.

        Raises:
            SerializationError: an argument's type is not supported.
            PayloadTooLarge: the message exceeds ``max_message_size``.
        """
        c = call
        fields = [c.id, c.name, c.method, list(c.args), c.kwargs, c.deadline, c.max_attempts]
        fields += (c.time_limit, c.queue, c.reply_to, c.created)
        if c.trace is not None or c.retry is not None or c.keep_result:
            fields.append(_optional(c))
        return self._seal(_CALL, fields)

    def decode_call(self, body: bytes) -> Call:
        """Decode a call a worker claimed; ``Call.key`` tells which secret verified it.

        Raises:
            SerializationError: the body is malformed, of another format version, holds
                an unknown extension or registered type, or a number out of range.
            SignatureError: secrets are set and the body is unsigned or forged.
            PayloadTooLarge: the body exceeds ``max_message_size``.
        """
        fields, key = self._open(_CALL, body)
        try:
            id_, name, method, args, kwargs, deadline, attempts, limit, *rest = fields
            queue, reply_to, created, *more = rest
        except (TypeError, ValueError):
            raise SerializationError("malformed call: wrong field count") from None
        if more and (len(more) > 1 or type(more[0]) is not dict):
            raise SerializationError("malformed call: wrong field count")
        if not (
            type(id_) is type(name) is type(method) is type(queue) is type(reply_to) is str
            and type(args) is list
            and type(kwargs) is dict
            and (not kwargs or all(type(k) is str for k in kwargs))
            and type(attempts) is int
        ):
            raise SerializationError("malformed call: a field has the wrong type")
        if not 1 <= attempts <= MAX_ATTEMPTS:
            raise SerializationError("malformed call: max_attempts out of range")
        created = _number("created", created, MAX_EPOCH)
        deadline = None if deadline is None else _number("deadline", deadline, MAX_EPOCH)
        limit = None if limit is None else _number("time_limit", limit, MAX_SECONDS, zero=False)
        call = Call(id_, name, method, tuple(args), kwargs, deadline, attempts, limit)
        call.queue, call.reply_to, call.created, call.key = queue, reply_to, created, key
        if more:
            call.trace = carried(more[0].get("trace"))
            call.retry = carried_retry(more[0].get("retry"))
            keep = more[0].get("keep_result")
            if keep is not None:
                call.keep_result = _number("keep_result", keep, MAX_KEEP_RESULT)
        return call

    def encode_reply(self, reply: Reply, *, key: int = 0) -> bytes:
        """Encode a worker's reply, signed with secret number ``key`` (the one that
        verified its call: ``Call.key``).

        Raises:
            SerializationError: the value's type is not supported (the worker then sends a
                ``Failure(kind="serialization")`` instead).
            PayloadTooLarge: the message exceeds ``max_message_size``.
        """
        f = reply.failure
        failure: list[Any] | None = None
        if f is not None:
            failure = [f.kind, f.type_name, f.message, f.traceback]
            if f.earlier:
                failure.append(tries_wire(f.earlier))
        return self._seal(_REPLY, [reply.id, reply.value, failure], key)

    def decode_reply(self, body: bytes) -> Reply:
        """Decode a reply a client received.

        Raises:
            SerializationError, SignatureError, PayloadTooLarge: as for ``decode_call``.
        """
        fields, _ = self._open(_REPLY, body)
        if type(fields) is not list or len(fields) != 3 or type(fields[0]) is not str:
            raise SerializationError("malformed reply")
        id_, value, f = fields
        if f is None:
            return Reply(id_, value, None)
        if type(f) is not list or len(f) not in (4, 5) or any(type(x) is not str for x in f[:4]):
            raise SerializationError("malformed reply: bad failure")
        earlier = carried_tries(f[4]) if len(f) == 5 else ()
        return Reply(id_, value, Failure(f[0], f[1], f[2], f[3], earlier))

    def peek_id(self, body: bytes) -> str | None:
        """Best effort: the task id of a reply that ``decode_reply`` rejected.

        The signature is NOT checked (an unsigned reply to a client with secrets must still
        fail its call rather than leave it waiting), so use the id only to fail that call.
        Returns None if the envelope is malformed. Never raises.
        """
        try:
            payload, _ = self._verified_payload(_REPLY, body, verify=False)
            unpacker = msgpack.Unpacker(
                raw=False,
                max_buffer_size=max(1, len(payload)),
                max_array_len=0,  # the id is a str: nothing nested is decoded
                max_map_len=0,
                max_ext_len=0,
            )
            unpacker.feed(payload)
            if unpacker.read_array_header() != 3:
                return None
            id_ = unpacker.unpack()
        except Exception:
            return None
        return id_ if type(id_) is str else None

    # -- envelope --

    def _seal(self, kind: int, fields: list[Any], key: int = 0) -> bytes:
        try:
            payload = pack(fields)
        except SerializationError:
            raise
        except Exception as exc:  # OverflowError, UnicodeEncodeError, ValueError (depth)
            raise SerializationError(f"cannot serialize {_KIND_NAMES[kind]}: {exc}") from exc
        self._check_size(len(payload))  # fail before copying a huge payload once more
        signature = self._keys[key].sign(_PREFIX[kind], payload) if self._keys else None
        body = pack([FORMAT_VERSION, kind, payload, signature])
        self._check_size(len(body))
        return body

    def _check_size(self, size: int) -> None:
        if size > self._max_size:
            raise PayloadTooLarge(
                f"message of {size} bytes exceeds max_message_size ({self._max_size} bytes)"
            )

    def _verified_payload(
        self, kind: int, body: bytes, *, verify: bool = True
    ) -> tuple[bytes | memoryview, int]:
        """The payload of ``body`` (of a large body, a view into it), and the index of the
        secret that verified it (0 when none did: no secrets, or ``verify`` False)."""
        if type(body) is not bytes:  # a backend hands over what it read: bytes or not
            raise SerializationError(f"malformed message: a {type(body).__name__}, not bytes")
        self._check_size(len(body))
        try:
            envelope = unpack_envelope(body)
        except Exception as exc:
            raise SerializationError(f"malformed message: {exc!r:.200}") from None
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
        if type(payload) not in _BINARY or not (signature is None or type(signature) is bytes):
            raise SerializationError("malformed message: bad envelope fields")
        if got_kind != kind or type(got_kind) is not int:
            raise SerializationError(
                f"expected a {_KIND_NAMES[kind]} message, got kind {got_kind!r:.40}"
            )
        index = 0
        if self._keys and verify:
            if signature is None:
                raise SignatureError(f"unsigned {_KIND_NAMES[kind]} message rejected")
            for index, key in enumerate(self._keys):  # noqa: B007 - index is returned
                if hmac.compare_digest(key.sign(_PREFIX[kind], payload), signature):
                    break
            else:
                raise SignatureError(f"{_KIND_NAMES[kind]} message with a bad signature rejected")
        return payload, index

    def _open(self, kind: int, body: bytes) -> tuple[Any, int]:
        payload, key = self._verified_payload(kind, body)
        try:
            return unpack(payload), key
        except SerializationError:
            raise
        except Exception as exc:  # msgpack's errors, TypeError, ValueError, RecursionError...
            raise SerializationError(f"malformed {_KIND_NAMES[kind]}: {exc!r:.200}") from None


def _optional(call: Call) -> dict[str, Any]:
    """The map of a call's optional fields."""
    retry = None if call.retry is None else call.retry.wire()
    keep = call.keep_result or None
    pairs = (("trace", call.trace), ("retry", retry), ("keep_result", keep))
    return {k: v for k, v in pairs if v is not None}


def _number(name: str, value: Any, high: float, *, zero: bool = True) -> float:
    """``value`` as a float if it is a finite number from 0 (or above 0) to ``high``."""
    if type(value) not in _NUMBER:
        raise SerializationError(f"malformed call: {name} is not a number")
    if type(value) is int and not 0 <= value <= high:  # a big int would not fit a float
        raise SerializationError(f"malformed call: {name} out of range")
    number = float(value)
    if not (math.isfinite(number) and 0 <= number <= high and (zero or number > 0)):
        raise SerializationError(f"malformed call: {name} {number!r:.40} out of range")
    return number
