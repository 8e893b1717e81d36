"""SQLite's dead letters: burying a task (or a malformed task row), dropping and retrying
letters.

``dead`` keeps the newest ``MAX_DEAD_LETTERS`` letters, each with its task's reply address
and body where ``retry_dead`` may enqueue it again (``statements.py``). Each function runs
in one transaction.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import astuple
from typing import Any

from ..base import MAX_DEAD_LETTERS, DeadLetter, Job, buried_task
from .connection import Database
from .statements import BURY, DEAD_TASK, REVIVE, STARTS

log = logging.getLogger("remoteexec.sqlite")


def bury(db: Database, letter: DeadLetter, task: Job | None = None) -> None:
    """Keep ``letter`` (with ``task`` where a dead letter keeps it), the oldest past the cap
    dropped."""
    task = buried_task(task)
    kept_task = (task.reply_to, task.body) if task else (None, None)
    row = (*astuple(letter)[:6], letter.deadline, *kept_task)

    def tx(conn: sqlite3.Connection) -> None:
        seq = conn.execute(BURY, row).lastrowid
        conn.execute("DELETE FROM dead WHERE seq <= ?", ((seq or 0) - MAX_DEAD_LETTERS,))

    db.run(tx)


def drop_dead(db: Database, ids: Sequence[str]) -> int:
    """Delete the letters of ``ids``; how many there were."""

    def tx(conn: sqlite3.Connection) -> int:
        drop = "DELETE FROM dead WHERE id = ?"
        return sum(conn.execute(drop, (i,)).rowcount for i in set(ids))

    return db.run(tx)


def retry_dead(db: Database, ids: Sequence[str]) -> int:
    """One transaction: each letter's task enqueued, its start record and letter gone."""

    def tx(conn: sqlite3.Connection) -> int:
        conn.execute(STARTS[0])
        now, retried = time.time(), 0
        for task_id in set(ids):
            row = conn.execute(DEAD_TASK, (task_id,)).fetchone()
            if row is None or not (type(row[0]) is type(row[1]) is str):
                continue
            if type(row[2]) is not bytes:  # written by someone else
                continue
            conn.execute(REVIVE, (task_id, *row, now))
            conn.execute("INSERT OR IGNORE INTO queues (name) VALUES (?)", (row[0],))
            conn.execute("DELETE FROM starts WHERE id = ?", (task_id,))
            conn.execute("DELETE FROM dead WHERE id = ?", (task_id,))
            retried += 1
        return retried

    return db.run(tx) if ids else 0


def quarantine(
    conn: sqlite3.Connection, seq: int, queue: str, task_id: object, row: tuple[Any, ...]
) -> None:
    """Move a claimed task row with type-confused columns to the dead letters."""
    kinds = ", ".join(type(v).__name__ for v in row)
    reason = f"malformed task row: (id, reply_to, body, attempt) are ({kinds})"
    log.error("task row %d in queue %r moved to the dead letters: %s", seq, queue, reason)
    ident = task_id if type(task_id) is str else repr(task_id)[:200]
    conn.execute("DELETE FROM tasks WHERE seq = ?", (seq,))
    last = conn.execute(BURY, (ident, queue, "?", reason, time.time(), "", 0, None, None)).lastrowid
    conn.execute("DELETE FROM dead WHERE seq <= ?", ((last or 0) - MAX_DEAD_LETTERS,))
