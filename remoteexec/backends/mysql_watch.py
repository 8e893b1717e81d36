"""The watching half of the MySQL adapter: heartbeats, dead letters, ``stats``, ``purge``
and ``sweep``. None of it is on the hot path. ``MySQLBackend`` (``mysql.py``) inherits it
and owns the connections.
"""

from __future__ import annotations

import json
from typing import Any

from .base import Backend, DeadLetter, Stats, WorkerInfo
from .mysql_conn import Connections, execute
from .mysql_schema import NOW, TASKS

_MAX_DEAD = 1000


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
        live = [
            WorkerInfo(wid, host, int(pid), json.loads(qs), started, seen, int(done), int(run))
            for wid, host, pid, qs, started, seen, done, run in workers
        ]
        return Stats(queues, int(running[0][0]), live, [DeadLetter(*d) for d in dead])

    def purge(self, queue: str | None = None) -> int:
        sql = f"DELETE FROM {TASKS} WHERE (state = 0 OR lease_until <= {NOW})"
        args: tuple[str, ...] = ()
        if queue is not None:
            sql, args = sql + " AND queue = %s", (queue,)
        return self._db.run(lambda cur: execute(cur, sql, args))[0][0]

    def sweep(self) -> None:
        """Delete replies older than ``result_ttl`` and workers silent for 4 worker TTLs."""
        sql = (
            f"DELETE FROM remoteexec_replies WHERE created < {NOW} - %s; "
            f"DELETE FROM remoteexec_workers WHERE seen_at < {NOW} - %s"
        )
        args = (self.result_ttl, max(60.0, 4 * self.worker_ttl))
        self._db.run(lambda cur: execute(cur, sql, args), retry_lost=True)
