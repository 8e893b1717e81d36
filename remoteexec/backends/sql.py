"""What the SQL adapters (``sqlite``, ``mysql``) share.

* ``PerThread``: one connection per thread, opened on first use, never shared across a
  fork.
* ``Idleness``: a wait that has to look again pauses for a share of the time since work
  was last found, so it looks often while work flows and seldom when idle.
* ``schema_is_current``: the check of a database's schema version against this code's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from ..errors import ConfigurationError

C = TypeVar("C")

#: A polling wait pauses for this share of the time since work was last found: a caller
#: waiting for each reply in turn is not slowed, and an idle farm costs the broker little.
IDLE_SHARE = 50

# A forked child's copies of its parent's connections: kept referenced, never closed nor
# collected, because closing one may end the parent's session (the locks a SQLite
# connection holds on its file belong to the whole process, the child's own included).
_INHERITED: list[Any] = []
_LOCK = threading.Lock()


def _reset_lock() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a child must not inherit it held by a thread it lacks


os.register_at_fork(after_in_child=_reset_lock)


class _Slot(threading.local):
    conn: Any = None
    pid: int = 0


class PerThread(Generic[C]):
    """One connection per thread and process, opened by ``connect`` on first use.

    ``usable`` is asked before each reuse; a connection it refuses is dropped (not closed)
    and replaced. A forked child opens its own connections and leaves its parent's alone.
    """

    def __init__(
        self, connect: Callable[[], C], *, usable: Callable[[C], bool] | None = None
    ) -> None:
        self._connect = connect
        self._usable = usable
        self._slot = _Slot()
        self._pid = os.getpid()
        self._open: list[C] = []  # this process's connections, of every thread

    def get(self) -> C:
        """This thread's connection, opened now if it has none (or none usable)."""
        slot, pid = self._slot, os.getpid()
        conn: C | None = slot.conn
        if conn is not None and slot.pid == pid:
            if self._usable is None or self._usable(conn):
                return conn
            self.discard()
        slot.conn = None
        with _LOCK:
            self._adopt_fork(pid)
        conn = self._connect()
        with _LOCK:
            self._open.append(conn)
        slot.conn, slot.pid = conn, pid
        return conn

    def discard(self) -> None:
        """Drop this thread's connection without closing it: the next ``get`` opens another.

        For a connection in an unknown state (an error cut a statement short).
        """
        conn, self._slot.conn = self._slot.conn, None
        if conn is not None and self._slot.pid == os.getpid():
            with _LOCK:
                self._open = [c for c in self._open if c is not conn]

    def close(self, close: Callable[[C], None]) -> None:
        """``close`` this process's connections, those of every thread."""
        with _LOCK:
            self._adopt_fork(os.getpid())
            conns, self._open = self._open, []
            self._slot = _Slot()
        for conn in conns:
            close(conn)

    def _adopt_fork(self, pid: int) -> None:
        """In a forked child, set the parent's connections aside (called under the lock)."""
        if self._pid != pid:
            _INHERITED.extend(self._open)
            self._open, self._pid = [], pid


class Idleness:
    """When a waiter last found work, per key, and how long it pauses before looking again.

    Args:
        never: the idle time of a key that never found work.
    """

    def __init__(self, *, never: float = 1.0) -> None:
        self._never = never
        self._last: dict[Hashable, float] = {}

    def idle(self, key: Hashable) -> float:
        """Seconds since a wait under ``key`` last found work."""
        now = time.monotonic()
        return now - self._last.get(key, now - self._never)

    def found(self, key: Hashable) -> None:
        """A wait under ``key`` found work now."""
        self._last[key] = time.monotonic()

    def kick(self) -> None:
        """Work was added or freed: every key counts as busy from now."""
        now = time.monotonic()
        for key in list(self._last):
            self._last[key] = now

    def pause(self, key: Hashable, shortest: float, longest: float) -> float:
        """A ``IDLE_SHARE``-th of ``key``'s idle time, within ``[shortest, longest]``."""
        return min(longest, max(shortest, self.idle(key) / IDLE_SHARE))


def schema_is_current(found: int, known: int, where: str) -> bool:
    """Whether a schema of version ``found`` needs neither creating nor migrating by code
    that knows versions up to ``known`` (0: no schema yet).

    Raises:
        ConfigurationError: the schema is newer than this code (``where`` names the
            database in the message).
    """
    if found > known:
        raise ConfigurationError(
            f"{where} has remoteexec schema version {found}; this remoteexec knows "
            f"versions up to {known}: upgrade remoteexec"
        )
    return found == known
