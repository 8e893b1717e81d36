"""``Window``: the calls a ``map`` has in flight, each a light ``Slot``.

A ``RemoteFuture`` is a ``concurrent.futures.Future``: a lock and a condition of its own,
callbacks, waiters, made and resolved for every call. ``map`` needs none of that: one
thread waits for one call at a time, in order. Its calls are ``Slot``s, which share their
window's lock, and resolving one wakes the consumer only if it waits for that one. A slot
is resolved as a future is (``future.Pending``), by the thread that reads its reply.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends import Job
    from .future import Withdrawer

_WAITING, _DONE, _FAILED, _CANCELLED = range(4)


class Window:
    """What the slots of one ``map`` share: a lock, and the slot its consumer waits for."""

    __slots__ = ("awaited", "changed")

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.Lock())
        self.awaited: Slot | None = None


class Slot:
    """One call of a ``map``: its outcome once read, for the one thread that waits on it.

    Attributes are those of a ``RemoteFuture`` (``future.Pending``).
    """

    __slots__ = (
        "_client", "_outcome", "_state", "_window", "expiry", "job", "kept", "submitted", "task_id"
    )  # fmt: skip

    def __init__(self, client: Withdrawer, task_id: str, job: Job, window: Window) -> None:
        self.task_id = task_id
        self.job = job
        self.submitted = time.time()
        self.expiry: tuple[float, str, str] | None = None
        self.kept = False
        self._client = client
        self._window = window
        self._state = _WAITING
        self._outcome: Any = None

    def done(self) -> bool:
        return self._state != _WAITING

    def set_result(self, result: Any) -> None:
        self._settle(_DONE, result)

    def set_exception(self, exception: BaseException | None) -> None:
        self._settle(_FAILED, exception)

    def _settle(self, state: int, outcome: Any) -> None:
        window = self._window
        with window.changed:
            if self._state != _WAITING:
                raise concurrent.futures.InvalidStateError(f"call {self.task_id} has ended")
            self._state, self._outcome = state, outcome
            if window.awaited is self:
                window.changed.notify()

    def result(self, timeout: float | None = None) -> Any:
        """The call's result (or its error, raised), waiting up to ``timeout`` seconds.

        Raises:
            TimeoutError: the call had not ended within ``timeout``.
            concurrent.futures.CancelledError: the call was withdrawn.
        """
        if self._state == _WAITING:
            end = None if timeout is None else time.monotonic() + timeout
            self._client.read_for_result(self, end)  # reads here if it is the only call
            window = self._window
            with window.changed:
                while self._state == _WAITING:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"call {self.task_id} is still running")
                    window.awaited = self
                    window.changed.wait(left)
                window.awaited = None
        if self._state == _DONE:
            return self._outcome
        if self._state == _CANCELLED:
            raise concurrent.futures.CancelledError(self.task_id)
        raise self._outcome

    def cancel(self) -> bool:
        """Withdraw the call if no worker has started it; True if it was withdrawn."""
        if self._state != _WAITING:
            return self._state == _CANCELLED
        if not self._client.withdraw(self):
            return False
        with self._window.changed:
            if self._state != _WAITING:
                return self._state == _CANCELLED
            self._state = _CANCELLED
        return True

    def made_by(self, client: Withdrawer) -> bool:
        """Whether ``client`` made (and so resolves) this slot."""
        return self._client is client

    def watch_waiters(self) -> None:
        """Nothing to do: only its window's consumer waits, through ``result``."""
