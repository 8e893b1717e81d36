"""The MySQL adapter: ``MySQLBackend``, the contract over the modules beside it.

It decides the claim and wait modes once connected (``_prepare``), batches statements
into as few round trips as packet size allows, and reads replies so that a read cut off on
its way back loses nothing (``_read_replies``). A claim is in ``claim.py``, a completion in
``complete.py``, every statement in ``statements.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from ...errors import BackendUnavailable, ConfigurationError
from ..base import Backend, Claim, DeadLetter, Done, Job, Stats, WorkerInfo
from . import kept
from .blobs import MySQLBlobStore
from .claim import Claims
from .complete import completion
from .connection import (
    Conn,
    Connections,
    Cursor,
    Part,
    execute,
    parse_url,
    read_rest,
    render,
    run_many,
    script,
)
from .kept import KEPT_TABLE
from .schema import apply_schema, ensure_schema
from .statements import (
    ANY_REPLY,
    CANCEL,
    DELIVERED,
    INSERT_DEFERRED_HEAD,
    INSERT_DEFERRED_ROW,
    INSERT_HEAD,
    INSERT_ROW,
    RELEASE,
    RENEW,
    REPLIES,
    marks,
)
from .wait import Waiter, in_server
from .watch import Watch

__all__ = ["MySQLBackend"]

log = logging.getLogger("remoteexec.mysql")

#: An id already held keeps its row as it is: enqueueing it again does nothing.
_KEEP_HELD = b" ON DUPLICATE KEY UPDATE id = id"
_MODES = ("skip_locked", "optimistic")
_WAITS = ("server", "client")


class MySQLBackend(Backend):
    """MySQL/MariaDB adapter. See the module docstring and ``base.Backend``.

    Args:
        claim: ``"skip_locked"``, ``"optimistic"`` or None (pick from the server version).
        wait: ``"server"``, ``"client"`` or None (in the server where it can).
        connect: PyMySQL ``connect`` arguments (host, port, user, password, database, ...).
    """

    def __init__(
        self,
        *,
        claim: str | None = None,
        wait: str | None = None,
        result_ttl: float = 3600.0,
        **connect: Any,
    ) -> None:
        super().__init__(result_ttl=result_ttl)
        if claim not in (None, *_MODES):
            raise ConfigurationError(
                f"bad MySQL URL option claim={claim!r}: use skip_locked or optimistic"
            )
        if wait not in (None, *_WAITS):
            raise ConfigurationError(f"bad MySQL URL option wait={wait!r}: use server or client")
        self.wait_mode = wait
        # Replies delivered but not yet deleted, per reply_to: the next read deletes them
        # first, so a read cut off on its way back loses nothing. One reader per reply_to.
        self._delivered: dict[str, list[int]] = {}
        self._reading: dict[str, threading.Lock] = {}
        self.max_packet = 1 << 24  # the server's max_allowed_packet, read on first use
        self._ready = False
        self._compound = False  # the server runs compound statements: known once connected
        self._lock = threading.Lock()
        self._db = Connections(connect, self._prepare)
        self._waiter = Waiter(max_hold=self._db.read_timeout / 2)
        self._claims = Claims(self._db, self._waiter)
        self._claims.mode = claim
        self._watch = Watch(self._db)

    @property
    def claim_mode(self) -> str | None:
        """``"skip_locked"`` or ``"optimistic"`` (None until connected, unless given)."""
        return self._claims.mode

    @classmethod
    def from_url(cls, url: str, *, result_ttl: float = 3600.0) -> MySQLBackend:
        """Open ``mysql://user:pass@host:port/db?options`` (options: module docstring).

        Raises:
            ConfigurationError: the URL is malformed or names an unknown option.
        """
        args, options = parse_url(url)
        return cls(**options, result_ttl=result_ttl, **args)

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
                self._claims.mode = "skip_locked" if modern else "optimistic"
            blocks = mariadb and version >= (10, 1, 1)  # compound statements outside programs
            self._compound = blocks
            if self.wait_mode is None:  # optimistic claims measured faster when polled
                modern = blocks and self.claim_mode == "skip_locked"
                self.wait_mode = "server" if modern else "client"
            elif self.wait_mode == "server" and not blocks:
                raise ConfigurationError(f"wait=server needs MariaDB 10.1.1 or later, not {info}")
            self._waiter.in_server = self.wait_mode == "server"
            cur = conn.cursor()
            [(_, [(packet,)])] = execute(cur, "SELECT @@max_allowed_packet")
            self.max_packet = int(packet)
            ensure_schema(cur, self._db.where)
            cur.execute(KEPT_TABLE)  # kept results (kept.py): made on first use
            log.info(
                "using %s (%s), claim mode %s, waits in the %s",
                *(self._db.where, info, self.claim_mode, self.wait_mode),
            )
            self._ready = True

    def init_db(self) -> None:
        """Create the tables (or migrate them) now; running it again changes nothing."""
        self._db.run(apply_schema, retry_lost=True)

    # -- the contract --------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Insert ``jobs`` with multi-row INSERTs: one round trip unless they are large."""

        def insert(cur: Cursor) -> None:
            queries = self._inserts(cur, jobs)
            run_many(cur, queries, txn=len(queries) > 1, max_packet=self.max_packet)

        if jobs:
            self._db.run(insert)
            self._waiter.kick()

    def _inserts(self, cur: Cursor, jobs: Sequence[Job]) -> list[bytes]:
        """The INSERTs that add ``jobs``: as few as half ``max_allowed_packet`` allows; the
        deferred ones (``not_before`` ahead) in INSERTs of their own."""
        now = time.time()
        later = [j for j in jobs if j.not_before > now]
        plain = [j for j in jobs if j.not_before <= now] if later else jobs
        rows = [
            render(cur.connection, INSERT_ROW, (j.id, j.queue, j.reply_to, j.body)) for j in plain
        ]
        queries = self._packed(INSERT_HEAD, rows)
        if later:
            conn, row = cur.connection, INSERT_DEFERRED_ROW
            values = [(j.id, j.queue, j.reply_to, j.body, j.not_before - now) for j in later]
            queries += self._packed(INSERT_DEFERRED_HEAD, [render(conn, row, v) for v in values])
        return queries

    def _packed(self, insert: str, rows: list[bytes]) -> list[bytes]:
        """``rows`` in INSERTs of at most half ``max_allowed_packet``."""
        head = insert.encode()
        queries: list[bytes] = []
        start = used = 0
        for i, values in enumerate(rows):
            used += len(values) + 2
            if i + 1 == len(rows) or used + len(rows[i + 1]) > self.max_packet // 2:
                queries.append(head + b", ".join(rows[start : i + 1]) + _KEEP_HELD)
                start, used = i + 1, 0
        return queries

    def send_and_wait(self, jobs: Sequence[Job], reply_to: str, *, wait: float) -> list[bytes]:
        """Where the server waits (``wait=server``), one round trip: a transaction that
        inserts the jobs and deletes the replies read before (one commit: one flush of the
        log), then the wait for replies. Once the COMMIT's answer is in, the jobs are sent:
        a failure after it returns no replies (they are read later) instead of raising."""
        if self.wait_mode != "server" or not jobs:  # the mode is known once connected
            return super().send_and_wait(jobs, reply_to, wait=wait)
        sent = False
        started = time.monotonic()

        def send(cur: Cursor) -> list[bytes] | None:
            nonlocal sent
            hold = min(wait, self._waiter.max_hold)
            read, at = self._read_replies(reply_to, hold, idle=0.0, commit=True)  # due soon
            if sent:  # retried after a deadlock in the wait: the jobs are in
                return self._taken(reply_to, execute(cur, *read)[at][1])
            read_sql = render(cur.connection, *read)
            inserts = self._inserts(cur, jobs)
            if len(inserts) > 1 or len(inserts[0]) + len(read_sql) > self.max_packet // 2:
                return None  # large, or deferred: the INSERTs alone, then the wait
            query = b"START TRANSACTION; " + inserts[0] + b"; " + read_sql
            cur.execute(query)  # type: ignore[call-overload]
            for _ in range(at + 1):  # the INSERT's result, then each up to the COMMIT's
                cur.nextset()
            sent = True
            return self._taken(reply_to, read_rest(cur)[0][1])

        try:
            with self._reader(reply_to):
                bodies = self._db.run(send)
        except BackendUnavailable:
            if sent:
                return []
            raise
        self._waiter.kick()
        if bodies is None:
            return super().send_and_wait(jobs, reply_to, wait=wait)
        left = wait - (time.monotonic() - started)
        if bodies or left <= 0:
            return bodies
        try:  # the wait was longer than one hold
            return self.replies(reply_to, wait=left)
        except BackendUnavailable:
            return []  # sent: the replies are read later

    def claim(self, queues: Sequence[str], *, limit: int, lease: float, wait: float) -> list[Claim]:
        """See ``claim.py``."""
        return self._claims.claim(queues, limit, lease, wait)

    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        if not claims:
            return []
        parts = [(RENEW, (lease, c.id, c.token)) for c in claims]
        done = self._db.run(
            lambda cur: script(cur, parts, txn=False, max_packet=self.max_packet), retry_lost=True
        )
        return [count == 1 for count, _ in done]

    def complete(self, done: Sequence[Done]) -> list[bool]:
        """One transaction (``complete.py``), one round trip unless large."""
        if not done:
            return []
        parts, read = completion(done, self.max_packet, self._compound)
        result = self._db.run(lambda cur: script(cur, parts, txn=True, max_packet=self.max_packet))
        self._waiter.kick()
        return read(result)

    def results(self, ids: Sequence[str]) -> dict[str, bytes]:
        return kept.results(self._db.run, ids)

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        return kept.states(self._db.run, ids)

    def release(self, claims: Sequence[Claim]) -> None:
        parts = [(RELEASE, (c.id, c.token)) for c in claims]
        if parts:
            self._db.run(
                lambda cur: script(cur, parts, txn=False, max_packet=self.max_packet),
                retry_lost=True,
            )
            self._waiter.kick()

    def cancel(self, job: Job) -> bool:
        return self._db.run(lambda cur: execute(cur, CANCEL, (job.id,)))[0][0] == 1

    def replies(self, reply_to: str, *, wait: float) -> list[bytes]:
        """Read ``reply_to``'s new replies, deleting those read before: one round trip
        (on MariaDB, waiting in the server)."""

        def take(cur: Cursor, hold: float) -> list[bytes]:
            read, at = self._read_replies(reply_to, hold if self._waiter.in_server else None)
            return self._taken(reply_to, execute(cur, *read)[at][1])

        key = ("replies", reply_to)
        with self._reader(reply_to):
            return self._waiter.wait(key, lambda hold: self._db.run(lambda c: take(c, hold)), wait)

    def _read_replies(
        self, reply_to: str, hold: float | None, idle: float | None = None, commit: bool = False
    ) -> tuple[Part, int]:
        """One query: delete the replies delivered by the last read, then read the new ones
        (with ``hold``, waiting up to that long in the server for one; ``idle`` sets the
        pause between its tests, ``wait.py``: by default, the time since replies last
        came). Returns the query and the index of the result holding (seq, body) rows.
        ``commit``: a COMMIT follows the deletion (it ends the caller's transaction).

        A reply stays in the table until the read after the one that returned it, so a
        read whose answer is lost on the way back (a dropped connection) loses nothing:
        the next read returns it again. Replies are told apart by what was delivered, not
        by ``seq`` order: a reply committed late may have a lower ``seq``.
        """
        parts: list[Part] = []
        delivered = self._delivered.get(reply_to)
        if delivered:
            parts.append((DELIVERED.format(marks(len(delivered))), tuple(delivered)))
        if commit:
            parts.append(("COMMIT", ()))
        read: Part = (REPLIES, (reply_to,))
        if hold is None:
            parts.append(read)
        else:
            ready: Part = (ANY_REPLY, (reply_to,))
            if idle is None:
                idle = self._waiter.idle(("replies", reply_to))
            parts.append(in_server(ready, [read], hold, idle))
        sql = "; ".join(sql for sql, _ in parts)
        return (sql, tuple(a for _, args in parts for a in args)), len(parts) - 1

    def _taken(self, reply_to: str, rows: Sequence[tuple[Any, ...]]) -> list[bytes]:
        """Reply bodies from (seq, body) rows, in seq order; the next read deletes them."""
        ordered = sorted(rows)
        self._delivered[reply_to] = [seq for seq, _ in ordered]
        return [bytes(body) for _, body in ordered]

    def _reader(self, reply_to: str) -> threading.Lock:
        """The lock a read of ``reply_to`` holds (two at once would return the same rows)."""
        return self._reading.setdefault(reply_to, threading.Lock())

    # -- watching (``watch.py``) -----------------------------------------------------------

    def heartbeat(self, info: WorkerInfo) -> None:
        self._watch.heartbeat(info)

    def forget_worker(self, worker: str) -> None:
        self._watch.forget_worker(worker)

    def bury(self, letter: DeadLetter, task: Job | None = None) -> None:
        self._watch.bury(letter, task)

    def retry_dead(self, ids: Sequence[str]) -> int:
        return self._watch.retry_dead(ids)

    def drop_dead(self, ids: Sequence[str]) -> int:
        return self._watch.drop_dead(ids)

    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        return self._watch.note_starts(starts)

    def note_completed(self, ids: Sequence[str]) -> None:
        self._watch.note_completed(ids)

    def stats(self) -> Stats:
        return self._watch.stats(self.worker_ttl)

    def health(self) -> dict[str, float | str]:
        return self._watch.health()

    def purge(self, queue: str | None = None) -> int:
        return self._watch.purge(queue)

    def withdraw(self, ids: Sequence[str]) -> list[str]:
        return self._watch.withdraw(ids)

    def lost(self, ids: Sequence[str], reply_to: str) -> set[str]:
        return self._watch.lost(ids, reply_to)

    def purged(self, ids: Sequence[str]) -> set[str]:
        return self._watch.purged(ids, self.result_ttl)

    def sweep(self) -> None:
        self._watch.sweep(self.result_ttl, self.worker_ttl)
        self._db.run(lambda cur: execute(cur, kept.SWEEP_KEPT), retry_lost=True)

    def blob_store(self) -> MySQLBlobStore:
        """Blobs in chunks in a table of the database (``blobs.py``)."""
        return MySQLBlobStore(self._db, lambda: self.max_packet)

    def close(self) -> None:
        self._db.close()
