"""Redis's blob store: one hash per blob, ``<prefix>blob:<id>``, of 8 MiB chunks.

Field ``n`` of the hash holds chunk ``n`` (a Redis string is at most 512 MB, so a blob is
chunked); the key expires by itself (``PEXPIRE``, set with every chunk written), so no
sweep is needed. Each chunk is one round trip, written and read as a command of its own,
so neither side holds more than one chunk beyond the blob.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import redis

from ...blobstores import BlobStore, Chunk, check_id, gather
from .connection import map_redis_errors
from .wire import raw

__all__ = ["RedisBlobStore"]


class RedisBlobStore(BlobStore):
    """Blobs under ``prefix`` on the server ``client()`` reaches."""

    chunk_size = 8 << 20

    def __init__(
        self, client: Callable[[], redis.Redis], prefix: str, mapper: map_redis_errors
    ) -> None:
        self._client = client
        self._prefix = prefix + "blob:"
        self._mapper = mapper

    def _key(self, blob_id: str) -> str:
        return self._prefix + check_id(blob_id)

    def write(self, blob_id: str, chunks: Iterable[Chunk], ttl: float) -> None:
        key, ms = self._key(blob_id), max(1, int(ttl * 1000))
        for part, chunk in enumerate(chunks):
            with self._mapper, self._client().pipeline(transaction=False) as p:
                raw(p)("HSET", key, part, chunk)
                raw(p)("PEXPIRE", key, ms)
                p.execute()

    def read(self, blob_id: str, size: int) -> bytes | None:
        key = self._key(blob_id)
        with self._mapper:
            count = int(raw(self._client())("HLEN", key))
            return gather(self._parts(key, count), size) if count else None

    def _parts(self, key: str, count: int) -> Iterator[bytes]:
        for part in range(count):
            data = raw(self._client())("HGET", key, part)
            if type(data) is not bytes:
                return  # expired meanwhile: the size check refuses the blob
            yield data

    def delete(self, ids: Sequence[str]) -> None:
        keys = [self._key(i) for i in ids]
        if keys:  # one DEL per blob: on a cluster, each is in a slot of its own
            with self._mapper, self._client().pipeline(transaction=False) as p:
                for key in keys:
                    raw(p)("DEL", key)
                p.execute()
