"""The SQLite schema, its version and migration, and the adapter's longer statements.

``tasks``
    One row per task. ``seq`` is the FIFO order; ``token IS NULL`` means waiting, ``''``
    deferred (held by no one until ``lease_until``, its ``Job.not_before``), else the task
    is leased until ``lease_until``. Two partial indexes serve a claim: waiting tasks of a
    queue in order, and leased and deferred tasks of a queue by the time they come due: a
    claim takes a due deferred task as it takes an expired lease.
``replies``
    Replies waiting for a client's ``reply_to``, with their task's id, so ``lost`` sees an
    answered task in one snapshot.
``queues``, ``workers``, ``dead``
    Known queue names, heartbeats and the newest dead letters, for ``stats``; a dead
    letter keeps its task's reply address and body where ``retry_dead`` may enqueue it
    again (NULL otherwise).
``purged``
    A tombstone per id ``purge`` deleted, kept ``result_ttl`` seconds.
``starts``
    Made on first use: only workers that verify signed calls need it.
``blobs``
    Chunks of the blobs of out-of-band payloads (``blobs.py``), with their expiry; made
    with the schema, and on first use in a database made before the table existed.
``kept``
    Replies kept under their task's id until an expiry (``kept.py``); made on first use.

The version is recorded in ``PRAGMA user_version``; version 1 lacked ``replies.task_id``,
version 2 ``dead.traceback``, ``dead.reply_to``, ``dead.body`` and ``dead.deadline``,
version 3 ``workers.failed`` and ``workers.durations``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..sql import schema_is_current

#: The schema this module creates, recorded in ``PRAGMA user_version``.
SCHEMA_VERSION = 4

#: The blobs table (``blobs.py``): made with the schema, and on first use.
BLOBS = (
    """CREATE TABLE IF NOT EXISTS blobs (id TEXT NOT NULL, part INTEGER NOT NULL,
        data BLOB NOT NULL, expires REAL NOT NULL, PRIMARY KEY (id, part))""",
    "CREATE INDEX IF NOT EXISTS blobs_expires ON blobs (expires)",
)

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
        running INTEGER NOT NULL, failed INTEGER NOT NULL DEFAULT 0,
        durations TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE IF NOT EXISTS dead (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL, queue TEXT NOT NULL, name TEXT NOT NULL,
        reason TEXT NOT NULL, at REAL NOT NULL, traceback TEXT NOT NULL DEFAULT '',
        reply_to TEXT, body BLOB, deadline REAL NOT NULL DEFAULT 0)""",
    *BLOBS,
    f"PRAGMA user_version = {SCHEMA_VERSION}",
]

ENQUEUE = (
    "INSERT INTO tasks (id, queue, reply_to, body, created) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING"
)
#: A deferred task: token '' until lease_until = its not_before (the last parameter).
ENQUEUE_DEFERRED = (
    "INSERT INTO tasks (id, queue, reply_to, body, created, token, lease_until) "
    "VALUES (?, ?, ?, ?, ?, '', ?) ON CONFLICT (id) DO NOTHING"
)
#: Done.again: the held row (id, token, now) takes its new body, token ('' or NULL) and
#: not_before, and gives back the attempt its claim counted.
PUT_BACK = """UPDATE tasks SET body = ?, token = ?, lease_until = ?, attempt = attempt - 1
WHERE id = ? AND token = ? AND lease_until > ?"""
# Oldest first among waiting tasks and expired leases of one queue (?3), up to ?5 of them;
# the expired leases and due deferred tasks looked at are the first to have come due.
# A lease_until that is text or a blob (they sort after every number) holds no lease.
# A body over ?6 bytes is read by BODY afterwards (its last column says so): RETURNING
# keeps its rows until the statement ends, one more copy of every body at the peak.
CLAIM = """UPDATE tasks SET attempt = attempt + 1, token = ?1 || seq, lease_until = ?2
WHERE seq IN (
    SELECT seq FROM (SELECT seq FROM tasks WHERE queue = ?3 AND token IS NULL
                     ORDER BY seq LIMIT ?5)
    UNION ALL
    SELECT seq FROM (SELECT seq FROM tasks WHERE queue = ?3 AND token IS NOT NULL
                     AND (lease_until <= ?4 OR lease_until >= '')
                     ORDER BY lease_until, seq LIMIT ?5)
    ORDER BY seq LIMIT ?5)
RETURNING seq, id, reply_to, iif(length(body) > ?6, NULL, body), attempt, token,
    length(body) > ?6"""
BODY = "SELECT body FROM tasks WHERE seq = ?"
#: Whether a queue has waiting tasks, and its earliest lease end.
PEEK = (
    "SELECT EXISTS (SELECT 1 FROM tasks WHERE queue = ?1 AND token IS NULL), "
    "(SELECT min(lease_until) FROM tasks WHERE queue = ?1 AND token IS NOT NULL)"
)
#: The row (id, token, now) is held by that token under a lease that has not expired.
HELD = "id = ? AND token = ? AND lease_until > ?"
REPLY = "INSERT INTO replies (reply_to, body, created, task_id) VALUES (?, ?, ?, ?)"
HEARTBEAT = "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
BURY = (
    "INSERT INTO dead (id, queue, name, reason, at, traceback, deadline, reply_to, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The dead letters, newest first, with whether each keeps its task.
DEAD = (
    "SELECT id, queue, name, reason, at, traceback, body IS NOT NULL, deadline FROM dead "
    "ORDER BY seq DESC"
)
#: The task the newest letter of an id keeps, to enqueue again.
DEAD_TASK = (
    "SELECT queue, reply_to, body FROM dead WHERE id = ? AND body IS NOT NULL "
    "ORDER BY seq DESC LIMIT 1"
)
REVIVE = "INSERT INTO tasks (id, queue, reply_to, body, created) VALUES (?, ?, ?, ?, ?) "
REVIVE += "ON CONFLICT (id) DO NOTHING"
LIVE_WORKERS = "SELECT * FROM workers WHERE last_seen > ? ORDER BY started, id"
DEPTH = (  # per queue: waiting (deferred, lease expired), running, the oldest waiting's time
    "SELECT queue, total(token IS NULL OR token = '' OR lease_until <= ?1), "
    "total(token IS NOT NULL AND token <> '' AND lease_until > ?1), "
    "min(iif(token IS NULL, created, NULL)) FROM tasks GROUP BY queue"
)
STARTS = (  # made on first use: only workers with secrets need it
    """CREATE TABLE IF NOT EXISTS starts (id TEXT PRIMARY KEY, n INTEGER NOT NULL,
        done INTEGER NOT NULL, keep_until REAL NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS starts_expiry ON starts (keep_until)",
)
NOTE_START = """INSERT INTO starts VALUES (?1, 1, 0, ?2) ON CONFLICT (id) DO UPDATE
    SET n = n + 1, keep_until = max(keep_until, ?2) RETURNING n - 1, done"""
FORGET_STARTS = (
    "DELETE FROM starts WHERE id IN (SELECT id FROM starts WHERE keep_until < ? LIMIT 100)"
)


#: Bytes per table, its indexes included (``dbstat``), for ``health``.
TABLE_SIZES = (
    "SELECT coalesce(m.tbl_name, d.name) AS t, sum(d.pgsize) FROM dbstat AS d "
    "LEFT JOIN sqlite_master AS m ON m.name = d.name GROUP BY t ORDER BY t"
)


def schema_ready(conn: sqlite3.Connection, path: str) -> bool:
    """Whether the database has this code's schema (without a write lock).

    Raises:
        ConfigurationError: its schema is newer than this code.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return schema_is_current(version, SCHEMA_VERSION, f"SQLite database {path}")


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring an older version up to date (call it under the write
    lock)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == 1:
        conn.execute("ALTER TABLE replies ADD COLUMN task_id TEXT")
    if 1 <= version <= 2:
        conn.execute("ALTER TABLE dead ADD COLUMN traceback TEXT NOT NULL DEFAULT ''")
        conn.execute("ALTER TABLE dead ADD COLUMN reply_to TEXT")
        conn.execute("ALTER TABLE dead ADD COLUMN body BLOB")
        conn.execute("ALTER TABLE dead ADD COLUMN deadline REAL NOT NULL DEFAULT 0")
    if 1 <= version <= 3:
        conn.execute("ALTER TABLE workers ADD COLUMN failed INTEGER NOT NULL DEFAULT 0")
        conn.execute("ALTER TABLE workers ADD COLUMN durations TEXT NOT NULL DEFAULT '{}'")
    if version < SCHEMA_VERSION:
        for sql in _SCHEMA:
            conn.execute(sql)


def chunks(ids: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """``ids`` in slices that stay below SQLite's limit on bound parameters."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def marks(n: int) -> str:
    """``n`` comma-separated placeholders."""
    return ", ".join("?" * n)
