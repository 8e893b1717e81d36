"""``mysql://user:pass@host:port/db``: MySQL 5.7+, 8.x and MariaDB, through PyMySQL.

Tables are described in ``mysql_schema.py``; they are created on first use (or ahead of
time by ``remoteexec init-db``). All times come from the server's clock, so machines with
skewed clocks agree on leases.

Claims run in one of two modes, picked from the server's version unless the URL says
(``?claim=skip_locked`` or ``?claim=optimistic``):

* ``skip_locked`` (MySQL 8.0.1+, MariaDB 10.6+): one transaction selects up to ``limit``
  claimable rows ``FOR UPDATE SKIP LOCKED`` (waiting rows in FIFO order, plus rows whose
  lease expired), then takes them with one ``UPDATE`` and commits. Concurrent claimers skip
  each other's rows instead of waiting for them.
* ``optimistic`` (older servers): the seed's optimistic locking. Candidates are read
  without locks; each is taken by ``UPDATE ... WHERE seq = ? AND lock_version = ?``, and
  counts only if that changed the row. Losing a race costs a claim, never a duplicate.

Guarantees: a task is held by at most one live token; ``complete`` deletes the task and
stores its reply in one transaction, only while its token holds an unexpired lease; reads
always see committed data (autocommit, READ COMMITTED). Statements are batched into
multi-statement round trips (one, where packet size allows). Every PyMySQL error becomes
``BackendUnavailable``; deadlocks and lock-wait timeouts are retried here first.
URL options: ``claim``, ``ssl`` (``true`` verifies the certificate and host name),
``ssl_ca``, ``ssl_cert``, ``ssl_key``, ``connect_timeout``, ``read_timeout``,
``write_timeout``, ``unix_socket``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import select
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import pymysql
from pymysql.constants import CLIENT

from ..errors import BackendUnavailable, ConfigurationError
from .base import Backend, Claim, DeadLetter, Done, Job, Stats, WorkerInfo
from .mysql_schema import MIGRATIONS, SCHEMA_VERSION, schema_sql

__all__ = ["MySQLBackend", "map_mysql_errors", "schema_sql"]

log = logging.getLogger("remoteexec.mysql")

T = TypeVar("T")
Conn = pymysql.connections.Connection[pymysql.cursors.Cursor]
Cursor = pymysql.cursors.Cursor
Part = tuple[str, tuple[Any, ...]]
Result = list[tuple[int, tuple[tuple[Any, ...], ...]]]  # (rowcount, rows) per statement

NOW = "UNIX_TIMESTAMP(NOW(6))"
TASKS = "remoteexec_tasks"
_SESSION = (
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; "
    "SET SESSION time_zone = '+00:00', SESSION innodb_lock_wait_timeout = 5"
)
_OPTIONS = {"claim", "ssl", "ssl_ca", "ssl_cert", "ssl_key", "unix_socket"}
_TIMEOUTS = {"connect_timeout": 10.0, "read_timeout": 30.0, "write_timeout": 30.0}
_LOCK_ERRORS = (1205, 1213)  # lock wait timeout, deadlock
_GONE_ERRORS = (2006, 2013, 2055)  # server gone away, lost connection
_RETRIES = 5
_MIN_PAUSE, _MAX_PAUSE = 0.002, 0.04  # adaptive polling: an idle poller reacts in ~50 ms
_MAX_DEAD = 1000

_EXPIRED = (
    f"SELECT seq, lock_version, queue FROM {TASKS} WHERE state = 1 AND lease_until <= {NOW}"
    " AND queue IN ({}) ORDER BY lease_until LIMIT %s"
)
_WAITING = (
    f"SELECT seq, lock_version, queue FROM {TASKS} WHERE queue = %s AND state = 0"
    " ORDER BY seq LIMIT %s"
)
_SKIP = " FOR UPDATE SKIP LOCKED"
_HELD = f"id = %s AND token = %s AND state = 1 AND lease_until > {NOW}"


@contextlib.contextmanager
def map_mysql_errors(where: str) -> Iterator[None]:
    """Raise every PyMySQL (or socket) error inside the block as ``BackendUnavailable``."""
    try:
        yield
    except (pymysql.err.Error, OSError) as exc:
        code, msg = (exc.args + ("", ""))[:2] if len(exc.args) > 1 else ("", exc)
        detail = f"{msg} (error {code})" if code else str(msg) or type(exc).__name__
        raise BackendUnavailable(f"MySQL at {where}: {detail}") from exc


def _execute(cur: Cursor, sql: str, args: Sequence[Any] = ()) -> Result:
    """Run one (multi-)statement query and collect every statement's result."""
    cur.execute(sql, tuple(args))
    out: Result = [(cur.rowcount, cur.fetchall())]
    while cur.nextset():
        out.append((cur.rowcount, cur.fetchall()))
    return out


def _size(part: Part) -> int:
    return len(part[0]) + sum(len(a) if isinstance(a, (bytes, str)) else 24 for a in part[1])


def _script(cur: Cursor, parts: Sequence[Part], *, txn: bool, budget: int) -> Result:
    """Run statements in as few round trips as ``budget`` bytes per query allow.

    With ``txn``, all of them run in one transaction. The result has one entry per part.
    """
    if txn:
        parts = [("START TRANSACTION", ()), *parts, ("COMMIT", ())]
    out: Result = []
    chunk: list[Part] = []
    used = 0
    for i, part in enumerate(parts):
        chunk.append(part)
        used += _size(part)
        if i + 1 == len(parts) or used + _size(parts[i + 1]) > budget:
            args = tuple(a for _, part_args in chunk for a in part_args)
            out += _execute(cur, "; ".join(sql for sql, _ in chunk), args)
            chunk, used = [], 0
    return out


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def _pick(
    queues: Sequence[str],
    expired: Sequence[tuple[Any, ...]],
    waiting: Callable[[str, int], Sequence[tuple[Any, ...]]],
    limit: int,
) -> list[tuple[int, int]]:
    """Choose up to ``limit`` (seq, lock_version): queues in order, oldest first in each."""
    by_queue: dict[str, list[tuple[int, int]]] = {}
    for seq, version, queue in expired:
        by_queue.setdefault(queue, []).append((seq, version))
    picks: list[tuple[int, int]] = []
    for queue in queues:
        want = limit - len(picks)
        if want <= 0:
            break
        rows = by_queue.get(queue, []) + [(s, v) for s, v, _ in waiting(queue, want)]
        picks += sorted(rows)[:want]
    return picks


def _tls(options: dict[str, str]) -> ssl.SSLContext | None:
    """A verifying TLS context when the URL asks for TLS, else None."""
    flag = options.get("ssl", "").lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no", "required", "disabled"):
        raise ConfigurationError(f"bad MySQL URL option ssl={flag!r}: use true or false")
    files = [options.get(k) for k in ("ssl_ca", "ssl_cert", "ssl_key")]
    if flag in ("0", "false", "no", "disabled") or not (flag or any(files)):
        return None
    try:
        ctx = ssl.create_default_context(cafile=files[0])  # verifies certificate and host
        if files[1]:
            ctx.load_cert_chain(files[1], files[2])
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"bad MySQL TLS file: {exc}") from exc
    return ctx


def _stale(conn: Conn) -> bool:
    """True if an idle connection has something to read: the server closed it."""
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.pid = 0


class MySQLBackend(Backend):
    """MySQL/MariaDB adapter. See the module docstring and ``base.Backend``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 3306,
        user: str = "root",
        password: str = "",
        database: str,
        claim: str | None = None,
        result_ttl: float = 3600.0,
        **connect: Any,
    ) -> None:
        super().__init__(result_ttl=result_ttl)
        if claim not in (None, "skip_locked", "optimistic"):
            raise ConfigurationError(
                f"bad MySQL URL option claim={claim!r}: use skip_locked or optimistic"
            )
        self.claim_mode = claim  # decided from the server's version on first use if None
        self.where = f"{host}:{port}/{database}"
        self._args: dict[str, Any] = {
            **{k: v for k, v in _TIMEOUTS.items()},
            **connect,
            "host": host,
            "port": port,
            "user": user,
            "password": password,
            "database": database,
            "charset": "utf8mb4",
            "autocommit": True,
            "client_flag": CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS,
            "init_command": _SESSION,
            "max_allowed_packet": 1 << 30,  # the server's own limit is what counts
        }
        self.returning = False  # DELETE ... RETURNING (MariaDB) for replies
        self.budget = 1 << 20  # bytes per query; a quarter of the server's max_allowed_packet
        self._ready = False
        self._lock = threading.Lock()
        self._local = _PerThread()
        self._conns: weakref.WeakKeyDictionary[Conn, int] = weakref.WeakKeyDictionary()
        self._pauses: dict[Any, float] = {}
        self._wake = threading.Condition()

    @classmethod
    def from_url(cls, url: str, *, result_ttl: float = 3600.0) -> MySQLBackend:
        """Open ``mysql://user:pass@host:port/db?options`` (see the module docstring).

        Raises:
            ConfigurationError: the URL is malformed or names an unknown option.
        """
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - _OPTIONS - set(_TIMEOUTS))
        if unknown:
            raise ConfigurationError(f"unknown MySQL URL option(s): {', '.join(unknown)}")
        try:
            port = parts.port or 3306
            timeouts = {k: float(options[k]) for k in _TIMEOUTS if k in options}
        except ValueError as exc:
            raise ConfigurationError(f"bad MySQL URL: {exc}") from None
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ConfigurationError("a mysql:// URL must name a database: mysql://host/db")
        ctx = _tls(options)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
            claim=options.get("claim") or None,
            result_ttl=result_ttl,
            unix_socket=options.get("unix_socket") or None,
            **({"ssl": ctx} if ctx else {"ssl_disabled": options.get("ssl") is not None}),
            **timeouts,
        )

    # -- connections -------------------------------------------------------------------

    def _conn(self) -> Conn:
        local, pid = self._local, os.getpid()
        if local.conn is not None and (local.pid != pid or _stale(local.conn)):
            local.conn = None  # a forked child never touches its parent's socket
        if local.conn is None:
            conn = pymysql.connect(**self._args)
            local.conn, local.pid = conn, pid
            self._conns[conn] = pid
            if not self._ready:
                self._prepare(conn)
        return local.conn

    def _prepare(self, conn: Conn) -> None:
        """On first use: pick the claim mode and packet budget, create the schema if needed."""
        with self._lock:
            if self._ready:
                return
            info = conn.get_server_info()
            mariadb = "mariadb" in info.lower()
            numbers = info.removeprefix("5.5.5-").split("-")[0].split(".")
            version = tuple(int(n) for n in numbers if n.isdigit())
            if self.claim_mode is None:
                modern = version >= ((10, 6) if mariadb else (8, 0, 1))
                self.claim_mode = "skip_locked" if modern else "optimistic"
            self.returning = mariadb
            cur = conn.cursor()
            [(_, [(packet,)])] = _execute(cur, "SELECT @@max_allowed_packet")
            self.budget = max(int(packet) // 4, 256 * 1024)
            self._ensure_schema(cur)
            log.info("using %s (%s), claim mode %s", self.where, info, self.claim_mode)
            self._ready = True

    def _ensure_schema(self, cur: Cursor) -> None:
        try:
            rows = _execute(cur, "SELECT version FROM remoteexec_schema WHERE name = 'schema'")
            version = int(rows[0][1][0][0]) if rows[0][1] else 0
        except pymysql.err.ProgrammingError as exc:
            if exc.args[0] != 1146:  # no such table
                raise
            version = 0
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the database at {self.where} has remoteexec schema version {version}; "
                f"this remoteexec knows up to {SCHEMA_VERSION}: upgrade remoteexec"
            )
        if version < SCHEMA_VERSION:
            self._apply_schema(cur)

    def _apply_schema(self, cur: Cursor) -> None:
        for sql in schema_sql():
            cur.execute(sql)
        [(_, rows)] = _execute(cur, "SELECT version FROM remoteexec_schema WHERE name = 'schema'")
        for version in range(int(rows[0][0]) + 1, SCHEMA_VERSION + 1):
            for sql in MIGRATIONS.get(version, []):
                cur.execute(sql)
            sql = "UPDATE remoteexec_schema SET version = %s WHERE name = 'schema'"
            cur.execute(sql, (version,))
        log.info("schema version %d ready in %s", SCHEMA_VERSION, self.where)

    def init_db(self) -> None:
        """Create the tables (and migrate them) now; running it again changes nothing."""
        self._run(self._apply_schema, retry_lost=True)

    def _run(self, op: Callable[[Cursor], T], *, retry_lost: bool = False) -> T:
        """Run ``op`` on this thread's connection, mapping errors and retrying contention.

        ``retry_lost`` runs an idempotent ``op`` once more on a new connection when the old
        one was lost mid-call.
        """
        with map_mysql_errors(self.where):
            for attempt in range(_RETRIES + 1):
                conn = self._conn()
                try:
                    return op(conn.cursor())
                except pymysql.err.OperationalError as exc:
                    code = exc.args[0] if exc.args else 0
                    if code in _LOCK_ERRORS and attempt < _RETRIES:
                        log.debug("lock contention (error %s), retrying", code)
                        self._rollback(conn)
                        time.sleep(random.uniform(0.001, 0.01) * (attempt + 1))
                        continue
                    self._local.conn = None
                    if code in _GONE_ERRORS and retry_lost and attempt == 0:
                        continue
                    raise
                except BaseException:
                    self._local.conn = None  # never reuse a connection in an unknown state
                    raise
            raise AssertionError("unreachable")

    def _rollback(self, conn: Conn) -> None:
        try:
            conn.rollback()
        except (pymysql.err.Error, OSError):
            self._local.conn = None

    def _poll(self, key: Any, fetch: Callable[[], list[T]], wait: float) -> list[T]:
        """Call ``fetch`` until it returns something or ``wait`` seconds pass.

        Pauses between empty polls start at 2 ms and double up to 40 ms; finding work, or
        work added through this backend object, resets them.
        """
        deadline = time.monotonic() + wait
        while True:
            got = fetch()
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                if got:
                    self._pauses.pop(key, None)
                return got
            pause = self._pauses.get(key, _MIN_PAUSE)
            self._pauses[key] = min(pause * 2, _MAX_PAUSE)
            with self._wake:
                self._wake.wait(min(pause, remaining))

    def _kick(self) -> None:
        self._pauses.clear()
        with self._wake:
            self._wake.notify_all()

    # -- the contract --------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        parts: list[Part] = []
        rows: list[Job] = []
        used = 0
        for i, job in enumerate(jobs):
            rows.append(job)
            used += len(job.body) + 256
            if i + 1 == len(jobs) or used + len(jobs[i + 1].body) > self.budget:
                values = ", ".join([f"(%s, %s, %s, %s, {NOW})"] * len(rows))
                sql = f"INSERT INTO {TASKS} (id, queue, reply_to, body, created) VALUES {values}"
                parts.append(
                    (sql, tuple(v for j in rows for v in (j.id, j.queue, j.reply_to, j.body)))
                )
                rows, used = [], 0
        self._run(lambda cur: _script(cur, parts, txn=len(parts) > 1, budget=self.budget))
        self._kick()

    def claim(
        self, queues: Sequence[str], *, worker: str, limit: int, lease: float, wait: float
    ) -> list[Claim]:
        if not queues or limit <= 0:
            return []
        queues = list(queues)

        def once() -> list[Claim]:
            take = (
                self._claim_locked if self.claim_mode == "skip_locked" else self._claim_optimistic
            )
            return self._run(lambda cur: take(cur, queues, limit, lease))

        return self._poll(("claim", *queues), once, wait)

    def _claim_locked(
        self, cur: Cursor, queues: list[str], limit: int, lease: float
    ) -> list[Claim]:
        expired = _EXPIRED.format(_marks(len(queues))) + _SKIP
        first = _execute(
            cur,
            f"START TRANSACTION; {expired}; {_WAITING}{_SKIP}",
            (*queues, limit, queues[0], limit),
        )

        def waiting(queue: str, n: int) -> Sequence[tuple[Any, ...]]:
            if queue == queues[0]:
                return first[2][1]
            return _execute(cur, _WAITING + _SKIP, (queue, n))[0][1]

        picks = _pick(queues, first[1][1], waiting, limit)
        if not picks:
            cur.execute("ROLLBACK")
            return []
        seqs = [seq for seq, _ in picks]
        token = secrets.token_hex(16)
        update = (
            f"UPDATE {TASKS} SET state = 1, token = %s, lease_until = {NOW} + %s, "
            f"attempt = attempt + 1, lock_version = lock_version + 1 "
            f"WHERE seq IN ({_marks(len(seqs))})"
        )
        return self._fetch_claims(cur, [(update, (token, lease, *seqs))], seqs, token, True)

    def _claim_optimistic(
        self, cur: Cursor, queues: list[str], limit: int, lease: float
    ) -> list[Claim]:
        sql = "; ".join([_EXPIRED.format(_marks(len(queues)))] + [_WAITING] * len(queues))
        args = (*queues, limit, *(a for q in queues for a in (q, limit)))
        found = _execute(cur, sql, args)
        waiting = {q: found[i + 1][1] for i, q in enumerate(queues)}
        picks = _pick(queues, found[0][1], lambda q, n: waiting[q], limit)
        if not picks:
            return []
        token = secrets.token_hex(16)
        update = (
            f"UPDATE {TASKS} SET state = 1, token = %s, lease_until = {NOW} + %s, "
            f"attempt = attempt + 1, lock_version = lock_version + 1 WHERE seq = %s "
            f"AND lock_version = %s AND (state = 0 OR lease_until <= {NOW})"
        )
        parts = [(update, (token, lease, seq, version)) for seq, version in picks]
        return self._fetch_claims(cur, parts, [seq for seq, _ in picks], token, False)

    def _fetch_claims(
        self, cur: Cursor, parts: list[Part], seqs: list[int], token: str, commit: bool
    ) -> list[Claim]:
        """Run the claiming ``parts``, then read back the rows this ``token`` now holds."""
        select_sql = (
            f"SELECT seq, id, queue, reply_to, body, attempt FROM {TASKS} "
            f"WHERE seq IN ({_marks(len(seqs))}) AND token = %s"
        )
        parts = [*parts, (select_sql, (*seqs, token))]
        at = len(parts) - 1
        if commit:
            parts.append(("COMMIT", ()))
        result = _script(cur, parts, txn=False, budget=1 << 62)  # no bodies: one round trip
        rows = {row[0]: row for row in result[at][1]}
        return [
            Claim(r[1], r[2], r[3], bytes(r[4]), int(r[5]), token)
            for r in (rows.get(seq) for seq in seqs)
            if r is not None
        ]

    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        if not claims:
            return []
        sql = f"UPDATE {TASKS} SET lease_until = {NOW} + %s, lock_version = lock_version + 1"
        parts = [(f"{sql} WHERE {_HELD}", (lease, c.id, c.token)) for c in claims]
        done = self._run(
            lambda cur: _script(cur, parts, txn=False, budget=self.budget), retry_lost=True
        )
        return [count == 1 for count, _ in done]

    def complete(self, done: Sequence[Done]) -> list[bool]:
        """Delete each held task and insert its reply, in one transaction per batch."""
        if not done:
            return []
        order = sorted(range(len(done)), key=lambda i: done[i].claim.id)  # one lock order
        mark = f"UPDATE {TASKS} SET state = 2 WHERE {_HELD}"
        reply = (
            "INSERT INTO remoteexec_replies (reply_to, task_id, body, created) "
            f"SELECT reply_to, id, %s, {NOW} FROM {TASKS} WHERE id = %s AND state = 2"
        )
        parts: list[Part] = []
        marks: dict[int, int] = {}
        for i in order:
            claim = done[i].claim
            marks[i] = len(parts) + 1  # + 1 for START TRANSACTION
            parts.append((mark, (claim.id, claim.token)))
            if done[i].reply is not None:
                parts.append((reply, (done[i].reply, claim.id)))
            parts.append((f"DELETE FROM {TASKS} WHERE id = %s AND state = 2", (claim.id,)))
        result = self._run(lambda cur: _script(cur, parts, txn=True, budget=self.budget))
        self._kick()
        return [result[marks[i]][0] == 1 for i in range(len(done))]

    def release(self, claims: Sequence[Claim]) -> None:
        sql = (
            f"UPDATE {TASKS} SET state = 0, token = NULL, lease_until = 0, "
            f"attempt = attempt - 1, lock_version = lock_version + 1 WHERE {_HELD}"
        )
        parts = [(sql, (c.id, c.token)) for c in claims]
        if parts:
            self._run(
                lambda cur: _script(cur, parts, txn=False, budget=self.budget), retry_lost=True
            )
            self._kick()

    def cancel(self, job: Job) -> bool:
        sql = f"DELETE FROM {TASKS} WHERE id = %s AND state = 0 AND attempt = 0"
        return self._run(lambda cur: _execute(cur, sql, (job.id,)))[0][0] == 1

    def replies(self, reply_to: str, *, wait: float) -> list[bytes]:
        return self._poll(
            ("replies", reply_to), lambda: self._run(self._take_replies(reply_to)), wait
        )

    def _take_replies(self, reply_to: str) -> Callable[[Cursor], list[bytes]]:
        def take(cur: Cursor) -> list[bytes]:
            if self.returning:  # MariaDB: read and delete in one statement
                sql = "DELETE FROM remoteexec_replies WHERE reply_to = %s RETURNING seq, body"
                return [bytes(body) for _, body in sorted(_execute(cur, sql, (reply_to,))[0][1])]
            sql = "SELECT seq, body FROM remoteexec_replies WHERE reply_to = %s ORDER BY seq"
            rows = _execute(cur, sql, (reply_to,))[0][1]
            parts = [("DELETE FROM remoteexec_replies WHERE seq = %s", (seq,)) for seq, _ in rows]
            deleted = _script(cur, parts, txn=False, budget=self.budget) if parts else []
            return [bytes(body) for (_, body), (n, _) in zip(rows, deleted) if n == 1]

        return take

    def heartbeat(self, info: WorkerInfo) -> None:
        sql = (
            "INSERT INTO remoteexec_workers (id, host, pid, queues, started, last_seen, done, "
            f"running, seen_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, {NOW}) "
            "ON DUPLICATE KEY UPDATE host = VALUES(host), pid = VALUES(pid), "
            "queues = VALUES(queues), started = VALUES(started), last_seen = VALUES(last_seen), "
            "done = VALUES(done), running = VALUES(running), seen_at = VALUES(seen_at)"
        )
        args = (info.id, info.host, info.pid, json.dumps(info.queues), info.started)
        args += (info.last_seen, info.done, info.running)
        self._run(lambda cur: _execute(cur, sql, args), retry_lost=True)

    def forget_worker(self, worker: str) -> None:
        sql = "DELETE FROM remoteexec_workers WHERE id = %s"
        self._run(lambda cur: _execute(cur, sql, (worker,)), retry_lost=True)

    def bury(self, letter: DeadLetter) -> None:
        sql = (
            "INSERT INTO remoteexec_dead_letters (id, queue, name, reason, at) "
            "VALUES (%s, %s, %s, %s, %s); DELETE FROM remoteexec_dead_letters "
            f"WHERE seq <= LAST_INSERT_ID() - {_MAX_DEAD}"
        )
        args = (letter.id, letter.queue, letter.name, letter.reason, letter.at)
        self._run(lambda cur: _execute(cur, sql, args))

    def stats(self) -> Stats:
        sql = (
            f"SELECT queue, SUM(state = 0) FROM {TASKS} GROUP BY queue; "
            f"SELECT queue, COUNT(*) FROM {TASKS} WHERE state = 1 AND lease_until <= {NOW} "
            f"GROUP BY queue; SELECT COUNT(*) FROM {TASKS} WHERE state = 1 AND lease_until > {NOW}; "
            "SELECT id, host, pid, queues, started, last_seen, done, running "
            f"FROM remoteexec_workers WHERE seen_at > {NOW} - %s ORDER BY id; "
            "SELECT id, queue, name, reason, at FROM remoteexec_dead_letters "
            f"ORDER BY seq DESC LIMIT {_MAX_DEAD}"
        )
        depth, expired, running, workers, dead = (
            rows
            for _, rows in self._run(
                lambda cur: _execute(cur, sql, (self.worker_ttl,)), retry_lost=True
            )
        )
        queues = {q: int(n) for q, n in depth}
        for q, n in expired:
            queues[q] += int(n)
        return Stats(
            queues,
            int(running[0][0]),
            [
                WorkerInfo(w[0], w[1], int(w[2]), json.loads(w[3]), *w[4:6], int(w[6]), int(w[7]))
                for w in workers
            ],
            [DeadLetter(*d) for d in dead],
        )

    def purge(self, queue: str | None = None) -> int:
        sql = f"DELETE FROM {TASKS} WHERE (state = 0 OR lease_until <= {NOW})"
        args: tuple[str, ...] = ()
        if queue is not None:
            sql, args = sql + " AND queue = %s", (queue,)
        return self._run(lambda cur: _execute(cur, sql, args))[0][0]

    def sweep(self) -> None:
        """Delete replies older than ``result_ttl`` and workers silent for 4 worker TTLs."""
        sql = (
            f"DELETE FROM remoteexec_replies WHERE created < {NOW} - %s; "
            f"DELETE FROM remoteexec_workers WHERE seen_at < {NOW} - %s"
        )
        args = (self.result_ttl, max(60.0, 4 * self.worker_ttl))
        self._run(lambda cur: _execute(cur, sql, args), retry_lost=True)

    def close(self) -> None:
        pid = os.getpid()
        for conn, owner in list(self._conns.items()):
            if owner == pid and conn.open:  # never send QUIT on a parent's socket
                with contextlib.suppress(pymysql.err.Error, OSError):
                    conn.close()
        self._conns.clear()
        self._local.conn = None
