"""``Client``: sends calls, and one listener thread per process resolves their futures.

Every client process has one reply address. Calls are registered as pending before they
are enqueued; the listener drains the replies addressed to this process and resolves the
matching futures, so no call holds a connection of its own while it waits. The listener
also fails calls whose timeout has passed (``CallTimeout``) and those whose task the
broker no longer has (``CallLost``, ``CallPurged``: see ``liveness``). Nothing it reads
stops it: a reply that cannot be read is logged and fails at most its own call. A caller
interrupted while it waits (Ctrl-C) withdraws its task if no worker has started it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .backends import Backend, Job, open_backend
from .config import Settings, redact_url, resolve
from .errors import (
    ERROR_KINDS,
    BackendUnavailable,
    CallLost,
    CallTimeout,
    ConfigurationError,
    RemoteExecError,
    SignatureError,
    remote_error,
)
from .future import CallOptions, RemoteFuture
from .liveness import Liveness
from .message import Call, Codec, Failure

log = logging.getLogger("remoteexec.client")

_MAX_REJECTED = 10_000  # rejected replies remembered until their call ends

Calls = Sequence[tuple[Sequence[Any], dict[str, Any]]]


class Client:
    """A connection to one backend, shared by every thread of the process.

    Args:
        url: the backend URL (see ``remoteexec.config`` for the resolution order).
        **options: ``secret``, ``timeout``, ``result_ttl``, ``max_message_size``, ``queue``,
            ``max_attempts`` (see ``Settings``).

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
        self._lock = threading.Lock()
        self._backend = open_backend(self.settings.url, result_ttl=self.settings.result_ttl)
        self.reply_to = f"{socket.gethostname()}:{self._pid}:{os.urandom(4).hex()}"
        # Task ids: 16 random bytes per client (and per forked child), then a counter.
        self._id_prefix, self._ids = os.urandom(16).hex(), itertools.count()
        self._pending: dict[str, RemoteFuture[Any]] = {}
        self._deadlines: list[tuple[float, str, str]] = []
        self._wake = threading.Event()
        self._listener: threading.Thread | None = None
        self._reader = threading.Lock()  # held by the one thread reading replies
        self._outage_since: float | None = None
        self._next_worker_check = 0.0
        self._liveness = Liveness(self._backend, self.reply_to)
        self._warned_queues: set[str] = set()
        self._rejected: dict[str, RemoteExecError] = {}  # forged-looking replies, by id
        self.duplicate_replies = 0  # replies read for a call already settled or unknown

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
        jobs, futures = self._prepare(task, method, calls, options)
        self._send(jobs, futures)
        self._ensure_listening()
        return futures

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
        jobs, (future,) = self._prepare(task, method, [(args, kwargs)], options)
        try:
            if self._reader.acquire(blocking=False):
                try:
                    for body in self._send(jobs, [future], wait=self._read_wait()):
                        self._resolve(body)
                    while not future.done() and not self._closed:
                        self._read()
                        if self._listener is not None and self._pending:
                            break  # let the listener read for everyone
                finally:
                    self._reader.release()
            else:
                self._send(jobs, [future])
            if not future.done() or self._pending:
                self._ensure_listening()
            return future.result()
        except BaseException as exc:
            with self._lock:
                self._pending.pop(future.task_id, None)
            if not isinstance(exc, Exception):  # Ctrl-C: the task must not run for nobody
                self._withdraw_now(future)
            raise

    def _prepare(
        self, task: str, method: str, calls: Calls, options: CallOptions | None
    ) -> tuple[list[Job], list[RemoteFuture[Any]]]:
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
        timeout = opts.timeout if opts.timeout is not None else settings.timeout
        attempts = opts.max_attempts or settings.max_attempts
        now = time.time()
        deadline = now + timeout if timeout is not None else None
        where = (queue, self.reply_to, now)  # signed with the call: see message.py
        jobs: list[Job] = []
        futures: list[RemoteFuture[Any]] = []
        encode = self._codec.encode_call
        for args, kwargs in calls:
            task_id = f"{self._id_prefix}{next(self._ids):x}"
            call = Call(
                task_id, task, method, tuple(args), kwargs, deadline, attempts, None, *where
            )
            job = Job(task_id, queue, self.reply_to, encode(call))
            jobs.append(job)
            futures.append(RemoteFuture(self, task_id, job))
        if deadline is not None:
            label = f"{task}.{method} did not finish within {timeout:g} s"
            for future in futures:
                future.expiry = (deadline, future.task_id, label)
        return jobs, futures

    def _send(
        self, jobs: list[Job], futures: list[RemoteFuture[Any]], *, wait: float | None = None
    ) -> list[bytes]:
        """Register ``futures`` as pending and enqueue ``jobs``; with ``wait``, also read
        the replies that come within it (the caller holds ``_reader``)."""
        with self._lock:
            for future in futures:
                future.submitted = math.inf  # not asked about (liveness) before it is sent
                self._pending[future.task_id] = future
                if future.expiry is not None:
                    heapq.heappush(self._deadlines, future.expiry)
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
            with self._lock:
                for future in futures:
                    self._pending.pop(future.task_id, None)
            raise

    def withdraw(self, future: RemoteFuture[Any]) -> bool:
        """Withdraw ``future``'s task if no worker has claimed it; True if it was (what
        ``RemoteFuture.cancel`` asks)."""
        if not future.made_by(self) or self._pid != os.getpid():
            return False
        if not self._backend.cancel(future.job):
            return False
        with self._lock:
            self._pending.pop(future.task_id, None)
        return True

    def _withdraw_now(self, future: RemoteFuture[Any]) -> None:
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
        self._wake.set()
        if self._listener is not None and self._listener is not threading.current_thread():
            self._listener.join(5)
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(BackendUnavailable("the client was closed"))
        if self._pid == os.getpid():
            self._backend.close()

    # The listener ------------------------------------------------------------------------

    def _ensure_listening(self) -> None:
        if self._listener is None or not self._listener.is_alive():
            with self._lock:
                if self._listener is None or not self._listener.is_alive():
                    self._listener = threading.Thread(
                        target=self._listen, name="remoteexec-replies", daemon=True
                    )
                    self._listener.start()
        else:
            self._wake.set()

    def _listen(self) -> None:
        pid = self._pid
        try:
            while not self._closed and os.getpid() == pid:
                self._wake.clear()
                with self._lock:
                    waiting = bool(self._pending)
                if not waiting:
                    self._wake.wait(1.0)  # nothing to read for: leave the reading to callers
                    continue
                if not self._reader.acquire(timeout=0.25):
                    continue  # a calling thread is reading for everyone
                try:
                    self._read()
                except Exception:  # whatever it was, the calls still need a reader
                    log.exception("the reply listener failed; it reads on")
                    time.sleep(0.2)
                finally:
                    self._reader.release()
        finally:
            if not self._closed and os.getpid() == pid:
                self._listener_died()

    def _listener_died(self) -> None:
        """Fail the pending calls (nobody reads their replies); the next call restarts it."""
        log.critical("the reply listener stopped: failing the pending calls")
        with self._lock:
            pending, self._pending = self._pending, {}
            self._listener = None
        for future in pending.values():
            if not future.done():
                future.set_exception(CallLost("the client's reply listener stopped"))

    def _read(self) -> None:
        """Read the replies that arrive within 0.25 s (or until the next deadline), resolve
        their futures, fail expired calls. Only the holder of ``_reader`` calls this."""
        try:
            bodies = self._backend.replies(self.reply_to, wait=self._read_wait())
        except BackendUnavailable as exc:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("waiting for replies failed, retrying: %s", exc)
            self._expire()
            time.sleep(0.2)
            return
        except Exception:  # e.g. a malformed reply: its call ends by the liveness check
            log.exception("reading replies failed")
            bodies = []
            time.sleep(0.2)
        for body in bodies:
            self._resolve(body)
        if self._outage_since is not None:
            down = time.monotonic() - self._outage_since
            log.warning("backend reachable again after %.1f s", down)
            self._outage_since = None
            self._check_liveness(after_outage=True)
        self._expire()
        self._check_liveness()
        self._warn_if_unserved()

    def _read_wait(self) -> float:
        """How long one read may wait: 0.25 s (to see a newer call's deadline in time), or
        until the next deadline."""
        with self._lock:
            next_deadline = self._deadlines[0][0] if self._deadlines else None
        if next_deadline is None:
            return 0.25
        return max(0.0, min(0.25, next_deadline - time.time()))

    def _resolve(self, body: bytes) -> None:
        try:
            self._settle(body)
        except Exception:  # a reply must never stop the reader
            log.exception("could not resolve a reply")

    def _settle(self, body: bytes) -> None:
        try:
            reply = self._codec.decode_reply(body)
        except RemoteExecError as exc:
            task_id = self._codec.peek_id(body)
            log.error("rejected a reply for %s: %s", task_id or "an unknown call", exc)
            if task_id is None:
                return
            if isinstance(exc, SignatureError):
                # Its id is unverified: anyone who can write to the broker could have sent
                # it. The call goes on waiting for a genuine reply; if none can come any
                # more, the liveness check ends it with this error.
                with self._lock:
                    if task_id in self._pending and len(self._rejected) < _MAX_REJECTED:
                        self._rejected[task_id] = exc
                return
            with self._lock:
                future = self._pending.pop(task_id, None)
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        with self._lock:
            future = self._pending.pop(reply.id, None)
        if future is None or future.done():
            self.duplicate_replies += 1
            log.debug("dropped a late or duplicate reply for %s", reply.id)
        elif reply.failure is None:
            future.set_result(reply.value)
        else:
            future.set_exception(failure_error(reply.failure))

    def _expire(self) -> None:
        now = time.time()
        expired: list[tuple[RemoteFuture[Any], str]] = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, task_id, label = heapq.heappop(self._deadlines)
                future = self._pending.pop(task_id, None)
                if future is not None:
                    expired.append((future, label))
        for future, label in expired:
            if not future.done():
                future.set_exception(CallTimeout(label))

    def _warn_if_unserved(self) -> None:
        """Log once per queue when a call has waited 10 s on a queue no live worker serves."""
        now = time.time()
        if now < self._next_worker_check:
            return
        self._next_worker_check = now + 5.0
        with self._lock:
            waiting = {f.job.queue for f in self._pending.values() if now - f.submitted > 10.0}
        waiting -= self._warned_queues
        if not waiting:
            return
        try:
            served = {q for w in self._backend.stats().workers for q in w.queues}
        except BackendUnavailable:
            return
        for queue in sorted(waiting - served):
            self._warned_queues.add(queue)
            log.warning(
                "calls have waited more than 10 s on queue %r, which no live worker serves; "
                "they keep waiting (start a worker with --queues %s)",
                queue,
                queue,
            )

    def _check_liveness(self, *, after_outage: bool = False) -> None:
        """Fail the calls whose task the broker no longer has (see ``liveness``). Only the
        holder of ``_reader`` calls this, after reading."""
        if not (after_outage or self._liveness.due()):
            return
        with self._lock:
            futures = list(self._pending.values())
        bodies, errors = self._liveness.check(futures, after_outage=after_outage)
        for body in bodies:
            self._resolve(body)
        for task_id, error in errors.items():
            with self._lock:
                future = self._pending.pop(task_id, None)
                error = self._rejected.pop(task_id, error)
            if future is not None and not future.done():
                future.set_exception(error)
        with self._lock:  # forget rejections of calls that ended otherwise
            for task_id in [t for t in self._rejected if t not in self._pending]:
                del self._rejected[task_id]


def failure_error(failure: Failure) -> RemoteExecError:
    """The exception a caller gets for a failure reported by a worker."""
    if failure.kind == "remote":
        return remote_error(failure.type_name, failure.message, failure.traceback)
    return ERROR_KINDS.get(failure.kind, RemoteExecError)(failure.message)


_current: ContextVar[Client | None] = ContextVar("remoteexec_client", default=None)
# The task module a worker is importing (set by ``tasks.import_tasks``). A call made then
# would never be answered: the worker serves nothing until its imports are done.
importing_tasks: ContextVar[str | None] = ContextVar("remoteexec_importing", default=None)
_default: Client | None = None
_default_lock = threading.Lock()


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
    """The client of the innermost ``using`` block, else the default one (made on first use)."""
    global _default
    client = _current.get()
    if client is not None:
        return client
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Client()
    return _default


@contextmanager
def using(client: Client) -> Iterator[Client]:
    """Route the calls made inside the block (in this thread or task) through ``client``."""
    token = _current.set(client)
    try:
        yield client
    finally:
        _current.reset(token)
