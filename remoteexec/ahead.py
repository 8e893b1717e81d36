"""Claiming ahead: a serving thread's next claim, made while the last task of its batch runs.

While tasks are slow (``Worker`` decides when), a serving thread hands the results it has
and the next claim to its ``Courier``, a thread of its own, just before it starts the last
task of a batch. The round trip then overlaps that task instead of following it. The
tasks claimed are held (their leases renewed) from the moment they come; if the running
task takes more than ``HOLD`` seconds longer, the courier hands them back, so that tasks
claimed ahead never wait long behind a slow one while other workers could run them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from .backends import Claim, Done
from .leases import Leases
from .outbox import Outbox

HOLD = 0.05  # seconds tasks claimed ahead wait for the running task, then go back

Answer = tuple[list[bool], list[Claim]]  # which results were accepted, the tasks claimed


class Ahead(NamedTuple):
    """A claim made ahead: the results it sends, its answer (also put in ``box`` as soon as
    it comes), and the event the serving thread sets once it is ready for the tasks.
    Whoever pops ``box`` first owns those tasks: the serving thread or, to hand them back,
    the courier."""

    sent: list[Done]
    exchange: Future[Answer]
    ready: threading.Event
    box: list[Answer]

    def answer(self) -> Answer:
        """The exchange's answer, as soon as it is there (raises what it raised)."""
        self.ready.set()
        try:
            return self.box.pop()  # atomic under the GIL, as the courier's pop
        except IndexError:
            return self.exchange.result()


class Courier:
    """The thread that makes one serving thread's claims ahead."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, name)

    def send(
        self,
        sent: list[Done],
        exchange: Callable[[], Answer],
        hand_back: Callable[[list[Claim]], None],
    ) -> Ahead:
        """Run ``exchange`` (which sends ``sent`` and claims) in the courier thread; tasks
        the serving thread is not ready for within ``HOLD`` s go to ``hand_back``."""
        ready, box = threading.Event(), []

        def run() -> Answer:
            accepted, claims = exchange()
            box.append((accepted, claims))
            if claims and not ready.wait(HOLD):
                try:
                    box.pop()
                except IndexError:  # the serving thread took them meanwhile
                    return accepted, claims
                hand_back(claims)
                return accepted, []
            return accepted, claims

        return Ahead(sent, self._pool.submit(run), ready, box)

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
