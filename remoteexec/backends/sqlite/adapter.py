"""``sqlite:///path.db``: an embedded broker in one file, shared by the processes of one host.

The file runs in WAL mode with ``synchronous=NORMAL``: readers never block the writer, and
a commit survives a crashed process (a power cut may lose the last few). Beyond ``base.py``
(connections and transactions: ``connection.py``; the schema and statements:
``statements.py``; dead letters: ``dead.py``):

* Every write is one short ``BEGIN IMMEDIATE`` transaction whatever the batch size: an
  enqueue, claim or completion of N tasks is all or nothing.
* Lock contention ("database is locked") never reaches the caller: it is retried with
  backoff for up to 30 s, then raised as ``BackendUnavailable`` like every ``sqlite3`` error.
* Each thread has its own connection, opened on first use; a forked child opens its own and
  never touches (nor closes) its parent's (``sql.PerThread``).
* SQLite cannot notify other processes, so ``claim`` and ``replies`` wait by polling
  ``PRAGMA data_version`` (it changes when another connection commits). The pause is a
  50th of the time since this backend last found work (``sql.Idleness``): 0.2 ms while
  calls flow (a blocking call's reply is seen within one), up to 25 ms after 1.25 s of
  idleness.
* Re-enqueueing an id that is still held changes nothing: a retried ``enqueue`` is safe.
* A deferred task is a row no one holds until its ``not_before`` (token ``''``, see
  ``statements.py``): a claim takes it once due as it takes an expired lease, and a waiting
  claim sleeps no later than the earliest of those times.
* A reply row carries its task's id, so ``lost`` sees an answered task in one snapshot;
  ``purge`` leaves a tombstone per deleted id (table ``purged``) for ``result_ttl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import astuple
from typing import Any

from ...errors import ConfigurationError
from ..base import Backend, Claim, DeadLetter, Done, Job, Stats, WorkerInfo
from ..rows import dead_letter, worker_info
from ..sql import Idleness
from . import dead, kept
from .blobs import SQLiteBlobStore
from .connection import Database
from .kept import keep
from .statements import (
    BLOBS,
    BODY,
    CLAIM,
    DEAD,
    DEPTH,
    ENQUEUE,
    ENQUEUE_DEFERRED,
    FORGET_STARTS,
    HEARTBEAT,
    HELD,
    LIVE_WORKERS,
    NOTE_START,
    PEEK,
    PUT_BACK,
    REPLY,
    STARTS,
    chunks,
    marks,
)

log = logging.getLogger("remoteexec.sqlite")

_POLL_MIN, _POLL_MAX = 0.0002, 0.025  # the pause between looks at the data version
_INLINE = 64 * 1024  # a larger body is claimed without it, then read alone (see CLAIM)
_WORK = "work"  # the one key of this backend's Idleness: claims and replies alike


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
        self._db = Database(self.path)
        self._idle = Idleness()
        self._idle.found(_WORK)

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

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, due: Callable[[sqlite3.Connection], float], deadline: float) -> bool:
        """Sleep until ``due`` says work is ready (True) or ``deadline`` passes (False).

        ``due`` returns the wall-clock time at which work becomes ready (now or earlier:
        ready now; ``inf``: on some change). It is asked again whenever another connection
        commits.
        """
        if time.monotonic() >= deadline:
            return False
        version = self._db.data_version()
        ready_at = self._db.run(due, None)
        while True:
            now = time.time()
            if ready_at <= now:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pause = self._idle.pause(_WORK, _POLL_MIN, _POLL_MAX)
            time.sleep(min(pause, remaining, ready_at - now))
            latest = self._db.data_version()
            if latest != version:
                version = latest
                ready_at = self._db.run(due, None)

    # -- the contract ----------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        now = time.time()
        rows = [(j.id, j.queue, j.reply_to, j.body, now) for j in jobs if j.not_before <= now]
        later = [] if len(rows) == len(jobs) else _deferred_rows(jobs, now)
        names = [(q,) for q in dict.fromkeys(j.queue for j in jobs)]

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany(ENQUEUE, rows)
            if later:
                conn.executemany(ENQUEUE_DEFERRED, later)
            conn.executemany("INSERT OR IGNORE INTO queues (name) VALUES (?)", names)

        self._db.run(tx)

    def claim(self, queues: Sequence[str], *, limit: int, lease: float, wait: float) -> list[Claim]:
        deadline = time.monotonic() + wait
        while True:
            claims = self._db.run(lambda conn: self._take(conn, queues, limit, lease))
            if claims:
                self._idle.found(_WORK)
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
            args = (token, now + lease, queue, now, limit - len(claims), _INLINE)
            for seq, task_id, reply_to, body, attempt, tok, big in sorted(
                conn.execute(CLAIM, args).fetchall()
            ):
                if big == 1:
                    body = conn.execute(BODY, (seq,)).fetchone()[0]
                if type(task_id) is type(reply_to) is str and type(body) is bytes:
                    if type(attempt) is int:
                        claims.append(Claim(task_id, queue, reply_to, body, attempt, tok))
                        continue
                dead.quarantine(conn, seq, queue, task_id, (task_id, reply_to, body, attempt))
        return claims

    def _next_due(self, conn: sqlite3.Connection, queues: Sequence[str]) -> float:
        due = math.inf
        for queue in queues:
            waiting, lease_until = conn.execute(PEEK, (queue,)).fetchone()
            if waiting:
                return 0.0
            if lease_until is not None:  # not a number: a claim takes that row now
                due = min(due, lease_until if type(lease_until) in (int, float) else 0.0)
        return due

    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        def tx(conn: sqlite3.Connection) -> list[bool]:
            now = time.time()
            sql = f"UPDATE tasks SET lease_until = ? WHERE {HELD}"
            return [
                conn.execute(sql, (now + lease, c.id, c.token, now)).rowcount == 1 for c in claims
            ]

        return self._db.run(tx) if claims else []

    def complete(self, done: Sequence[Done]) -> list[bool]:
        def tx(conn: sqlite3.Connection) -> list[bool]:
            now = time.time()
            sql = f"DELETE FROM tasks WHERE {HELD}"
            accepted = [
                conn.execute(sql, (d.claim.id, d.claim.token, now)).rowcount == 1
                if d.again is None
                else conn.execute(PUT_BACK, _put_back(d.claim, d.again, now)).rowcount == 1
                for d in done
            ]
            conn.executemany(
                REPLY,
                [
                    (d.claim.reply_to, d.reply, now, d.claim.id)
                    for d, ok in zip(done, accepted, strict=True)
                    if ok and d.reply is not None and d.again is None and d.claim.reply_to
                ],
            )
            keep(conn, done, accepted, now)  # kept results (kept.py)
            return accepted

        return self._db.run(tx) if done else []

    def results(self, ids: Sequence[str]) -> dict[str, bytes]:
        return kept.results(self._db, ids)

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        return kept.states(self._db, ids)

    def release(self, claims: Sequence[Claim]) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.executemany(
                "UPDATE tasks SET token = NULL, lease_until = 0, attempt = attempt - 1 "
                f"WHERE {HELD}",
                [(c.id, c.token, now) for c in claims],
            )

        if claims:
            self._db.run(tx)

    def cancel(self, job: Job) -> bool:
        sql = "DELETE FROM tasks WHERE id = ? AND queue = ? AND attempt = 0"
        return self._db.run(lambda conn: conn.execute(sql, (job.id, job.queue)).rowcount == 1)

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
            got = self._db.run(take) if self._db.run(due, None) == 0.0 else []
            if got:
                self._idle.found(_WORK)
                return got
            if not self._wait(due, deadline):
                return got

    def heartbeat(self, info: WorkerInfo) -> None:
        row = list(astuple(info))
        row[3], row[9] = json.dumps(row[3]), json.dumps(row[9])  # queues, durations
        self._db.run(lambda conn: conn.execute(HEARTBEAT, row))

    def forget_worker(self, worker: str) -> None:
        self._db.run(lambda conn: conn.execute("DELETE FROM workers WHERE id = ?", (worker,)))

    def bury(self, letter: DeadLetter, task: Job | None = None) -> None:
        dead.bury(self._db, letter, task)

    def drop_dead(self, ids: Sequence[str]) -> int:
        return dead.drop_dead(self._db, ids)

    def retry_dead(self, ids: Sequence[str]) -> int:
        return dead.retry_dead(self._db, ids)

    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        def tx(conn: sqlite3.Connection) -> list[tuple[int, bool]]:
            for sql in STARTS:
                conn.execute(sql)
            conn.execute(FORGET_STARTS, (time.time(),))
            rows = [conn.execute(NOTE_START, s).fetchone() for s in starts]
            return [(_count(n), bool(done)) for n, done in rows]

        return self._db.run(tx)

    def note_completed(self, ids: Sequence[str]) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(STARTS[0])
            conn.executemany("UPDATE starts SET done = 1 WHERE id = ?", [(i,) for i in ids])

        self._db.run(tx)

    def stats(self) -> Stats:
        def tx(conn: sqlite3.Connection) -> Stats:
            now = time.time()
            names = conn.execute("SELECT name FROM queues")
            depth = {name: 0 for (name,) in names if type(name) is str}
            rows = conn.execute(DEPTH, (now,)).fetchall()
            depth.update((queue, int(waiting)) for queue, waiting, *_ in rows if type(queue) is str)
            oldest = {q: float(at) for q, *_, at in rows if type(q) is str and type(at) is float}
            workers = conn.execute(LIVE_WORKERS, (now - self.worker_ttl,))
            live = [w for w in map(worker_info, workers) if w is not None]
            letters = [d for d in map(dead_letter, conn.execute(DEAD)) if d is not None]
            return Stats(depth, int(sum(r[2] for r in rows)), live, letters, oldest=oldest)

        return self._db.run(tx, "DEFERRED")

    def health(self) -> dict[str, float | str]:
        return self._db.health()

    def purge(self, queue: str | None = None) -> int:
        """Delete waiting and deferred tasks and expired leases, leaving a tombstone for each."""
        sql = "DELETE FROM tasks WHERE (token IS NULL OR token = '' OR lease_until <= ?1)"
        if queue is not None:
            sql += " AND queue = ?2"

        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            args = (now,) if queue is None else (now, queue)
            ids = [(i, now) for (i,) in conn.execute(sql + " RETURNING id", args).fetchall()]
            conn.executemany("INSERT OR REPLACE INTO purged (id, at) VALUES (?, ?)", ids)
            return len(ids)

        return self._db.run(tx)

    def withdraw(self, ids: Sequence[str]) -> list[str]:
        """Delete the waiting and deferred tasks ``ids``, leaving a tombstone for each."""

        def tx(conn: sqlite3.Connection) -> list[str]:
            now, gone = time.time(), set[object]()
            for chunk in chunks(ids):
                free = f"id IN ({marks(len(chunk))}) AND (token IS NULL OR token = '')"
                gone.update(
                    i
                    for (i,) in conn.execute(f"DELETE FROM tasks WHERE {free} RETURNING id", chunk)
                )
            withdrawn = [i for i in dict.fromkeys(ids) if i in gone]
            tombstones = [(i, now) for i in withdrawn]
            conn.executemany("INSERT OR REPLACE INTO purged (id, at) VALUES (?, ?)", tombstones)
            return withdrawn

        return self._db.run(tx) if ids else []

    def lost(self, ids: Sequence[str], reply_to: str) -> set[str]:
        """One snapshot: the ids with neither a task row nor a reply to ``reply_to``."""

        def tx(conn: sqlite3.Connection) -> set[str]:
            found: set[Any] = set()
            for chunk in chunks(ids):
                qs = marks(len(chunk))
                rows = conn.execute(f"SELECT id FROM tasks WHERE id IN ({qs})", chunk)
                found.update(i for (i,) in rows)
                rows = conn.execute(
                    f"SELECT task_id FROM replies WHERE reply_to = ? AND task_id IN ({qs})",
                    (reply_to, *chunk),
                )
                found.update(i for (i,) in rows)
            return set(ids) - found

        return self._db.run(tx, "DEFERRED") if ids else set()

    def purged(self, ids: Sequence[str]) -> set[str]:
        def tx(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            cutoff = time.time() - self.result_ttl
            for chunk in chunks(ids):
                qs = marks(len(chunk))
                sql = f"SELECT id FROM purged WHERE at > ? AND id IN ({qs})"
                found.update(i for (i,) in conn.execute(sql, (cutoff, *chunk)))
            return found

        return self._db.run(tx, "DEFERRED") if ids else set()

    def sweep(self) -> None:
        """Delete replies older than ``result_ttl``, workers silent for ``worker_ttl``,
        expired blobs and expired kept results."""

        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("DELETE FROM replies WHERE created < ?", (now - self.result_ttl,))
            conn.execute("DELETE FROM purged WHERE at < ?", (now - self.result_ttl,))
            conn.execute("DELETE FROM workers WHERE last_seen < ?", (now - self.worker_ttl,))
            for sql in BLOBS:  # a database made before the blobs table has none yet
                conn.execute(sql)
            conn.execute("DELETE FROM blobs WHERE expires < ?", (now,))
            for sql in kept.KEPT:
                conn.execute(sql)
            conn.execute(kept.SWEEP_KEPT, (now,))

        self._db.run(tx)

    def blob_store(self) -> SQLiteBlobStore:
        """Blobs in a table of the database (``blobs.py``)."""
        return SQLiteBlobStore(self._db)

    def close(self) -> None:
        """Close the connections this process opened; a forked child leaves its parent's."""
        self._db.close()


def _deferred_rows(jobs: Sequence[Job], now: float) -> list[tuple[Any, ...]]:
    """The ENQUEUE_DEFERRED rows of the jobs in ``jobs`` not claimable before a later time."""
    return [
        (j.id, j.queue, j.reply_to, j.body, now, j.not_before) for j in jobs if j.not_before > now
    ]


def _put_back(claim: Claim, again: Job, now: float) -> tuple[Any, ...]:
    """The PUT_BACK parameters that put ``claim`` back as ``again``."""
    held = (claim.id, claim.token, now)
    if again.not_before > now:
        return (again.body, "", again.not_before, *held)
    return (again.body, None, 0.0, *held)


def _count(n: object) -> int:
    """A start count read back; anything but an int (a row written by someone else) counts
    as many starts, so the task is not run."""
    return n if type(n) is int else 2**31


def _is_bytes(value: object, what: str) -> bool:
    if type(value) is bytes:
        return True
    log.error("dropped a %s that is a %s, not a blob", what, type(value).__name__)
    return False
