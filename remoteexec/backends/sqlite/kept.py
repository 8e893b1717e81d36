"""SQLite's kept results (``Done.keep``) and task states, for ``remoteexec.result``.

``kept (id, body, expires)``: one row per task id whose reply is kept, written in the
completion's transaction; the first row written for an id stays. A row past ``expires``
is never read, and ``sweep`` deletes it. The table is made on first use (by a completion
or a sweep), so no schema version changes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from ..base import RUNNING, WAITING, Done
from .connection import Database
from .statements import chunks, marks

#: The table and its expiry index; each statement is safe to run again.
KEPT = (
    """CREATE TABLE IF NOT EXISTS kept (id TEXT PRIMARY KEY, body BLOB NOT NULL,
        expires REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS kept_expires ON kept (expires)",
)
_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kept'"
_KEEP = "INSERT INTO kept VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING"
SWEEP_KEPT = "DELETE FROM kept WHERE expires <= ?"


def keep(conn: sqlite3.Connection, done: Sequence[Done], accepted: list[bool], now: float) -> None:
    """Keep the replies of the accepted items of ``done`` that ask for it (in the
    completion's transaction); nothing when none does."""
    rows = [
        (d.claim.id, d.reply, now + d.keep)
        for d, ok in zip(done, accepted, strict=True)
        if d.keep and ok and d.reply is not None
    ]
    if rows:
        for sql in KEPT:
            conn.execute(sql)
        conn.executemany(_KEEP, rows)


def results(db: Database, ids: Sequence[str]) -> dict[str, bytes]:
    """The unexpired replies kept under ``ids``."""

    def tx(conn: sqlite3.Connection) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        if conn.execute(_EXISTS).fetchone() is None:  # nothing was ever kept here
            return found
        now = time.time()
        for chunk in chunks(ids):
            sql = f"SELECT id, body FROM kept WHERE expires > ? AND id IN ({marks(len(chunk))})"
            for task_id, body in conn.execute(sql, (now, *chunk)):
                if type(task_id) is str and type(body) is bytes:  # rows anyone may write
                    found[task_id] = body
        return found

    return db.run(tx, "DEFERRED") if ids else {}


def states(db: Database, ids: Sequence[str]) -> dict[str, str]:
    """``WAITING`` or ``RUNNING`` for each of ``ids`` with a task row."""

    def tx(conn: sqlite3.Connection) -> dict[str, str]:
        found: dict[str, str] = {}
        now = time.time()
        for chunk in chunks(ids):
            sql = (
                "SELECT id, token IS NOT NULL AND lease_until > ? FROM tasks "
                f"WHERE id IN ({marks(len(chunk))})"
            )
            for task_id, live in conn.execute(sql, (now, *chunk)):
                found[task_id] = RUNNING if live else WAITING
        return found

    return db.run(tx, "DEFERRED") if ids else {}
