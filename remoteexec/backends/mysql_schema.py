"""The MySQL/MariaDB schema of ``mysql.py``, versioned so later releases can migrate it.

Every table is InnoDB and prefixed ``remoteexec_`` so the schema can share a database.
Times are epoch seconds (``DOUBLE``) taken from the *server's* clock
(``UNIX_TIMESTAMP(NOW(6))`` with the session time zone at UTC), so leases mean the same
thing to every machine whatever their clocks say.

``remoteexec_tasks``
    One row per task. ``seq`` (auto-increment) is the FIFO order; ``state`` is 0 (waiting)
    or 1 (claimed: ``token`` holds the lease until ``lease_until``). ``attempt`` counts
    deliveries; ``lock_version`` is bumped by every change of ownership, for the optimistic
    claim mode. Indexes: ``(queue, state, seq)`` makes a claim an index range scan in FIFO
    order; ``(state, lease_until)`` finds expired leases (and counts running tasks) without
    a table scan.
``remoteexec_replies``
    Replies waiting for a client's ``reply_to``, read in ``seq`` order through
    ``(reply_to, seq)``; ``created`` lets ``sweep`` expire uncollected ones.
``remoteexec_workers``, ``remoteexec_dead_letters``
    Heartbeats and the newest dead letters, for ``stats``.
``remoteexec_schema``
    One row, ``('schema', version)``. ``MIGRATIONS[n]`` upgrades version ``n - 1`` to ``n``.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

_TEXT = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

_CREATE = [
    f"""CREATE TABLE IF NOT EXISTS remoteexec_schema (
    name VARCHAR(32) {_TEXT} NOT NULL PRIMARY KEY,
    version INT NOT NULL
) {_TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS remoteexec_tasks (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id VARCHAR(191) {_TEXT} NOT NULL,
    queue VARCHAR(191) {_TEXT} NOT NULL,
    reply_to VARCHAR(191) {_TEXT} NOT NULL,
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
) {_TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS remoteexec_replies (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    reply_to VARCHAR(191) {_TEXT} NOT NULL,
    task_id VARCHAR(191) {_TEXT} NOT NULL,
    body LONGBLOB NOT NULL,
    created DOUBLE NOT NULL,
    KEY ix_replies_to (reply_to, seq),
    KEY ix_replies_created (created)
) {_TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS remoteexec_workers (
    id VARCHAR(191) {_TEXT} NOT NULL PRIMARY KEY,
    host VARCHAR(255) {_TEXT} NOT NULL,
    pid INT NOT NULL,
    queues TEXT {_TEXT} NOT NULL,
    started DOUBLE NOT NULL,
    last_seen DOUBLE NOT NULL,
    done BIGINT NOT NULL,
    running INT NOT NULL,
    seen_at DOUBLE NOT NULL,
    KEY ix_workers_seen (seen_at)
) {_TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS remoteexec_dead_letters (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id VARCHAR(191) {_TEXT} NOT NULL,
    queue VARCHAR(191) {_TEXT} NOT NULL,
    name VARCHAR(255) {_TEXT} NOT NULL,
    reason TEXT {_TEXT} NOT NULL,
    at DOUBLE NOT NULL
) {_TABLE}""",
]

#: Statements that upgrade the schema from version ``n - 1`` to ``n`` (none yet).
MIGRATIONS: dict[int, list[str]] = {}


def schema_sql() -> list[str]:
    """The statements that create the current schema; each is safe to run again."""
    return [
        *_CREATE,
        f"INSERT IGNORE INTO remoteexec_schema (name, version) VALUES ('schema', {SCHEMA_VERSION})",
    ]
