"""Watching: heartbeats, dead letters, starts, ``stats``, ``purge``, ``withdraw``, ``lost``
and ``sweep``.

None of it is on the hot path. ``MySQLBackend`` owns a ``Watch`` over its connections and
hands it the time limits it needs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from ..base import DeadLetter, Job, Stats, WorkerInfo, buried_task
from ..rows import dead_letter, worker_info
from .connection import Connections, Result, execute
from .statements import (
    BURY,
    FORGET_WORKER,
    FOUND,
    HEARTBEAT,
    NOTE_COMPLETED,
    PURGEABLE,
    PURGED,
    STATS,
    SWEEP,
    TABLE_SIZES,
    WITHDRAW,
    WITHDRAWABLE,
    marks,
    note_starts,
    purge,
    retry_dead,
)

_LOOKUP = 2000  # ids asked about per round trip by lost and purged


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Watch:
    """Reads and housekeeping over the tables the adapter writes, through ``db``."""

    def __init__(self, db: Connections) -> None:
        self._db = db

    def heartbeat(self, info: WorkerInfo) -> None:
        args: tuple[Any, ...] = (info.id, info.host, info.pid, json.dumps(info.queues))
        args += (info.started, info.last_seen, info.done, info.running, info.failed)
        args += (json.dumps(info.durations),)
        self._db.run(lambda cur: execute(cur, HEARTBEAT, args), retry_lost=True)

    def forget_worker(self, worker: str) -> None:
        self._db.run(lambda cur: execute(cur, FORGET_WORKER, (worker,)), retry_lost=True)

    def bury(self, letter: DeadLetter, task: Job | None = None) -> None:
        task = buried_task(task)
        args: tuple[Any, ...] = (letter.id, letter.queue, letter.name, letter.reason)
        args += (letter.at, letter.traceback, letter.deadline)
        args += (task.reply_to, task.body) if task else (None, None)
        self._db.run(lambda cur: execute(cur, BURY, args))

    def retry_dead(self, ids: Sequence[str]) -> int:
        """One transaction, in two round trips (see ``statements.retry_dead``)."""
        wanted = list(set(ids))
        lock, revive = retry_dead(len(wanted))

        def tx(cur: Any) -> int:
            found = [_text(i) for (i,) in execute(cur, lock, wanted)[2][1]]
            sql = revive.format(marks(len(found))) if found else "COMMIT"
            execute(cur, sql, found * 3)
            return len(found)

        return self._db.run(tx) if wanted else 0

    def drop_dead(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        sql = f"DELETE FROM remoteexec_dead_letters WHERE id IN ({marks(len(set(ids)))})"
        return int(self._db.run(lambda cur: execute(cur, sql, list(set(ids))))[0][0])

    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        """Counted in one transaction: concurrent starts of one id count one after the
        other."""
        sql = note_starts(len(starts))
        args = [x for s in starts for x in s] + [s[0] for s in starts] + [time.time()]
        result = self._db.run(lambda cur: execute(cur, sql, args))
        found = {_text(i): (int(n), bool(done)) for i, n, done in result[3][1]}
        return [found.get(i, (2**31, True)) for i, _ in starts]

    def note_completed(self, ids: Sequence[str]) -> None:
        sql = NOTE_COMPLETED.format(marks(len(ids)))
        self._db.run(lambda cur: execute(cur, sql, list(ids)), retry_lost=True)

    def stats(self, worker_ttl: float) -> Stats:
        """Workers count as live for ``worker_ttl`` seconds after their last heartbeat."""
        result = self._db.run(lambda cur: execute(cur, STATS, (worker_ttl,)), retry_lost=True)
        depth, expired, running, workers, dead = (rows for _, rows in result)
        queues = {q: int(n) for q, n, _ in depth}
        oldest = {q: float(at) for q, _, at in depth if at is not None}
        for q, n in expired:
            queues[q] += int(n)
        live = [w for w in map(worker_info, workers) if w is not None]  # skip foreign rows
        letters = [d for d in map(dead_letter, dead) if d is not None]
        return Stats(queues, int(running[0][0]), live, letters, oldest=oldest)

    def health(self) -> dict[str, float | str]:
        """Each remoteexec table's rows (an estimate) and bytes."""
        figures: dict[str, float | str] = {}
        [(_, rows)] = self._ask(TABLE_SIZES, ())
        for name, count, size in rows:
            figures[f"{_text(name)} rows (about)"] = int(count or 0)
            figures[f"{_text(name)} bytes"] = int(size or 0)
        return figures

    def purge(self, queue: str | None = None) -> int:
        """Delete waiting tasks and expired leases, leaving a tombstone for each, in one
        transaction; tasks enqueued meanwhile stay."""
        where: str = PURGEABLE
        args: tuple[str, ...] = ()
        if queue is not None:
            where, args = where + " AND queue = %s", (queue,)
        return int(self._db.run(lambda cur: execute(cur, purge(where), args + args))[4][0])

    def withdraw(self, ids: Sequence[str]) -> list[str]:
        """One transaction, in two round trips: lock the waiting and deferred tasks among
        ``ids``, then tombstone and delete those."""
        wanted = list(dict.fromkeys(ids))

        def tx(cur: Any) -> list[str]:
            found = [
                _text(i)
                for (i,) in execute(cur, WITHDRAWABLE.format(marks(len(wanted))), wanted)[2][1]
            ]
            sql = WITHDRAW.format(marks(len(found))) if found else "COMMIT"
            execute(cur, sql, found * 2)
            got = set(found)
            return [i for i in wanted if i in got]

        return self._db.run(tx) if wanted else []

    def lost(self, ids: Sequence[str], reply_to: str) -> set[str]:
        """Ids with neither a task row nor a reply row, looked up in that order (autocommit,
        READ COMMITTED: a completion that deleted the row had stored the reply)."""
        found: set[str] = set()
        for i in range(0, len(ids), _LOOKUP):
            chunk = list(ids[i : i + _LOOKUP])
            result = self._ask(FOUND.format(marks(len(chunk))), [*chunk, reply_to, *chunk])
            found.update(_text(row[0]) for _, rows in result for row in rows)
        return set(ids) - found

    def purged(self, ids: Sequence[str], result_ttl: float) -> set[str]:
        """The ids purged within the last ``result_ttl`` seconds."""
        found: set[str] = set()
        for i in range(0, len(ids), _LOOKUP):
            chunk = list(ids[i : i + _LOOKUP])
            result = self._ask(PURGED.format(marks(len(chunk))), [result_ttl, *chunk])
            found.update(_text(row[0]) for row in result[1][1])
        return found

    def _ask(self, sql: str, args: Sequence[Any]) -> Result:
        return self._db.run(lambda cur: execute(cur, sql, args))

    def sweep(self, result_ttl: float, worker_ttl: float) -> None:
        """Delete replies and tombstones older than ``result_ttl``, workers silent for
        4 worker TTLs and expired blobs."""
        args = (result_ttl, max(60.0, 4 * worker_ttl), result_ttl)
        self._db.run(lambda cur: execute(cur, SWEEP, args), retry_lost=True)
