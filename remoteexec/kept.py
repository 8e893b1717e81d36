"""Results by id: ``remoteexec.result`` and ``remoteexec.status``.

A call sent with ``keep_result=`` seconds (``options``, ``@remote``) has its outcome kept
by the backend under the call's id for that long (``Backend.results``), whether or not
anyone waits for its reply. Any process with the same backend (and secrets) can then read
it by id: ``result`` waits for it, polling with a pause that grows from 10 ms to 0.5 s,
and returns the value or raises the remote error; ``status`` tells where the call is.

A kept reply is read like any reply: its signature verified, its id checked, a large
value read from its blob (which lives as long as the result, and is not deleted on
reading: others may read it too). Nothing is decoded but through the codec.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .backends import Backend
from .backends.base import RUNNING, WAITING
from .blobs import Payloads
from .errors import CallTimeout, ConfigurationError, ResultExpired, SerializationError
from .message import Codec, Reply
from .replies import failure_error

#: The longest task id ``result`` and ``status`` accept, in characters.
MAX_ID = 191
#: What ``status`` answers besides ``WAITING`` and ``RUNNING``: a call whose result is kept
#: (a value, or an error), or one the backend has no trace of.
DONE, FAILED, LOST = "done", "failed", "lost"
__all__ = ["DONE", "FAILED", "LOST", "RUNNING", "WAITING", "Kept", "checked_id"]

_FIRST_PAUSE, _LONGEST_PAUSE = 0.01, 0.5
_STATES_EVERY = 2.0  # seconds between looks for the task itself while a result waits


def checked_id(task_id: Any) -> str:
    """``task_id`` if it can be a call's id.

    Raises:
        ConfigurationError: it is not a string of 1 to ``MAX_ID`` characters.
    """
    if type(task_id) is not str or not 0 < len(task_id) <= MAX_ID:
        raise ConfigurationError(
            f"a call id is a string of 1 to {MAX_ID} characters, not {task_id!r:.80}"
        )
    return task_id


class Kept:
    """Reads the results kept under call ids from ``backend`` (see the module docstring)."""

    def __init__(self, backend: Backend, codec: Codec, payloads: Payloads) -> None:
        self.backend, self.codec, self.payloads = backend, codec, payloads

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """The value of call ``task_id``, waiting up to ``timeout`` seconds (None: as long
        as the call is waiting or running) for it to end.

        Raises:
            RemoteError, WorkerLost, ...: the error the call ended with, as its caller
                would have had it.
            CallTimeout: the call is still waiting or running after ``timeout``.
            ResultExpired: no result is kept and the backend has no trace of the call.
            ConfigurationError: ``task_id`` is no call id, or ``timeout`` no number of
                seconds.
            SignatureError, SerializationError: the kept reply is forged or malformed.
            BackendUnavailable: the backend cannot be reached.
        """
        task_id = checked_id(task_id)
        if timeout is not None and not (type(timeout) in (int, float) and 0 <= timeout < math.inf):
            raise ConfigurationError(f"timeout must be None or seconds >= 0, not {timeout!r:.40}")
        start = time.monotonic()
        pause, looked = _FIRST_PAUSE, -_STATES_EVERY
        while True:
            reply = self._reply(task_id)
            if reply is not None:
                return self._outcome(reply)
            now = time.monotonic()
            if now - looked >= _STATES_EVERY:
                looked = now
                state = self.backend.states([task_id]).get(task_id)
                if state is None:
                    reply = self._reply(task_id)  # it may have ended between the looks
                    if reply is not None:
                        return self._outcome(reply)
                    raise ResultExpired(_expired(task_id))
            if timeout is not None and now - start >= timeout:
                raise CallTimeout(f"call {task_id} did not end within {timeout:g} s")
            wait = pause if timeout is None else min(pause, start + timeout - now)
            time.sleep(max(0.0, wait))
            pause = min(pause * 1.5, _LONGEST_PAUSE)

    def status(self, task_id: str) -> str:
        """``"waiting"``, ``"running"``, ``"done"``, ``"failed"`` or ``"lost"`` (no trace:
        a call that ended without ``keep_result``, or whose result expired, reads lost).

        Raises:
            ConfigurationError, SignatureError, SerializationError, BackendUnavailable:
                as ``result``.
        """
        task_id = checked_id(task_id)
        reply = self._reply(task_id)
        if reply is None:
            state = self.backend.states([task_id]).get(task_id)
            if state is not None:
                return state
            reply = self._reply(task_id)  # it may have ended between the looks
        if reply is None:
            return LOST
        return DONE if reply.failure is None else FAILED

    def _reply(self, task_id: str) -> Reply | None:
        body = self.backend.results([task_id]).get(task_id)
        if body is None:
            return None
        reply = self.codec.decode_reply(body)
        if reply.id != task_id:
            raise SerializationError(f"the result kept for call {task_id} is another call's")
        return reply

    def _outcome(self, reply: Reply) -> Any:
        if reply.failure is not None:
            raise failure_error(reply.failure)
        return self.payloads.resolve_value(reply.value)  # its blob stays for other readers


def _expired(task_id: str) -> str:
    return f"no result is kept for call {task_id}: it expired (keep_result) or was never kept"
