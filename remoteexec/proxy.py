"""What a caller holds: the class proxy and its remote methods.

``@remote`` returns a ``RemoteClass``, a ``wrapt.ObjectProxy`` around the real class: class
attributes, ``isinstance`` and ``__wrapped__`` behave as before, while a public method
looked up on it becomes a ``RemoteMethod``. Calling one sends the call through the current
client (``remoteexec.using`` / ``configure``) and blocks for the result; ``submit`` returns
a ``RemoteFuture``; ``map`` sends batches; ``options`` sets per-call options.

Only a method the class defines is a remote method (``public_method``, which workers use
too): a private name or one every class has (``mro``) is an ``AttributeError``. Names
and queues are checked where they are given (``config.check_name``): a bad one is a
``ConfigurationError`` before anything is sent.
"""

from __future__ import annotations

import datetime
import functools
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import wrapt

from .config import check_name
from .future import CallOptions, RemoteFuture
from .retry_policy import Retry, merged
from .window import Slot, Window

if TYPE_CHECKING:
    from .client import Client

__all__ = ["CallOptions", "NamedProxy", "RemoteClass", "RemoteFuture", "RemoteMethod", "proxy"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


_UNSET: Any = object()


def _client() -> Client:
    from .client import current_client

    return current_client()


class RemoteMethod(Generic[P, R]):
    """A method of a remote task type. Call it, ``submit`` it, ``map`` it.

    ``RemoteMethod[P, R]`` takes the arguments of the method it stands for (``P``, without
    ``self``) and gives its result ``R``: type checkers check both (docs/guide.md, "Typing").
    """

    __slots__ = ("_opts", "method", "task")

    def __init__(self, task: str, method: str, options: CallOptions) -> None:
        self.task = task
        self.method = method
        self._opts = options

    def __repr__(self) -> str:
        return f"<RemoteMethod {self.task}.{self.method}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the method remotely and return its result (blocks).

        Raises:
            RemoteError: the task raised (also an instance of a built-in exception type).
            CallTimeout: the call's timeout passed.
            RemoteExecError: any other failure (see ``remoteexec.errors``).
        """
        return _client().call(self.task, self.method, args, kwargs, self._opts)  # type: ignore[no-any-return]

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> RemoteFuture[R]:
        """Send the call and return at once with a ``RemoteFuture``.

        Raises:
            SerializationError: an argument cannot be serialized (nothing was sent).
            BackendUnavailable: the backend cannot be reached.
        """
        return _client().submit(self.task, self.method, args, kwargs, self._opts)

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Send the call and return its id at once (fire and forget); its outcome is kept
        only with ``options(keep_result=...)``, for ``remoteexec.result``.

        A failure goes to the worker's log and, once ``max_attempts`` runs out, to the
        dead letters.

        Raises:
            SerializationError: an argument cannot be serialized (nothing was sent).
            BackendUnavailable: the backend cannot be reached.
        """
        return _client().send(self.task, self.method, args, kwargs, self._opts)

    def map(self, *iterables: Iterable[Any], chunksize: int = 500) -> Iterator[R]:
        """Call the method once per item (several iterables: zipped as positional arguments).

        Calls are sent in batches of ``chunksize``, a few batches ahead of the results,
        which are yielded in order. The first failure is raised when its turn comes.
        """
        client = _client()
        calls: Iterator[tuple[tuple[Any, ...], dict[str, Any]]] = (
            (args, {}) for args in zip(*iterables, strict=False)
        )
        window: deque[Slot | RemoteFuture[Any]] = deque()
        slots = Window()  # lighter than futures: only this generator waits on them
        ahead = chunksize * 8

        def fill() -> None:
            while len(window) < ahead:
                batch = list(itertools.islice(calls, chunksize))
                if not batch:
                    return
                window.extend(client.submit_to(slots, self.task, self.method, batch, self._opts))

        try:
            fill()
            while window:
                future = window.popleft()
                if len(window) < ahead - chunksize:
                    fill()
                yield future.result()
        finally:
            for future in window:
                future.cancel()

    def options(
        self,
        *,
        timeout: float | None = _UNSET,
        queue: str | None = _UNSET,
        max_attempts: int | None = _UNSET,
        delay: float | None = _UNSET,
        eta: float | datetime.datetime | None = _UNSET,
        retry_on: tuple[type[BaseException], ...] | None = None,
        retries: int | None = None,
        backoff: tuple[float, float] | None = None,
        keep_result: float | None = _UNSET,
    ) -> RemoteMethod[P, R]:
        """The same method with other call options (the task's own arguments are untouched).

        ``delay`` (seconds) or ``eta`` (a ``datetime``, aware or naive local time, or epoch
        seconds) defers the call: no worker starts it before then. Its timeout still
        counts from the submit. Setting one clears the other.

        ``retry_on``, ``retries`` and ``backoff`` replace the task's (``@remote``); one not
        given keeps it. ``retries=0`` turns retries off.

        ``keep_result`` keeps each call's outcome under its id for that many seconds, for
        ``remoteexec.result`` and ``remoteexec.status`` (docs/calls.md, "Results by id").

        Raises:
            ConfigurationError: a bad option, or both ``delay`` and ``eta``.
        """
        old = self._opts
        if delay is _UNSET and eta is _UNSET:
            delay, eta = old.delay, old.eta
        retry = merged(old.retry, retry_on=retry_on, retries=retries, backoff=backoff)
        return RemoteMethod(
            self.task,
            self.method,
            CallOptions(
                queue=old.queue if queue is _UNSET else queue,
                timeout=old.timeout if timeout is _UNSET else timeout,
                max_attempts=old.max_attempts if max_attempts is _UNSET else max_attempts,
                time_limit=old.time_limit,
                shards=old.shards,
                delay=None if delay is _UNSET else delay,
                eta=None if eta is _UNSET else eta,
                retry=retry,
                keep_result=old.keep_result if keep_result is _UNSET else keep_result,
            ),
        )


#: Names every class answers through ``type`` or ``object`` (``mro``, ...): never a task's.
_MACHINERY = frozenset(dir(type))


def _public(name: str) -> None:
    """Refuse ``name`` unless it can name a remote method.

    Raises:
        AttributeError: a private name, or one of the class machinery (``mro``).
        ConfigurationError: a name no method can have (too long, not an identifier).
    """
    if name.startswith("_"):
        raise AttributeError(f"{name!r} is private: only public methods are called remotely")
    if name in _MACHINERY:
        raise AttributeError(f"{name!r} belongs to every class: it is not a remote method")
    check_name("method", name)


def public_method(cls: type[Any], name: str) -> Any | None:
    """The method ``name`` that ``cls`` defines (in its body, or in that of a base class
    written in Python), or None: private names, attributes of ``type`` and ``object``
    (``mro``, ``__init_subclass__``, ...) and non-callable attributes are not methods."""
    key: Any = cls  # classes hash by identity
    return _public_method(key, name)


@functools.lru_cache(maxsize=4096)  # asked once per call on both sides: remembered
def _public_method(cls: Any, name: str) -> Any | None:
    if name.startswith("_") or name in _MACHINERY:
        return None
    for klass in cls.__mro__:
        if klass.__module__ == "builtins":
            continue
        if name in vars(klass):
            attr = getattr(cls, name)
            return attr if callable(attr) and not isinstance(attr, type) else None
    return None


if TYPE_CHECKING:
    _ClassProxy = wrapt.ObjectProxy[Any]
else:
    _ClassProxy = wrapt.ObjectProxy


class RemoteClass(_ClassProxy, Generic[T]):
    """Stands in for a ``@remote`` class: its public methods run on a worker."""

    def __init__(
        self,
        cls: type[T],
        name: str,
        queue: str | None,
        timeout: float | None,
        max_attempts: int | None,
        shards: int | None = None,
        retry: Retry | None = None,
        keep_result: float | None = None,
    ) -> None:
        super().__init__(cls)
        self._self_name = name
        self._self_options = CallOptions(
            queue=queue,
            timeout=timeout,
            max_attempts=max_attempts,
            shards=shards,
            retry=retry,
            keep_result=keep_result,
        )
        self._self_methods: dict[str, RemoteMethod[..., Any]] = {}  # made once per name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            return getattr(self.__wrapped__, name)
        if name.startswith("_") or name in _MACHINERY:
            _public(name)  # raises
        method = self._self_methods.get(name)
        if method is not None:
            return method
        attr = getattr(self.__wrapped__, name)  # AttributeError for unknown names
        if public_method(self.__wrapped__, name) is None:
            return attr
        method = RemoteMethod(self._self_name, check_name("method", name), self._self_options)
        self._self_methods[name] = method
        return method

    def __instancecheck__(self, instance: Any) -> bool:
        return isinstance(instance, self.__wrapped__)

    def __subclasscheck__(self, subclass: Any) -> bool:
        return issubclass(subclass, self.__wrapped__)

    def __repr__(self) -> str:
        return f"<remote {self._self_name} ({self.__wrapped__.__qualname__})>"


class NamedProxy:
    """A task type known only by name (``remoteexec.proxy``): no task code on the client."""

    def __init__(self, name: str, **options: Any) -> None:
        self._name = check_name("task", name)
        self._options = CallOptions(**options)

    def __getattr__(self, name: str) -> RemoteMethod[..., Any]:
        _public(name)
        return RemoteMethod(self._name, name, self._options)

    def __repr__(self) -> str:
        return f"<remote proxy {self._name}>"


def proxy(
    name: str,
    *,
    queue: str | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    keep_result: float | None = None,
) -> NamedProxy:
    """A proxy for the task type registered on the workers as ``name``.

    Any public method name can be called; a worker that does not know it answers with
    ``UnknownTask``.

    Raises:
        ConfigurationError: ``name`` or ``queue`` is not a valid name (``config.check_name``).
    """
    return NamedProxy(
        name, queue=queue, timeout=timeout, max_attempts=max_attempts, keep_result=keep_result
    )
