"""Blob stores: where arguments and results above ``blob_threshold`` are kept.

A ``BlobStore`` keeps opaque byte strings under random ids for a while. It never decides
what goes out of band nor decodes a blob: ``blobs.py`` does, and checks every blob it
reads against the size and SHA-256 digest its (signed) reference carries. What a store
owns is the bytes:

* ``write`` streams chunks (each at most ``chunk_size`` bytes, ``bytes`` or a
  ``memoryview`` slice of the caller's buffer) under an id, kept ``ttl`` seconds;
* ``read`` returns the whole blob as one ``bytes`` object, built without a second copy
  (chunks go into an ``io.BytesIO``, whose ``getvalue`` hands over its buffer), or None
  when there is no such blob (expired or removed);
* ``delete`` removes blobs, ``sweep`` removes expired ones.

Ids are 32 lowercase hex digits (``new_id``); a store refuses any other id before it
touches anything, so an id read from the broker can name nothing outside the store.

Stores: each backend's own (``Backend.blob_store``: Redis hashes under the key prefix,
a table of chunks on MySQL and SQLite, a dict on ``memory://``) and a shared folder
(``blob_url="file:///path"``, ``files.py``). Another store, an S3-compatible bucket for
one, is a subclass of ``BlobStore`` implementing its four methods.
"""

from __future__ import annotations

import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

__all__ = ["BlobStore", "Chunk", "check_id", "gather", "new_id"]

Chunk = bytes | memoryview

_ID = re.compile(r"[0-9a-f]{32}\Z")


def new_id() -> str:
    """A fresh blob id: 16 random bytes in hex, never chosen by a reader."""
    return os.urandom(16).hex()


def check_id(blob_id: object) -> str:
    """``blob_id`` if it is a well-formed blob id.

    Raises:
        ValueError: it is not 32 lowercase hex digits.
    """
    if type(blob_id) is not str or not _ID.match(blob_id):
        raise ValueError(f"malformed blob id {blob_id!r:.80}")
    return blob_id


def gather(chunks: Iterable[Chunk], size: int) -> bytes:
    """The concatenation of ``chunks``, stopping once past ``size`` bytes (a blob longer
    than its reference says is refused anyway), without a second copy of the whole."""
    buffer = io.BytesIO()
    for chunk in chunks:
        buffer.write(chunk)
        if buffer.tell() > size:
            break
    return buffer.getvalue()


class BlobStore(ABC):
    """Keeps blobs under random ids for a while. See the module docstring."""

    #: The store's kind, carried by every reference to a blob in it (``"backend"``,
    #: ``"file"``): a reader whose store is of another kind refuses the reference.
    kind: str = "backend"
    #: The largest chunk ``write`` is given.
    chunk_size: int = 4 << 20

    @abstractmethod
    def write(self, blob_id: str, chunks: Iterable[Chunk], ttl: float) -> None:
        """Store the concatenation of ``chunks`` under ``blob_id`` for ``ttl`` seconds.

        If it raises, part of the blob may be stored: the caller deletes it.
        """

    @abstractmethod
    def read(self, blob_id: str, size: int) -> bytes | None:
        """The blob (reading at most ``size`` + 1 bytes of it), or None if there is none."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None:
        """Remove the blobs ``ids`` (missing ones are skipped)."""

    def sweep(self) -> None:  # noqa: B027 - optional hook: most stores expire by themselves
        """Remove expired blobs."""
