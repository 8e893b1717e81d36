"""redis-py plumbing for ``redis.py``: connections, raw commands, error mapping, key names,
the byte layout of list elements, and the stateless command batches the adapter sends.

* ``connect`` opens a client that never resends a command by itself (a claim sent twice
  would put two tasks in one claim list); ``run`` sends raw commands in one round trip,
  skipping ``Pipeline``'s per-command bookkeeping on the hot paths.
* Every redis-py error leaves through ``map_redis_errors`` as ``BackendUnavailable``, with
  the URL's password scrubbed from the message.
* ``Keys`` names every key under the prefix (the layout is drawn in ``redis.py``).
* A task element is ``>IHH`` (attempt, len(id), len(reply_to)), then id, reply_to and body;
  a reply element is ``>H`` (len(id)), then id and the reply. Every element read back is
  untrusted: one not in this layout raises ``BadElement``, and a malformed task element is
  moved out of its queue into the dead letters (``quarantine``), never claimed.
* ``claim_pass``, ``complete_batch``, ``requeue``, ``hand_back`` and ``ring`` build (or send)
  the commands of one step, given the keys; why they are safe is in ``redis.py``. The state
  they depend on (tokens, epochs, what was sent) stays in ``RedisBackend``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from ..errors import BackendUnavailable, ConfigurationError, SerializationError
from .base import Claim, DeadLetter, Done

_pack_one: Callable[[tuple[Any, ...]], bytes] | None
try:  # hiredis packs a command in C; redis-py wraps each in a few µs of Python
    import hiredis
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NO_REPLY  # what gets() says

    _pack_one = hiredis.pack_command
    _PUSH = getattr(hiredis, "PushNotificationType", None)
except ImportError:  # pragma: no cover - hiredis is optional; or redis-py moved it
    _pack_one = _NO_REPLY = _PUSH = None

log = logging.getLogger("remoteexec.redis")  # the adapter's logger, as in redis.py

_HEAD = struct.Struct(">IHH")  # attempt, len(id), len(reply_to); then id, reply_to, body
_ID = struct.Struct(">H")  # a reply element: len(id), id, reply
_BELLS = 16  # doorbells kept per queue
_MAX_ATTEMPT = 2**32 - 1  # what the attempt field holds
MAX_DEAD = 1000  # dead letters kept
_IDLE_CHECK = 0.005  # seconds idle after which a connection is checked before use

# URL options ---------------------------------------------------------------------------


#: The URL options passed on to redis-py (``?prefix=`` is the adapter's own): only these,
#: so a misspelt option is a ``ConfigurationError``, not a ``TypeError`` at first use.
#: Nothing that would let redis-py resend a command or decode replies.
_OPTIONS = (
    *("db", "username", "password", "client_name", "health_check_interval"),
    *("socket_timeout", "socket_connect_timeout"),
)
_TCP_OPTIONS = ("socket_keepalive",)  # not on unix://
_TLS_OPTIONS = (  # rediss:// only
    *("ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"),
    *("ssl_password", "ssl_check_hostname", "ssl_min_version", "ssl_ciphers"),
)


def split_prefix(url: str) -> tuple[str, str]:
    """``url`` without its ``?prefix=`` option, and that prefix (``remoteexec:`` if none)."""
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    prefix = dict(pairs).get("prefix", "remoteexec:")
    rest = urlencode([(k, v) for k, v in pairs if k != "prefix"])
    # Not urlunsplit: it would make ``unix:///path.sock`` ``unix:/path.sock``.
    return base + ("?" + rest if rest else ""), prefix


def check_options(url: str) -> None:
    """Refuse a URL option redis-py does not take for this scheme, naming it.

    Raises:
        ConfigurationError: an unknown option.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    known = [*_OPTIONS, *(_TCP_OPTIONS if scheme != "unix" else ())]
    known += _TLS_OPTIONS if scheme == "rediss" else ()
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if key not in known:
            raise ConfigurationError(
                f"unknown Redis URL option {key!r:.60} for {scheme}://; "
                f"known options: prefix, {', '.join(known)}"
            )


def secrets_in(url: str) -> list[str]:
    """The passwords in ``url`` (userinfo or ``?password=``), as written and unquoted."""
    parts = urlsplit(url)
    secrets = [parts.password, dict(parse_qsl(parts.query)).get("password")]
    return [s for s in secrets if s] + [unquote(s) for s in secrets if s]


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# Connections and commands --------------------------------------------------------------


def connect(url: str, *, socket_timeout: float, secrets: Sequence[str]) -> redis.Redis:
    """A client for ``url`` that never resends a command.

    Raises:
        ConfigurationError: the URL or one of its options is invalid.
    """
    check_options(url)
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5.0,
            # No automatic resend: a claim sent twice would put two tasks in one claim
            # list. A pooled connection the server closed is replaced on checkout.
            retry=Retry(NoBackoff(), 0),
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid Redis URL: {scrub(str(exc), secrets)}") from None


def blocking_wait(client: redis.Redis) -> float:
    """How long one server-side blocking command may wait on ``client``.

    Well below the socket timeout, and short enough that a stopping worker notices within
    a second.
    """
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    return min(1.0, float(timeout) / 4) if timeout else 1.0


class map_redis_errors:
    """Map every redis-py error to ``BackendUnavailable`` (secrets scrubbed).

    A class, not ``contextlib.contextmanager``: it wraps every command on the hot path,
    and one instance serves any number of ``with`` blocks, nested or in other threads.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, redis.RedisError):
            message = f"Redis: {type(exc).__name__}: {scrub(str(exc), self._secrets)}"
            raise BackendUnavailable(message) from None


def raw(target: redis.Redis | Pipeline) -> Callable[..., Any]:
    """A command sender without redis-py's per-command signatures (they type values as str)."""
    return target.execute_command


class Link:
    """Per thread, one connection taken from ``client``'s pool once and kept.

    A pool checkout costs a ``poll()`` for stale data and some bookkeeping on every
    command; a busy worker sends thousands of round trips a second. The connection goes
    back to the pool when its thread ends, and closes with the pool.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._local = threading.local()

    def held(self) -> _Held:
        """This thread's connection; one idle for a while is checked as the pool does."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = _Held(self._pool)
        if time.monotonic() - held.used > _IDLE_CHECK:
            # Data waiting on an idle connection is the server closing it (a restart):
            # reconnect before sending, so the command is not lost with the old socket.
            try:
                stale = held.conn.can_read()
            except (redis.ConnectionError, OSError):  # closed: the parser says so
                stale = True
            if stale:
                held.conn.disconnect()
        return held


class _Held:
    def __init__(self, pool: Any) -> None:
        self.pool, self.conn, self.used = pool, pool.get_connection(), time.monotonic()

    def __del__(self) -> None:  # the thread ended
        with contextlib.suppress(Exception):
            self.pool.release(self.conn)


def run(
    link: Link,
    commands: list[tuple[Any, ...]],
    *,
    multi: bool = False,
    raise_errors: bool = True,
    then: Callable[[], list[tuple[Any, ...]]] | None = None,
) -> list[Any]:
    """Send ``commands`` in one round trip (in ``MULTI`` if asked); return raw replies.

    The hot paths use this instead of a ``Pipeline``, which spends a third of a busy
    worker's time on per-command bookkeeping and response callbacks. Every reply is read
    before the first error reply is raised (or, with ``raise_errors=False``, returned); a
    driver error carries the replies read before it as ``replies``. ``then`` builds more
    commands once ``commands`` are on their way (not with ``multi``): their replies
    follow, in the same round trip.
    """
    assert not (multi and then), "then is not sent inside MULTI"
    held = link.held()
    conn = held.conn
    out: list[Any] = []
    try:
        sent = [("MULTI",), *commands, ("EXEC",)] if multi else commands
        conn.send_packed_command(_pack(conn, sent))
        if then is not None:
            more = then()
            conn.send_packed_command(_pack(conn, more))
            sent = [*sent, *more]
        for _ in sent:
            out.append(_reply(conn))
        held.used = time.monotonic()
    except BaseException as exc:
        conn.disconnect()  # replies may be left unread; the next command reconnects
        if isinstance(exc, redis.RedisError):
            exc.replies = out  # type: ignore[attr-defined]  # those read before it failed
        raise
    if multi:
        if isinstance(out[-1], redis.ResponseError):
            raise out[-1]
        out = out[-1]
        if out is None or len(out) != len(commands):
            raise redis.ResponseError("transaction aborted")
    for reply in out if raise_errors else ():
        if isinstance(reply, redis.ResponseError):
            raise reply
    return list(out)


def _pack(conn: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """``commands`` in the Redis protocol, as ``send_packed_command`` takes them."""
    if _pack_one is not None:
        try:
            return [b"".join([_pack_one(command) for command in commands])]
        except TypeError:  # an argument hiredis does not take: redis-py says which
            pass
    return conn.pack_commands(commands)  # type: ignore[no-any-return]


def _reply(conn: Any) -> Any:
    """The next reply on ``conn``; an error reply is returned, not raised, so that the
    replies after it are read too and the connection stays in step.

    A reply hiredis has already parsed (most of a batch's arrive in one read) is taken
    from its reader directly; redis-py's ``read_response`` spends a few µs of Python on
    each. Anything unusual, and every read from the socket, goes through redis-py.
    """
    reader = getattr(getattr(conn, "_parser", None), "_reader", None)
    if reader is not None and _NO_REPLY is not None:
        got = reader.gets()
        if got is not _NO_REPLY:  # as read_response does with it:
            if isinstance(got, redis.ConnectionError):
                raise got
            if type(got) is list and got and isinstance(got[0], redis.ConnectionError):
                raise got[0]
            if _PUSH is not None and isinstance(got, _PUSH):  # never subscribed to any
                raise redis.ConnectionError("unexpected push message from Redis")
            return got
    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc


# Key names -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """The name of every key under ``prefix``; a queue's keys share its ``{queue}`` slot."""

    prefix: str

    def _of(self, queue: str, kind: str) -> str:
        return f"{self.prefix}{{{queue}}}:{kind}"

    def waiting(self, queue: str) -> str:
        return self._of(queue, "w")

    def leases(self, queue: str) -> str:
        return self._of(queue, "l")

    def bells(self, queue: str) -> str:
        return self._of(queue, "b")

    def claim(self, queue: str, token: str) -> str:
        return self._of(queue, "c:" + token)

    def claim_raw(self, queue: str, token: bytes) -> bytes:
        """``claim`` for a token as read from the leases set (any bytes, not ours only)."""
        return self._of(queue, "c:").encode() + token

    def replies(self, reply_to: str) -> str:
        return self._of(reply_to, "r")

    @property
    def epoch(self) -> str:
        return self.prefix + "epoch"

    @property
    def queues(self) -> str:
        return self.prefix + "queues"

    @property
    def workers(self) -> str:
        return self.prefix + "workers"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"


# List elements -------------------------------------------------------------------------


class BadElement(SerializationError):
    """A list element read from Redis that is not in this module's layout."""


def pack_task(task_id: str, reply_to: str, attempt: int, body: bytes) -> bytes:
    i, r = task_id.encode(), reply_to.encode()
    return _HEAD.pack(attempt, len(i), len(r)) + i + r + body


def unpack_task(elem: bytes, queue: str, token: str) -> Claim:
    """The claim a task element holds.

    Raises:
        BadElement: it is shorter than its header says, or its id or reply_to is not
            UTF-8.
    """
    attempt, n, m = _task_head(elem)
    i = _HEAD.size
    try:
        ident, reply_to = elem[i : i + n].decode(), elem[i + n : i + n + m].decode()
    except UnicodeDecodeError:
        raise BadElement("task element: its id or reply_to is not UTF-8") from None
    return Claim(ident, queue, reply_to, elem[i + n + m :], attempt, token)


def _task_head(elem: Any) -> tuple[int, int, int]:
    if type(elem) is not bytes:
        raise BadElement(f"task element is a {type(elem).__name__}, not bytes")
    if len(elem) < _HEAD.size:
        raise BadElement(f"task element of {len(elem)} bytes: shorter than its header")
    attempt, n, m = _HEAD.unpack_from(elem)
    if _HEAD.size + n + m > len(elem):
        raise BadElement(f"task element of {len(elem)} bytes: id and reply_to overrun it")
    return attempt, n, m


def task_id_of(elem: Any) -> str:
    """Best effort, for a dead letter: the id of a task element, or ``"?"``. Never raises."""
    try:
        _, n, _ = _task_head(elem)
    except BadElement:
        return "?"
    return str(elem[_HEAD.size : _HEAD.size + n].decode("utf-8", "replace"))


def next_attempt(elem: bytes) -> tuple[int, bytes]:
    """A task element's attempt, and the element with its attempt one higher.

    Raises:
        BadElement: as ``unpack_task``, or its attempt cannot be raised.
    """
    unpack_task(elem, "", "")
    attempt, n, m = _HEAD.unpack_from(elem)
    if attempt >= _MAX_ATTEMPT:
        raise BadElement(f"task element with attempt {attempt}: cannot count another")
    return attempt, _HEAD.pack(attempt + 1, n, m) + elem[_HEAD.size :]


def pack_reply(task_id: str, reply: bytes) -> bytes:
    ident = task_id.encode()
    return _ID.pack(len(ident)) + ident + reply


def unpack_reply(elem: bytes) -> tuple[str, bytes]:
    """A reply element's task id and reply.

    Raises:
        BadElement: it is shorter than its header says, or its id is not UTF-8.
    """
    if type(elem) is not bytes or len(elem) < _ID.size:
        raise BadElement("reply element shorter than its header")
    start = _ID.size + _ID.unpack_from(elem)[0]
    if start > len(elem):
        raise BadElement(f"reply element of {len(elem)} bytes: its id overruns it")
    try:
        return elem[_ID.size : start].decode(), elem[start:]
    except UnicodeDecodeError:
        raise BadElement("reply element: its id is not UTF-8") from None


def dead_element(p: Pipeline, keys: Keys, queue: str, elem: Any, reason: str) -> None:
    """Queue on ``p`` the dead letter of a malformed task element of ``queue``, logged."""
    log.error("malformed task element in queue %r moved to the dead letters: %s", queue, reason)
    reason = f"malformed task element: {reason}"
    letter = DeadLetter(task_id_of(elem), queue, "?", reason, time.time())
    p.lpush(keys.dead, json.dumps(asdict(letter)))
    p.ltrim(keys.dead, 0, MAX_DEAD - 1)


def quarantine(
    client: redis.Redis, keys: Keys, queue: str, bad: Sequence[tuple[str, bytes, str]]
) -> None:
    """Move malformed task elements, each ``(token, element, reason)`` just claimed, out
    of their claim lists and leases into the dead letters."""
    with client.pipeline(transaction=True) as p:
        for token, elem, reason in bad:
            p.delete(keys.claim(queue, token))
            p.zrem(keys.leases(queue), token)
            dead_element(p, keys, queue, elem, reason)
        p.execute()


# Command batches -----------------------------------------------------------------------


def ring_commands(keys: Keys, queue: str, n: int) -> list[tuple[Any, ...]]:
    """Ring the doorbells; claims trim them, and they expire when the rings stop."""
    bells = keys.bells(queue)
    # Waiters look again every second anyway: a doorbell outlives its ring by 2 s.
    return [("LPUSH", bells, *[b""] * min(n, _BELLS)), ("PEXPIRE", bells, 2000)]


def ring(p: Pipeline, keys: Keys, queue: str, n: int) -> None:
    """``ring_commands`` on a pipeline."""
    for command in ring_commands(keys, queue, n):
        p.execute_command(*command)  # type: ignore[no-untyped-call]


def hand_back(p: Pipeline, keys: Keys, claims: Sequence[Claim]) -> None:
    """Move each claimed task back to the head of its queue and drop its lease."""
    for c in reversed(claims):  # the first claimed ends up first in line again
        key = keys.claim(c.queue, c.token)
        p.lmove(key, keys.waiting(c.queue), "LEFT", "RIGHT")
        p.delete(key)
        p.zrem(keys.leases(c.queue), c.token)
        ring(p, keys, c.queue, 1)


def requeue(
    client: redis.Redis,
    keys: Keys,
    queue: str,
    tokens: Sequence[bytes],
    claims: Sequence[Claim] = (),
) -> None:
    """Put the tasks of expired leases back at the head of their queue, attempt + 1.

    Each step is conditional on the claim list still existing, so a holder completing
    or releasing meanwhile wins, and a second reaper changes nothing. ``claims`` are
    handed back first, so they end up behind the requeued tasks. ``tokens`` are the
    leases set's members as read (bytes): a malformed element found under one goes to
    the dead letters instead.
    """
    claimed = [keys.claim_raw(queue, t) for t in tokens]
    with client.pipeline(transaction=False) as p:
        for key in claimed:
            p.lindex(key, 0)
        elems = p.execute()
    with client.pipeline(transaction=True) as p:
        hand_back(p, keys, claims)
        for key, elem in zip(claimed, elems, strict=True):
            if elem is None:
                continue  # completed, released, or a token that never got a task
            try:
                attempt, again = next_attempt(elem)
            except BadElement as exc:
                dead_element(p, keys, queue, elem, str(exc))
                p.delete(key)
                continue
            log.warning("lease expired on attempt %d of a task in %r: requeued", attempt, queue)
            raw(p)("RPUSHX", key, again)
            raw(p)("LMOVE", key, keys.waiting(queue), "RIGHT", "RIGHT")
            p.delete(key)
        p.zrem(keys.leases(queue), *tokens)
        ring(p, keys, queue, len(tokens))
        p.execute()


#: A member of every leases zset, at +inf, longer than a listpack member may be (Redis's
#: zset-max-listpack-value, 64 bytes by default): the set is a skiplist from the first claim
#: on. A small zset is a listpack, and each ZADD to it scanned and moved the whole set: 8-10
#: µs a task in C (``INFO commandstats``), 0.5 in a skiplist; C went from 42,000 calls/s to
#: 55,700-58,900. Readers of the set need not skip it: no claim list, no expiry, never due.
SKIPLIST_KEEPER = "~" * 65


def claim_pass(
    keys: Keys,
    queue: str,
    tokens: list[str],
    *,
    stale: list[str],
    now: float,
    lease: float,
    block: float,
) -> list[tuple[Any, ...]]:
    """One claim pass on ``queue``: one move per token, the first may wait ``block`` s.

    The replies are: the expired lease tokens, then (``stale`` dropped,) the next lease
    due, then one moved task element (or ``None``) per token, in order.
    """
    leases, waiting = keys.leases(queue), keys.waiting(queue)
    claimed = [keys.claim(queue, t) for t in tokens]
    # No MULTI needed: each move is atomic, and its token is leased before it runs.
    first: tuple[Any, ...] = ("LMOVE", waiting, claimed[0], "RIGHT", "LEFT")
    if block:
        first = ("BLMOVE", *first[1:], round(block, 3))
    return [
        ("ZRANGEBYSCORE", leases, "-inf", now, "LIMIT", 0, max(len(tokens), 100)),
        ("LTRIM", keys.bells(queue), 0, _BELLS - 1),
        *([("ZREM", leases, *stale)] if stale else []),
        ("ZADD", leases, "NX", "+inf", SKIPLIST_KEEPER),  # written to the AOF once
        ("ZADD", leases, *itertools.chain(*((now + block + lease, t) for t in tokens))),
        ("ZRANGE", leases, 0, 0, "WITHSCORES"),  # the next lease due
        first,
        *[("LMOVE", waiting, key, "RIGHT", "LEFT") for key in claimed[1:]],
    ]


def complete_batch(
    keys: Keys, done: Sequence[Done], *, ttl: int
) -> tuple[list[tuple[Any, ...]], list[int]]:
    """The ``MULTI`` body that ends ``done``'s leases, replies pushed with a ``ttl`` ms.

    Returns:
        The commands, and per item the index of the reply that is positive if its lease
        was still held (-1 for a claim already in the batch: only the first counts).
    """
    boxes, marks = set(), []
    ended: dict[str, tuple[list[str], list[str]]] = {}  # queue -> (tokens, claim lists)
    seen: set[str] = set()
    cmds: list[tuple[Any, ...]] = []
    for d in done:
        c, key = d.claim, keys.claim(d.claim.queue, d.claim.token)
        if key in seen:  # the same claim twice in one batch: only the first counts
            marks.append(-1)
            continue
        seen.add(key)
        marks.append(len(cmds))
        if d.reply is not None:  # pushed into the claim list, so only if still held
            box = keys.replies(c.reply_to)
            boxes.add(box)
            cmds.append(("RPUSHX", key, pack_reply(c.id, d.reply)))
            cmds.append(("LMOVE", key, box, "RIGHT", "RIGHT"))
        else:
            cmds.append(("DEL", key))
        tokens, claimed = ended.setdefault(c.queue, ([], []))
        tokens.append(c.token)
        claimed.append(key)
    for queue, (tokens, claimed) in ended.items():  # one ZREM and one DEL per queue
        cmds += [("ZREM", keys.leases(queue), *tokens), ("DEL", *claimed)]
    cmds += [("PEXPIRE", box, ttl) for box in boxes]
    return cmds, marks
