"""The worker: claim, run, reply, repeat.

``Worker.run`` starts ``threads`` serving threads and then watches over them from the
calling thread, the monitor: it renews the leases of every claim held, sends heartbeats and
sweeps expired replies (``leases.py``, which also keeps the table of claims held). Each
serving thread loops in ``_serve_loop``: claim a batch (one task at first, more while tasks
are quick), run each task, send the replies with the next claim (``outbox.py``, which also
makes the failure replies and dead letters of calls that must not run). While tasks are
slow, the next claim is made while the batch's last task runs (``ahead.py``). A failure
inside a task becomes an error reply, never a dead worker. ``stop()`` (what SIGTERM calls)
ends the loop after the running tasks and hands back every claimed task that has not
started.

A task with a time limit runs in its serving thread's helper process (``sandbox.py``),
which is killed alone when the task overruns; every other task runs in the serving thread.
Under the supervisor, each serving thread posts the claims it takes on a board the
supervisor reads if the process dies, to hand them back at once (``supervisor.py``).

A serving thread or the monitor that dies of an unexpected exception is logged with its
traceback and ends ``run`` with ``WorkerDied``: the process exits non-zero and the
supervisor replaces it. Nothing dies silently.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from .ahead import Ahead, Courier, land
from .backends import Claim, Done, WorkerInfo, open_backend
from .blobs import Payloads, refs_of
from .board import ClaimBoard
from .client import Client, using
from .config import resolve
from .errors import BackendUnavailable, PayloadTooLarge, RemoteExecError, error_kind
from .figures import TaskFigures
from .leases import Held, Leases, quietly
from .message import Call, Codec, Failure, Reply
from .observe import TaskObserver, task_ended, task_lost
from .outbox import Outbox
from .remote import TaskType, lookup, registered, unknown_task_message
from .replay import LOST, ReplayGuard
from .retries import failed
from .sandbox import Runner, Sandbox, SandboxDied, time_limit_of
from .tracing import ended, task_span
from .worker_config import checked_queues

log = logging.getLogger("remoteexec.worker")

_BATCH_MAX = 64  # tasks claimed at once while tasks are quick
_BATCH_BUDGET = 0.004  # seconds of work one claimed batch should hold at most
_FLUSH_AFTER = 0.002  # send finished replies at least this often within a batch
_AHEAD_FROM = 0.0002  # seconds per task from which the next claim is made while one runs


class WorkerDied(RuntimeError):
    """A serving thread or the monitor died of an unexpected exception (logged)."""


class Worker:
    """Serves task calls from a backend until stopped.

    Args:
        url: the backend URL (resolved like ``Client``'s).
        queues: the queues to serve, in order of priority (default: the queue setting).
        threads: tasks run at once in this process.
        lease: seconds a claim is held without renewal before another worker may take it.
        burst: return once the queues are empty.
        imports: the task modules a helper process for time-limited tasks imports (default:
            the modules of the task types registered when it starts).
        tasks_dir: a folder of task modules the helper imports too.
        connect_timeout: seconds ``run`` retries an unreachable broker before it raises.
        board_fd: a file to post the claims each thread holds in, for the supervisor.
        **options: other settings (``secret``, ``result_ttl``, ...).

    Raises:
        ConfigurationError: a bad URL, option or queue name.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        queues: Sequence[str] | None = None,
        threads: int = 1,
        lease: float | None = None,
        burst: bool = False,
        imports: Sequence[str] | None = None,
        tasks_dir: str | None = None,
        connect_timeout: float = 10.0,
        board_fd: int | None = None,
        **options: Any,
    ) -> None:
        self.settings = resolve(url, **options)
        self.queues = checked_queues([self.settings.queue] if queues is None else queues)
        self.backend = open_backend(self.settings.backend_url, result_ttl=self.settings.result_ttl)
        self.codec = Codec(
            secrets=self.settings.secrets, max_message_size=self.settings.max_message_size
        )
        max_age = self.settings.max_age
        self.guard = ReplayGuard(self.backend, max_age=max_age) if self.codec.signing else None
        self.threads = threads
        self.lease = lease or self.settings.lease
        self.burst = burst
        self.imports = None if imports is None else list(imports)
        self.tasks_dir = tasks_dir
        self.connect_timeout = connect_timeout
        self._board = None if board_fd is None else ClaimBoard(board_fd, threads)
        host, pid = socket.gethostname(), os.getpid()
        self.info = WorkerInfo(
            f"{host}:{pid}:{os.urandom(3).hex()}", host, pid, self.queues, time.time()
        )
        self._leases = Leases(self.backend, self.info, self.lease)
        self.payloads = Payloads(self.settings, self.backend)  # large values: blobs.py
        self._leases.sweeps.append(self.payloads.sweep)
        self.figures = TaskFigures()  # failures and durations, for the heartbeat
        self._leases.beats.append(self._report_figures)
        self.outbox = Outbox(self.backend, self.codec, self._leases, self.payloads, self.guard)
        for task in filter(None, map(lookup, registered())):  # @remote(shards=) on a cluster
            if task.shards:
                self.backend.shard(task.queue or self.settings.queue, task.shards)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._client: Client | None = None
        self._died: str | None = None  # why a thread that must stay alive died

    @property
    def observer(self) -> TaskObserver | None:
        """Per-task log lines and metrics (``observe.py``), or None."""
        return self.outbox.observer

    @observer.setter
    def observer(self, observer: TaskObserver | None) -> None:
        self.outbox.observer = observer

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
        """Serve until ``stop()`` (or, with ``burst``, until the queues are empty).

        Raises:
            BackendUnavailable: the broker is still unreachable after ``connect_timeout`` s.
            WorkerDied: a serving thread or the monitor died (logged with its traceback).
        """
        self._connect()
        log.info(
            "worker %s serving %s with %d thread(s), lease %g s",
            self.info.id,
            ",".join(self.queues),
            self.threads,
            self.lease,
        )
        servers = [
            threading.Thread(
                target=self._serve, args=(i,), name=f"remoteexec-serve-{i}", daemon=True
            )
            for i in range(self.threads)
        ]
        for thread in servers:
            thread.start()
        try:  # this thread is the monitor
            self._leases.monitor(
                servers, self._stopping, stop=self.stop, supervised=self._board is not None
            )
        except Exception:
            log.critical("the monitor thread died: stopping the worker", exc_info=True)
            self._died = self._died or "the monitor thread died"
        finally:
            self._stopping.set()
            for thread in servers:
                thread.join()
            quietly(self.backend.forget_worker, self.info.id)
            if self._client is not None:
                self._client.close()
            self.backend.close()
            log.info("worker %s stopped after %d task(s)", self.info.id, self.info.done)
        if self._died is not None:
            raise WorkerDied(self._died)

    def _connect(self) -> None:
        try:
            self._leases.connect(self.connect_timeout)
        except BackendUnavailable:
            self.backend.close()
            raise
        if self._board is not None:
            self._board.ready()

    # The serving threads ---------------------------------------------------------------

    def _serve(self, index: int) -> None:
        # Calls a task makes go to this worker's backend, through one client per process.
        self._local.index = index
        self._local.runner = Runner()
        self._local.sandbox = None
        self._local.ahead = None
        self._local.courier = Courier(f"remoteexec-ahead-{index}")
        try:
            with using(self._tasks_client()):
                self._serve_loop()
        except Exception:
            name = threading.current_thread().name
            log.critical("serving thread %s died: stopping the worker", name, exc_info=True)
            with self._lock:
                self._died = self._died or f"serving thread {name} died"
            self._stopping.set()
        finally:
            self._local.courier.close()
            self._local.runner.close()
            if self._local.sandbox is not None:
                self._local.sandbox.close()

    def _serve_loop(self) -> None:
        batch, backoff, slow = 1, 0.1, False
        finished: list[Done] = []  # results not sent yet: they go with the next claim
        try:
            while not self._stopping.is_set():
                ahead, self._local.ahead = self._local.ahead, None
                sent, finished = (finished, []) if ahead is None else (ahead.sent, finished)
                try:
                    if ahead is None:
                        accepted, claims = self.backend.complete_and_claim(
                            sent, self.queues, limit=batch, lease=self.lease, wait=0.5
                        )
                        self._hold(self._local.index, claims)
                    else:
                        accepted, claims = ahead.answer()
                except BackendUnavailable as exc:
                    if sent:  # whether they got through is unknown: send them again
                        self.outbox.complete(sent)
                    log.warning("claiming failed, retrying in %.1f s: %s", backoff, exc)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                except PayloadTooLarge:  # a result the broker refuses: answered below
                    self.outbox.complete(sent)
                    continue
                except Exception:  # a backend's bug, or something it read: keep serving
                    log.exception("claiming failed unexpectedly, retrying in %.1f s", backoff)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                self.outbox.settle(sent, accepted)
                backoff = 0.1
                if not claims:
                    if self.burst and not finished:
                        log.info("queues empty: burst worker thread done")
                        return
                    continue
                started = time.perf_counter()
                try:
                    self._run_batch(claims, finished, batch, slow)
                except Exception:  # a bug of ours: log it, hand the batch back, keep serving
                    log.exception("internal error while running %d task(s)", len(claims))
                    ahead = self._local.ahead  # results made go with the next claim
                    made = {d.claim.id for d in [*finished, *(ahead.sent if ahead else [])]}
                    self._leases.release(
                        [c for c in self._leases.still_held(claims) if c.id not in made]
                    )
                    self._stopping.wait(backoff)  # not in a tight loop, if it happens again
                    backoff = min(backoff * 2, 5.0)
                per_task = (time.perf_counter() - started) / len(claims)
                batch = max(1, min(_BATCH_MAX, int(_BATCH_BUDGET / max(per_task, 1e-6))))
                slow = per_task >= _AHEAD_FROM
        finally:
            land(self._local.ahead, self.outbox, self._leases)
            self._local.ahead = None
            if finished:
                self.outbox.complete(finished)

    def _hold(self, index: int, claims: list[Claim], running: Claim | None = None) -> None:
        """Hold ``claims`` (their leases are renewed from now on) and post them, with the
        claim still ``running``, on serving thread ``index``'s slot for the supervisor."""
        self._leases.take(claims)
        if self._board is not None and claims:
            self._board.post(index, [running, *claims] if running else claims)

    def _run_batch(self, claims: list[Claim], finished: list[Done], batch: int, slow: bool) -> None:
        """Run ``claims``, adding their results to ``finished``, which is sent every
        ``_FLUSH_AFTER`` s. While tasks are slow, the last one runs as the next claim is
        made, which takes the results made before it."""
        first_finished = time.perf_counter()
        for i, claim in enumerate(claims):
            if self._stopping.is_set():
                self._leases.release(claims[i:])
                break
            if i + 1 == len(claims) and slow:
                self._local.ahead = self._claim_ahead(finished[:], claim, batch)
                finished.clear()
            done = self._execute(claim)
            if done is None:
                continue
            self._leases.finish(claim)
            if not finished:
                first_finished = time.perf_counter()
            finished.append(done)
            if slow or i + 1 == len(claims):  # they go with the next claim
                continue
            if time.perf_counter() - first_finished > _FLUSH_AFTER:
                self.outbox.complete(finished[:])
                finished.clear()

    def _claim_ahead(self, finished: list[Done], running: Claim, batch: int) -> Ahead:
        """Send ``finished`` and claim the next batch in the courier thread while
        ``running`` runs here (``ahead.py``)."""
        index = self._local.index

        def exchange() -> tuple[list[bool], list[Claim]]:
            accepted, claims = self.backend.complete_and_claim(
                finished, self.queues, limit=batch, lease=self.lease, wait=0.0
            )
            self._hold(index, claims, running)
            return accepted, claims

        courier: Courier = self._local.courier
        return courier.send(finished, exchange, self._leases.release)

    def _execute(self, claim: Claim) -> Done | None:
        held = self._leases.held(claim)
        held.started = started = time.monotonic()
        try:
            call = self.codec.decode_call(claim.body)
        except Exception as exc:  # anything read from the broker may be garbage
            return self.outbox.undecodable(claim, exc)
        held.label, held.key = (label := f"{call.name}.{call.method}"), call.key
        held.blobs = refs_of(call)  # deleted once the call is completed
        refused = self._refused(claim, call, label)
        if refused is not None:
            return refused
        task = lookup(call.name)
        if task is None or task.method(call.method) is None:
            log.warning("unknown task %s (task %s)", label, claim.id)
            message = unknown_task_message(task, call.name, call.method, self.info.host)
            return self.outbox.failure(
                claim, "unknown_task", "UnknownTask", message, call.key, call.keep_result
            )
        if held.blobs and (unread := self._read_arguments(claim, call, label)) is not None:
            return unread
        held.time_limit = time_limit_of(task, call)
        observer = self.outbox.observer
        if observer is not None:
            observer.received(held, call)
        if call.trace is None:
            reply = self._invoke(task, call, held)
        else:
            reply = self._traced(claim, call, task, held)
        if reply.failure is not None or observer is not None:
            task_ended(observer, held, reply)
        if held.abandoned:
            return None
        self.figures.add(held.label, time.monotonic() - started, failed=reply.failure is not None)
        if reply.failure is not None and call.retry is not None:  # retry_on: retries.py
            return failed(self.outbox, claim, call, reply, held)
        keep = call.keep_result  # seconds the reply is also kept under the id
        if not call.reply_to and not keep:  # sent with send(): nobody reads a reply
            return self.outbox.unanswered(claim, label, reply, call.deadline)
        try:
            body, _ = self.payloads.encode_reply(self.codec, reply, call.key, call.deadline, keep)
        except RemoteExecError as exc:
            return self.outbox.error(claim, exc, f"the result of {label}: {exc}", call.key, keep)
        return Done(claim, body, keep)

    def _read_arguments(self, claim: Claim, call: Call, label: str) -> Done | None:
        """Put the values of ``call``'s blob references in place; the failure if one fails."""
        try:
            self.payloads.resolve_call(call)
        except RemoteExecError as exc:
            text = f"the arguments of {label}: {exc}"
            return self.outbox.error(claim, exc, text, call.key, call.keep_result)
        return None

    def _report_figures(self) -> None:
        self.info.failed, self.info.durations = self.figures.failed, self.figures.durations()

    def _refused(self, claim: Claim, call: Call, label: str) -> Done | None:
        """How a call that must not run ends (lost, a replay, too late), or None: run it."""
        if self.guard is not None:  # secrets: trust the signed fields, not the broker's
            verdict = self.guard.admit(claim, call, label)
            if verdict == LOST:
                return self.outbox.lost(
                    claim, label, call.max_attempts, call.key, call.keep_result, call.deadline
                )
            if verdict is not None:
                task_lost(self.observer, claim, label)
                return Done(claim, None)
        elif claim.attempt > call.max_attempts:
            return self.outbox.lost(
                claim, label, call.max_attempts, 0, call.keep_result, call.deadline
            )
        if call.deadline is not None and time.time() > call.deadline:
            log.info("dropped %s %s: its caller stopped waiting", label, claim.id)
            return Done(claim, None)
        return None

    def _traced(self, claim: Claim, call: Call, task: TaskType, held: Held) -> Reply:
        """``_invoke`` in a span that continues the caller's trace (``tracing.py``)."""
        context, label = call.trace or {}, held.label
        with task_span(
            context, label, queue=claim.queue, task_id=claim.id, attempt=claim.attempt
        ) as span:
            reply = self._invoke(task, call, held)
            ended(span, reply.failure)
        return reply

    def _invoke(self, task: TaskType, call: Call, held: Held) -> Reply:
        if held.time_limit is None:
            runner: Runner = self._local.runner
            return runner.run(task, call)
        sandbox: Sandbox | None = self._local.sandbox
        if sandbox is None:
            modules = self.imports
            if modules is None:  # the modules of the task types registered now
                modules = sorted({t.cls.__module__ for t in map(lookup, registered()) if t})
            sandbox = self._local.sandbox = Sandbox(self.settings, modules, self.tasks_dir)
        try:
            return sandbox.run(call, held.time_limit)
        except RemoteExecError as exc:  # the call or reply did not cross the pipe
            return Reply(call.id, None, Failure(error_kind(exc), type(exc).__name__, str(exc), ""))
        except SandboxDied as exc:
            # As if a worker process had died: the attempt counts and the lease ends now.
            log.error("task %s (%s) killed its helper process: %s", held.claim.id, held.label, exc)
            self._leases.abandon(held)
            return Reply(call.id, None, None)
