"""``Replies``: the calls a client waits for, and the one reader that resolves them.

A client registers each call here before it is enqueued. One thread at a time reads the
replies addressed to the client's process and resolves the matching futures: a thread
blocked in ``Client.call`` or ``RemoteFuture.result`` while no other reads, else the
listener thread, which runs while calls are pending (for a lone call, once a thread waits
for its future: see ``sent``). After each read the reader fails the calls whose timeout
has passed (``CallTimeout``) and those whose task the broker no longer has (``CallLost``,
``CallPurged``: see ``liveness``), and warns once about a queue no live worker serves.
Nothing it reads stops it: a reply that cannot be read is logged and fails at most its own
call.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .backends import Backend
from .blobs import BlobRef, Payloads
from .errors import (
    ERROR_KINDS,
    BackendUnavailable,
    CallLost,
    CallTimeout,
    RemoteExecError,
    SignatureError,
    remote_error,
)
from .future import Pending
from .liveness import Liveness
from .message import Codec, Failure

log = logging.getLogger("remoteexec.client")  # the client's behaviour, as its users see it

_MAX_REJECTED = 10_000  # rejected replies remembered until their call ends
_READ_WAIT = 0.25  # seconds one read waits at most: a newer call's deadline is seen in time
_IDLE_WAIT = 1.0  # seconds the listener sleeps while no call is pending, unless woken
_UNSERVED_AFTER = 10.0  # seconds a call waits before its queue is checked for workers
_UNSERVED_EVERY = 5.0  # seconds between two such checks


class Replies:
    """The pending calls of one client process, and the reading of their replies.

    Args:
        backend: the client's backend adapter.
        codec: decodes (and verifies) the replies.
        reply_to: the process's reply address.

    Attributes:
        duplicate_replies: replies read for a call already settled or unknown.
        next_worker_check: ``time.time()`` of the next look for queues no live worker
            serves (0: at the next read).
    """

    def __init__(self, backend: Backend, codec: Codec, reply_to: str, payloads: Payloads) -> None:
        self._backend = backend
        self._codec = codec
        self._payloads = payloads
        self._reply_to = reply_to
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards the tables below
        self._pending: dict[str, Pending] = {}
        self._deadlines: list[tuple[float, str, str]] = []
        self._rejected: dict[str, RemoteExecError] = {}  # forged-looking replies, by id
        self._reader = threading.Lock()  # held by the one thread reading replies
        self._wake = threading.Event()
        self._listener: threading.Thread | None = None
        self._unwatched: str | None = None  # a lone call the listener was not woken for
        self._closed = False
        self._outage_since: float | None = None
        self._liveness = Liveness(backend, reply_to)
        self._warned_queues: set[str] = set()
        self.duplicate_replies = 0
        self.next_worker_check = 0.0

    @property
    def in_outage(self) -> bool:
        """Whether the last read of replies failed: the broker is unreachable."""
        return self._outage_since is not None

    @property
    def listener(self) -> threading.Thread | None:
        """The listener thread, once started (None again after it died)."""
        return self._listener

    # The pending calls -------------------------------------------------------------------

    def add(self, futures: Iterable[Pending]) -> None:
        """Register ``futures`` as pending, before their calls are sent."""
        with self._lock:
            for future in futures:
                future.submitted = math.inf  # not asked about (liveness) before it is sent
                self._pending[future.task_id] = future
                if future.expiry is not None:
                    heapq.heappush(self._deadlines, future.expiry)

    def forget(self, futures: Iterable[Pending]) -> None:
        """Stop waiting for ``futures`` (not sent, withdrawn, or their caller gave up)."""
        with self._lock:
            for future in futures:
                self._pending.pop(future.task_id, None)

    def close(self) -> None:
        """Stop the listener and fail the calls still waiting."""
        self._closed = True
        self._wake.set()
        if self._listener is not None and self._listener is not threading.current_thread():
            self._listener.join(5)
        self._fail_pending(BackendUnavailable("the client was closed"))

    def _fail_pending(self, error: RemoteExecError, *, listener_gone: bool = False) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            if listener_gone:  # in the same step: a call made now starts a new listener
                self._listener = None
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    # Who reads -----------------------------------------------------------------------------

    def read_for(self, future: Pending, send: Callable[[float | None], list[bytes]]) -> None:
        """Send ``future``'s call through ``send`` and see that its reply gets read.

        While no other thread is reading replies, this thread reads them itself: ``send``
        gets how long it may wait for the first replies (and returns them), so the call
        and the first wait go in one round trip, and the result needs no hand-off from the
        listener thread. Otherwise ``send`` gets None and the listener reads.
        """
        if self._reader.acquire(blocking=False):
            try:
                for body in send(self._read_wait()):
                    self._resolve(body)
                while not future.done() and not self._closed:
                    self._read()
                    if self._listener is not None and self._pending:
                        break  # let the listener read for everyone
            finally:
                self._reader.release()
        else:
            send(None)
        if not future.done() or self._pending:
            self.ensure_listening()

    def read_alone(self, future: Pending, end: float | None) -> None:
        """Read replies in this thread until ``future`` is done or ``time.monotonic()``
        reaches ``end``, while it is the only pending call and no other thread reads (the
        listener then sits idle); otherwise return at once and leave the reading to it."""
        with self._lock:
            alone = len(self._pending) == 1 and future.task_id in self._pending
        if not alone or not self._reader.acquire(blocking=False):
            self.watch(future)
            return
        try:
            while not future.done() and not self._closed:
                left = _READ_WAIT if end is None else end - time.monotonic()
                if left <= 0:
                    break
                self._read(min(left, _READ_WAIT))
                if len(self._pending) > 1:
                    break  # other calls came: the listener reads for everyone
        finally:
            self._reader.release()
        if self._pending:
            self.ensure_listening()

    def sent(self, futures: Sequence[Pending]) -> None:
        """See that the replies of ``futures``, just sent, get read.

        A lone call, while no other is pending and the listener idles, is left to the
        first thread that waits for its future (``watch``, ``read_alone``): its caller
        usually reads the reply itself, and waking the listener for nothing costs the
        caller a thread switch. If nobody waits, the listener reads it within
        ``_IDLE_WAIT``.
        """
        with self._lock:
            lone = len(futures) == 1 and self._pending.keys() == {futures[0].task_id}
            if lone and self._listener is not None and self._listener.is_alive():
                self._unwatched = futures[0].task_id
                futures[0].watch_waiters()
                return
        self.ensure_listening()

    def watch(self, future: Pending) -> None:
        """A thread waits for ``future`` (or hooks onto it) without reading its reply:
        wake the listener if ``sent`` left it asleep for this call."""
        if self._unwatched == future.task_id and not future.done():
            self._unwatched = None
            self.ensure_listening()

    def ensure_listening(self) -> None:
        """Start the listener thread, or wake it up to read for the calls just sent."""
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
                    self._wake.wait(_IDLE_WAIT)  # nothing to read for: callers read
                    continue
                if not self._reader.acquire(blocking=False):
                    # A calling thread reads; it wakes this one when it leaves calls unread.
                    self._wake.wait(_READ_WAIT)
                    continue
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
        self._fail_pending(CallLost("the client's reply listener stopped"), listener_gone=True)

    # Reading (only the holder of ``_reader``) -----------------------------------------------

    def _read(self, longest: float = _READ_WAIT) -> None:
        """Read the replies that arrive within ``_read_wait(longest)``, resolve their
        futures, then fail expired calls, check liveness and warn about unserved queues."""
        try:
            bodies = self._backend.replies(self._reply_to, wait=self._read_wait(longest))
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

    def _read_wait(self, longest: float = _READ_WAIT) -> float:
        """How long one read may wait: ``longest``, or until the next deadline."""
        with self._lock:
            next_deadline = self._deadlines[0][0] if self._deadlines else None
        if next_deadline is None:
            return longest
        return max(0.0, min(longest, next_deadline - time.time()))

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
            self._deliver(future, reply.value)
        else:
            future.set_exception(failure_error(reply.failure))

    def _deliver(self, future: Pending, value: Any) -> None:
        """Settle ``future`` with ``value``, read from its blob if it is a reference (the
        blob is deleted once read, unless the result is kept for others to read too)."""
        try:
            result = self._payloads.resolve_value(value)
        except Exception as exc:  # typed (blobs.py), or MemoryError: the call ends anyway
            future.set_exception(exc)
            return
        finally:
            if isinstance(value, BlobRef) and not future.kept:
                self._payloads.delete([value])
        future.set_result(result)

    def _expire(self) -> None:
        now = time.time()
        expired: list[tuple[Pending, str]] = []
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
        """Log once per queue when a call has waited ``_UNSERVED_AFTER`` s on a queue no
        live worker serves."""
        now = time.time()
        if now < self.next_worker_check:
            return
        self.next_worker_check = now + _UNSERVED_EVERY
        with self._lock:
            waiting = {
                f.job.queue for f in self._pending.values() if now - f.submitted > _UNSERVED_AFTER
            }
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
                "calls have waited more than %g s on queue %r, which no live worker serves; "
                "they keep waiting (start a worker with --queues %s)",
                _UNSERVED_AFTER,
                queue,
                queue,
            )

    def _check_liveness(self, *, after_outage: bool = False) -> None:
        """Fail the calls whose task the broker no longer has (see ``liveness``)."""
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
        f = failure
        return remote_error(f.type_name, f.message, f.traceback, f.earlier)
    return ERROR_KINDS.get(failure.kind, RemoteExecError)(failure.message)
