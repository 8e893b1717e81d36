"""An in-process blob store: the one of ``memory://`` brokers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

from . import BlobStore, Chunk, check_id, gather

__all__ = ["DictBlobStore"]


class DictBlobStore(BlobStore):
    """Blobs in ``blobs`` (id -> (bytes, expiry)), shared by every store given the dict."""

    def __init__(self, blobs: dict[str, tuple[bytes, float]], lock: threading.Lock) -> None:
        self._blobs = blobs
        self._lock = lock

    def write(self, blob_id: str, chunks: Iterable[Chunk], ttl: float) -> None:
        check_id(blob_id)
        data = gather(chunks, 2**63)
        with self._lock:
            self._blobs[blob_id] = (data, time.time() + ttl)

    def read(self, blob_id: str, size: int) -> bytes | None:
        with self._lock:
            found = self._blobs.get(check_id(blob_id))
        return None if found is None or found[1] < time.time() else found[0]

    def delete(self, ids: Sequence[str]) -> None:
        with self._lock:
            for blob_id in ids:
                self._blobs.pop(check_id(blob_id), None)

    def sweep(self) -> None:
        now = time.time()
        with self._lock:
            for blob_id in [i for i, (_, t) in self._blobs.items() if t < now]:
                del self._blobs[blob_id]
