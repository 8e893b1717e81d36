"""The watching half of the MySQL adapter: heartbeats, dead letters, ``stats``, ``purge``
and ``sweep``. None of it is on the hot path. ``MySQLBackend`` (``mysql.py``) inherits it
and owns the connections.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from .base import Backend, DeadLetter, Stats, WorkerInfo
from .mysql_conn import Connections, Result, execute
from .mysql_schema import NOW, TASKS
from .rows import dead_letter, worker_info

_MAX_DEAD = 1000
# Made on first use: only workers with secrets need it (see Backend.note_starts).
_STARTS = (
    "CREATE TABLE IF NOT EXISTS remoteexec_starts (id VARBINARY(255) NOT NULL PRIMARY KEY, "
    "n INT NOT NULL, done TINYINT NOT NULL, keep_until DOUBLE NOT NULL, "
    "KEY ix_starts_expiry (keep_until)) ENGINE=InnoDB"
)

# Tombstones of purged tasks, kept result_ttl seconds (see purge); made on first use.
_PURGED = (
    "CREATE TABLE IF NOT EXISTS remoteexec_purged (id VARBINARY(255) NOT NULL PRIMARY KEY, "
    "at DOUBLE NOT NULL, KEY ix_purged_at (at)) ENGINE=InnoDB"
)
_LOOKUP = 2000  # ids asked about per round trip by lost and purged


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class MySQLWatching(Backend):
    """Reads and housekeeping over the tables that ``MySQLBackend`` writes."""

    _db: Connections

    def heartbeat(self, info: WorkerInfo) -> None:
        sql = (
            "INSERT INTO remoteexec_workers (id, host, pid, queues, started, last_seen, done, "
            f"running, seen_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, {NOW}) "
            "ON DUPLICATE KEY UPDATE host = VALUES(host), pid = VALUES(pid), "
            "queues = VALUES(queues), started = VALUES(started), last_seen = VALUES(last_seen), "
            "done = VALUES(done), running = VALUES(running), seen_at = VALUES(seen_at)"
        )
        queues = json.dumps(info.queues)
        args: tuple[Any, ...] = (info.id, info.host, info.pid, queues, info.started)
        args += (info.last_seen, info.done, info.running)
        self._db.run(lambda cur: execute(cur, sql, args), retry_lost=True)

    def forget_worker(self, worker: str) -> None:
        sql = "DELETE FROM remoteexec_workers WHERE id = %s"
        self._db.run(lambda cur: execute(cur, sql, (worker,)), retry_lost=True)

    def bury(self, letter: DeadLetter) -> None:
        sql = (
            "INSERT INTO remoteexec_dead_letters (id, queue, name, reason, at) "
            "VALUES (%s, %s, %s, %s, %s); DELETE FROM remoteexec_dead_letters "
            f"WHERE seq <= CAST(LAST_INSERT_ID() AS SIGNED) - {_MAX_DEAD}"
        )
        args = (letter.id, letter.queue, letter.name, letter.reason, letter.at)
        self._db.run(lambda cur: execute(cur, sql, args))

    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        """Counted in one transaction: the row lock makes concurrent starts of one id count
        one after the other."""
        rows = ", ".join(["(%s, 1, 0, %s)"] * len(starts))
        ids = ", ".join(["%s"] * len(starts))
        sql = (
            f"{_STARTS}; START TRANSACTION; "
            f"INSERT INTO remoteexec_starts (id, n, done, keep_until) VALUES {rows} "
            "ON DUPLICATE KEY UPDATE n = n + 1, keep_until = GREATEST(keep_until, "
            f"VALUES(keep_until)); SELECT id, n - 1, done FROM remoteexec_starts WHERE id IN "
            f"({ids}); COMMIT; DELETE FROM remoteexec_starts WHERE keep_until < %s LIMIT 100"
        )
        args = [x for s in starts for x in s] + [s[0] for s in starts] + [time.time()]
        result = self._db.run(lambda cur: execute(cur, sql, args))
        found = {_text(i): (int(n), bool(done)) for i, n, done in result[3][1]}
        return [found.get(i, (2**31, True)) for i, _ in starts]

    def note_completed(self, ids: Sequence[str]) -> None:
        marks = ", ".join(["%s"] * len(ids))
        sql = f"{_STARTS}; UPDATE remoteexec_starts SET done = 1 WHERE id IN ({marks})"
        self._db.run(lambda cur: execute(cur, sql, list(ids)), retry_lost=True)

    def stats(self) -> Stats:
        sql = (
            f"SELECT queue, SUM(state = 0) FROM {TASKS} GROUP BY queue; "
            f"SELECT queue, COUNT(*) FROM {TASKS} WHERE state = 1 AND lease_until <= {NOW} "
            f"GROUP BY queue; "
            f"SELECT COUNT(*) FROM {TASKS} WHERE state = 1 AND lease_until > {NOW}; "
            "SELECT id, host, pid, queues, started, last_seen, done, running "
            f"FROM remoteexec_workers WHERE seen_at > {NOW} - %s ORDER BY id; "
            "SELECT id, queue, name, reason, at FROM remoteexec_dead_letters "
            f"ORDER BY seq DESC LIMIT {_MAX_DEAD}"
        )
        result = self._db.run(lambda cur: execute(cur, sql, (self.worker_ttl,)), retry_lost=True)
        depth, expired, running, workers, dead = (rows for _, rows in result)
        queues = {q: int(n) for q, n in depth}
        for q, n in expired:
            queues[q] += int(n)
        live = [w for w in map(worker_info, workers) if w is not None]  # skip foreign rows
        letters = [d for d in map(dead_letter, dead) if d is not None]
        return Stats(queues, int(running[0][0]), live, letters)

    def purge(self, queue: str | None = None) -> int:
        """Delete waiting tasks and expired leases, leaving a tombstone for each, in one
        transaction; tasks enqueued meanwhile (above ``@top``) stay."""
        where = "seq <= @top AND (state = 0 OR lease_until <= @now)"
        args: tuple[str, ...] = ()
        if queue is not None:
            where, args = where + " AND queue = %s", (queue,)
        sql = (
            f"{_PURGED}; START TRANSACTION; SET @now = {NOW}, "
            f"@top = (SELECT COALESCE(MAX(seq), 0) FROM {TASKS}); "
            f"INSERT INTO remoteexec_purged (id, at) SELECT id, @now FROM {TASKS} WHERE {where} "
            "ON DUPLICATE KEY UPDATE at = VALUES(at); "
            f"DELETE FROM {TASKS} WHERE {where}; COMMIT"
        )
        return int(self._db.run(lambda cur: execute(cur, sql, args + args))[4][0])

    def lost(self, ids: Sequence[str], reply_to: str) -> set[str]:
        """Ids with neither a task row nor a reply row, looked up in that order (autocommit,
        READ COMMITTED: a completion that deleted the row had stored the reply)."""
        found: set[str] = set()
        for i in range(0, len(ids), _LOOKUP):
            chunk = list(ids[i : i + _LOOKUP])
            m = ", ".join(["%s"] * len(chunk))
            sql = (
                f"SELECT id FROM {TASKS} WHERE id IN ({m}); SELECT task_id FROM "
                f"remoteexec_replies WHERE reply_to = %s AND task_id IN ({m})"
            )
            result = self._ask(sql, [*chunk, reply_to, *chunk])
            found.update(_text(row[0]) for _, rows in result for row in rows)
        return set(ids) - found

    def purged(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), _LOOKUP):
            chunk = list(ids[i : i + _LOOKUP])
            sql = (
                f"{_PURGED}; SELECT id FROM remoteexec_purged WHERE at > {NOW} - %s "
                f"AND id IN ({', '.join(['%s'] * len(chunk))})"
            )
            result = self._ask(sql, [self.result_ttl, *chunk])
            found.update(_text(row[0]) for row in result[1][1])
        return found

    def _ask(self, sql: str, args: Sequence[Any]) -> Result:
        return self._db.run(lambda cur: execute(cur, sql, args))

    def sweep(self) -> None:
        """Delete replies older than ``result_ttl`` and workers silent for 4 worker TTLs."""
        sql = (
            f"DELETE FROM remoteexec_replies WHERE created < {NOW} - %s; "
            f"DELETE FROM remoteexec_workers WHERE seen_at < {NOW} - %s; "
            f"{_PURGED}; DELETE FROM remoteexec_purged WHERE at < {NOW} - %s"
        )
        args = (self.result_ttl, max(60.0, 4 * self.worker_ttl), self.result_ttl)
        self._db.run(lambda cur: execute(cur, sql, args), retry_lost=True)
