"""MySQL's blob store: chunks in ``remoteexec_blobs``, each well under ``max_allowed_packet``.

A blob is its rows in ``part`` order, each chunk at most 4 MiB and at most a quarter of
the server's ``max_allowed_packet`` (a statement carries its chunk escaped: up to twice
its size), so any blob fits a server with the default 16 MiB packet (or less). Every
chunk is inserted and read by a statement of its own, so neither side holds more than
one chunk beyond the blob. Expiry times are the server's clock; ``sweep`` (the
backend's) removes expired rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial

from ...blobstores import BlobStore, Chunk, check_id, gather
from .connection import Connections, Cursor
from .statements import (
    BLOB_DELETE,
    BLOB_INSERT,
    BLOB_PART,
    BLOB_PARTS,
    BLOBS_TABLE,
    marks,
)

__all__ = ["MySQLBlobStore"]

_LARGEST_CHUNK = 4 << 20


class MySQLBlobStore(BlobStore):
    """Blobs in the database of ``db``; ``max_packet`` tells the server's packet limit."""

    def __init__(self, db: Connections, max_packet: Callable[[], int]) -> None:
        self._db = db
        self._max_packet = max_packet
        self._table_ok = False

    @property
    def chunk_size(self) -> int:  # type: ignore[override]
        self._ensure_table()  # connected: the packet limit is known
        return max(64 << 10, min(_LARGEST_CHUNK, self._max_packet() // 4))

    def _ensure_table(self) -> None:
        if not self._table_ok:
            self._db.run(lambda cur: cur.execute(BLOBS_TABLE), retry_lost=True)
            self._table_ok = True

    def write(self, blob_id: str, chunks: Iterable[Chunk], ttl: float) -> None:
        check_id(blob_id)
        self._ensure_table()
        for part, chunk in enumerate(chunks):
            self._db.run(partial(_one, BLOB_INSERT, (blob_id, part, bytes(chunk), ttl)))

    def read(self, blob_id: str, size: int) -> bytes | None:
        check_id(blob_id)
        self._ensure_table()
        count = self._db.run(partial(_one, BLOB_PARTS, (blob_id,)), retry_lost=True)
        if type(count) is not int:
            return None
        return gather(self._parts(blob_id, count), size) if count else None

    def _parts(self, blob_id: str, count: int) -> Iterator[bytes]:
        for part in range(count):
            data = self._db.run(partial(_one, BLOB_PART, (blob_id, part)))
            if type(data) is not bytes:
                return  # removed meanwhile: the size check refuses the blob
            yield data

    def delete(self, ids: Sequence[str]) -> None:
        for blob_id in ids:
            check_id(blob_id)
        self._ensure_table()
        for i in range(0, len(ids), 100):
            batch = ids[i : i + 100]
            self._db.run(partial(_one, BLOB_DELETE.format(marks(len(batch))), tuple(batch)))


def _one(sql: str, args: tuple[object, ...], cur: Cursor) -> object:
    """The first column of the first row of ``sql``, or None."""
    cur.execute(sql, args)
    row = cur.fetchone()
    return None if row is None else row[0]
