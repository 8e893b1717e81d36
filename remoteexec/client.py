"""``Client``: sends calls; the default client and ``using``.

Every client process has one reply address. A call is registered as pending with the
process's ``Replies`` before it is enqueued; ``Replies`` reads the replies addressed to the
process and resolves the matching futures (``replies.py``), so no call holds a connection
of its own while it waits. A caller interrupted while it waits (Ctrl-C) withdraws its task
if no worker has started it.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from .backends import Backend, Job, open_backend
from .blobs import Payloads
from .config import Settings, redact_url, resolve
from .errors import ConfigurationError, RemoteExecError
from .future import CallOptions, Pending, RemoteFuture
from .kept import Kept
from .message import Call, Codec
from .replies import Replies
from .tracing import current_context
from .when import not_before
from .window import Slot, Window

log = logging.getLogger("remoteexec.client")

Calls = Sequence[tuple[Sequence[Any], dict[str, Any]]]
F = TypeVar("F", bound=Pending)


class Client:
    """A connection to one backend, shared by every thread of the process.

    Args:
        url: the backend URL (see ``remoteexec.config`` for the resolution order).
        **options: ``secret``, ``timeout``, ``result_ttl``, ``max_message_size``, ``queue``,
            ``max_attempts``, ``blob_threshold``, ``max_blob_size``, ``blob_url`` (see
            ``Settings``).

    Raises:
        ConfigurationError: a bad URL or option.
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        self.settings: Settings = resolve(url, **options)
        self._codec = Codec(
            secrets=self.settings.secrets, max_message_size=self.settings.max_message_size
        )
        self._closed = False
        self._start()

    def _start(self) -> None:
        # Also run in a forked child: fresh connections and a reply address of its own;
        # the parent's pending calls stay the parent's.
        self._pid = os.getpid()
        self._backend = open_backend(self.settings.backend_url, result_ttl=self.settings.result_ttl)
        self.reply_to = f"{socket.gethostname()}:{self._pid}:{os.urandom(4).hex()}"
        # Task ids: 16 random bytes per client (and per forked child), then a counter.
        self._id_prefix, self._ids = os.urandom(16).hex(), itertools.count()
        self._payloads = Payloads(self.settings, self._backend)
        self._replies = Replies(self._backend, self._codec, self.reply_to, self._payloads)
        self._kept = Kept(self._backend, self._codec, self._payloads)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {redact_url(self.settings.url)}>"

    @property
    def backend(self) -> Backend:
        """The backend adapter (for ``status``, ``watch`` and tests)."""
        self._ensure()
        return self._backend

    @property
    def replies(self) -> Replies:
        """The pending calls and the reading of their replies (for diagnostics and tests)."""
        self._ensure()
        return self._replies

    @property
    def duplicate_replies(self) -> int:
        """Replies read for a call already settled or unknown."""
        return self._replies.duplicate_replies

    def _ensure(self) -> None:
        if self._closed:
            raise RemoteExecError("the client is closed")
        if self._pid != os.getpid():
            self._start()

    def submit(
        self,
        task: str,
        method: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: CallOptions | None = None,
    ) -> RemoteFuture[Any]:
        """Send one call; see ``submit_many``."""
        return self.submit_many(task, method, [(args, kwargs)], options)[0]

    def submit_many(
        self,
        task: str,
        method: str,
        calls: Calls,
        options: CallOptions | None = None,
    ) -> list[RemoteFuture[Any]]:
        """Send many calls of one method in one batch; a future for each, in order.

        Raises:
            SerializationError: an argument cannot be serialized (nothing was sent).
            BackendUnavailable: the backend cannot be reached (nothing was sent).
        """
        jobs, futures = self._prepare(task, method, calls, options, new_future)
        self._send(jobs, futures)
        self._replies.sent(futures)
        return futures

    def submit_to(
        self,
        window: Window,
        task: str,
        method: str,
        calls: Calls,
        options: CallOptions | None = None,
    ) -> Sequence[Slot | RemoteFuture[Any]]:
        """``submit_many`` for ``map``: the calls as slots of ``window`` (``window.py``),
        lighter than futures, for one thread to wait on in turn."""

        def slot(client: Client, task_id: str, job: Job) -> Slot:
            return Slot(client, task_id, job, window)

        jobs, slots = self._prepare(task, method, calls, options, slot)
        self._send(jobs, slots)
        self._replies.sent(slots)
        return slots

    def send(
        self,
        task: str,
        method: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: CallOptions | None = None,
    ) -> str:
        """Send one call that nobody waits for and return its id at once.

        The call carries no reply address: the worker keeps no reply, and a failure goes
        to the worker's log (and, once ``max_attempts`` runs out, to the dead letters).

        Raises:
            SerializationError: an argument cannot be serialized (nothing was sent).
            BackendUnavailable: the backend cannot be reached (nothing was sent).
        """
        jobs, (future,) = self._prepare(
            task, method, [(args, kwargs)], options, new_future, reply=False
        )
        self._backend.enqueue(jobs)
        return future.task_id

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """The outcome of a call sent with ``keep_result``, from any process: its value,
        or its error raised; waits up to ``timeout`` seconds (None: while the call is
        waiting or running). See ``kept.Kept.result``.

        Raises:
            RemoteError (or the call's other error): the call failed.
            CallTimeout: the call is still waiting or running after ``timeout``.
            ResultExpired: no result is kept under ``task_id`` and the call is gone.
        """
        self._ensure()
        return self._kept.result(task_id, timeout)

    def status(self, task_id: str) -> str:
        """Where call ``task_id`` is: ``"waiting"``, ``"running"``, ``"done"``, ``"failed"``
        or ``"lost"``; a call that ended without ``keep_result`` reads ``"lost"``."""
        self._ensure()
        return self._kept.status(task_id)

    def call(
        self,
        task: str,
        method: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: CallOptions | None = None,
    ) -> Any:
        """Send one call and wait for its result (what calling a remote method does).

        While no other thread is reading replies, this thread reads them itself, so the
        result needs no hand-off from the listener thread, and the call and the first wait
        for its reply go in one round trip; otherwise it waits like ``submit(...).result()``.
        """
        jobs, (future,) = self._prepare(task, method, [(args, kwargs)], options, new_future)
        try:
            self._replies.read_for(future, lambda wait: self._send(jobs, [future], wait=wait))
            return future.result()
        except BaseException as exc:
            self._replies.forget([future])
            if not isinstance(exc, Exception):  # Ctrl-C: the task must not run for nobody
                self._withdraw_now(future)
            raise

    def _prepare(
        self,
        task: str,
        method: str,
        calls: Calls,
        options: CallOptions | None,
        make: Callable[[Client, str, Job], F],
        reply: bool = True,
    ) -> tuple[list[Job], list[F]]:
        """The jobs of ``calls`` and, for each, what ``make`` makes of it (a future)."""
        module = importing_tasks.get()
        if module is not None:
            raise ConfigurationError(
                f"remote call made while the worker imports task module {module!r}: "
                "put the call under `if __name__ == '__main__':`"
            )
        self._ensure()
        opts = options or CallOptions()
        settings = self.settings
        queue = opts.queue or settings.queue
        if opts.shards:  # the task type's own: @remote(shards=)
            self._backend.shard(queue, opts.shards)
        timeout = opts.timeout if opts.timeout is not None else settings.timeout
        attempts = opts.max_attempts or settings.max_attempts
        keep = opts.keep_result or 0.0  # seconds the outcome is kept under the id
        now = time.time()
        deadline = now + timeout if timeout is not None else None
        later = 0.0
        if opts.delay is not None or opts.eta is not None:  # a deferred call: when.py
            # A worker with secrets refuses a signed call older than max_age with no deadline.
            signed = deadline is None and self._codec.signing
            expiry = now + settings.max_age if signed else deadline
            later = not_before(opts.delay, opts.eta, now, expiry, f"{task}.{method}")
        reply_to = self.reply_to if reply else ""  # "": fire and forget, no reply kept
        where = (queue, reply_to, now)  # signed with the call: see message.py
        jobs: list[Job] = []
        futures: list[F] = []
        encode, codec = self._payloads.encode_call, self._codec  # large values: blobs.py
        context = current_context()  # the caller's span, if tracing: tracing.py
        retry = opts.retry  # retry_on: retry_policy.py
        for args, kwargs in calls:
            task_id = f"{self._id_prefix}{next(self._ids):x}"
            call = Call(
                task_id, task, method, tuple(args), kwargs, deadline, attempts, None, *where
            )
            call.trace, call.retry = context, retry
            if keep:
                call.keep_result = keep
            job = Job(task_id, queue, reply_to, encode(codec, call)[0], later)
            jobs.append(job)
            futures.append(make(self, task_id, job))
        if keep:  # its blob, if any, outlives the reply read here (replies.py)
            for future in futures:
                future.kept = True
        if deadline is not None:
            label = f"{task}.{method} did not finish within {timeout:g} s"
            for future in futures:
                future.expiry = (deadline, future.task_id, label)
        return jobs, futures

    def _send(
        self, jobs: list[Job], futures: Sequence[Pending], *, wait: float | None = None
    ) -> list[bytes]:
        """Register ``futures`` as pending and enqueue ``jobs``; with ``wait``, also read
        the replies that come within it (the caller is the one reading replies)."""
        self._replies.add(futures)
        try:
            if wait is None:
                self._backend.enqueue(jobs)
                got = []
            else:
                got = self._backend.send_and_wait(jobs, self.reply_to, wait=wait)
            sent = time.time()
            for future in futures:
                future.submitted = sent
            return got
        except BaseException:
            self._replies.forget(futures)
            raise

    def withdraw(self, future: Pending) -> bool:
        """Withdraw ``future``'s task if no worker has claimed it; True if it was (what
        ``RemoteFuture.cancel`` asks)."""
        if not future.made_by(self) or self._pid != os.getpid():
            return False
        if not self._backend.cancel(future.job):
            return False
        self._replies.forget([future])
        return True

    def read_for_result(self, future: Pending, end: float | None) -> None:
        """Read replies in this thread for ``future`` (what ``RemoteFuture.result`` asks)
        while it is the only call pending and no other thread reads; see ``Replies``."""
        if future.made_by(self) and self._pid == os.getpid() and not self._closed:
            self._replies.read_alone(future, end)

    def watch(self, future: Pending) -> None:
        """See that ``future``'s reply gets read: a thread waits for it without reading
        (what ``RemoteFuture.add_done_callback`` and ``concurrent.futures.wait`` ask)."""
        if future.made_by(self) and self._pid == os.getpid() and not self._closed:
            self._replies.watch(future)

    def _withdraw_now(self, future: Pending) -> None:
        """Withdraw the task of an interrupted call if no worker has started it: best
        effort, given 2 s (on a thread of its own: the interrupted one's connection may
        be mid-command)."""

        def withdraw() -> None:
            try:
                if self._backend.cancel(future.job):
                    log.info("withdrew task %s: its caller stopped waiting", future.task_id)
            except Exception as exc:
                log.warning("could not withdraw task %s: %s", future.task_id, exc)

        thread = threading.Thread(target=withdraw, name="remoteexec-withdraw", daemon=True)
        thread.start()
        thread.join(2.0)

    def close(self) -> None:
        """Stop the listener, close connections, fail calls still waiting."""
        if self._closed:
            return
        self._closed = True
        self._replies.close()
        if self._pid == os.getpid():
            self._backend.close()


def result(task_id: str, timeout: float | None = None) -> Any:
    """``Client.result`` on the current client (``using`` / ``configure``)."""
    return current_client().result(task_id, timeout)


def status(task_id: str) -> str:
    """``Client.status`` on the current client (``using`` / ``configure``)."""
    return current_client().status(task_id)


_current: ContextVar[Client | None] = ContextVar("remoteexec_client", default=None)


# The task module a worker is importing (set by ``tasks.import_tasks``). A call made then
# would never be answered: the worker serves nothing until its imports are done.
def new_future(client: Client, task_id: str, job: Job) -> RemoteFuture[Any]:
    """A future for a call ``client`` makes (what ``Client._prepare`` makes by default)."""
    return RemoteFuture(client, task_id, job)


importing_tasks: ContextVar[str | None] = ContextVar("remoteexec_importing", default=None)
_default: Client | None = None
_default_lock = threading.Lock()
_routed = False  # a ``using`` block was entered in this process


def configure(url: str | None = None, **options: Any) -> Client:
    """Set the process-wide default client (closing the previous one) and return it.

    Raises:
        ConfigurationError: a bad URL or option.
    """
    global _default
    client = Client(url, **options)
    with _default_lock:
        previous, _default = _default, client
    if previous is not None:
        previous.close()
    return client


def current_client() -> Client:
    """The client of the innermost ``using`` block, else the default one (made on first use).

    Raises:
        ConfigurationError: no ``using`` block here, no default client yet, and a ``using``
            block was entered elsewhere in this process: most likely a thread started
            inside one, which ``using`` does not reach. Its calls would otherwise go to
            the default broker, unserved.
    """
    global _default
    client = _current.get()
    if client is not None:
        return client
    if _default is None:
        if _routed and importing_tasks.get() is None:  # an import says why itself
            raise ConfigurationError(
                f"no client for calls in thread {threading.current_thread().name!r}: "
                "remoteexec.using(client) reaches the thread (or asyncio task) that "
                "entered it and the asyncio tasks it starts, not threads it starts. Enter "
                "using() in the thread, run it with contextvars.copy_context().run, or "
                "set a client for the whole process with remoteexec.configure(...)"
            )
        with _default_lock:
            if _default is None:
                _default = Client()
    return _default


@contextmanager
def using(client: Client) -> Iterator[Client]:
    """Route the calls made inside the block (in this thread or task) through ``client``.

    The block reaches the asyncio tasks started inside it, not the threads: a thread
    started inside it that makes a call without a ``using`` of its own, while no default
    client exists (``configure``, or one made by an earlier call), raises
    ``ConfigurationError`` instead of calling the default broker.
    """
    global _routed
    _routed = True
    token = _current.set(client)
    try:
        yield client
    finally:
        _current.reset(token)
