"""``mysql://user:pass@host:port/db``: MySQL 5.7+, 8.x and MariaDB, through PyMySQL.

Tables are described in ``mysql_schema.py``; they are created on first use (or ahead of
time by ``remoteexec init-db``). All times come from the server's clock, so machines with
skewed clocks agree on leases.

Claims run in one of two modes, picked from the server's version unless the URL says
(``?claim=skip_locked`` or ``?claim=optimistic``):

* ``skip_locked`` (MySQL 8.0.1+, MariaDB 10.6+), one round trip: one ``UPDATE`` joins a
  derived table that locks up to ``limit`` claimable rows ``FOR UPDATE SKIP LOCKED``
  (expired leases and waiting rows, queues in order, oldest first) and takes them under a
  new token and an exact lease end, which a ``SELECT`` then reads back through an index.
  Concurrent claimers skip each other's rows instead of waiting for them.
* ``optimistic`` (older servers): the seed's optimistic locking. Candidates are read
  without locks; each is taken by ``UPDATE ... WHERE seq = ? AND lock_version = ?``, and
  counts only if that changed the row. Losing a race costs a claim, never a duplicate.

Guarantees: a task is held by at most one live token; ``complete`` locks the tasks its
tokens still hold (as of one server time), stores their replies and deletes them in one
transaction; reads always see committed data (autocommit, READ COMMITTED). Statements are
batched into multi-statement round trips (one, where packet size allows). Every PyMySQL
error becomes ``BackendUnavailable``; deadlocks and lock-wait timeouts are retried here.
URL options: ``claim``, ``ssl`` (``true`` verifies the certificate and host name),
``ssl_ca``, ``ssl_cert``, ``ssl_key``, ``connect_timeout``, ``read_timeout``,
``write_timeout``, ``unix_socket``.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import ConfigurationError
from .base import Backend, Claim, DeadLetter, Done, Job, Stats, WorkerInfo
from .mysql_conn import (
    Conn,
    Connections,
    Cursor,
    Part,
    execute,
    map_mysql_errors,
    parse_url,
    render,
    run_many,
    script,
)
from .mysql_schema import (
    EXPIRED,
    EXPIRED_WHERE,
    HELD,
    NOW,
    SKIP_LOCKED,
    TAKE,
    TASKS,
    WAITING,
    WAITING_WHERE,
    apply_schema,
    ensure_schema,
    marks,
    schema_sql,
)

__all__ = ["MySQLBackend", "map_mysql_errors", "schema_sql"]

log = logging.getLogger("remoteexec.mysql")

T = TypeVar("T")
BY_ID = f"{TASKS} FORCE INDEX (uq_tasks_id)"  # reach task rows by id only (see complete)
_MIN_PAUSE, _MAX_PAUSE = 0.00025, 0.04  # adaptive polling: an idle poller reacts in ~50 ms
_PROBE_AFTER = 0.02  # idle seconds after which a claim is preceded by a cheap read
_EXPIRED_EVERY = 0.25  # seconds between SKIP LOCKED claims' looks for expired leases
_MAX_DEAD = 1000
_MODES = ("skip_locked", "optimistic")


def _pick(
    queues: Sequence[str], found: list[Sequence[tuple[Any, ...]]], limit: int
) -> list[tuple[int, int]]:
    """Up to ``limit`` (seq, lock_version) from ``found`` (expired rows, then each queue's
    waiting rows): queues in order, oldest first in each."""
    rank = {queue: i for i, queue in enumerate(queues)}
    rows = [*found[0], *(row for waiting in found[1:] for row in waiting)]
    ordered = sorted(rows, key=lambda r: (rank[r[2]], r[0]))
    return [(seq, version) for seq, version, _ in ordered[:limit]]


class MySQLBackend(Backend):
    """MySQL/MariaDB adapter. See the module docstring and ``base.Backend``.

    Args:
        claim: ``"skip_locked"``, ``"optimistic"`` or None (pick from the server version).
        connect: PyMySQL ``connect`` arguments (host, port, user, password, database, ...).
    """

    def __init__(
        self, *, claim: str | None = None, result_ttl: float = 3600.0, **connect: Any
    ) -> None:
        super().__init__(result_ttl=result_ttl)
        if claim not in (None, *_MODES):
            raise ConfigurationError(
                f"bad MySQL URL option claim={claim!r}: use skip_locked or optimistic"
            )
        self.claim_mode = claim
        self.returning = False  # DELETE ... RETURNING (MariaDB) for replies
        self.max_packet = 1 << 24  # the server's max_allowed_packet, read on first use
        self._ready = False
        self._lock = threading.Lock()
        self._db = Connections(connect, self._prepare)
        self._last_work: dict[Any, float] = {}  # per poll key: when work was last found
        self._found_none: set[Any] = set()  # claim keys whose last claim found nothing
        self._expiry_due: dict[tuple[str, ...], float] = {}  # next look for expired leases
        self._wake = threading.Condition()

    @classmethod
    def from_url(cls, url: str, *, result_ttl: float = 3600.0) -> MySQLBackend:
        """Open ``mysql://user:pass@host:port/db?options`` (options: module docstring).

        Raises:
            ConfigurationError: the URL is malformed or names an unknown option.
        """
        args, claim = parse_url(url)
        return cls(claim=claim, result_ttl=result_ttl, **args)

    def _prepare(self, conn: Conn) -> None:
        """On first use: pick the claim mode and packet budget, create the schema if needed."""
        with self._lock:
            if self._ready:
                return
            info = conn.get_server_info()  # type: ignore[no-untyped-call]
            mariadb = "mariadb" in str(info).lower()
            numbers = str(info).removeprefix("5.5.5-").split("-")[0].split(".")
            version = tuple(int(n) for n in numbers if n.isdigit())
            if self.claim_mode is None:
                modern = version >= ((10, 6) if mariadb else (8, 0, 1))
                self.claim_mode = "skip_locked" if modern else "optimistic"
            self.returning = mariadb
            cur = conn.cursor()
            [(_, [(packet,)])] = execute(cur, "SELECT @@max_allowed_packet")
            self.max_packet = int(packet)
            ensure_schema(cur, self._db.where)
            log.info("using %s (%s), claim mode %s", self._db.where, info, self.claim_mode)
            self._ready = True

    def init_db(self) -> None:
        """Create the tables (or migrate them) now; running it again changes nothing."""
        self._db.run(apply_schema, retry_lost=True)

    def _poll(self, key: Any, fetch: Callable[[], list[T]], wait: float) -> list[T]:
        """Call ``fetch`` until it returns something or ``wait`` seconds pass.

        The pause between empty polls grows with the time since work was last found:
        0.25 ms while work flows (so a caller waiting for each reply in turn is not slowed),
        up to 40 ms when idle (idle time / 20). Work added through this backend object
        wakes it at once. An idle worker's polls start with a cheap read (``_claimable``).
        """
        now = time.monotonic()
        deadline = now + wait
        while True:
            got = fetch()
            now = time.monotonic()
            remaining = deadline - now
            if got or remaining <= 0:
                if got:
                    self._last_work[key] = now
                return got
            idle = now - self._last_work.get(key, now - 1.0)
            pause = min(_MAX_PAUSE, max(_MIN_PAUSE, idle / 20))
            with self._wake:
                self._wake.wait(min(pause, remaining))

    def _kick(self) -> None:
        now = time.monotonic()
        for key in list(self._last_work):
            self._last_work[key] = now
        with self._wake:
            self._wake.notify_all()

    # -- the contract --------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Insert ``jobs`` with multi-row INSERTs: one round trip unless they are large."""
        head = f"INSERT INTO {TASKS} (id, queue, reply_to, body, created) VALUES ".encode()
        row = f"(%s, %s, %s, %s, {NOW})"

        def insert(cur: Cursor) -> None:
            rows = [render(cur.connection, row, (j.id, j.queue, j.reply_to, j.body)) for j in jobs]
            queries: list[bytes] = []
            start = used = 0
            for i, values in enumerate(rows):
                used += len(values) + 2
                if i + 1 == len(rows) or used + len(rows[i + 1]) > self.max_packet // 2:
                    queries.append(head + b", ".join(rows[start : i + 1]))
                    start, used = i + 1, 0
            run_many(cur, queries, txn=len(queries) > 1, max_packet=self.max_packet)

        if jobs:
            self._db.run(insert)
            self._kick()

    def claim(
        self, queues: Sequence[str], *, worker: str, limit: int, lease: float, wait: float
    ) -> list[Claim]:
        if not queues or limit <= 0:
            return []
        queues = list(queues)

        key = ("claim", *queues)

        def take(cur: Cursor) -> list[Claim]:  # the mode is known once connected
            idle = time.monotonic() - self._last_work.get(key, 0.0)
            if idle > _PROBE_AFTER and key in self._found_none and not self._claimable(cur, queues):
                return []
            if self.claim_mode == "skip_locked":
                claims = self._claim_locked(cur, queues, limit, lease)
            else:
                claims = self._claim_optimistic(cur, queues, limit, lease)
            if claims:
                self._found_none.discard(key)
            else:
                self._found_none.add(key)
            return claims

        return self._poll(key, lambda: self._db.run(take), wait)

    def _claimable(self, cur: Cursor, queues: list[str]) -> bool:
        """Whether a claim would find anything: one plain read, a fraction of a claim's cost,
        made before each claim of a worker idle for ``_PROBE_AFTER`` (its slower polls
        cost the server less; a busier one claims at once, to answer sooner)."""
        qs = marks(len(queues))
        sql = (
            f"SELECT EXISTS(SELECT 1 FROM {TASKS} WHERE queue IN ({qs}) AND state = 0) OR "
            f"EXISTS(SELECT 1 FROM {TASKS} WHERE state = 1 AND lease_until <= {NOW} "
            f"AND queue IN ({qs}))"
        )
        [(_, [(found,)])] = execute(cur, sql, (*queues, *queues))
        return bool(found)

    def _claim_locked(
        self, cur: Cursor, queues: list[str], limit: int, lease: float
    ) -> list[Claim]:
        """SKIP LOCKED, one round trip: one UPDATE (atomic on its own: sessions autocommit)
        takes the rows a derived table locked, stamping them with a new token and an exact
        ``@until``; a SELECT reads them back.

        Expired leases are looked for at most every ``_EXPIRED_EVERY`` seconds per set of
        queues: on one queue, the claims in between need no UNION, which costs a third
        more server time (``SHOW PROFILES``, MariaDB 10.11).
        """
        token = secrets.token_hex(16)
        qs = marks(len(queues))
        now, key = time.monotonic(), tuple(queues)
        expired = now >= self._expiry_due.get(key, 0.0)
        if expired:
            self._expiry_due[key] = now + _EXPIRED_EVERY
        rank = f"SELECT seq, FIELD(queue, {qs}) AS r FROM {TASKS} WHERE "
        branches = [f"({rank}{EXPIRED_WHERE.format(qs)}{SKIP_LOCKED})"] if expired else []
        args: list[Any] = [*queues, *queues, limit] if expired else []
        for queue in queues:
            branches.append(f"({rank}{WAITING_WHERE}{SKIP_LOCKED})")
            args += [*queues, queue, limit]
        if len(branches) == 1:  # one queue's waiting tasks, in order: no UNION needed
            picked = f"SELECT seq FROM {TASKS} WHERE {WAITING_WHERE}{SKIP_LOCKED}"
            args = [queues[0], limit]
        else:
            picked = f"SELECT seq FROM ({' UNION ALL '.join(branches)}) c ORDER BY r, seq LIMIT %s"
            args.append(limit)
        sql = (
            f"SET @until = {NOW} + %s; UPDATE {TASKS} t JOIN ({picked}) p ON t.seq = p.seq "
            "SET t.state = 1, t.token = %s, t.lease_until = @until, "
            "t.attempt = t.attempt + 1, t.lock_version = t.lock_version + 1; "
            f"SELECT seq, id, queue, reply_to, body, attempt FROM {TASKS} "
            "WHERE state = 1 AND lease_until = @until AND token = %s"
        )
        rows = execute(cur, sql, (lease, *args, token, token))[2][1]
        order = {queue: i for i, queue in enumerate(queues)}
        return [
            Claim(r[1], r[2], r[3], bytes(r[4]), int(r[5]), token)
            for r in sorted(rows, key=lambda r: (order.get(r[2], 0), r[0]))
        ]

    def _claim_optimistic(
        self, cur: Cursor, queues: list[str], limit: int, lease: float
    ) -> list[Claim]:
        """Optimistic: read candidates, then take each if its lock_version is unchanged,
        and read back the rows this claim's token now holds (a second round trip)."""
        sql = "; ".join([EXPIRED.format(marks(len(queues))), *[WAITING] * len(queues)])
        found = execute(cur, sql, (*queues, limit, *(a for q in queues for a in (q, limit))))
        picks = _pick(queues, [rows for _, rows in found], limit)
        if not picks:
            return []
        token = secrets.token_hex(16)
        check = f"seq = %s AND lock_version = %s AND (state = 0 OR lease_until <= {NOW})"
        parts: list[Part] = [(TAKE + check, (token, lease, s, v)) for s, v in picks]
        seqs = [seq for seq, _ in picks]
        select_sql = (
            f"SELECT seq, id, queue, reply_to, body, attempt FROM {TASKS} "
            f"WHERE seq IN ({marks(len(seqs))}) AND token = %s"
        )
        parts.append((select_sql, (*seqs, token)))
        result = script(cur, parts, txn=False, max_packet=1 << 62)  # no bodies: one round trip
        rows = {row[0]: row for row in result[-1][1]}
        return [
            Claim(r[1], r[2], r[3], bytes(r[4]), int(r[5]), token)
            for r in (rows.get(seq) for seq in seqs)
            if r is not None
        ]

    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        if not claims:
            return []
        sql = f"UPDATE {TASKS} SET lease_until = {NOW} + %s, lock_version = lock_version + 1"
        parts = [(f"{sql} WHERE {HELD}", (lease, c.id, c.token)) for c in claims]
        done = self._db.run(
            lambda cur: script(cur, parts, txn=False, max_packet=self.max_packet), retry_lost=True
        )
        return [count == 1 for count, _ in done]

    def complete(self, done: Sequence[Done]) -> list[bool]:
        """In one transaction: lock the tasks still held (``FOR UPDATE``, in id order) as
        of one ``@now``, insert their replies, delete them. One round trip unless large.

        Every statement reaches the rows through the unique id index (``BY_ID``): a scan of
        the lease index would lock other workers' claimed rows too and deadlock with them.
        """
        if not done:
            return []
        by_token: dict[str, list[str]] = {}
        for d in done:
            by_token.setdefault(d.claim.token, []).append(d.claim.id)
        ors = " OR ".join(
            f"(token = %s AND id IN ({marks(len(ids))}))" for ids in by_token.values()
        )
        held = f"state = 1 AND lease_until > @now AND ({ors})"
        held_args = tuple(a for tok, ids in by_token.items() for a in (tok, *ids))
        parts: list[Part] = [
            (f"SET @now = {NOW}", ()),
            (f"SELECT id, token FROM {BY_ID} WHERE {held} ORDER BY id FOR UPDATE", held_args),
        ]
        bodies: dict[str, bytes] = {}  # the first reply given for each id
        for d in done:
            if d.claim.id not in bodies and d.reply is not None:
                bodies[d.claim.id] = d.reply
        chunk: list[str] = []
        used = 0
        for task_id, body in bodies.items():  # escaped bodies take at most twice their size
            if chunk and used + len(body) > self.max_packet // 4:
                parts.append(self._replies_sql(held, held_args, chunk, bodies))
                chunk, used = [], 0
            chunk.append(task_id)
            used += len(body) + len(task_id)
        if chunk:
            parts.append(self._replies_sql(held, held_args, chunk, bodies))
        parts.append((f"DELETE {TASKS} FROM {BY_ID} WHERE {held}", held_args))
        result = self._db.run(lambda cur: script(cur, parts, txn=True, max_packet=self.max_packet))
        self._kick()
        taken = set(result[2][1])  # 0 is START TRANSACTION, 1 SET @now
        accepted: list[bool] = []
        for d in done:  # a task completes once: a repeat of it in the batch is refused
            key = (d.claim.id, d.claim.token)
            accepted.append(key in taken)
            taken.discard(key)
        return accepted

    @staticmethod
    def _replies_sql(
        held: str, held_args: tuple[Any, ...], ids: list[str], bodies: dict[str, bytes]
    ) -> Part:
        """INSERT ... SELECT of the replies to ``ids`` whose tasks are ``held``."""
        cases = " ".join(["WHEN %s THEN %s"] * len(ids))
        sql = (
            "INSERT INTO remoteexec_replies (reply_to, task_id, body, created) "
            f"SELECT reply_to, id, CASE id {cases} END, @now FROM {BY_ID} "
            f"WHERE {held} AND id IN ({marks(len(ids))}) ORDER BY FIELD(id, {marks(len(ids))})"
        )
        return sql, (*(a for i in ids for a in (i, bodies[i])), *held_args, *ids, *ids)

    def release(self, claims: Sequence[Claim]) -> None:
        sql = (
            f"UPDATE {TASKS} SET state = 0, token = NULL, lease_until = 0, "
            f"attempt = attempt - 1, lock_version = lock_version + 1 WHERE {HELD}"
        )
        parts = [(sql, (c.id, c.token)) for c in claims]
        if parts:
            self._db.run(
                lambda cur: script(cur, parts, txn=False, max_packet=self.max_packet),
                retry_lost=True,
            )
            self._kick()

    def cancel(self, job: Job) -> bool:
        sql = f"DELETE FROM {TASKS} WHERE id = %s AND state = 0 AND attempt = 0"
        return self._db.run(lambda cur: execute(cur, sql, (job.id,)))[0][0] == 1

    def replies(self, reply_to: str, *, wait: float) -> list[bytes]:
        """Read and delete ``reply_to``'s replies: one round trip on MariaDB, two on MySQL."""

        def take(cur: Cursor) -> list[bytes]:
            if self.returning:  # MariaDB: read and delete in one statement
                sql = "DELETE FROM remoteexec_replies WHERE reply_to = %s RETURNING seq, body"
                return [bytes(body) for _, body in sorted(execute(cur, sql, (reply_to,))[0][1])]
            sql = "SELECT seq, body FROM remoteexec_replies WHERE reply_to = %s ORDER BY seq"
            rows = execute(cur, sql, (reply_to,))[0][1]
            parts = [("DELETE FROM remoteexec_replies WHERE seq = %s", (seq,)) for seq, _ in rows]
            deleted = script(cur, parts, txn=False, max_packet=self.max_packet) if parts else []
            # Only what this call deleted is returned: a reply is never delivered twice.
            return [bytes(r[1]) for r, (n, _) in zip(rows, deleted, strict=True) if n == 1]

        return self._poll(("replies", reply_to), lambda: self._db.run(take), wait)

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

    def close(self) -> None:
        self._db.close()
