"""Where a task runs: ``Runner`` in the worker's thread, ``Sandbox`` for a time limit.

A thread cannot be interrupted, so a task with a time limit (the task's own ``time_limit``,
or a lower one the caller asked for) runs in a helper process that can be killed alone.
Each serving thread of a worker owns at most one ``Sandbox``: a long-lived helper started
with multiprocessing's ``spawn`` context (never a fork of a threaded process) that runs
that thread's time-limited tasks one at a time.

* The helper imports the worker's task modules itself (a process has its own registry)
  and routes the calls a task makes through a ``Client`` of its own on the same backend
  (so not on ``memory://``, which lives in one process).
* Only bytes cross the pipe. The worker sends the call, checked and re-encoded unsigned
  (so the helper's codec needs no secret and no message is pickled), and gets the encoded
  reply back.
* A task past its limit: the helper is killed, the call gets ``TimeLimitExceeded``, and
  a fresh helper starts at once for the next time-limited task. The worker process and
  its other threads carry on; the helper held nothing else.
* A helper that dies by itself (a task called ``os._exit``) raises ``SandboxDied``: the
  worker ends that attempt as a crashed worker's would (the lease expires at once).
* A helper exits when the worker closes its pipe or when the worker process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import multiprocessing
import os
import threading
import time
import traceback
from dataclasses import asdict
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from .config import Settings
from .errors import RemoteExecError
from .message import Call, Codec, Failure, Reply
from .remote import TaskType, lookup, unknown_task_message

log = logging.getLogger("remoteexec.sandbox")

_PLAIN = frozenset({int, float, str, bytes, bool, list, dict, tuple, type(None)})  # never awaited
_READY = b"ready"
_START_TIMEOUT = 120.0  # seconds a helper may take to import the task modules
_LONGEST = 10.0**7  # seconds: a longer limit is waited for in steps of this
_RETRY = "retry"  # a failure's kind on the helper's pipe: the call's policy lists it


class SandboxDied(Exception):
    """The helper process died while running a task."""


class Runner:
    """Runs calls in the current thread: one instance per task type, one event loop."""

    def __init__(self) -> None:
        self.instances: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, task: TaskType, call: Call) -> Reply:
        """Call ``task``'s method; anything it raises becomes a failure reply."""
        try:
            instance = self.instances.get(task.name)
            if instance is None:
                instance = self.instances[task.name] = task.cls()
            result = getattr(instance, call.method)(*call.args, **call.kwargs)
            if type(result) not in _PLAIN and inspect.isawaitable(result):
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                result = self._loop.run_until_complete(result)
            return Reply(call.id, result, None)
        except BaseException as exc:  # a task may even call sys.exit: still just a failure
            failure = Failure("remote", type(exc).__name__, str(exc), traceback.format_exc())
            if call.retry is not None:
                failure.retryable = call.retry.matches(exc)
            return Reply(call.id, None, failure)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def time_limit_of(task: TaskType, call: Call) -> float | None:
    """The effective limit: the task's own, lowered (never raised) by the caller's."""
    limits = [task.time_limit] if task.time_limit is not None else []
    asked = call.time_limit
    if asked is not None and type(asked) in (int, float) and 0 < asked < float("inf"):
        limits.append(asked)  # NaN, <= 0 and inf are not limits
    return min(limits) if limits else None


class Sandbox:
    """One helper process that runs time-limited calls one at a time (see module doc).

    Args:
        settings: the worker's settings (for the helper's client and codec).
        modules: the task modules the helper imports.
        tasks_dir: a folder whose ``*.py`` the helper imports, or None.
    """

    def __init__(self, settings: Settings, modules: list[str], tasks_dir: str | None) -> None:
        self._args = (json.dumps(asdict(settings)), modules, tasks_dir)
        self._codec = Codec(max_message_size=settings.max_message_size)
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._ready = False  # the helper said it has imported the task modules

    def run(self, call: Call, limit: float) -> Reply:
        """Run ``call`` in the helper; past ``limit`` seconds, kill it and fail the call.

        Raises:
            SandboxDied: the helper died while running the call (or could not start).
            RemoteExecError: the call cannot be re-encoded for the helper.
        """
        body = self._codec.encode_call(call)
        conn = self._connection()
        try:
            conn.send_bytes(body)
            deadline = time.monotonic() + limit
            while not conn.poll(min(max(deadline - time.monotonic(), 0.0), _LONGEST)):
                if time.monotonic() >= deadline:
                    self._stop(kill=True)
                    self._spawn()  # the next time-limited task needs one: start it now
                    message = f"{call.name}.{call.method} ran past its time limit of "
                    message += f"{limit:g} s and was stopped"
                    return Reply(call.id, None, Failure("time_limit", "TimeLimitExceeded",
                                                        message, ""))  # fmt: skip
            data = conn.recv_bytes()
        except (EOFError, OSError) as exc:
            code = self._stop(kill=False)
            self._spawn()
            raise SandboxDied(f"the helper process died (exit status {code})") from exc
        reply = self._codec.decode_reply(data)
        if reply.failure is not None and reply.failure.kind == _RETRY:
            reply.failure.kind, reply.failure.retryable = "remote", True
        return reply

    def close(self) -> None:
        """Stop the helper: it exits when it reads the end of its pipe, or is killed."""
        self._stop(kill=False)

    def _stop(self, *, kill: bool) -> int | None:
        """Stop the helper (``kill``: at once); return its exit status."""
        process, conn = self._process, self._conn
        self._process, self._conn, self._ready = None, None, False
        if conn is not None:
            conn.close()
        if process is None:
            return None
        if kill:
            process.kill()
        process.join(0.5)
        if process.is_alive():
            process.kill()
            process.join(5)
        code = process.exitcode
        process.close()
        return code

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_helper_main, args=(theirs, *self._args), name="remoteexec-sandbox", daemon=True
        )
        process.start()
        theirs.close()
        self._process, self._conn, self._ready = process, ours, False

    def _connection(self) -> Connection:
        """The pipe to a helper that has started (spawning one if there is none)."""
        if self._conn is None:
            self._spawn()
        conn, process = self._conn, self._process
        assert conn is not None and process is not None
        if self._ready:
            return conn
        try:
            if not conn.poll(_START_TIMEOUT):
                raise SandboxDied("the helper process did not start in time")
            hello = conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self._stop(kill=True)
            raise SandboxDied(f"the helper process exited at start: {exc!r}") from exc
        except SandboxDied:
            self._stop(kill=True)
            raise
        if hello != _READY:
            self._stop(kill=True)
            raise SandboxDied(hello.decode(errors="replace"))
        self._ready = True
        log.info("started helper process %d for time-limited tasks", process.pid)
        return conn


# --- the helper process ------------------------------------------------------------------


def _helper_main(
    conn: Connection, settings: str, modules: list[str], tasks_dir: str | None
) -> None:
    from .client import Client, using
    from .logs import inherit
    from .tasks import import_tasks

    inherit("helper")  # log as the worker does
    _exit_with(os.getppid())
    try:
        import_tasks(modules, tasks_dir)
        options = json.loads(settings)
        options["secrets"] = options["secrets"] or None
        client = Client(**options)
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send_bytes(f"the helper process cannot start: {exc}".encode())
        return
    codec = Codec(max_message_size=client.settings.max_message_size)
    runner = Runner()
    with using(client), contextlib.suppress(EOFError, OSError):  # the worker closed the pipe
        conn.send_bytes(_READY)
        while True:
            conn.send_bytes(_run_one(codec, runner, conn.recv_bytes()))
    runner.close()
    client.close()


def _run_one(codec: Codec, runner: Runner, body: bytes) -> bytes:
    try:
        call = codec.decode_call(body)
        task = lookup(call.name)
        if task is None or task.method(call.method) is None:
            message = unknown_task_message(task, call.name, call.method, "its helper process")
            reply = Reply(call.id, None, Failure("unknown_task", "UnknownTask", message, ""))
        else:
            reply = runner.run(task, call)
            if reply.failure is not None and reply.failure.retryable:
                reply.failure.kind = _RETRY  # the mark crosses the pipe as a kind
        try:
            return codec.encode_reply(reply)
        except RemoteExecError as exc:
            failure = Failure("serialization", type(exc).__name__, str(exc), "")
            return codec.encode_reply(Reply(call.id, None, failure))
    except RemoteExecError as exc:  # our own bytes: only a bug gets here
        failure = Failure("serialization", type(exc).__name__, str(exc), "")
        return codec.encode_reply(Reply("", None, failure))


def _exit_with(parent: int) -> None:
    """Exit when the worker process is gone, even while a task is stuck."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="remoteexec-sandbox-watch", daemon=True).start()
