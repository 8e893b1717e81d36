"""``@remote``, ``@remote_method`` and the registry of task types.

The registry maps a task name to its class. A worker runs only what is registered here:
a message names a task, it never names a module to import.

For type checkers ``@remote`` returns the class as written; at run time it returns a
``RemoteClass`` proxy. ``@remote_method`` (nothing at run time) tells a checker that the
method, looked up on the class, is a ``RemoteMethod``; the mypy plugin
(``remoteexec.mypy_plugin``) does so for every public method of a ``@remote`` class.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast, overload

from .config import MAX_SHARDS, check_attempts, check_name
from .errors import ConfigurationError
from .future import check_keep_result
from .proxy import RemoteClass, RemoteMethod, public_method
from .retry_policy import Retry, merged

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
L_co = TypeVar("L_co", covariant=True)


@dataclass(frozen=True, slots=True)
class TaskType:
    """A registered task type and its defaults for calls."""

    name: str
    cls: type[Any]
    queue: str | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    time_limit: float | None = None
    shards: int | None = None
    retry: Retry | None = None

    def method(self, name: str) -> Callable[..., Any] | None:
        """The public method ``name`` the class defines, or None if there is none
        (``proxy.public_method``: never a private name nor one of ``type``'s, such as
        ``mro``)."""
        return public_method(self.cls, name)


_REGISTRY: dict[str, TaskType] = {}
_LOCK = threading.Lock()


def _origin(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(task: TaskType) -> None:
    """Add ``task`` to the registry.

    Raises:
        ConfigurationError: a different class is already registered under that name.
    """
    with _LOCK:
        existing = _REGISTRY.get(task.name)
        # The same class defined again (its module reloaded) replaces the old one.
        if existing is not None and _origin(existing.cls) != _origin(task.cls):
            raise ConfigurationError(
                f"task name {task.name!r} is already registered by {_origin(existing.cls)}; "
                f"cannot register {_origin(task.cls)} under the same name"
            )
        _REGISTRY[task.name] = task


def lookup(name: str) -> TaskType | None:
    """The task type registered under ``name``, or None."""
    return _REGISTRY.get(name)


def registered() -> list[str]:
    """The names of all registered task types, sorted."""
    return sorted(_REGISTRY)


def unknown_task_message(task: TaskType | None, name: str, method: str, host: str) -> str:
    """Why ``name.method`` cannot run on ``host``: what this process knows instead (at most
    20 names), and how to teach it."""
    if task is not None:
        methods = sorted(m for m in vars(task.cls) if public_method(task.cls, m) is not None)
        return f"{name} on {host} has no remote method {method!r} (it has: {_some(methods)})"
    known = _some(registered()) if _REGISTRY else "none"
    return (
        f"no worker task {name}.{method} on {host}: the task types it knows are {known}; "
        f"start the worker with --import for the module that defines {name}"
    )


def _some(names: list[str], most: int = 20) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _check(name: str, value: float | None) -> None:
    if value is not None and (not isinstance(value, (int, float)) or value <= 0):
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")


@overload
def remote(cls: type[T], /) -> type[T]: ...


@overload
def remote(
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    time_limit: float | None = None,
    shards: int | None = None,
    retry_on: tuple[type[BaseException], ...] | None = None,
    retries: int | None = None,
    backoff: tuple[float, float] | None = None,
    keep_result: float | None = None,
) -> Callable[[type[T]], type[T]]: ...


def remote(
    cls: type[T] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    time_limit: float | None = None,
    shards: int | None = None,
    retry_on: tuple[type[BaseException], ...] | None = None,
    retries: int | None = None,
    backoff: tuple[float, float] | None = None,
    keep_result: float | None = None,
) -> type[T] | Callable[[type[T]], type[T]]:
    """Register a class as a task type and return a proxy that calls it remotely.

    The proxy is a ``RemoteClass``; type checkers see the class itself, and its methods
    marked ``@remote_method`` (or all of them, with the mypy plugin) as ``RemoteMethod``.

    Args:
        name: the name workers know it by (default: the class's ``__name__``).
        queue: the queue its calls go to (default: the client's, ``"default"``).
        timeout: how long a caller waits, in seconds (default: wait until done).
        max_attempts: expired leases before the caller gets ``WorkerLost`` (default 3).
        time_limit: seconds a task may run before it is stopped (default: no limit).
        shards: on a Redis Cluster, spread the task's queue over this many hash slots
            (1 to ``MAX_SHARDS``; elsewhere a queue is one list and this is ignored).
        retry_on: exception classes after which a call is tried again (default: none).
        retries: how many times a call is tried again, at most (default 3; 0 to
            ``MAX_RETRIES``).
        backoff: ``(base, cap)``: retry n waits ``min(cap, base * 2 ** (n - 1))``
            seconds, give or take 25 % (default ``(0.5, 30)``). See docs/calls.md.
        keep_result: keep each call's outcome under its id for this many seconds, for
            ``remoteexec.result`` (above 0, at most ``config.MAX_KEEP_RESULT``; default: not kept).

    Raises:
        ConfigurationError: another class is registered under the same name, or an
            option is invalid (a name or queue: ``config.check_name``).
    """
    if name is not None:
        check_name("task", name)
    if queue is not None:
        check_name("queue", queue)
    _check("timeout", timeout)
    _check("time_limit", time_limit)
    if max_attempts is not None:
        check_attempts(max_attempts)
    if keep_result is not None:
        check_keep_result(keep_result, "@remote")
    if shards is not None and (type(shards) is not int or not 1 <= shards <= MAX_SHARDS):
        raise ConfigurationError(f"shards takes 1 to {MAX_SHARDS}, not {shards!r:.20}")
    retry = merged(None, retry_on=retry_on, retries=retries, backoff=backoff)

    def decorate(target: type[T]) -> type[T]:
        if not isinstance(target, type):
            raise ConfigurationError(f"@remote decorates a class, not {target!r}")
        task_name = check_name("task", name or target.__name__)
        task = TaskType(task_name, target, queue, timeout, max_attempts, time_limit, shards, retry)
        register(task)
        proxy = RemoteClass(
            target,
            task.name,
            task.queue,
            task.timeout,
            task.max_attempts,
            task.shards,
            retry,
            keep_result,
        )
        return cast("type[T]", proxy)

    return decorate if cls is None else decorate(cls)


class RemoteMethodDescriptor(Protocol[P, L_co, R]):
    """What a type checker sees for a ``@remote_method``: looked up on the (``@remote``)
    class, a ``RemoteMethod[P, R]``; on an instance (local use), the method itself, which
    returns ``L_co``. Nothing is made at run time: ``remote_method`` returns the method.
    """

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> RemoteMethod[P, R]: ...

    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Callable[P, L_co]: ...


@overload
def remote_method(  # an async method: the caller gets what its coroutine returns
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
) -> RemoteMethodDescriptor[P, Coroutine[Any, Any, R], R]: ...


@overload
def remote_method(
    method: Callable[Concatenate[Any, P], R], /
) -> RemoteMethodDescriptor[P, R, R]: ...


def remote_method(method: Callable[..., Any], /) -> Any:
    """Mark a method of a ``@remote`` class as typed: ``Cls.method`` is then a
    ``RemoteMethod[P, R]`` for every type checker, ``P`` the method's parameters without
    ``self`` and ``R`` its result (what its coroutine returns, for an ``async`` method).

    Returns the method itself: calls, workers and ``Cls.__wrapped__`` see no difference.
    """
    return method
