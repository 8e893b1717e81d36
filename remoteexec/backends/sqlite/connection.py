"""The SQLite file: per-thread connections, transactions, retries and error mapping.

* Each thread has its own connection, opened on first use; a forked child opens its own and
  never touches (nor closes) its parent's (``sql.PerThread``). A new connection runs in WAL
  mode with ``synchronous=NORMAL``; the first one checks the schema and creates or
  migrates it.
* ``run`` is the adapter boundary: it runs a function in one transaction, retries while the
  database is locked (after 0.2 ms, then twice as long each time up to 2 ms, with jitter,
  for up to ``_RETRY_FOR`` seconds) and raises every ``sqlite3`` error as
  ``BackendUnavailable``. SQLite's own busy handler is off: it sleeps a millisecond or more
  per conflict, several times what the transaction being waited for takes. Pauses stay
  short because nothing wakes a waiter when the lock frees: a longer pause leaves the
  database idle while work waits; a try costs one failed ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ...errors import BackendUnavailable
from ..sql import PerThread
from .statements import TABLE_SIZES, migrate, schema_ready

log = logging.getLogger("remoteexec.sqlite")

T = TypeVar("T")

_FIRST_PAUSE, _LONGEST_PAUSE = 0.0002, 0.002  # seconds between tries of a busy database
_RETRY_FOR = 30.0  # total time spent retrying a busy database before giving up


@contextmanager
def map_sqlite_errors(path: str) -> Iterator[None]:
    """Raise every ``sqlite3`` error inside the block as ``BackendUnavailable``."""
    try:
        yield
    except sqlite3.Error as exc:
        raise BackendUnavailable(f"SQLite database {path}: {exc}") from exc


class Database:
    """One SQLite file, opened per thread. ``path`` is absolute."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conns = PerThread(self._open)
        self._schema_ok = False

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened now on first use)."""
        return self._conns.get()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=0.0, isolation_level=None, check_same_thread=False
        )
        conn.text_factory = _text
        try:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                log.warning("%s cannot use WAL mode: expect lock contention", self.path)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA journal_size_limit = 67108864")  # shrink the WAL after a burst
            if not self._schema_ok:
                if not schema_ready(conn, self.path):
                    transaction(conn, "IMMEDIATE", migrate)
                self._schema_ok = True
        except BaseException:
            conn.close()
            raise
        log.debug("opened %s in process %d", self.path, os.getpid())
        return conn

    def run(self, fn: Callable[[sqlite3.Connection], T], begin: str | None = "IMMEDIATE") -> T:
        """Run ``fn`` in a transaction (``begin``; None: autocommit), retrying while busy."""
        deadline = time.monotonic() + _RETRY_FOR
        delay = _FIRST_PAUSE
        with map_sqlite_errors(self.path):
            while True:
                try:
                    conn = self._conns.get()
                    return fn(conn) if begin is None else transaction(conn, begin, fn)
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() + delay > deadline:
                        raise
                    log.debug("%s is busy (%s); retrying in %.3f s", self.path, exc, delay)
                    time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: no lockstep
                    delay = min(delay * 2, _LONGEST_PAUSE)

    def data_version(self) -> int:
        """``PRAGMA data_version``: it changes when another connection commits."""
        return int(self.run(lambda c: c.execute("PRAGMA data_version").fetchone()[0], None))

    def health(self) -> dict[str, float | str]:
        """The file's and its write-ahead log's bytes, and each table's (with its indexes)."""
        figures: dict[str, float | str] = {}
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                figures[f"file{suffix} bytes"] = os.path.getsize(self.path + suffix)

        def sizes(conn: sqlite3.Connection) -> list[tuple[Any, Any]]:
            try:
                return conn.execute(TABLE_SIZES).fetchall()
            except sqlite3.OperationalError:  # a build without dbstat
                return []

        for name, size in self.run(sizes, "DEFERRED"):
            figures[f"{name} bytes"] = int(size)
        return figures

    def close(self) -> None:
        """Close the connections this process opened; a forked child leaves its parent's."""
        self._conns.close(sqlite3.Connection.close)


def transaction(conn: sqlite3.Connection, begin: str, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(conn)`` inside ``BEGIN {begin}`` ... ``COMMIT``, rolled back if it raises."""
    conn.execute(f"BEGIN {begin}")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
        return result
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return code & 0xFF in (5, 6) if code is not None else "locked" in str(exc)  # BUSY, LOCKED


def _text(raw: bytes) -> str | bytes:
    """Every connection's ``text_factory``: text that is not UTF-8 (written by someone
    else) reads as bytes, which the readers' type checks refuse, instead of failing the
    whole statement."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw
