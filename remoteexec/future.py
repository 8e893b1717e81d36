"""What one call is to its caller: the options it is sent with, and ``RemoteFuture``.

Both sit below the client and the proxy: a proxy makes ``CallOptions`` and hands them to a
client, and the client makes the ``RemoteFuture`` it later resolves. A future knows its
call's ``Job`` and asks the client that made it (any ``Withdrawer``) to withdraw it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import time
import weakref
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .config import MAX_KEEP_RESULT, check_attempts, check_name
from .errors import ConfigurationError
from .when import check_delay, check_eta

if TYPE_CHECKING:
    from .backends import Job
    from .retry_policy import Retry

R = TypeVar("R")


class Pending(Protocol):
    """A sent call as its client resolves it: a ``RemoteFuture``, or a ``map``'s
    ``window.Slot``."""

    task_id: str
    job: Job
    submitted: float  # time.time() when it was sent
    expiry: tuple[float, str, str] | None  # (deadline, task_id, message) with a timeout
    kept: bool  # the outcome is also kept under the id (keep_result)

    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException | None) -> None: ...
    def made_by(self, client: Withdrawer) -> bool: ...
    def watch_waiters(self) -> None: ...


class Withdrawer(Protocol):
    """What a future needs of the client that made it."""

    def withdraw(self, future: Pending) -> bool:
        """Withdraw the future's task if no worker has claimed it; True if it was."""

    def read_for_result(self, future: Pending, end: float | None) -> None:
        """Read replies in the calling thread until ``future`` is done or ``time.monotonic()``
        reaches ``end``, where that saves a hand-off from another thread; else return."""

    def watch(self, future: Pending) -> None:
        """Somebody waits for ``future`` without reading: see that its reply gets read."""


class RemoteFuture(concurrent.futures.Future[R]):
    """The pending result of a remote call: a ``concurrent.futures.Future`` you can await.

    ``cancel()`` withdraws the task if no worker has claimed it yet.

    Attributes:
        task_id: the call's id.
        job: what was enqueued for it (its queue, reply address and body).
        submitted: when it was sent (``time.time()``).
        expiry: ``(deadline, task_id, message)`` when the call has a timeout, else None.
        kept: the call's outcome is also kept under its id (``keep_result``).
    """

    kept = False

    def __init__(self, client: Withdrawer, task_id: str, job: Job) -> None:
        super().__init__()
        self.task_id = task_id
        self.job = job
        self.submitted = time.time()
        self.expiry: tuple[float, str, str] | None = None
        self._client = client

    def cancel(self) -> bool:
        """Withdraw the task if no worker has started it; True if it was withdrawn."""
        if self.done():
            return super().cancel()
        if not self._client.withdraw(self):
            return False
        return super().cancel()

    def result(self, timeout: float | None = None) -> R:
        """The call's result, waiting up to ``timeout`` seconds (None: until it ends).

        While this is the only call its client waits for and no other thread reads
        replies, the calling thread reads them itself, so the result needs no hand-off.
        """
        return super().result(self._read(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The call's error (None if it succeeded), waiting like ``result``."""
        return super().exception(self._read(timeout))

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[R]], object]) -> None:
        """Call ``fn(future)`` once the call ends (at once if it has); ``fn`` runs in the
        thread that reads the reply."""
        if not self.done():
            self._client.watch(self)
        super().add_done_callback(fn)

    def watch_waiters(self) -> None:
        """From now on, a thread that waits for this future in ``concurrent.futures.wait``
        or ``as_completed`` asks its client to watch it (``Withdrawer.watch``)."""
        self._waiters = _Waiters(self, self._waiters)

    def _read(self, timeout: float | None) -> float | None:
        """Read replies in this thread if that is quicker (``Withdrawer.read_for_result``);
        what is left of ``timeout``."""
        if not self.done():
            end = None if timeout is None else time.monotonic() + timeout
            self._client.read_for_result(self, end)
            if end is not None:
                timeout = max(0.0, end - time.monotonic())
        return timeout

    def made_by(self, client: Withdrawer) -> bool:
        """Whether ``client`` made (and so resolves) this future."""
        return self._client is client

    def __await__(self) -> Generator[Any, None, R]:
        return asyncio.wrap_future(self).__await__()


class _Waiters(list):  # type: ignore[type-arg]
    """A future's waiters (``concurrent.futures`` keeps them in ``Future._waiters``): a
    thread in ``concurrent.futures.wait`` or ``as_completed`` adds one, and so asks for the
    reply to be read."""

    def __init__(self, future: RemoteFuture[Any], waiters: list[Any]) -> None:
        super().__init__(waiters)
        self._future = weakref.ref(future)  # no cycle: a future is freed once unused

    def append(self, waiter: Any) -> None:
        future = self._future()
        if future is not None:
            future._client.watch(future)
        super().append(waiter)


def check_keep_result(value: Any, source: str = "argument") -> float:
    """``value`` as a float if it is a valid ``keep_result``: a number of seconds above 0
    and at most ``MAX_KEEP_RESULT``.

    Raises:
        ConfigurationError: naming the value and where it came from.
    """
    if type(value) not in (int, float) or not 0 < value <= MAX_KEEP_RESULT:
        raise ConfigurationError(
            f"keep_result must be a number of seconds above 0 and at most "
            f"{MAX_KEEP_RESULT:g}, not {value!r:.100} ({source})"
        )
    return float(value)


class CallOptions:
    """Per-call options; ``None`` means "the task's or the client's default".

    ``delay`` (seconds after the submit) or ``eta`` (epoch seconds, or a ``datetime``)
    defer the call: no worker starts it before then (``when.py``).

    ``retry`` is the retry policy (``retry_policy.merged`` checks it), or None: no retries.

    ``keep_result`` keeps the call's outcome under its id for that many seconds, for
    ``remoteexec.result`` (None: not kept).

    Raises:
        ConfigurationError: a bad queue name, ``max_attempts``, ``delay``, ``eta`` or
            ``keep_result``.
    """

    __slots__ = (
        "delay",
        "eta",
        "keep_result",
        "max_attempts",
        "queue",
        "retry",
        "shards",
        "time_limit",
        "timeout",
    )

    def __init__(
        self,
        *,
        queue: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        time_limit: float | None = None,
        shards: int | None = None,
        delay: float | None = None,
        eta: float | datetime.datetime | None = None,
        retry: Retry | None = None,
        keep_result: float | None = None,
    ) -> None:
        self.queue = None if queue is None else check_name("queue", queue)
        if delay is not None and eta is not None:
            raise ConfigurationError("give delay or eta, not both")
        self.delay = None if delay is None else check_delay(delay)
        self.eta = None if eta is None else check_eta(eta)
        self.timeout = timeout
        self.max_attempts = None if max_attempts is None else check_attempts(max_attempts)
        self.time_limit = time_limit
        self.shards = shards  # the task type's (@remote(shards=)), not a per-call option
        self.retry = retry
        self.keep_result = None if keep_result is None else check_keep_result(keep_result)
