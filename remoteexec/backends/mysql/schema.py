"""The MySQL/MariaDB schema, versioned so later releases can migrate it.

Every table is InnoDB and prefixed ``remoteexec_`` so the schema can share a database.
Names (queues, task ids, reply addresses, ...) compare byte for byte: their collation is
binary *without* padding (``NAMES``: ``utf8mb4_nopad_bin`` on MariaDB 10.2+,
``utf8mb4_0900_bin`` on MySQL 8.0.17+), so queue ``'iso '`` is not queue ``'iso'`` (which
``utf8mb4_bin``, a PAD SPACE collation, would say it is), and statements still compare
them through the indexes.
Times are epoch seconds (``DOUBLE``) taken from the *server's* clock
(``UNIX_TIMESTAMP(NOW(6))`` with the session time zone at UTC), so leases mean the same
thing to every machine whatever their clocks say.

``remoteexec_tasks``
    One row per task. ``seq`` (auto-increment) is the FIFO order; ``state`` is 0 (waiting)
    or 1 (claimed: ``token`` holds the lease until ``lease_until``; deferred: ``token`` is
    ``''`` and ``lease_until`` the task's not-before time). ``attempt`` counts
    deliveries; ``lock_version`` is bumped by every change of ownership, for the optimistic
    claim mode. Indexes: ``(queue, state, seq)`` makes a claim an index range scan in FIFO
    order; ``(state, lease_until)`` finds expired leases (and counts running tasks) without
    a table scan.
``remoteexec_replies``
    Replies waiting for a client's ``reply_to``, read in ``seq`` order through
    ``(reply_to, seq)``; ``created`` lets ``sweep`` expire uncollected ones.
``remoteexec_workers``, ``remoteexec_dead_letters``
    Heartbeats and the newest dead letters, for ``stats``; a dead letter keeps its
    task's reply address and body where ``retry_dead`` may enqueue it again (NULL
    otherwise), and the last failure's traceback.
``remoteexec_blobs``
    Chunks of the blobs of out-of-band payloads (``blobs.py``), with their expiry; made
    on first use too, in a database made before the table existed (no version change).
``remoteexec_kept``
    Replies kept under their task's id until an expiry (``kept.py``); made when a backend
    object first connects, whatever the schema version.
``remoteexec_schema``
    One row, ``('schema', version)``. ``MIGRATIONS[n]`` upgrades version ``n - 1`` to ``n``
    (version 2: the names' no-pad collation; version 3: the dead letters' traceback,
    reply address, body and deadline; version 4: the workers' ``failed`` and ``durations``).
"""

from __future__ import annotations

import logging

import pymysql

from ..sql import schema_is_current
from .connection import Cursor, execute
from .statements import BLOBS_TABLE, marks

log = logging.getLogger("remoteexec.mysql")

SCHEMA_VERSION = 4
_VERSION = "SELECT version FROM remoteexec_schema WHERE name = 'schema'"

#: Binary no-pad collations, best first; ``utf8mb4_bin`` (padding) only where none exists
#: (MariaDB before 10.2, MySQL before 8.0.17).
NAMES = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")
_PADDED = "utf8mb4_bin"
_TEXT = "CHARACTER SET utf8mb4 COLLATE {names}"
_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={names}"
#: Each table's text columns, for the migration to version 2.
_COLUMNS = {
    "remoteexec_schema": ["name VARCHAR(32) {text} NOT NULL"],
    "remoteexec_tasks": [
        "id VARCHAR(191) {text} NOT NULL",
        "queue VARCHAR(191) {text} NOT NULL",
        "reply_to VARCHAR(191) {text} NOT NULL",
    ],
    "remoteexec_replies": [
        "reply_to VARCHAR(191) {text} NOT NULL",
        "task_id VARCHAR(191) {text} NOT NULL",
    ],
    "remoteexec_workers": [
        "id VARCHAR(191) {text} NOT NULL",
        "host VARCHAR(255) {text} NOT NULL",
        "queues TEXT {text} NOT NULL",
    ],
    "remoteexec_dead_letters": [
        "id VARCHAR(191) {text} NOT NULL",
        "queue VARCHAR(191) {text} NOT NULL",
        "name VARCHAR(255) {text} NOT NULL",
        "reason TEXT {text} NOT NULL",
    ],
}

_CREATE = [
    """CREATE TABLE IF NOT EXISTS remoteexec_schema (
    name VARCHAR(32) {text} NOT NULL PRIMARY KEY,
    version INT NOT NULL
) {table}""",
    """CREATE TABLE IF NOT EXISTS remoteexec_tasks (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id VARCHAR(191) {text} NOT NULL,
    queue VARCHAR(191) {text} NOT NULL,
    reply_to VARCHAR(191) {text} NOT NULL,
    body LONGBLOB NOT NULL,
    state TINYINT NOT NULL DEFAULT 0,
    attempt INT NOT NULL DEFAULT 0,
    lease_until DOUBLE NOT NULL DEFAULT 0,
    token CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NULL,
    lock_version INT UNSIGNED NOT NULL DEFAULT 0,
    created DOUBLE NOT NULL,
    UNIQUE KEY uq_tasks_id (id),
    KEY ix_tasks_claim (queue, state, seq),
    KEY ix_tasks_lease (state, lease_until)
) {table}""",
    """CREATE TABLE IF NOT EXISTS remoteexec_replies (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    reply_to VARCHAR(191) {text} NOT NULL,
    task_id VARCHAR(191) {text} NOT NULL,
    body LONGBLOB NOT NULL,
    created DOUBLE NOT NULL,
    KEY ix_replies_to (reply_to, seq),
    KEY ix_replies_created (created)
) {table}""",
    """CREATE TABLE IF NOT EXISTS remoteexec_workers (
    id VARCHAR(191) {text} NOT NULL PRIMARY KEY,
    host VARCHAR(255) {text} NOT NULL,
    pid INT NOT NULL,
    queues TEXT {text} NOT NULL,
    started DOUBLE NOT NULL,
    last_seen DOUBLE NOT NULL,
    done BIGINT NOT NULL,
    running INT NOT NULL,
    seen_at DOUBLE NOT NULL,
    failed BIGINT NOT NULL DEFAULT 0,
    durations MEDIUMTEXT CHARACTER SET ascii COLLATE ascii_bin NULL,
    KEY ix_workers_seen (seen_at)
) {table}""",
    """CREATE TABLE IF NOT EXISTS remoteexec_dead_letters (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id VARCHAR(191) {text} NOT NULL,
    queue VARCHAR(191) {text} NOT NULL,
    name VARCHAR(255) {text} NOT NULL,
    reason TEXT {text} NOT NULL,
    at DOUBLE NOT NULL,
    traceback TEXT {text} NULL,
    reply_to VARCHAR(191) {text} NULL,
    body MEDIUMBLOB NULL,
    deadline DOUBLE NOT NULL DEFAULT 0,
    KEY ix_dead_id (id)
) {table}""",
]

#: Statements that upgrade the schema from version ``n - 1`` to ``n``; ``{text}`` and
#: ``{names}`` stand for the names' character set and collation.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        f"ALTER TABLE {table} "
        + ", ".join(f"MODIFY {column}" for column in columns)
        + ", DEFAULT CHARSET=utf8mb4 COLLATE={names}"
        for table, columns in _COLUMNS.items()
    ],
    3: [
        "ALTER TABLE remoteexec_dead_letters ADD COLUMN traceback TEXT {text} NULL",
        "ALTER TABLE remoteexec_dead_letters ADD COLUMN reply_to VARCHAR(191) {text} NULL",
        "ALTER TABLE remoteexec_dead_letters ADD COLUMN body MEDIUMBLOB NULL",
        "ALTER TABLE remoteexec_dead_letters ADD COLUMN deadline DOUBLE NOT NULL DEFAULT 0",
        "ALTER TABLE remoteexec_dead_letters ADD KEY ix_dead_id (id)",
    ],
    4: [
        "ALTER TABLE remoteexec_workers ADD COLUMN failed BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE remoteexec_workers ADD COLUMN durations "
        "MEDIUMTEXT CHARACTER SET ascii COLLATE ascii_bin NULL",
    ],
}
#: Errors a migration step may meet in a database that has its change already: the
#: column or key exists (one step is one change, so it is skipped alone).
_DONE_ALREADY = (1060, 1061)


def schema_sql(names: str = NAMES[0]) -> list[str]:
    """The statements that create the current schema, names in collation ``names`` (the
    default is MariaDB's; MySQL 8 takes ``utf8mb4_0900_bin``); each is safe to run again."""
    text, table = _TEXT.format(names=names), _TABLE.format(names=names)
    return [
        *(sql.format(text=text, table=table) for sql in _CREATE),
        BLOBS_TABLE,
        f"INSERT IGNORE INTO remoteexec_schema (name, version) VALUES ('schema', {SCHEMA_VERSION})",
    ]


def names_collation(cur: Cursor) -> str:
    """The first of ``NAMES`` the server has; ``utf8mb4_bin`` (with a warning) if none."""
    sql = "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN "
    sql += f"({marks(len(NAMES))})"
    [(_, rows)] = execute(cur, sql, NAMES)
    found = {str(row[0]) for row in rows}
    for name in NAMES:
        if name in found:
            return name
    log.warning(
        "this server has no binary no-pad collation (%s): queue names that differ only by "
        "trailing spaces are the same queue here",
        " or ".join(NAMES),
    )
    return _PADDED


def schema_version(cur: Cursor) -> int:
    """The schema version recorded in the database; 0 if there is no schema yet."""
    try:
        [(_, rows)] = execute(cur, _VERSION)
    except pymysql.err.ProgrammingError as exc:
        if exc.args[0] != 1146:  # no such table
            raise
        return 0
    return int(rows[0][0]) if rows else 0


def apply_schema(cur: Cursor) -> None:
    """Create the tables if missing and run the migrations the database has not had."""
    names = names_collation(cur)
    for sql in schema_sql(names):
        cur.execute(sql)
    text = _TEXT.format(names=names)
    for version in range(schema_version(cur) + 1, SCHEMA_VERSION + 1):
        for sql in MIGRATIONS.get(version, []):
            try:
                cur.execute(sql.format(text=text, names=names))
            except pymysql.err.OperationalError as exc:
                if exc.args[0] not in _DONE_ALREADY:
                    raise
        cur.execute("UPDATE remoteexec_schema SET version = %s WHERE name = 'schema'", (version,))
        log.info("migrated the remoteexec schema to version %d", version)


def ensure_schema(cur: Cursor, where: str) -> None:
    """Create or migrate the schema if it is older than this code.

    Raises:
        ConfigurationError: the database's schema is newer than this remoteexec.
    """
    if not schema_is_current(schema_version(cur), SCHEMA_VERSION, f"the database at {where}"):
        apply_schema(cur)
        log.info("remoteexec schema version %d ready in %s", SCHEMA_VERSION, where)
