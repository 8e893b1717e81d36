"""The worker: claim, run, reply, repeat.

``Worker.run`` starts ``threads`` serving threads and then watches over them from the
calling thread: it renews the leases of every claim held, sends heartbeats, stops tasks
past their time limit and sweeps expired replies. Each serving thread loops in ``_serve``:
claim a batch (one task at first, more while tasks are quick), run each task, send the
replies in one round trip. A failure inside a task becomes an error reply, never a dead
worker. ``stop()`` (what SIGTERM calls) ends the loop after the running tasks and hands
back every claimed task that has not started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .backends import Claim, DeadLetter, Done, WorkerInfo, open_backend
from .client import Client, using
from .config import resolve
from .errors import BackendUnavailable, PayloadTooLarge, RemoteExecError, SignatureError
from .message import Call, Codec, Failure, Reply
from .remote import TaskType, lookup

log = logging.getLogger("remoteexec.worker")

#: Exit status of a worker process that stopped a task past its time limit.
EXIT_TIME_LIMIT = 3
_BATCH_MAX = 64  # tasks claimed at once while tasks are quick
_BATCH_BUDGET = 0.004  # seconds of work one claimed batch should hold at most
_FLUSH_AFTER = 0.002  # send finished replies at least this often within a batch


_PLAIN = frozenset({int, float, str, bytes, bool, list, dict, tuple, type(None)})  # never awaited


@dataclass(slots=True)
class _Held:
    """A claim this worker holds, and what it knows about the task."""

    claim: Claim
    started: float | None = None
    time_limit: float | None = None
    label: str = ""
    abandoned: bool = False  # replied to by the monitor (time limit) or lease lost
    finished: bool = False  # its result is made and about to be sent: leave it alone


class Worker:
    """Serves task calls from a backend until stopped.

    Args:
        url: the backend URL (resolved like ``Client``'s).
        queues: the queues to serve, in order of priority.
        threads: tasks run at once in this process.
        lease: seconds a claim is held without renewal before another worker may take it.
        burst: return once the queues are empty.
        exit_on_time_limit: exit the process (status ``EXIT_TIME_LIMIT``) to stop a task
            past its time limit; set by the supervisor, which starts a replacement.
        **options: other settings (``secret``, ``result_ttl``, ...).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        queues: Sequence[str] = ("default",),
        threads: int = 1,
        lease: float | None = None,
        burst: bool = False,
        exit_on_time_limit: bool = False,
        **options: Any,
    ) -> None:
        self.settings = resolve(url, **options)
        self.backend = open_backend(self.settings.url, result_ttl=self.settings.result_ttl)
        self.codec = Codec(
            secrets=self.settings.secrets, max_message_size=self.settings.max_message_size
        )
        self.queues = list(queues)
        self.threads = threads
        self.lease = lease or self.settings.lease
        self.burst = burst
        self.exit_on_time_limit = exit_on_time_limit
        host, pid = socket.gethostname(), os.getpid()
        self.info = WorkerInfo(
            f"{host}:{pid}:{os.urandom(3).hex()}", host, pid, self.queues, time.time()
        )
        self._stopping = threading.Event()
        self._held: dict[tuple[str, str], _Held] = {}  # by (task id, lease token)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._client: Client | None = None

    def _tasks_client(self) -> Client:
        with self._lock:
            if self._client is None:
                options = dataclasses.asdict(self.settings)
                options["secrets"] = list(self.settings.secrets) or None
                self._client = Client(**options)
            return self._client

    def stop(self) -> None:
        """Stop claiming; running tasks finish, unstarted claims are handed back."""
        if not self._stopping.is_set():
            log.info("worker %s stopping", self.info.id)
        self._stopping.set()

    def run(self) -> None:
        """Serve until ``stop()`` (or, with ``burst``, until the queues are empty)."""
        log.info(
            "worker %s serving %s with %d thread(s), lease %g s",
            self.info.id,
            ",".join(self.queues),
            self.threads,
            self.lease,
        )
        servers = [
            threading.Thread(target=self._serve, name=f"remoteexec-serve-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for thread in servers:
            thread.start()
        try:
            self._monitor(servers)
        finally:
            self._stopping.set()
            for thread in servers:
                thread.join()
            self._quietly(self.backend.forget_worker, self.info.id)
            if self._client is not None:
                self._client.close()
            self.backend.close()
            log.info("worker %s stopped after %d task(s)", self.info.id, self.info.done)

    # The serving threads ---------------------------------------------------------------

    def _serve(self) -> None:
        # Calls a task makes go to this worker's backend, through one client per process.
        try:
            with using(self._tasks_client()):
                self._serve_loop()
        finally:
            loop = getattr(self._local, "loop", None)
            if loop is not None:
                loop.close()

    def _serve_loop(self) -> None:
        batch, backoff = 1, 0.1
        finished: list[Done] = []  # a batch's last results, sent with the next claim
        try:
            while not self._stopping.is_set():
                try:
                    accepted, claims = self.backend.complete_and_claim(
                        finished,
                        self.queues,
                        worker=self.info.id,
                        limit=batch,
                        lease=self.lease,
                        wait=0.5,
                    )
                except BackendUnavailable as exc:
                    if finished:  # whether they got through is unknown: send them again
                        self._complete(finished)
                        finished = []
                    log.warning("claiming failed, retrying in %.1f s: %s", backoff, exc)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                self._settle(finished, accepted)
                finished, backoff = [], 0.1
                if not claims:
                    if self.burst:
                        log.info("queues empty: burst worker thread done")
                        return
                    continue
                started = time.perf_counter()
                try:
                    finished = self._run_batch(claims)
                except Exception:  # a bug of ours: log it, hand the batch back, keep serving
                    log.exception("internal error while running %d task(s)", len(claims))
                    with self._lock:
                        unfinished = [c for c in claims if (c.id, c.token) in self._held]
                    self._release(unfinished)
                per_task = (time.perf_counter() - started) / len(claims)
                batch = max(1, min(_BATCH_MAX, int(_BATCH_BUDGET / max(per_task, 1e-6))))
        finally:
            if finished:
                self._complete(finished)

    def _run_batch(self, claims: list[Claim]) -> list[Done]:
        """Run ``claims``; results are sent every ``_FLUSH_AFTER`` s, the rest returned."""
        with self._lock:
            for claim in claims:
                self._held[claim.id, claim.token] = _Held(claim)
        finished: list[Done] = []
        first_finished = 0.0
        for i, claim in enumerate(claims):
            if self._stopping.is_set():
                self._release(claims[i:])
                break
            done = self._execute(claim)
            if done is None:
                continue
            held = self._held.get((claim.id, claim.token))
            if held is not None:
                held.finished = True
            if not finished:
                first_finished = time.perf_counter()
            finished.append(done)
            if time.perf_counter() - first_finished > _FLUSH_AFTER:
                self._complete(finished)
                finished = []
        return finished

    def _execute(self, claim: Claim) -> Done | None:
        held = self._held[claim.id, claim.token]
        held.started = time.monotonic()
        try:
            call = self.codec.decode_call(claim.body)
        except RemoteExecError as exc:
            kind = _kind_of(exc)
            log.warning("rejected task %s from queue %s: %s", claim.id, claim.queue, exc)
            return self._failure(claim, kind, type(exc).__name__, str(exc))
        held.label = label = f"{call.name}.{call.method}"
        if call.deadline is not None and time.time() > call.deadline:
            log.info("dropped %s %s: its caller stopped waiting", label, claim.id)
            return Done(claim, None)
        if claim.attempt > call.max_attempts:
            return self._lost(claim, label, call.max_attempts)
        task = lookup(call.name)
        if task is None or task.method(call.method) is None:
            log.warning("unknown task %s (task %s)", label, claim.id)
            return self._failure(
                claim,
                "unknown_task",
                "UnknownTask",
                f"no worker task {label} on {self.info.host}",
            )
        held.time_limit = call.time_limit or task.time_limit
        reply = self._invoke(task, call)
        if held.abandoned:
            return None
        try:
            body = self.codec.encode_reply(reply)
        except RemoteExecError as exc:
            return self._failure(
                claim, _kind_of(exc), type(exc).__name__, f"the result of {label}: {exc}"
            )
        return Done(claim, body)

    def _invoke(self, task: TaskType, call: Call) -> Reply:
        try:
            instances: dict[str, Any] = self._local.__dict__.setdefault("instances", {})
            instance = instances.get(task.name)
            if instance is None:
                instance = instances[task.name] = task.cls()
            result = getattr(instance, call.method)(*call.args, **call.kwargs)
            if type(result) not in _PLAIN and inspect.isawaitable(result):
                result = self._event_loop().run_until_complete(result)
            return Reply(call.id, result, None)
        except BaseException as exc:  # a task may even call sys.exit: still just a failure
            failure = Failure("remote", type(exc).__name__, str(exc), traceback.format_exc())
            return Reply(call.id, None, failure)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
        return loop

    def _failure(self, claim: Claim, kind: str, type_name: str, message: str) -> Done:
        reply = Reply(claim.id, None, Failure(kind, type_name, message, ""))
        return Done(claim, self.codec.encode_reply(reply))

    def _lost(self, claim: Claim, label: str, max_attempts: int) -> Done:
        reason = (
            f"{label} lost its worker on {claim.attempt - 1} attempt(s) "
            f"(max_attempts={max_attempts})"
        )
        log.error("giving up on task %s: %s", claim.id, reason)
        letter = DeadLetter(claim.id, claim.queue, label, reason, time.time())
        self._quietly(self.backend.bury, letter)
        return self._failure(claim, "worker_lost", "WorkerLost", reason)

    def _complete(self, finished: list[Done]) -> None:
        for attempt in range(20):
            try:
                accepted = self.backend.complete(finished)
                break
            except BackendUnavailable as exc:
                log.warning("sending %d result(s) failed, retrying: %s", len(finished), exc)
                time.sleep(min(0.1 * 2**attempt, 3.0))
        else:
            log.error("gave up sending %d result(s): their leases will expire", len(finished))
            accepted = [False] * len(finished)
        self._settle(finished, accepted)

    def _settle(self, finished: list[Done], accepted: list[bool]) -> None:
        """Forget the claims of sent results; count those whose lease still held."""
        with self._lock:
            for done, ok in zip(finished, accepted, strict=False):
                self._held.pop((done.claim.id, done.claim.token), None)
                if ok:
                    self.info.done += 1
                else:
                    log.warning("result of task %s discarded: its lease was lost", done.claim.id)

    def _release(self, claims: Sequence[Claim]) -> None:
        with self._lock:
            for claim in claims:
                self._held.pop((claim.id, claim.token), None)
        self._quietly(self.backend.release, claims)
        log.info("handed back %d unstarted task(s)", len(claims))

    # The monitor (the thread that called run) -------------------------------------------

    def _monitor(self, servers: list[threading.Thread]) -> None:
        parent = os.getppid()
        next_renew = next_beat = next_sweep = 0.0
        while any(t.is_alive() for t in servers):
            now = time.monotonic()
            self._enforce_time_limits(now)
            if now >= next_beat:
                next_beat = now + 1.0
                with self._lock:
                    self.info.running = sum(
                        h.started is not None and not h.finished for h in self._held.values()
                    )
                self.info.last_seen = time.time()
                self._quietly(self.backend.heartbeat, self.info)
            if now >= next_renew:
                next_renew = now + self.lease / 3
                self._renew()
            if now >= next_sweep:
                next_sweep = now + 60.0
                self._quietly(self.backend.sweep)
            if self.exit_on_time_limit and os.getppid() != parent:
                log.warning("the supervisor is gone")
                self.stop()
            if self._stopping.is_set():
                time.sleep(0.05)  # the serving threads are finishing their tasks
            else:
                self._stopping.wait(0.1)

    def _renew(self) -> None:
        with self._lock:
            held = [h for h in self._held.values() if not (h.abandoned or h.finished)]
        if not held:
            return
        try:
            kept = self.backend.renew([h.claim for h in held], lease=self.lease)
        except BackendUnavailable as exc:
            log.warning("renewing %d lease(s) failed: %s", len(held), exc)
            return
        with self._lock:  # a claim completed meanwhile was not lost, just finished
            lost = [
                h
                for h, ok in zip(held, kept, strict=True)
                if not ok and self._held.get((h.claim.id, h.claim.token)) is h
            ]
        for h in lost:
            log.warning("lease on task %s lost: another worker may run it", h.claim.id)

    def _enforce_time_limits(self, now: float) -> None:
        with self._lock:
            late = [
                h
                for h in self._held.values()
                if h.started is not None
                and h.time_limit is not None
                and not (h.abandoned or h.finished)
                and now - h.started > h.time_limit
            ]
            for h in late:
                h.abandoned = True
        for h in late:
            message = f"{h.label} ran past its time limit of {h.time_limit:g} s and was stopped"
            log.error("task %s: %s", h.claim.id, message)
            done = self._failure(h.claim, "time_limit", "TimeLimitExceeded", message)
            self._quietly(self.backend.complete, [done])
        if late and self.exit_on_time_limit:
            # A thread cannot be interrupted: hand back everything else and let the
            # supervisor start a fresh process.
            with self._lock:
                others = [h.claim for h in self._held.values() if not h.abandoned]
            self._quietly(self.backend.release, others)
            self._quietly(self.backend.forget_worker, self.info.id)
            logging.shutdown()
            os._exit(EXIT_TIME_LIMIT)

    @staticmethod
    def _quietly(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except BackendUnavailable as exc:
            log.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)
            return None


def _kind_of(exc: RemoteExecError) -> str:
    if isinstance(exc, PayloadTooLarge):
        return "too_large"
    if isinstance(exc, SignatureError):
        return "signature"
    return "serialization"
