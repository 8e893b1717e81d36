"""``file:///path``: blobs as files in a folder shared by clients and workers (NFS, SMB...).

A blob is written to a temporary name in the folder (``.tmp-<id>-<random>``) and renamed
to its id once complete, so a reader never sees half a blob. The file's modification time
is set to its expiry time: ``sweep`` (which workers run every minute) removes the files
whose time has passed, and temporary files left by a writer that died (older than
``STALE_TEMP`` seconds). Ids are checked before any path is made from them, and files are
opened without following symbolic links, so nothing outside the folder is read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from urllib.parse import unquote, urlsplit

from ..errors import ConfigurationError
from . import BlobStore, Chunk, check_id

__all__ = ["STALE_TEMP", "FileBlobStore"]

#: Seconds after which a temporary file is taken for the leftover of a dead writer.
STALE_TEMP = 6 * 3600.0
_TEMP = ".tmp-"


class FileBlobStore(BlobStore):
    """Blobs as files in ``folder``; ``fsync``: flush each file to disk before renaming it."""

    kind = "file"
    chunk_size = 8 << 20

    def __init__(self, folder: str, *, fsync: bool = False) -> None:
        self.folder = os.path.abspath(folder)
        if not os.path.isdir(self.folder):
            raise ConfigurationError(f"blob folder {folder!r} does not exist (create it first)")
        self.fsync = fsync

    @classmethod
    def from_url(cls, url: str) -> FileBlobStore:
        """Open ``file:///absolute/path`` (``?fsync=1``: flush every blob to disk).

        Raises:
            ConfigurationError: a malformed URL or a folder that does not exist.
        """
        parts = urlsplit(url)
        options = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
        if parts.netloc not in ("", "localhost") or not parts.path or set(options) - {"fsync"}:
            raise ConfigurationError(
                f"malformed blob URL {url[:120]!r}: use file:///absolute/path[?fsync=1]"
            )
        return cls(unquote(parts.path), fsync=options.get("fsync", "0") in ("1", "true", "yes"))

    def _path(self, blob_id: str) -> str:
        return os.path.join(self.folder, check_id(blob_id))

    def write(self, blob_id: str, chunks: Iterable[Chunk], ttl: float) -> None:
        final = self._path(blob_id)
        temp = os.path.join(self.folder, f"{_TEMP}{blob_id}-{os.urandom(4).hex()}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with open(fd, "wb", buffering=0, closefd=True) as f:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:  # a raw file may write less than asked
                        view = view[f.write(view) or 0 :]
                if self.fsync:
                    os.fsync(f.fileno())
            expires = time.time() + ttl
            os.utime(temp, (expires, expires))
            os.replace(temp, final)
        except BaseException:
            _remove(temp)
            raise

    def read(self, blob_id: str, size: int) -> bytes | None:
        try:
            fd = os.open(self._path(blob_id), os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with open(fd, "rb", closefd=True) as f:
            return f.read(size + 1)  # one bytes object; one more byte tells a longer file

    def delete(self, ids: Sequence[str]) -> None:
        for blob_id in ids:
            _remove(self._path(blob_id))

    def sweep(self) -> None:
        now = time.time()
        with os.scandir(self.folder) as entries:
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                name = entry.name
                stale = mtime + STALE_TEMP if name.startswith(_TEMP) else mtime
                if stale < now and (name.startswith(_TEMP) or _is_id(name)):
                    _remove(entry.path)


def _is_id(name: str) -> bool:
    try:
        check_id(name)
    except ValueError:
        return False
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
