"""Waiting for rows: inside the server where it can, else by polling.

MySQL has no blocking read of a table, so a claim or a reply read that finds nothing must
look again. Where the server runs compound statements outside stored programs (MariaDB
10.1+), the server does the looking (``in_server``): one round trip carries a loop that
tests a cheap indexed ``EXISTS`` and sleeps between tests, then runs the fetch as soon as
the test passes or the wait is over. The client pays one round trip per wait instead of
one per look, and sees a new row within a pause. Elsewhere (MySQL, or ``?wait=client``)
the client polls with the same pauses.

The pause grows with the time since the waiter last found work (``sql.Idleness``): 0.05 ms
while work flows in the server (0.25 ms when the client polls), so a caller waiting for
each reply in turn is not slowed, up to 40 ms after 2 s of idleness, so an idle farm costs
the server little. Inside the server a pause overshoots by some 0.1-0.2 ms (the kernel's
timer slack and wake-up).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from ..sql import Idleness
from .connection import Part
from .statements import WAIT_LOOP

T = TypeVar("T")
MIN_PAUSE, MAX_PAUSE = 0.00005, 0.04
_POLL_MIN = MIN_PAUSE * 5  # a poll costs a round trip: pause a little longer


def in_server(ready: Part, fetch: Sequence[Part], hold: float, idle: float) -> Part:
    """One compound statement: wait up to ``hold`` seconds, in the server, until the SQL
    condition ``ready`` holds, then run the ``fetch`` statements (whatever the outcome, so
    a row that came as the wait ended is still taken). ``idle`` sets the pause between
    tests, as the time since work was last found.

    Inside a compound statement only result sets reach the client (then one final OK):
    the caller finds the fetch's SELECT (or ``RETURNING``) rows in the first result.
    """
    sql = WAIT_LOOP.format(ready=ready[0]) + "; ".join(sql for sql, _ in fetch) + "; END"
    args = (hold, *ready[1], MAX_PAUSE, MIN_PAUSE, idle, *(a for _, part in fetch for a in part))
    return sql, args


class Waiter:
    """Calls a fetch until it finds something or the wait is over; see the module docstring.

    ``in_server`` is set once the server is known to run compound statements. A wait in
    the server is cut into holds of at most ``max_hold`` seconds: the connection's read
    timeout would end a longer one as a lost connection.
    """

    def __init__(self, max_hold: float) -> None:
        self.in_server = False
        self.max_hold = max_hold
        self._idle = Idleness(never=1.0)
        self._wake = threading.Condition()

    def idle(self, key: Hashable) -> float:
        """Seconds since a fetch under ``key`` last found something (1 s if never)."""
        return self._idle.idle(key)

    def wait(self, key: Hashable, fetch: Callable[[float], list[T]], wait: float) -> list[T]:
        """Call ``fetch(hold)`` until it returns something or ``wait`` seconds pass.

        ``hold`` is how long the fetch may wait in the server (0 when polling here).
        Between empty fetches made here, the pause follows the module docstring; work
        added through the same backend object wakes this process's waiters at once.
        """
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            got = fetch(min(max(0.0, remaining), self.max_hold) if self.in_server else 0.0)
            if got:
                self._idle.found(key)
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return got
            if self.in_server:
                continue  # the server waited (or found a row another waiter took first)
            pause = self._idle.pause(key, _POLL_MIN, MAX_PAUSE)
            with self._wake:
                self._wake.wait(min(pause, remaining))

    def kick(self) -> None:
        """Work was added or freed here: this process's waiters look again now."""
        self._idle.kick()
        with self._wake:
            self._wake.notify_all()
