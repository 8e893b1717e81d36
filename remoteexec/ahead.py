"""Claiming ahead: a serving thread's next claim, made while the last task of its batch runs.

While tasks are slow (``Worker`` decides when), a serving thread hands the results it has
and the next claim to its ``Courier``, a thread of its own, just before it starts the last
task of a batch. The round trip then overlaps that task instead of following it. The
tasks claimed are held (their leases renewed) from the moment they come. The worker's
monitor calls ``Courier.hand_back_late`` on each of its ticks: tasks that have waited
``HOLD`` seconds or more for a running task go back then, so that tasks claimed ahead
never wait long behind a slow one while other workers could run them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .backends import Claim, Done
from .leases import Leases
from .outbox import Outbox

HOLD = 0.05  # seconds tasks claimed ahead wait for the running task before they may go back

Answer = tuple[list[bool], list[Claim]]  # which results were accepted, the tasks claimed


class Ahead:
    """A claim made ahead: the results it sends and the exchange's future. Its tasks go
    to whichever comes first: the serving thread (``answer``) or the monitor, to hand
    them back (``hand_back_late``)."""

    def __init__(self, sent: list[Done]) -> None:
        self.sent = sent
        self.exchange: Future[Answer] = Future()
        self.arrived = 0.0  # time.monotonic() when the answer came
        self._lock = threading.Lock()
        self._owner: str | None = None  # "serving" or "monitor"

    def answer(self) -> Answer:
        """The exchange's answer, once it is there (raises what it raised); no tasks if
        the monitor handed them back."""
        accepted, claims = self.exchange.result()
        with self._lock:
            self._owner = self._owner or "serving"
            return accepted, claims if self._owner == "serving" else []

    def hand_back_late(self, hand_back: Callable[[list[Claim]], None]) -> None:
        """Hand the tasks to ``hand_back`` if they have waited ``HOLD`` seconds or more
        and the serving thread has not taken them."""
        if not self.exchange.done() or self.exchange.exception() is not None:
            return
        with self._lock:
            if self._owner is not None or time.monotonic() - self.arrived < HOLD:
                return
            self._owner = "monitor"
        _, claims = self.exchange.result()
        if claims:
            hand_back(claims)


class Courier:
    """The thread that makes one serving thread's claims ahead."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, name)
        self._latest: Ahead | None = None

    def send(self, sent: list[Done], exchange: Callable[[], Answer]) -> Ahead:
        """Run ``exchange`` (which sends ``sent`` and claims) in the courier thread."""
        ahead = Ahead(sent)

        def run() -> Answer:
            answer = exchange()
            ahead.arrived = time.monotonic()
            return answer

        ahead.exchange = self._pool.submit(run)
        self._latest = ahead
        return ahead

    def hand_back_late(self, hand_back: Callable[[list[Claim]], None]) -> None:
        """``Ahead.hand_back_late`` for the latest claim made ahead (the monitor's tick)."""
        latest = self._latest
        if latest is not None:
            latest.hand_back_late(hand_back)

    def close(self) -> None:
        self._pool.shutdown()


def land(ahead: Ahead | None, outbox: Outbox, leases: Leases) -> None:
    """Settle ``ahead``'s results and hand its tasks back: its serving thread stops."""
    if ahead is None:
        return
    try:
        accepted, claims = ahead.answer()
    except Exception:  # whether the results got through is unknown: send them again
        if ahead.sent:
            outbox.complete(ahead.sent)
        return
    outbox.settle(ahead.sent, accepted)
    leases.release(claims)
