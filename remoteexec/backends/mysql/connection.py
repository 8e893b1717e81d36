"""PyMySQL plumbing for the MySQL adapter: URL options, TLS, connections, error mapping,
retries, and statements sent in as few round trips as the packet size allows.

* One connection per thread, re-created in a child after ``fork`` (the child never touches
  its parent's socket: ``sql.PerThread``) and after the server closed it (a restart): an
  idle connection with something to read was closed by the server, so it is replaced
  before use.
* Sessions run in autocommit mode at READ COMMITTED, with the time zone at UTC (so
  ``UNIX_TIMESTAMP(NOW(6))`` is exact) and a 5 s lock wait timeout.
* ``MULTI_STATEMENTS`` lets one round trip carry a whole batch; ``FOUND_ROWS`` makes an
  ``UPDATE``'s row count the rows it matched.
* TLS: any ``ssl*`` URL option asks for it, and then the server's certificate must chain to
  a trusted CA (``ssl_ca``, else the system's) and name the URL's host, unless
  ``ssl_verify_mode=none`` or ``ssl_check_hostname=false`` say not to (with a warning).
  ``ssl=false`` is plain text. With no ``ssl*`` option PyMySQL decides (1.2: TLS if the
  server offers it, verifying nothing).
* Every PyMySQL or socket error leaves through ``map_mysql_errors`` as
  ``BackendUnavailable``, which names the server but never the password, and says so first
  when a TLS connection failed. Deadlocks (1213) and lock wait timeouts (1205) are retried
  first, up to ten times, after a pause that grows with each try.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import pymysql
from pymysql.constants import CLIENT, SERVER_STATUS

from ...errors import BackendUnavailable, ConfigurationError, PayloadTooLarge
from ..sql import PerThread
from ..tls import check_files, failure_hint, flag, tls_failure, verify_mode, warn_unverified

log = logging.getLogger("remoteexec.mysql")

T = TypeVar("T")
Conn: TypeAlias = "pymysql.connections.Connection[pymysql.cursors.Cursor]"
Cursor = pymysql.cursors.Cursor
Part = tuple[str, tuple[Any, ...]]
Result = list[tuple[int, tuple[tuple[Any, ...], ...]]]  # (rowcount, rows) per statement

_SESSION = (
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; "
    "SET SESSION time_zone = '+00:00', SESSION innodb_lock_wait_timeout = 5"
)
_ADAPTER = ("claim", "wait")  # options for the adapter, not for PyMySQL
_TLS = (
    *("ssl", "ssl_ca", "ssl_cert", "ssl_key", "ssl_key_password"),
    *("ssl_verify_mode", "ssl_check_hostname"),
)
_OPTIONS = (*_ADAPTER, *_TLS, "unix_socket")
_TIMEOUTS = {"connect_timeout": 10.0, "read_timeout": 30.0, "write_timeout": 30.0}
_LOCK_ERRORS = (1205, 1213)  # lock wait timeout, deadlock
_GONE_ERRORS = (2006, 2013, 2055)  # server has gone away, lost connection
_RETRIES = 10


@contextlib.contextmanager
def map_mysql_errors(where: str) -> Iterator[None]:
    """Raise every PyMySQL (or socket) error inside the block as ``BackendUnavailable``
    (``where``: ``host:port/database``)."""
    try:
        yield
    except (pymysql.err.Error, OSError) as exc:
        failure = tls_failure(exc)
        if failure is not None:
            hint = failure_hint(failure, where.rpartition(":")[0], ca="ssl_ca", client_cert=None)
            raise BackendUnavailable(f"MySQL at {where}: {failure}{hint}") from exc
        code, msg = exc.args[:2] if len(exc.args) > 1 else (None, exc)
        detail = f"{msg} (error {code})" if code else str(msg) or type(exc).__name__
        raise BackendUnavailable(f"MySQL at {where}: {detail}") from exc


def _literal(conn: Conn, value: Any) -> bytes:
    """One value as SQL.

    Bytes travel as ``_binary'...'`` with backslash escapes: about 3% larger than random
    data, at most twice (PyMySQL's ``X'...'`` always doubles it), so a 10 MiB body fits the
    16 MiB ``max_allowed_packet`` that servers ship with.
    """
    if isinstance(value, (bytes, bytearray)):
        if (
            getattr(conn, "server_status", 0) or 0
        ) & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
            return b"_binary'" + bytes(value).replace(b"'", b"''") + b"'"
        escaped = bytes(value).replace(b"\\", b"\\\\").replace(b"'", b"\\'")
        return b"_binary'" + escaped.replace(b"\0", b"\\0").replace(b"\x1a", b"\\Z") + b"'"
    return conn.escape(value).encode("utf8")


def render(conn: Conn, sql: str, args: Sequence[Any] = ()) -> bytes:
    """``sql`` with each ``%s`` replaced by the next argument, as bytes to send."""
    pieces = sql.split("%s")
    if len(pieces) != len(args) + 1:
        raise ValueError(f"{len(pieces) - 1} placeholders for {len(args)} arguments")
    out = [pieces[0].encode("utf8")]
    for value, piece in zip(args, pieces[1:], strict=True):
        out += (_literal(conn, value), piece.encode("utf8"))
    return b"".join(out)


def _send(cur: Cursor, query: bytes) -> Result:
    cur.execute(query)  # type: ignore[call-overload]  # PyMySQL sends bytes as they are
    return [(cur.rowcount, cur.fetchall()), *read_rest(cur)]


def read_rest(cur: Cursor) -> Result:
    """The results after the first of a multi-statement query ``cur`` has sent."""
    out: Result = []
    while cur.nextset():
        out.append((cur.rowcount, cur.fetchall()))
    return out


def execute(cur: Cursor, sql: str, args: Sequence[Any] = ()) -> Result:
    """Run one (multi-)statement query; return every statement's (rowcount, rows)."""
    return _send(cur, render(cur.connection, sql, args))


def run_many(cur: Cursor, queries: Sequence[bytes], *, txn: bool, max_packet: int) -> Result:
    """Run statements in as few round trips as ``max_packet`` allows, one result each.

    With ``txn`` they all run in one transaction.

    Raises:
        PayloadTooLarge: one statement alone is larger than ``max_packet``.
    """
    too_big = max((len(q) for q in queries), default=0)
    if too_big > max_packet - 1024:
        raise PayloadTooLarge(
            f"a {too_big}-byte statement exceeds the server's max_allowed_packet "
            f"({max_packet}); raise it on the server or send less"
        )
    if txn:
        queries = [b"START TRANSACTION", *queries, b"COMMIT"]
    out: Result = []
    chunk: list[bytes] = []
    used = 0
    budget = max(max_packet // 2, 1 << 16)
    for i, query in enumerate(queries):
        chunk.append(query)
        used += len(query) + 2
        if i + 1 == len(queries) or used + len(queries[i + 1]) > budget:
            out += _send(cur, b"; ".join(chunk))
            chunk, used = [], 0
    return out


def script(cur: Cursor, parts: Sequence[Part], *, txn: bool, max_packet: int) -> Result:
    """``run_many`` for (sql, args) parts."""
    queries = [render(cur.connection, sql, args) for sql, args in parts]
    return run_many(cur, queries, txn=txn, max_packet=max_packet)


def _tls(options: dict[str, str], host: str) -> dict[str, Any]:
    """PyMySQL's TLS arguments: a verifying context when the URL asks for TLS.

    Raises:
        ConfigurationError: a bad or contradictory value, or a file that cannot be used.
    """
    given = {k: options[k] for k in _TLS if k in options}
    if not given:
        return {}  # PyMySQL decides
    if "ssl" in given and not flag(
        "ssl", given["ssl"], also_true=("required",), also_false=("disabled",)
    ):
        if len(given) > 1:
            others = ", ".join(k for k in given if k != "ssl")
            raise ConfigurationError(f"MySQL URL option ssl=false contradicts {others}")
        return {"ssl_disabled": True}
    mode = verify_mode("ssl_verify_mode", given.get("ssl_verify_mode", "required"))
    check = flag("ssl_check_hostname", given.get("ssl_check_hostname", "true"))
    if mode == ssl.CERT_NONE and "ssl_check_hostname" in given and check:
        raise ConfigurationError("ssl_check_hostname=true needs a verified certificate")
    if "ssl_key" in given and "ssl_cert" not in given:
        raise ConfigurationError("ssl_key needs ssl_cert (the client certificate)")
    check_files(given, ("ssl_ca", "ssl_cert", "ssl_key"))
    try:
        ctx = ssl.create_default_context(cafile=given.get("ssl_ca"))
        ctx.check_hostname = check and mode != ssl.CERT_NONE
        ctx.verify_mode = mode
        if "ssl_cert" in given:
            key, password = given.get("ssl_key"), given.get("ssl_key_password")
            ctx.load_cert_chain(given["ssl_cert"], key, password)
    except (OSError, ssl.SSLError) as exc:
        # The message names no file's content and no password.
        raise ConfigurationError(f"unusable MySQL TLS file: {exc}") from None
    if mode == ssl.CERT_NONE:
        warn_unverified("MySQL", host, "certificate", "ssl_verify_mode=none")
    elif not check:
        warn_unverified("MySQL", host, "host name", "ssl_check_hostname=false")
    return {"ssl": ctx}


def parse_url(url: str) -> tuple[dict[str, Any], dict[str, str]]:
    """PyMySQL ``connect`` arguments, and the adapter's options (``claim``, ``wait``), from
    a ``mysql://`` URL.

    Raises:
        ConfigurationError: the URL is malformed or names an unknown option.
    """
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_OPTIONS) - set(_TIMEOUTS))
    if unknown:
        raise ConfigurationError(f"unknown MySQL URL option(s): {', '.join(unknown)}")
    try:
        port = parts.port or 3306
        timeouts = {k: float(options[k]) for k in _TIMEOUTS if k in options}
    except ValueError as exc:
        raise ConfigurationError(f"bad MySQL URL: {exc}") from None
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ConfigurationError("a mysql:// URL must name a database: mysql://host:port/db")
    host = parts.hostname or "127.0.0.1"
    args = {
        "host": host,
        "port": port,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": database,
        "unix_socket": options.get("unix_socket") or None,
        **timeouts,
        **_tls(options, host),
    }
    return args, {k: options[k] for k in _ADAPTER if options.get(k)}


def _stale(conn: Conn) -> bool:
    """True if an idle connection has something to read: the server closed it."""
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Connections:
    """A PyMySQL connection per thread and process; ``run`` is the adapter boundary.

    ``on_connect`` runs on each new connection before its first use.
    """

    def __init__(self, args: dict[str, Any], on_connect: Callable[[Conn], None]) -> None:
        self.where = f"{args.get('host')}:{args.get('port')}/{args.get('database')}"
        self._args = {
            **_TIMEOUTS,
            **args,
            "charset": "utf8mb4",
            "autocommit": True,
            "client_flag": CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS,
            "init_command": _SESSION,
            "max_allowed_packet": 1 << 30,  # the server's own limit is the one that counts
        }
        self.read_timeout = float(self._args["read_timeout"])
        self._on_connect = on_connect
        self._conns = PerThread(self._open, usable=lambda conn: not _stale(conn))

    def connection(self) -> Conn:
        """This thread's connection (opened now, or again if the server closed it)."""
        return self._conns.get()

    def _open(self) -> Conn:
        conn = pymysql.connect(**self._args, defer_connect=True)
        try:
            conn.connect()
        except pymysql.err.OperationalError as exc:
            offered = (getattr(conn, "server_capabilities", 0) or 0) & CLIENT.SSL
            if exc.args[0] == 1045 and offered and self._args.get("ssl_disabled"):
                # MariaDB's require_secure_transport refuses plain text as "access denied".
                raise BackendUnavailable(
                    f"MySQL at {self.where}: {exc.args[1]} (error 1045); the URL says "
                    "ssl=false and the server offers TLS: a server that requires TLS "
                    "refuses plain-text logins this way"
                ) from exc
            raise
        self._on_connect(conn)
        return conn

    def run(self, op: Callable[[Cursor], T], *, retry_lost: bool = False) -> T:
        """Run ``op`` on this thread's connection; driver errors leave as BackendUnavailable.

        Deadlocks and lock wait timeouts roll back and run ``op`` again (``_RETRIES`` times).
        ``retry_lost``: ``op`` is idempotent, so run it once more on a new connection when
        the connection was lost during the call.
        """
        with map_mysql_errors(self.where):
            for attempt in range(_RETRIES + 1):
                conn = self.connection()
                try:
                    return op(conn.cursor())
                except pymysql.err.OperationalError as exc:
                    code = exc.args[0] if exc.args else 0
                    if code in _LOCK_ERRORS and attempt < _RETRIES:
                        log.debug("lock contention (error %s), retrying", code)
                        self._rollback(conn)
                        time.sleep(random.uniform(0.001, 0.01) * (attempt + 1))
                        continue
                    self._conns.discard()
                    if code in _GONE_ERRORS and retry_lost and attempt == 0:
                        continue
                    raise
                except BaseException:
                    self._conns.discard()  # never reuse a connection in an unknown state
                    raise
            raise AssertionError("unreachable")

    def _rollback(self, conn: Conn) -> None:
        try:
            conn.rollback()
        except (pymysql.err.Error, OSError):
            self._conns.discard()

    def close(self) -> None:
        """Close this process's connections (those of every thread)."""
        self._conns.close(_close)


def _close(conn: Conn) -> None:
    if conn.open:
        with contextlib.suppress(pymysql.err.Error, OSError):
            conn.close()
