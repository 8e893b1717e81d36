"""Raw commands on the hot path: one connection kept per thread, one round trip per batch.

``run`` sends commands and reads their replies without redis-py's ``Pipeline``, which spends
a third of a busy worker's time on per-command bookkeeping and response callbacks.

This is the only module that reads redis-py's private parts, and only for the redis-py
versions in ``TESTED`` (the range the test suite runs against) with hiredis installed:
then a command batch is packed by hiredis in C, and a reply hiredis has already parsed is
taken from the parser's reader (``conn._parser._reader``, empty when it returns redis-py's
``NOT_ENOUGH_DATA``) instead of through ``read_response``, which spends a few µs of Python
on each. Otherwise everything goes through redis-py's public ``Connection`` methods:
``pack_commands``, ``send_packed_command``, ``read_response``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import ReadOnlyError

#: redis-py versions, ``[from, to)``, whose private parts ``reply`` reads.
TESTED = ((5, 1), (9, 0))
_IDLE_CHECK = 0.005  # seconds idle after which a connection is checked before use
#: With ``Link.durable``: the ``WAIT`` that ends each round trip (one replica, 1 s at most).
DURABLE_WAIT = ("WAIT", 1, 1000)


def _version(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


REDIS_PY = _version(redis.__version__)

_pack_one: Callable[[tuple[Any, ...]], bytes] | None = None
_NO_REPLY: object = None  # what the reader's gets() returns when no reply is complete
_PUSH: Any = None
if TESTED[0] <= REDIS_PY < TESTED[1]:
    try:
        import hiredis
        from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NO_REPLY

        _pack_one = getattr(hiredis, "pack_command", None)  # hiredis 2.1 and later
        _PUSH = getattr(hiredis, "PushNotificationType", None)
    except ImportError:  # hiredis is optional
        _NO_REPLY = None


def raw(target: redis.Redis | Pipeline) -> Callable[..., Any]:
    """A command sender without redis-py's per-command signatures (they type values as str)."""
    return target.execute_command


class Link:
    """Per thread, one connection taken from ``client``'s pool once and kept.

    A pool checkout costs a ``poll()`` for stale data and some bookkeeping on every
    command; a busy worker sends thousands of round trips a second. The connection goes
    back to the pool when its thread ends, and closes with the pool.
    """

    #: A link that sends each command to the node serving its key (``topology``).
    routed = False
    #: Each round trip ends with ``WAIT``: its writes reached a replica, or it fails.
    durable = False

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
                held.broken = True
        if held.broken:
            # ``connect``, not the implicit one of a send: a Sentinel-managed connection
            # asks the Sentinels for the primary's address there.
            held.conn.connect()
            held.broken = False
        return held

    def run_routed(self, commands: list[tuple[Any, ...]], **how: Any) -> list[Any]:
        """``run`` for a routed link, which sends commands its own way."""
        raise NotImplementedError


class _Held:
    def __init__(self, pool: Any) -> None:
        # Before 5.3 the pool wants a command name, which it ignores; since, it warns.
        conn = pool.get_connection() if REDIS_PY >= (5, 3) else pool.get_connection("_")
        self.pool, self.conn, self.used = pool, conn, time.monotonic()
        self.broken = False  # disconnected: connect before the next send

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

    Every reply is read before the first error reply is raised (or, with
    ``raise_errors=False``, returned); a driver error carries the replies read before it
    as ``replies``. ``then`` builds more commands once ``commands`` are on their way (not
    with ``multi``): their replies follow, in the same round trip.
    """
    assert not (multi and then), "then is not sent inside MULTI"
    if link.routed:
        return link.run_routed(commands, multi=multi, raise_errors=raise_errors, then=then)
    held = link.held()
    conn = held.conn
    out: list[Any] = []
    try:
        sent = [("MULTI",), *commands, ("EXEC",)] if multi else commands
        conn.send_packed_command(pack(conn, sent))
        if then is not None:
            more = then()
            conn.send_packed_command(pack(conn, more))
            sent = [*sent, *more]
        if link.durable:
            conn.send_packed_command(pack(conn, [DURABLE_WAIT]))
        for _ in sent:
            out.append(reply(conn))
        if link.durable:
            replicated(reply(conn))
        held.used = time.monotonic()
        primary(out)
    except BaseException as exc:
        conn.disconnect()  # replies may be left unread; the next command reconnects
        held.broken = True
        if isinstance(exc, redis.RedisError):
            exc.replies = out  # type: ignore[attr-defined]  # those read before it failed
        raise
    if multi:
        out = _executed(out, len(commands))
    for answer in out if raise_errors else ():
        if isinstance(answer, redis.ResponseError):
            raise answer
    return list(out)


def _executed(out: list[Any], n: int) -> list[Any]:
    """The replies of a ``MULTI`` body of ``n`` commands, from all of ``run``'s replies."""
    if isinstance(out[-1], redis.ResponseError):
        raise out[-1]
    if out[-1] is None or len(out[-1]) != n:
        raise redis.ResponseError("transaction aborted")
    return list(out[-1])


def primary(out: list[Any]) -> None:
    """Raise if a reply in ``out`` is ``READONLY``: a primary demoted by a failover (the
    connection is then dropped, and its successor found on reconnecting)."""
    if any(isinstance(r, ReadOnlyError) for r in out):
        raise redis.ConnectionError("Redis answered READONLY: no longer the primary")


def replicated(answer: Any) -> None:
    """Check a ``DURABLE_WAIT`` reply.

    Raises:
        redis.ConnectionError: no replica acknowledged the writes before it in time.
    """
    if not isinstance(answer, int) or answer < 1:
        raise redis.ConnectionError(f"durable: no replica acknowledged the writes ({answer!r})")


def pack(conn: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """``commands`` in the Redis protocol, as ``send_packed_command`` takes them."""
    if _pack_one is not None:
        try:
            return [b"".join([_pack_one(command) for command in commands])]
        except TypeError:  # an argument hiredis does not take: redis-py says which
            pass
    return conn.pack_commands(commands)  # type: ignore[no-any-return]


def reply(conn: Any) -> Any:
    """The next reply on ``conn``; an error reply is returned, not raised, so that the
    replies after it are read too and the connection stays in step.

    A reply hiredis has already parsed (most of a batch's arrive in one read) is taken
    from its reader directly; anything unusual, and every read from the socket, goes
    through redis-py.
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
