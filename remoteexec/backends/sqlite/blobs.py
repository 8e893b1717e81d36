"""SQLite's blob store: chunks of at most 4 MiB in the ``blobs`` table of the database.

``blobs (id, part, data, expires)``: a blob is its rows in ``part`` order. The table is
made with the schema, and on first use in a database made before it existed (so an
older database needs no migration, and older remoteexec versions sharing it are not
refused). Each chunk is written in a transaction of its own, so a large blob never holds
the write lock for long; nobody reads a blob before its reference is queued, after the
last chunk. ``sweep`` (the backend's) removes expired rows.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from ...blobstores import BlobStore, Chunk, check_id, gather
from .connection import Database
from .statements import BLOBS, marks
from .statements import chunks as batches

__all__ = ["SQLiteBlobStore"]


_INSERT = "INSERT INTO blobs VALUES (?, ?, ?, ?)"
_COUNT = "SELECT count(*) FROM blobs WHERE id = ? AND expires >= ?"
_PART = "SELECT data FROM blobs WHERE id = ? AND part = ?"


class SQLiteBlobStore(BlobStore):
    """Blobs in the SQLite file of ``db``."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._table_ok = False

    def _ensure_table(self) -> None:
        if not self._table_ok:
            self._db.run(lambda c: [c.execute(sql) for sql in BLOBS] and None)
            self._table_ok = True

    def write(self, blob_id: str, chunks: Iterable[Chunk], ttl: float) -> None:
        check_id(blob_id)
        self._ensure_table()
        expires = time.time() + ttl
        for part, chunk in enumerate(chunks):
            self._db.run(partial(_execute, _INSERT, (blob_id, part, chunk, expires)))

    def read(self, blob_id: str, size: int) -> bytes | None:
        check_id(blob_id)
        self._ensure_table()
        row = self._db.run(partial(_execute, _COUNT, (blob_id, time.time())), None)
        return gather(self._parts(blob_id, row[0]), size) if row and row[0] else None

    def _parts(self, blob_id: str, count: int) -> Iterator[bytes]:
        for part in range(count):
            row = self._db.run(partial(_execute, _PART, (blob_id, part)), None)
            if row is None or type(row[0]) is not bytes:
                return  # removed meanwhile, or not ours: the size check refuses it
            yield row[0]

    def delete(self, ids: Sequence[str]) -> None:
        for blob_id in ids:
            check_id(blob_id)
        self._ensure_table()

        def tx(conn: sqlite3.Connection) -> None:
            for batch in batches(ids):
                conn.execute(f"DELETE FROM blobs WHERE id IN ({marks(len(batch))})", batch)

        self._db.run(tx)


def _execute(sql: str, args: tuple[object, ...], conn: sqlite3.Connection) -> Any:
    """The first row of ``sql``, or None."""
    return conn.execute(sql, args).fetchone()
