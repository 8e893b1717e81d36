"""``sqlite:///path.db``: an embedded broker in one file, shared by the processes of one host.

The file runs in WAL mode with ``synchronous=NORMAL``: readers never block the writer, and
a commit survives a crashed process (a power cut may lose the last few). Beyond ``base.py``:

* Every write is one short ``BEGIN IMMEDIATE`` transaction whatever the batch size: an
  enqueue, claim or completion of N tasks is all or nothing.
* Lock contention ("database is locked") never reaches the caller: it is retried with
  backoff for up to 30 s, then raised as ``BackendUnavailable`` like every ``sqlite3`` error.
* Each thread has its own connection, opened on first use; a forked child opens its own and
  never touches (nor closes) its parent's.
* SQLite cannot notify other processes, so ``claim`` and ``replies`` wait by polling
  ``PRAGMA data_version`` (it changes when another connection commits). The pause is a
  50th of the time since this backend last found work: 0.2 ms while calls flow (a
  blocking call's reply is seen within one), up to 25 ms after 1.25 s of idleness.
* Re-enqueueing an id that is still held changes nothing: a retried ``enqueue`` is safe.
* A reply row carries its task's id, so ``lost`` sees an answered task in one snapshot;
  ``purge`` leaves a tombstone per deleted id (table ``purged``) for ``result_ttl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple
from typing import Any, TypeVar

from ..errors import BackendUnavailable, ConfigurationError
from .base import Backend, Claim, DeadLetter, Done, Job, Stats, WorkerInfo
from .rows import dead_letter, worker_info

log = logging.getLogger("remoteexec.sqlite")

T = TypeVar("T")

#: The schema this module creates, recorded in ``PRAGMA user_version``.
SCHEMA_VERSION = 2
_MAX_DEAD = 1000
_BUSY_TIMEOUT = 1.0  # SQLite's own wait for a lock, per try
_RETRY_FOR = 30.0  # total time spent retrying a busy database before giving up
_POLL_MIN, _POLL_MAX, _IDLE_SHARE = 0.0002, 0.025, 50  # pause: a 50th of the idle time

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS tasks (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, queue TEXT NOT NULL,
        reply_to TEXT NOT NULL, body BLOB NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
        token TEXT, lease_until REAL NOT NULL DEFAULT 0, created REAL NOT NULL)""",
    # token IS NULL: waiting, in FIFO order; otherwise leased until lease_until.
    "CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks (queue, seq) WHERE token IS NULL",
    "CREATE INDEX IF NOT EXISTS tasks_leased ON tasks (queue, lease_until) WHERE token IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS replies (
        seq INTEGER PRIMARY KEY, reply_to TEXT NOT NULL, body BLOB NOT NULL,
        created REAL NOT NULL, task_id TEXT)""",
    "CREATE INDEX IF NOT EXISTS replies_to ON replies (reply_to)",
    # Tombstones of purged tasks, kept result_ttl seconds: see purged().
    "CREATE TABLE IF NOT EXISTS purged (id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS purged_at ON purged (at)",
    """CREATE TABLE IF NOT EXISTS workers (
        id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, queues TEXT NOT NULL,
        started REAL NOT NULL, last_seen REAL NOT NULL, done INTEGER NOT NULL,
        running INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dead (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL, queue TEXT NOT NULL, name TEXT NOT NULL,
        reason TEXT NOT NULL, at REAL NOT NULL)""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
]

_ENQUEUE = (
    "INSERT INTO tasks (id, queue, reply_to, body, created) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING"
)
# Oldest first among waiting tasks and expired leases of one queue (?3), up to ?5 of them.
# A lease_until that is text or a blob (they sort after every number) holds no lease.
_CLAIM = """UPDATE tasks SET attempt = attempt + 1, token = ?1 || seq, lease_until = ?2
WHERE seq IN (
    SELECT seq FROM (SELECT seq FROM tasks WHERE queue = ?3 AND token IS NULL
                     ORDER BY seq LIMIT ?5)
    UNION ALL
    SELECT seq FROM (SELECT seq FROM tasks WHERE queue = ?3 AND token IS NOT NULL
                     AND (lease_until <= ?4 OR lease_until >= '') ORDER BY seq LIMIT ?5)
    ORDER BY seq LIMIT ?5)
RETURNING seq, id, reply_to, body, attempt, token"""
_PEEK = (
    "SELECT EXISTS (SELECT 1 FROM tasks WHERE queue = ?1 AND token IS NULL), "
    "(SELECT min(lease_until) FROM tasks WHERE queue = ?1 AND token IS NOT NULL)"
)
_HELD = "id = ? AND token = ? AND lease_until > ?"
_HEARTBEAT = "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_DEPTH = (  # per queue: waiting (or lease expired), running
    "SELECT queue, total(token IS NULL OR lease_until <= ?1), "
    "total(token IS NOT NULL AND lease_until > ?1) FROM tasks GROUP BY queue"
)

# Connections a forked child inherited: kept referenced, never closed, because closing
# them would drop the locks the child's own connections hold on the same file.
_STARTS = (  # made on first use: only workers with secrets need it
    """CREATE TABLE IF NOT EXISTS starts (id TEXT PRIMARY KEY, n INTEGER NOT NULL,
        done INTEGER NOT NULL, keep_until REAL NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS starts_expiry ON starts (keep_until)",
)
_NOTE_START = """INSERT INTO starts VALUES (?1, 1, 0, ?2) ON CONFLICT (id) DO UPDATE
    SET n = n + 1, keep_until = max(keep_until, ?2) RETURNING n - 1, done"""
_FORGET_STARTS = (
    "DELETE FROM starts WHERE id IN (SELECT id FROM starts WHERE keep_until < ? LIMIT 100)"
)
_ORPHANS: list[sqlite3.Connection] = []
_LOCK = threading.Lock()


def _reset_lock() -> None:
    global _LOCK
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return code & 0xFF in (5, 6) if code is not None else "locked" in str(exc)  # BUSY, LOCKED


@contextmanager
def map_sqlite_errors(path: str) -> Iterator[None]:
    """Raise every ``sqlite3`` error inside the block as ``BackendUnavailable``."""
    try:
        yield
    except sqlite3.Error as exc:
        raise BackendUnavailable(f"SQLite database {path}: {exc}") from exc


class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    pid: int = 0


class SQLiteBackend(Backend):
    """A broker in one SQLite file. See the module docstring and ``base.Backend``."""

    def __init__(self, path: str, *, result_ttl: float = 3600.0) -> None:
        super().__init__(result_ttl=result_ttl)
        self.path = os.path.abspath(path)
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise ConfigurationError(
                f"SQLite database {path!r}: folder {folder!r} does not exist (create it first)"
            )
        if os.path.isdir(self.path):
            raise ConfigurationError(f"SQLite database {path!r} is a folder, not a file")
        self._local = _Local()
        self._pid = os.getpid()
        self._conns: list[sqlite3.Connection] = []
        self._schema_ok = False
        self._found_at = time.monotonic()  # when a claim or reply read last found work

    @classmethod
    def from_url(cls, url: str, *, result_ttl: float = 3600.0) -> SQLiteBackend:
        """Open ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

        A relative path is resolved against the working directory now, once.

        Raises:
            ConfigurationError: the URL is malformed or the database's folder is missing.
        """
        prefix = "sqlite:///"
        path = url[len(prefix) :] if url[: len(prefix)].lower() == prefix else ""
        if "?" in path:  # SQLite URLs take no options: name the first one given
            option = path.partition("?")[2].split("&")[0].split("=")[0]
            raise ConfigurationError(
                f"malformed SQLite URL {url!r}: unknown option {option!r:.60} "
                "(sqlite:/// URLs take no options)"
            )
        if not path or path.endswith("/") or "?" in path or "#" in path or path == ":memory:":
            raise ConfigurationError(
                f"malformed SQLite URL {url!r}: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (memory:// for an in-process broker)"
            )
        return cls(path, result_ttl=result_ttl)

    # -- connections and transactions ------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        local, pid = self._local, os.getpid()
        if local.conn is not None and local.pid == pid:
            return local.conn
        with _LOCK:
            if self._pid != pid:  # first use in a forked child
                _ORPHANS.extend(self._conns)
                self._conns, self._pid, self._schema_ok = [], pid, False
            conn = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            conn.text_factory = _text
            self._conns.append(conn)
        try:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                log.warning("%s cannot use WAL mode: expect lock contention", self.path)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA journal_size_limit = 67108864")  # shrink the WAL after a burst
            if not self._schema_ok:
                _create_schema(conn, self.path)
                self._schema_ok = True
        except BaseException:
            with _LOCK:
                self._conns.remove(conn)
            conn.close()
            raise
        local.conn, local.pid = conn, pid
        log.debug("opened %s in process %d", self.path, pid)
        return conn

    def _run(self, fn: Callable[[sqlite3.Connection], T], begin: str | None = "IMMEDIATE") -> T:
        """Run ``fn`` in a transaction (``begin``; None: autocommit), retrying while busy."""
        deadline = time.monotonic() + _RETRY_FOR
        delay = 0.001
        with map_sqlite_errors(self.path):
            while True:
                try:
                    conn = self._connection()
                    return fn(conn) if begin is None else _transaction(conn, begin, fn)
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() + delay > deadline:
                        raise
                    log.debug("%s is busy (%s); retrying in %.3f s", self.path, exc, delay)
                    time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: no lockstep
                    delay = min(delay * 2, 0.1)

    def _wait(self, due: Callable[[sqlite3.Connection], float], deadline: float) -> bool:
        """Sleep until ``due`` says work is ready (True) or ``deadline`` passes (False).

        ``due`` returns the wall-clock time at which work becomes ready (now or earlier:
        ready now; ``inf``: on some change). It is asked again whenever another connection
        commits.
        """
        if time.monotonic() >= deadline:
            return False
        version = self._data_version()
        ready_at = self._run(due, None)
        while True:
            now = time.time()
            if ready_at <= now:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            idle = time.monotonic() - self._found_at
            pause = min(_POLL_MAX, max(_POLL_MIN, idle / _IDLE_SHARE))
            time.sleep(min(pause, remaining, ready_at - now))
            latest = self._data_version()
            if latest != version:
                version = latest
                ready_at = self._run(due, None)

    def _data_version(self) -> int:
        return int(self._run(lambda c: c.execute("PRAGMA data_version").fetchone()[0], None))

    # -- the contract ----------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        now = time.time()
        rows = [(j.id, j.queue, j.reply_to, j.body, now) for j in jobs]
        names = [(q,) for q in dict.fromkeys(j.queue for j in jobs)]

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany(_ENQUEUE, rows)
            conn.executemany("INSERT OR IGNORE INTO queues (name) VALUES (?)", names)

        self._run(tx)

    def claim(
        self, queues: Sequence[str], *, worker: str, limit: int, lease: float, wait: float
    ) -> list[Claim]:
        deadline = time.monotonic() + wait
        while True:
            claims = self._run(lambda conn: self._take(conn, queues, limit, lease))
            if claims:
                self._found_at = time.monotonic()
                return claims
            if not self._wait(lambda conn: self._next_due(conn, queues), deadline):
                return claims

    def _take(
        self, conn: sqlite3.Connection, queues: Sequence[str], limit: int, lease: float
    ) -> list[Claim]:
        now = time.time()
        token = uuid.uuid4().hex + "-"
        claims: list[Claim] = []
        for queue in queues:
            if len(claims) >= limit:
                break
            rows = conn.execute(_CLAIM, (token, now + lease, queue, now, limit - len(claims)))
            for seq, task_id, reply_to, body, attempt, tok in sorted(rows.fetchall()):
                if type(task_id) is type(reply_to) is str and type(body) is bytes:
                    if type(attempt) is int:
                        claims.append(Claim(task_id, queue, reply_to, body, attempt, tok))
                        continue
                _quarantine(conn, seq, queue, task_id, (task_id, reply_to, body, attempt))
        return claims

    def _next_due(self, conn: sqlite3.Connection, queues: Sequence[str]) -> float:
        due = math.inf
        for queue in queues:
            waiting, lease_until = conn.execute(_PEEK, (queue,)).fetchone()
            if waiting:
                return 0.0
            if lease_until is not None:  # not a number: a claim takes that row now
                due = min(due, lease_until if type(lease_until) in (int, float) else 0.0)
        return due

    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        def tx(conn: sqlite3.Connection) -> list[bool]:
            now = time.time()
            sql = f"UPDATE tasks SET lease_until = ? WHERE {_HELD}"
            return [
                conn.execute(sql, (now + lease, c.id, c.token, now)).rowcount == 1 for c in claims
            ]

        return self._run(tx) if claims else []

    def complete(self, done: Sequence[Done]) -> list[bool]:
        def tx(conn: sqlite3.Connection) -> list[bool]:
            now = time.time()
            sql = f"DELETE FROM tasks WHERE {_HELD}"
            accepted = [
                conn.execute(sql, (d.claim.id, d.claim.token, now)).rowcount == 1 for d in done
            ]
            conn.executemany(
                "INSERT INTO replies (reply_to, body, created, task_id) VALUES (?, ?, ?, ?)",
                [
                    (d.claim.reply_to, d.reply, now, d.claim.id)
                    for d, ok in zip(done, accepted, strict=True)
                    if ok and d.reply is not None
                ],
            )
            return accepted

        return self._run(tx) if done else []

    def release(self, claims: Sequence[Claim]) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.executemany(
                "UPDATE tasks SET token = NULL, lease_until = 0, attempt = attempt - 1 "
                f"WHERE {_HELD}",
                [(c.id, c.token, now) for c in claims],
            )

        if claims:
            self._run(tx)

    def cancel(self, job: Job) -> bool:
        sql = "DELETE FROM tasks WHERE id = ? AND queue = ? AND attempt = 0"
        return self._run(lambda conn: conn.execute(sql, (job.id, job.queue)).rowcount == 1)

    def replies(self, reply_to: str, *, wait: float) -> list[bytes]:
        deadline = time.monotonic() + wait
        exists = "SELECT EXISTS (SELECT 1 FROM replies WHERE reply_to = ?)"

        def due(conn: sqlite3.Connection) -> float:
            return 0.0 if conn.execute(exists, (reply_to,)).fetchone()[0] else math.inf

        def take(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(
                "DELETE FROM replies WHERE reply_to = ? RETURNING seq, body", (reply_to,)
            ).fetchall()
            return [body for _, body in sorted(rows) if _is_bytes(body, "reply body")]

        while True:
            # Look before taking the write lock: most polls find nothing.
            got = self._run(take) if self._run(due, None) == 0.0 else []
            if got:
                self._found_at = time.monotonic()
                return got
            if not self._wait(due, deadline):
                return got

    def heartbeat(self, info: WorkerInfo) -> None:
        row = list(astuple(info))
        row[3] = json.dumps(row[3])  # queues
        self._run(lambda conn: conn.execute(_HEARTBEAT, row))

    def forget_worker(self, worker: str) -> None:
        self._run(lambda conn: conn.execute("DELETE FROM workers WHERE id = ?", (worker,)))

    def bury(self, letter: DeadLetter) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            seq = conn.execute(
                "INSERT INTO dead (id, queue, name, reason, at) VALUES (?, ?, ?, ?, ?)",
                (letter.id, letter.queue, letter.name, letter.reason, letter.at),
            ).lastrowid
            conn.execute("DELETE FROM dead WHERE seq <= ?", ((seq or 0) - _MAX_DEAD,))

        self._run(tx)

    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        def tx(conn: sqlite3.Connection) -> list[tuple[int, bool]]:
            for sql in _STARTS:
                conn.execute(sql)
            conn.execute(_FORGET_STARTS, (time.time(),))
            rows = [conn.execute(_NOTE_START, s).fetchone() for s in starts]
            return [(_count(n), bool(done)) for n, done in rows]

        return self._run(tx)

    def note_completed(self, ids: Sequence[str]) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(_STARTS[0])
            conn.executemany("UPDATE starts SET done = 1 WHERE id = ?", [(i,) for i in ids])

        self._run(tx)

    def stats(self) -> Stats:
        def tx(conn: sqlite3.Connection) -> Stats:
            now = time.time()
            names = conn.execute("SELECT name FROM queues")
            depth = {name: 0 for (name,) in names if type(name) is str}
            rows = conn.execute(_DEPTH, (now,)).fetchall()
            depth.update((queue, int(waiting)) for queue, waiting, _ in rows if type(queue) is str)
            workers = conn.execute(
                "SELECT * FROM workers WHERE last_seen > ? ORDER BY started, id",
                (now - self.worker_ttl,),
            )
            dead = conn.execute("SELECT id, queue, name, reason, at FROM dead ORDER BY seq DESC")
            return Stats(
                depth,
                int(sum(held for _, _, held in rows)),
                [w for w in map(worker_info, workers) if w is not None],
                [d for d in map(dead_letter, dead) if d is not None],
            )

        return self._run(tx, "DEFERRED")

    def purge(self, queue: str | None = None) -> int:
        """Delete waiting tasks and expired leases, leaving a tombstone for each."""
        sql = "DELETE FROM tasks WHERE (token IS NULL OR lease_until <= ?1)"
        if queue is not None:
            sql += " AND queue = ?2"

        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            args = (now,) if queue is None else (now, queue)
            ids = [(i, now) for (i,) in conn.execute(sql + " RETURNING id", args).fetchall()]
            conn.executemany("INSERT OR REPLACE INTO purged (id, at) VALUES (?, ?)", ids)
            return len(ids)

        return self._run(tx)

    def lost(self, ids: Sequence[str], reply_to: str) -> set[str]:
        """One snapshot: the ids with neither a task row nor a reply to ``reply_to``."""

        def tx(conn: sqlite3.Connection) -> set[str]:
            found: set[Any] = set()
            for chunk in _chunks(ids):
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(f"SELECT id FROM tasks WHERE id IN ({marks})", chunk)
                found.update(i for (i,) in rows)
                rows = conn.execute(
                    f"SELECT task_id FROM replies WHERE reply_to = ? AND task_id IN ({marks})",
                    (reply_to, *chunk),
                )
                found.update(i for (i,) in rows)
            return set(ids) - found

        return self._run(tx, "DEFERRED") if ids else set()

    def purged(self, ids: Sequence[str]) -> set[str]:
        def tx(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            cutoff = time.time() - self.result_ttl
            for chunk in _chunks(ids):
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT id FROM purged WHERE at > ? AND id IN ({marks})"
                found.update(i for (i,) in conn.execute(sql, (cutoff, *chunk)))
            return found

        return self._run(tx, "DEFERRED") if ids else set()

    def sweep(self) -> None:
        """Delete replies older than ``result_ttl`` and workers silent for ``worker_ttl``."""

        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("DELETE FROM replies WHERE created < ?", (now - self.result_ttl,))
            conn.execute("DELETE FROM purged WHERE at < ?", (now - self.result_ttl,))
            conn.execute("DELETE FROM workers WHERE last_seen < ?", (now - self.worker_ttl,))

        self._run(tx)

    def close(self) -> None:
        """Close the connections this process opened; a forked child leaves its parent's."""
        with _LOCK:
            conns = self._conns if self._pid == os.getpid() else []
            self._conns = []
            self._local = _Local()
        for conn in conns:
            conn.close()


def _transaction(conn: sqlite3.Connection, begin: str, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute(f"BEGIN {begin}")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
        return result
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _create_schema(conn: sqlite3.Connection, path: str) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"SQLite database {path} has schema version {version}; this remoteexec knows "
            f"version {SCHEMA_VERSION} (upgrade remoteexec)"
        )
    if version < SCHEMA_VERSION:
        _transaction(conn, "IMMEDIATE", _migrate)


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring version 1 (replies without task ids) up to date."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()  # under the write lock
    if version == 1:
        conn.execute("ALTER TABLE replies ADD COLUMN task_id TEXT")
    if version < SCHEMA_VERSION:
        for sql in _SCHEMA:
            conn.execute(sql)


def _chunks(ids: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """``ids`` in slices that stay below SQLite's limit on bound parameters."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _count(n: object) -> int:
    """A start count read back; anything but an int (a row written by someone else) counts
    as many starts, so the task is not run."""
    return n if type(n) is int else 2**31


def _text(raw: bytes) -> str | bytes:
    """Every connection's ``text_factory``: text that is not UTF-8 (written by someone
    else) reads as bytes, which the readers' type checks refuse, instead of failing the
    whole statement."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def _is_bytes(value: object, what: str) -> bool:
    if type(value) is bytes:
        return True
    log.error("dropped a %s that is a %s, not a blob", what, type(value).__name__)
    return False


def _quarantine(
    conn: sqlite3.Connection, seq: int, queue: str, task_id: object, row: tuple[Any, ...]
) -> None:
    """Move a claimed task row with type-confused columns to the dead letters."""
    kinds = ", ".join(type(v).__name__ for v in row)
    reason = f"malformed task row: (id, reply_to, body, attempt) are ({kinds})"
    log.error("task row %d in queue %r moved to the dead letters: %s", seq, queue, reason)
    ident = task_id if type(task_id) is str else repr(task_id)[:200]
    conn.execute("DELETE FROM tasks WHERE seq = ?", (seq,))
    last = conn.execute(
        "INSERT INTO dead (id, queue, name, reason, at) VALUES (?, ?, ?, ?, ?)",
        (ident, queue, "?", reason, time.time()),
    ).lastrowid
    conn.execute("DELETE FROM dead WHERE seq <= ?", ((last or 0) - _MAX_DEAD,))
