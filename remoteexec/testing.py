"""Testing code that calls tasks: a farm inside the test process, no server, no worker process.

``farm()`` opens a private ``memory://`` broker, a client on it and (unless ``eager``) a
``Worker`` serving it from a thread, and makes that client the current one for the block:
``Cls.method(...)`` in the code under test goes there, from any thread. On leaving the
block the worker stops, the client closes and every thread they started has ended::

    import remoteexec.testing

    with remoteexec.testing.farm() as client:      # a worker thread serves the calls
        assert invoice_total(order) == 42           # code that calls tasks
    with remoteexec.testing.farm(eager=True):       # each call runs in the caller's thread
        assert invoice_total(order) == 42

Eager mode runs each call at once in the calling thread, and still sends it through the
real codec both ways with the client's settings (``max_message_size``, secrets): a value
that cannot cross the wire raises the same error at the same place as for real, and a task
that raises reaches the caller as ``RemoteError``. What a broker and a worker add is not
simulated there: no queue, lease, retry, ``timeout`` expiry or ``time_limit``.

``remoteexec.pytest_plugin`` wraps ``farm`` in the ``remoteexec_farm`` fixture.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import client as clients
from .client import Calls, Client, new_future, using
from .errors import RemoteExecError, error_kind
from .future import CallOptions, RemoteFuture
from .message import Call, Failure, Reply
from .remote import TaskType, lookup, registered, unknown_task_message
from .replies import failure_error
from .sandbox import Runner
from .tasks import import_tasks
from .window import Slot, Window
from .worker import Worker

__all__ = ["EagerClient", "farm"]


@contextmanager
def farm(
    imports: Sequence[str] = (),
    *,
    eager: bool = False,
    threads: int = 1,
    queues: Sequence[str] | None = None,
    stop_timeout: float = 10.0,
    **options: Any,
) -> Iterator[Client]:
    """Run the calls made in the block in this process, on a private ``memory://`` broker.

    Args:
        imports: task modules to import first, as ``remoteexec-worker --import`` does (a
            call made while one is imported raises ``ConfigurationError``); a helper
            process for time-limited tasks imports these (default: the modules of the task
            types registered when it starts).
        eager: run each call in the calling thread instead of on a worker thread.
        threads: the worker's serving threads.
        queues: the queues the worker serves (default: the client's queue and those of the
            task types registered when the block starts).
        stop_timeout: seconds the worker may take to stop on leaving the block (its running
            tasks finish first).
        **options: client and worker settings (``secret``, ``max_message_size``,
            ``timeout``, ``lease``, ...).

    Yields:
        The client, current for the block (``remoteexec.using``) and the process's default
        client until the block ends, so threads the code under test starts use it too.

    Raises:
        ConfigurationError: a bad option, or a task module that cannot be imported.
        RemoteExecError: the worker did not stop within ``stop_timeout`` (a task still runs).
        WorkerDied: a worker thread died (logged with its traceback).
    """
    if imports:
        import_tasks(imports)
    url = f"memory://remoteexec-testing-{uuid.uuid4().hex}"
    client = EagerClient(url, **options) if eager else Client(url, **options)
    worker: _WorkerThread | None = None
    try:
        if not eager:
            if queues is None:
                queues = _queues_of_registered(client.settings.queue)
            worker = _WorkerThread(
                Worker(
                    url,
                    queues=queues,
                    threads=threads,
                    imports=list(imports) or None,
                    **options,
                )
            )
            worker.start()
        with _default_client(client), using(client):
            yield client
    except BaseException:
        _shut_down(client, worker, stop_timeout, quiet=True)
        raise
    _shut_down(client, worker, stop_timeout, quiet=False)


def _queues_of_registered(default: str) -> list[str]:
    found = {task.queue for task in map(lookup, registered()) if task and task.queue}
    return [default, *sorted(found - {default})]


class _WorkerThread(threading.Thread):
    """Runs a ``Worker`` and keeps what ended it."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="remoteexec-testing-worker", daemon=True)
        self.worker = worker
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # raised again when the farm stops
            self.error = exc


def _shut_down(
    client: Client, worker: _WorkerThread | None, stop_timeout: float, *, quiet: bool
) -> None:
    """Stop the worker (its running tasks finish), then close the client. With ``quiet``
    (the block raised), a failure to stop is not raised over the block's own error."""
    try:
        if worker is not None:
            worker.worker.stop()
            worker.join(stop_timeout)
            if worker.is_alive():
                raise RemoteExecError(
                    f"the testing farm's worker did not stop within {stop_timeout:g} s: "
                    "a task is still running"
                )
            if worker.error is not None:
                raise worker.error
    except BaseException:
        if not quiet:
            raise
    finally:
        client.close()


@contextmanager
def _default_client(client: Client) -> Iterator[None]:
    """Make ``client`` the process's default client for the block, then put back the one
    before (unclosed). A ``configure()`` inside the block wins: its client stays."""
    with clients._default_lock:
        previous, clients._default = clients._default, client
    try:
        yield
    finally:
        with clients._default_lock:
            if clients._default is client:
                clients._default = previous


class EagerClient(Client):
    """A client that runs each call at once, in the calling thread, through the codec.

    The call is encoded as a client encodes it, decoded as a worker decodes it, run, and
    its reply encoded and decoded the same way; the returned futures are already
    resolved. Each calling thread gets its own instance of a task class, as each serving
    thread of a worker does. An ``async def`` method called from a thread whose event loop
    is running runs on a short-lived thread of its own, since that loop is busy waiting.
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        super().__init__(url, **options)
        self._local = threading.local()
        self._runners: list[Runner] = []
        self._runners_lock = threading.Lock()

    def submit_many(
        self,
        task: str,
        method: str,
        calls: Calls,
        options: CallOptions | None = None,
    ) -> list[RemoteFuture[Any]]:
        """Run the calls now, in order; return their resolved futures.

        Raises:
            SerializationError: an argument cannot be serialized (nothing ran).
        """
        jobs, futures = self._prepare(task, method, calls, options, new_future)
        for job, future in zip(jobs, futures, strict=True):
            reply = self._codec.decode_reply(self._run(job.body))
            if reply.failure is None:
                future.set_result(reply.value)
            else:
                future.set_exception(failure_error(reply.failure))
        return futures

    def submit_to(
        self,
        window: Window,
        task: str,
        method: str,
        calls: Calls,
        options: CallOptions | None = None,
    ) -> Sequence[Slot | RemoteFuture[Any]]:
        """``submit_many``: the calls run now, their futures resolved."""
        return self.submit_many(task, method, calls, options)

    def call(
        self,
        task: str,
        method: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: CallOptions | None = None,
    ) -> Any:
        """Run one call now and return its result (or raise its error)."""
        return self.submit_many(task, method, [(args, kwargs)], options)[0].result()

    def _run(self, body: bytes) -> bytes:
        """What a worker does with a claimed call's body: the encoded reply."""
        call = self._codec.decode_call(body)
        task = lookup(call.name)
        if task is None or task.method(call.method) is None:
            host = socket.gethostname()
            message = unknown_task_message(task, call.name, call.method, host)
            reply = Reply(call.id, None, Failure("unknown_task", "UnknownTask", message, ""))
        elif inspect.iscoroutinefunction(task.method(call.method)) and _loop_running():
            reply = _run_aside(task, call)
        else:
            reply = self._runner().run(task, call)
        try:
            return self._codec.encode_reply(reply, key=call.key)
        except RemoteExecError as exc:
            message = f"the result of {call.name}.{call.method}: {exc}"
            failure = Failure(error_kind(exc), type(exc).__name__, message, "")
            return self._codec.encode_reply(Reply(call.id, None, failure), key=call.key)

    def _runner(self) -> Runner:
        runner: Runner | None = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = Runner()
            with self._runners_lock:
                self._runners.append(runner)
        return runner

    def close(self) -> None:
        """Close the event loops of async tasks, then the client."""
        with self._runners_lock:
            runners, self._runners = self._runners, []
        for runner in runners:
            runner.close()
        super().close()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_aside(task: TaskType, call: Call) -> Reply:
    """Run ``call`` on a thread of its own (with this thread's context: calls it makes are
    eager too) and wait for it."""
    runner = Runner()
    context = contextvars.copy_context()
    replies: list[Reply] = []
    thread = threading.Thread(
        target=lambda: replies.append(context.run(runner.run, task, call)),
        name="remoteexec-eager-async",
    )
    thread.start()
    thread.join()
    runner.close()
    return replies[0]
