"""Backend adapters, picked by URL scheme; each driver is imported only when used."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import Backend, Claim, DeadLetter, Done, Job, Stats, WorkerInfo

__all__ = [
    "Backend",
    "Claim",
    "DeadLetter",
    "Done",
    "Job",
    "Stats",
    "WorkerInfo",
    "open_backend",
]


def open_backend(url: str, *, result_ttl: float = 3600.0) -> Backend:
    """Open the backend that ``url`` names.

    Raises:
        ConfigurationError: the scheme is unknown, the URL is malformed or it names an
            option the backend does not take.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"malformed backend URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from .memory import MemoryBackend

        if parts.query:
            raise ConfigurationError(
                f"memory:// URLs take no options, not {parts.query.split('=')[0]!r:.60}"
            )

        return MemoryBackend.from_url(url, result_ttl=result_ttl)
    if scheme == "sqlite":
        from .sqlite import SQLiteBackend

        return SQLiteBackend.from_url(url, result_ttl=result_ttl)
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "redis+sentinel"):
        from .redis import RedisBackend

        return RedisBackend.from_url(url, result_ttl=result_ttl)
    if scheme == "mysql":
        from .mysql import MySQLBackend

        return MySQLBackend.from_url(url, result_ttl=result_ttl)
    raise ConfigurationError(
        f"unknown backend scheme {scheme!r}: use redis://, rediss://, unix://, redis+cluster://, "
        "redis+sentinel://, mysql://, "
        "sqlite:/// or memory://"
    )
