"""``sqlite:///path.db``: the SQLite adapter (``adapter.py``), its connections and
transactions (``connection.py``), its schema and statements (``statements.py``)."""

from __future__ import annotations

from .adapter import SQLiteBackend
from .connection import map_sqlite_errors
from .statements import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "SQLiteBackend", "map_sqlite_errors"]
