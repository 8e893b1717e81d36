"""The exceptions remoteexec raises, all importable from ``remoteexec``.

    RemoteExecError
     ├── ConfigurationError      a bad URL, option or task definition
     ├── BackendUnavailable      the broker cannot be reached (driver errors end here)
     ├── SerializationError      a value that cannot cross the wire, or a malformed message
     │    └── PayloadTooLarge    a message above max_message_size
     ├── SignatureError          an unsigned or forged message
     ├── CallTimeout             the caller's timeout passed (also a TimeoutError)
     ├── CallLost                the broker has no trace of the call: neither waiting,
     │    │                      running nor answered (see ``remoteexec.liveness``)
     │    ├── CallPurged         ``remoteexec purge`` deleted the task before it ran
     │    └── ResultExpired      no result is kept under the id (``remoteexec.result``)
     ├── RemoteError             the task raised; carries type_name, message, remote_traceback
     │                           and, for a retried call, the earlier attempts' failures
     ├── UnknownTask             no worker knows that task name or method
     ├── WorkerLost              every attempt's lease expired (the worker died each time)
     └── TimeLimitExceeded       the task ran past its time_limit and was stopped

Each class's docstring is its default message. A failure travels as plain data
(``{"type", "message", "traceback"}``) and is never rebuilt by importing a class named in a
message: a remote ``ValueError`` becomes a ``RemoteError`` that is also a ``ValueError``
because built-in exception types are looked up in a fixed table, nothing more.
"""

from __future__ import annotations

import builtins
from typing import Any


class RemoteExecError(Exception):
    """remoteexec failed."""

    def __init__(self, message: str | None = None) -> None:
        self._message = message or (self.__doc__ or "").strip().splitlines()[0]
        super().__init__(self._message)

    @property
    def message(self) -> str:
        return self._message

    def __str__(self) -> str:
        return self._message


class ConfigurationError(RemoteExecError):
    """Invalid configuration."""


class BackendUnavailable(RemoteExecError):
    """The backend cannot be reached."""


class SerializationError(RemoteExecError):
    """A value cannot be serialized, or a message cannot be decoded."""


class PayloadTooLarge(SerializationError):
    """The message is larger than max_message_size."""


class SignatureError(RemoteExecError):
    """The message is unsigned or its signature does not match."""


class CallTimeout(RemoteExecError, TimeoutError):
    """The call did not finish within its timeout."""


class CallLost(RemoteExecError):
    """The broker has no trace of this call: it is neither waiting, running nor answered."""


class CallPurged(CallLost):
    """The task was purged from its queue before any worker ran it."""


class ResultExpired(CallLost):
    """No result is kept for this call: it expired (keep_result) or was never kept."""


class UnknownTask(RemoteExecError):
    """No worker knows this task type or method."""


class WorkerLost(RemoteExecError):
    """The worker running the task was lost on every attempt."""


class TimeLimitExceeded(RemoteExecError):
    """The task ran past its time limit and was stopped."""


class RemoteError(RemoteExecError):
    """The remote task raised an exception.

    Attributes:
        type_name: the remote exception's class name, e.g. ``"ValueError"``.
        message: ``str()`` of the remote exception.
        remote_traceback: the formatted traceback from the worker; for a retried call, the
            tracebacks of the earlier attempts first, each under an ``attempt N of M``
            line, then the last one's.
        attempts: for a retried call (``retry_on``), the failures of the attempts before
            the last, oldest first, as ``(type_name, message, traceback)``; else empty.
            ``str()`` then says which attempt failed last and names the (up to three)
            failures before it.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        remote_traceback: str = "",
        attempts: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.attempts = attempts
        self._last_traceback = remote_traceback
        self.remote_traceback = _with_attempts(attempts, remote_traceback)

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.attempts:
            earlier = "; ".join(f"{t}: {m}"[:200] for t, m, _ in self.attempts[-3:])
            text += f" (attempt {len(self.attempts) + 1}; retried after: {earlier})"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.type_name, self.message, self._last_traceback, self.attempts)
        return (remote_error, args)


def _with_attempts(attempts: tuple[tuple[str, str, str], ...], last: str) -> str:
    """The tracebacks of ``attempts`` and then ``last``, each under its attempt number."""
    if not attempts:
        return last
    total = len(attempts) + 1
    parts = [
        f"attempt {n} of {total} ({t}: retried):\n{tb}" for n, (t, _, tb) in enumerate(attempts, 1)
    ]
    parts.append(f"attempt {total} of {total}:\n{last}")
    return "\n".join(parts)


# Built-in exception classes that a RemoteError may also be an instance of. Only classes
# whose constructor accepts a single message can be mixed in safely.
_BUILTIN_ERRORS: dict[str, type[BaseException]] = {
    name: cls
    for name, cls in vars(builtins).items()
    if isinstance(cls, type)
    and issubclass(cls, Exception)
    and not issubclass(cls, (UnicodeError, OSError, StopIteration, StopAsyncIteration))
    and cls.__module__ == "builtins"
}
_BUILTIN_ERRORS.update(
    {n: getattr(builtins, n) for n in ("OSError", "FileNotFoundError", "PermissionError")}
)
# remoteexec's own errors raised inside a task (a nested call's CallTimeout) keep their type.
_BUILTIN_ERRORS.update(
    {
        cls.__name__: cls
        for cls in (
            ConfigurationError, BackendUnavailable, SerializationError, PayloadTooLarge,
            SignatureError, CallTimeout, UnknownTask, WorkerLost, TimeLimitExceeded,
            CallLost, CallPurged, ResultExpired,
        )
    }
)  # fmt: skip
_MIXED: dict[type[BaseException], type[RemoteError]] = {}


def remote_error(
    type_name: str,
    message: str,
    remote_traceback: str = "",
    attempts: tuple[tuple[str, str, str], ...] = (),
) -> RemoteError:
    """Build the ``RemoteError`` for a failure reported by a worker (``attempts``: the
    failures of a retried call's earlier attempts).

    Where ``type_name`` names a built-in exception or one of remoteexec's own, the result
    is also an instance of it, so ``except ValueError`` catches a remote ``ValueError``.
    """
    builtin = _BUILTIN_ERRORS.get(type_name)
    if builtin is None:
        return RemoteError(type_name, message, remote_traceback, attempts)
    cls = _MIXED.get(builtin)
    if cls is None:
        cls = type(f"Remote{builtin.__name__}", (RemoteError, builtin), {})
        cls.__module__ = __name__
        _MIXED[builtin] = cls
    return cls(type_name, message, remote_traceback, attempts)


# Reply error kinds (see message.py) mapped to the exception raised at the caller.
ERROR_KINDS: dict[str, type[RemoteExecError]] = {
    "unknown_task": UnknownTask,
    "serialization": SerializationError,
    "too_large": PayloadTooLarge,
    "signature": SignatureError,
    "worker_lost": WorkerLost,
    "time_limit": TimeLimitExceeded,
    "timeout": CallTimeout,
    "unavailable": BackendUnavailable,
}
_KINDS = {cls: kind for kind, cls in ERROR_KINDS.items()}


def error_kind(exc: RemoteExecError) -> str:
    """The reply error kind for ``exc`` (the inverse of ``ERROR_KINDS``): that of its most
    specific class in the table, ``"serialization"`` if none is."""
    for cls in type(exc).__mro__:
        kind = _KINDS.get(cls)
        if kind is not None:
            return kind
    return "serialization"
