"""The MySQL adapter's SQL, in one place, grouped by what it serves: tasks, completions
and replies, waiting in the server, watching. Tables and migrations are in ``schema.py``.

Times are the server's (``NOW``), so machines with skewed clocks agree on leases. ``%s``
marks a value; ``{}`` in a template is filled with ``marks(n)`` placeholders.
"""

from __future__ import annotations

from ..base import MAX_DEAD_LETTERS
from ..sql import IDLE_SHARE

NOW = "UNIX_TIMESTAMP(NOW(6))"
TASKS = "remoteexec_tasks"


def marks(n: int) -> str:
    """``n`` comma-separated placeholders."""
    return ", ".join(["%s"] * n)


# -- tasks: enqueue, claim, renew, release, cancel ----------------------------------------

INSERT_HEAD = f"INSERT INTO {TASKS} (id, queue, reply_to, body, created) VALUES "
INSERT_ROW = f"(%s, %s, %s, %s, {NOW})"
#: A deferred task: leased to no one (token '') until its not_before, given as seconds
#: from now (the last value), so it is claimed as an expired lease once due.
INSERT_DEFERRED_HEAD = (
    f"INSERT INTO {TASKS} (id, queue, reply_to, body, created, state, token, lease_until) VALUES "
)
INSERT_DEFERRED_ROW = f"(%s, %s, %s, %s, {NOW}, 1, '', {NOW} + %s)"
#: Expired leases, in the queues given: a range scan of ix_tasks_lease.
EXPIRED_WHERE = (
    f"state = 1 AND lease_until <= {NOW} AND queue IN ({{}}) ORDER BY lease_until LIMIT %s"
)
EXPIRED = f"SELECT seq, lock_version, queue FROM {TASKS} WHERE {EXPIRED_WHERE}"
#: Waiting tasks of one queue, oldest first: a range scan of ix_tasks_claim, no sort.
WAITING_WHERE = "queue = %s AND state = 0 ORDER BY seq LIMIT %s"
WAITING = f"SELECT seq, lock_version, queue FROM {TASKS} WHERE {WAITING_WHERE}"
SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
#: Something waits in the queues given (``{}``): what a claim waits for.
ANY_WAITING = f"EXISTS(SELECT 1 FROM {TASKS} WHERE queue IN ({{}}) AND state = 0)"
#: A lease in the queues given (``{}``) has expired.
ANY_EXPIRED = (
    f"EXISTS(SELECT 1 FROM {TASKS} WHERE state = 1 AND lease_until <= {NOW} AND queue IN ({{}}))"
)
#: A SKIP LOCKED claim's ranked candidates: queue rank first, then seq.
RANKED = f"SELECT seq, FIELD(queue, {{}}) AS r FROM {TASKS} WHERE "
#: What a SKIP LOCKED claim's UPDATE sets (token, then a lease end in ``@until``).
TAKEN = (
    "SET t.state = 1, t.token = %s, t.lease_until = @until, "
    "t.attempt = t.attempt + (t.attempt < 2147483647), "
    "t.lock_version = (t.lock_version + 1) MOD 4294967296"
)
UNTIL = f"SET @until = {NOW} + %s"
#: The rows one SKIP LOCKED claim took, read back through ix_tasks_lease.
CLAIMED = (
    f"SELECT seq, id, queue, reply_to, body, attempt FROM {TASKS} "
    "WHERE state = 1 AND lease_until = @until AND token = %s"
)
#: Takes rows under a new token and lease; the caller appends the row condition.
TAKE = (
    f"UPDATE {TASKS} SET state = 1, token = %s, lease_until = {NOW} + %s, "
    "attempt = attempt + (attempt < 2147483647), lock_version = (lock_version + 1) MOD 4294967296 "
    "WHERE "
)
#: An optimistic take: the row is unchanged since it was read, and claimable.
UNCHANGED = f"seq = %s AND lock_version = %s AND (state = 0 OR lease_until <= {NOW})"
#: The rows (``{}``: their seqs) an optimistic claim's token took.
TAKEN_ROWS = (
    f"SELECT seq, id, queue, reply_to, body, attempt FROM {TASKS} WHERE seq IN ({{}}) "
    "AND token = %s"
)
#: The row is held by this token under a lease that has not expired.
HELD = f"id = %s AND token = %s AND state = 1 AND lease_until > {NOW}"
RENEW = f"UPDATE {TASKS} SET lease_until = {NOW} + %s, lock_version = lock_version + 1 WHERE {HELD}"
RELEASE = (
    f"UPDATE {TASKS} SET state = 0, token = NULL, lease_until = 0, "
    f"attempt = attempt - 1, lock_version = lock_version + 1 WHERE {HELD}"
)
CANCEL = f"DELETE FROM {TASKS} WHERE id = %s AND (state = 0 OR token = '') AND attempt = 0"

# -- completions and replies --------------------------------------------------------------

#: Task rows reached through the unique id index: a scan of the lease index would lock
#: other workers' claimed rows too and deadlock with them.
BY_ID = f"{TASKS} FORCE INDEX (uq_tasks_id)"
REPLY_INSERT = "INSERT INTO remoteexec_replies (reply_to, task_id, body, created) "
#: One result, in a compound statement: delete the held task, store its reply if that took
#: the row (``@done``: the DELETE's row count).
DELETE_HELD = f"DELETE {TASKS} FROM {BY_ID} WHERE {HELD}"
REPLY_IF_DONE = f"{REPLY_INSERT}SELECT %s, %s, %s, {NOW} FROM DUAL WHERE @done = 1"
#: Done.again: the held task takes its new body and gives back the attempt its claim
#: counted; it waits again at once (PUT_BACK_NOW) or deferred %s seconds (PUT_BACK_LATER).
_PUT_BACK = (
    f"UPDATE {BY_ID} SET body = %s, attempt = attempt - 1, "
    "lock_version = (lock_version + 1) MOD 4294967296, "
)
PUT_BACK_NOW = f"{_PUT_BACK}state = 0, token = NULL, lease_until = 0 WHERE {HELD}"
PUT_BACK_LATER = f"{_PUT_BACK}token = '', lease_until = {NOW} + %s WHERE {HELD}"
DELIVERED = "DELETE FROM remoteexec_replies WHERE seq IN ({})"
REPLIES = "SELECT seq, body FROM remoteexec_replies WHERE reply_to = %s"
ANY_REPLY = "EXISTS(SELECT 1 FROM remoteexec_replies WHERE reply_to = %s)"

# -- waiting in the server -----------------------------------------------------------------

# The test is a SELECT of its own: a condition of a compound statement would read its tables
# with shared locks (InnoDB locks the reads of every statement that is not a SELECT). Its
# arguments: hold, longest pause, shortest pause, idle time; ``{ready}``: the condition.
WAIT_LOOP = (
    f"BEGIN NOT ATOMIC DECLARE t0 DOUBLE DEFAULT {NOW}; DECLARE found INT DEFAULT 0; "
    f"WHILE found = 0 AND {NOW} - t0 < %s DO SELECT {{ready}} INTO found; "
    f"IF found = 0 THEN DO SLEEP(LEAST(%s, GREATEST(%s, ({NOW} - t0 + %s) / {IDLE_SHARE}))); "
    "END IF; "
    "END WHILE; "
)

# -- watching: workers, dead letters, starts, stats, purge, sweep --------------------------

# Made on first use: only workers with secrets need it (see Backend.note_starts).
STARTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS remoteexec_starts (id VARBINARY(255) NOT NULL PRIMARY KEY, "
    "n INT NOT NULL, done TINYINT NOT NULL, keep_until DOUBLE NOT NULL, "
    "KEY ix_starts_expiry (keep_until)) ENGINE=InnoDB"
)
# Tombstones of purged tasks, kept result_ttl seconds (see purge); made on first use.
PURGED_TABLE = (
    "CREATE TABLE IF NOT EXISTS remoteexec_purged (id VARBINARY(255) NOT NULL PRIMARY KEY, "
    "at DOUBLE NOT NULL, KEY ix_purged_at (at)) ENGINE=InnoDB"
)
HEARTBEAT = (
    "INSERT INTO remoteexec_workers (id, host, pid, queues, started, last_seen, done, "
    f"running, failed, durations, seen_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    f"{NOW}) ON DUPLICATE KEY UPDATE host = VALUES(host), pid = VALUES(pid), "
    "queues = VALUES(queues), started = VALUES(started), last_seen = VALUES(last_seen), "
    "done = VALUES(done), running = VALUES(running), failed = VALUES(failed), "
    "durations = VALUES(durations), seen_at = VALUES(seen_at)"
)
FORGET_WORKER = "DELETE FROM remoteexec_workers WHERE id = %s"
BURY = (
    "INSERT INTO remoteexec_dead_letters (id, queue, name, reason, at, traceback, deadline, "
    "reply_to, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s); "
    "DELETE FROM remoteexec_dead_letters "
    f"WHERE seq <= CAST(LAST_INSERT_ID() AS SIGNED) - {MAX_DEAD_LETTERS}"
)


def retry_dead(n: int) -> tuple[str, str]:
    """The two round trips of ``retry_dead`` for ``n`` ids: lock the letters that keep a
    task (the SELECT's result is the third), then, with the ids found, enqueue the newest
    letter's task of each, forget their start records and delete their letters."""
    ids = marks(n)
    lock = (
        f"{STARTS_TABLE}; START TRANSACTION; SELECT DISTINCT id FROM remoteexec_dead_letters "
        f"WHERE id IN ({ids}) AND body IS NOT NULL FOR UPDATE"
    )
    revive = (
        f"INSERT IGNORE INTO {TASKS} (id, queue, reply_to, body, created) "
        f"SELECT id, queue, reply_to, body, {NOW} FROM remoteexec_dead_letters WHERE seq IN "
        "(SELECT * FROM (SELECT MAX(seq) FROM remoteexec_dead_letters "
        f"WHERE id IN ({{0}}) AND body IS NOT NULL GROUP BY id) AS newest); "
        "DELETE FROM remoteexec_starts WHERE id IN ({0}); "
        "DELETE FROM remoteexec_dead_letters WHERE id IN ({0}); COMMIT"
    )
    return lock, revive


def note_starts(n: int) -> str:
    """Count a start of ``n`` ids, in one transaction: the row lock makes concurrent starts
    of one id count one after the other. Arguments: (id, keep_until) per start, the ids,
    then the time before which records are forgotten. The SELECT's result is the fourth."""
    return (
        f"{STARTS_TABLE}; START TRANSACTION; "
        f"INSERT INTO remoteexec_starts (id, n, done, keep_until) VALUES "
        f"{', '.join(['(%s, 1, 0, %s)'] * n)} "
        "ON DUPLICATE KEY UPDATE n = n + 1, keep_until = GREATEST(keep_until, "
        f"VALUES(keep_until)); SELECT id, n - 1, done FROM remoteexec_starts WHERE id IN "
        f"({marks(n)}); COMMIT; DELETE FROM remoteexec_starts WHERE keep_until < %s LIMIT 100"
    )


NOTE_COMPLETED = f"{STARTS_TABLE}; UPDATE remoteexec_starts SET done = 1 WHERE id IN ({{}})"
#: Five results: depth (waiting and deferred) and the oldest waiting task's enqueue time per
#: queue, expired leases per queue, running, live workers (seen within ``%s`` seconds), the
#: newest dead letters.
STATS = (
    f"SELECT queue, SUM(state = 0 OR token = ''), MIN(IF(state = 0, created, NULL)) "
    f"FROM {TASKS} GROUP BY queue; "
    f"SELECT queue, COUNT(*) FROM {TASKS} WHERE state = 1 AND lease_until <= {NOW} "
    "AND token <> '' GROUP BY queue; "
    f"SELECT COUNT(*) FROM {TASKS} WHERE state = 1 AND lease_until > {NOW} AND token <> ''; "
    "SELECT id, host, pid, queues, started, last_seen, done, running, failed, durations "
    f"FROM remoteexec_workers WHERE seen_at > {NOW} - %s ORDER BY id; "
    "SELECT id, queue, name, reason, at, COALESCE(traceback, ''), body IS NOT NULL, deadline "
    f"FROM remoteexec_dead_letters ORDER BY seq DESC LIMIT {MAX_DEAD_LETTERS}"
)
#: Each remoteexec table's rows (InnoDB's estimate) and bytes (data and indexes).
TABLE_SIZES = (
    "SELECT TABLE_NAME, TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES "
    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'remoteexec\\_%' ORDER BY TABLE_NAME"
)
PURGEABLE = "seq <= @top AND (state = 0 OR token = '' OR lease_until <= @now)"


def purge(where: str) -> str:
    """Delete the tasks ``where`` holds for, leaving a tombstone for each, in one
    transaction; tasks enqueued meanwhile (above ``@top``) stay. The DELETE's result is
    the fifth."""
    return (
        f"{PURGED_TABLE}; START TRANSACTION; SET @now = {NOW}, "
        f"@top = (SELECT COALESCE(MAX(seq), 0) FROM {TASKS}); "
        f"INSERT INTO remoteexec_purged (id, at) SELECT id, @now FROM {TASKS} WHERE {where} "
        "ON DUPLICATE KEY UPDATE at = VALUES(at); "
        f"DELETE FROM {TASKS} WHERE {where}; COMMIT"
    )


#: ``withdraw``'s two round trips: lock the tasks no worker holds among the ids (the
#: SELECT's result is the third), then tombstone and delete those found, in one transaction.
WITHDRAWABLE = (
    f"{PURGED_TABLE}; START TRANSACTION; SELECT id FROM {BY_ID} "
    "WHERE id IN ({}) AND (state = 0 OR token = '') FOR UPDATE"
)
WITHDRAW = (
    f"INSERT INTO remoteexec_purged (id, at) SELECT id, {NOW} FROM {BY_ID} WHERE id IN ({{0}}) "
    f"ON DUPLICATE KEY UPDATE at = VALUES(at); DELETE {TASKS} FROM {BY_ID} WHERE id IN ({{0}}); "
    "COMMIT"
)


#: The ids (``{}``) with a task row; then those answered to reply_to (``%s``).
FOUND = (
    f"SELECT id FROM {TASKS} WHERE id IN ({{0}}); SELECT task_id FROM "
    "remoteexec_replies WHERE reply_to = %s AND task_id IN ({0})"
)
#: The ids (``{}``) purged within the last ``%s`` seconds; the SELECT's result is second.
PURGED = f"{PURGED_TABLE}; SELECT id FROM remoteexec_purged WHERE at > {NOW} - %s AND id IN ({{}})"
# -- blobs (blobs.py) ------------------------------------------------------------------

#: Made with the schema, and on first use in a database made before it existed.
BLOBS_TABLE = (
    "CREATE TABLE IF NOT EXISTS remoteexec_blobs ("
    "id CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, part INT UNSIGNED NOT NULL, "
    "data LONGBLOB NOT NULL, expires DOUBLE NOT NULL, PRIMARY KEY (id, part), "
    "KEY ix_blobs_expires (expires)) ENGINE=InnoDB"
)
BLOB_INSERT = f"INSERT INTO remoteexec_blobs VALUES (%s, %s, %s, {NOW} + %s)"
BLOB_PARTS = f"SELECT COUNT(*) FROM remoteexec_blobs WHERE id = %s AND expires >= {NOW}"
BLOB_PART = "SELECT data FROM remoteexec_blobs WHERE id = %s AND part = %s"
BLOB_DELETE = "DELETE FROM remoteexec_blobs WHERE id IN ({})"

SWEEP = (
    f"{BLOBS_TABLE}; DELETE FROM remoteexec_blobs WHERE expires < {NOW}; "
    f"DELETE FROM remoteexec_replies WHERE created < {NOW} - %s; "
    f"DELETE FROM remoteexec_workers WHERE seen_at < {NOW} - %s; "
    f"{PURGED_TABLE}; DELETE FROM remoteexec_purged WHERE at < {NOW} - %s"
)
