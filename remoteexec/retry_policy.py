"""The retry policy a call carries: which exceptions are retried, how often, how far apart.

``@remote(retry_on=..., retries=..., backoff=(base, cap))`` and ``.options(...)`` make a
``Retry``. The client sends it in the optional map of the signed call (``message.py``)
under ``"retry"``, as ``[names, retries, base, cap, tries]``:

* ``names`` -- the listed exception classes as ``module.qualname`` strings, e.g.
  ``"builtins.ConnectionError"``. A worker matches a raised exception by the names of the
  classes in its MRO, so a subclass of a listed class is retried too. Nothing named in a
  message is ever imported.
* ``retries`` -- how many times the call may be enqueued again (0 to ``MAX_RETRIES``).
* ``base``, ``cap`` -- the backoff in seconds. Retry ``n`` (1 for the first) waits
  ``d = min(cap, base * 2 ** (n - 1))`` with jitter: a delay drawn uniformly from
  ``[0.75 d, 1.25 d]``.
* ``tries`` -- the failures of the attempts retried so far, oldest first, each
  ``[type_name, message, traceback]``; its length is the number of retries made. A
  message is cut to ``MAX_MESSAGE`` characters and a traceback to its last
  ``MAX_TRACEBACK``, so a call retried ``MAX_RETRIES`` times stays small.

Everything decoded is checked (types, lengths, bounds); a malformed policy is a
``SerializationError``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import MAX_RETRIES
from .errors import ConfigurationError, SerializationError

__all__ = ["DEFAULT_BACKOFF", "DEFAULT_RETRIES", "Retry", "Tries", "carried_retry", "merged"]

DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = (0.5, 30.0)
MAX_BACKOFF = 86400.0  # seconds: the longest base or cap
MAX_NAMES = 32  # exception classes one policy may list
MAX_NAME = 256  # characters of one ``module.qualname``
MAX_MESSAGE = 1000  # characters of a kept failure's message
MAX_TRACEBACK = 4000  # characters of a kept failure's traceback (its end is kept)

#: The failures of earlier attempts: ``(type_name, message, traceback)``, oldest first.
Tries = tuple[tuple[str, str, str], ...]


@dataclass(frozen=True, slots=True)
class Retry:
    """A call's retry policy and the attempts retried so far (see the module docstring)."""

    on: tuple[str, ...]
    retries: int
    base: float
    cap: float
    tries: Tries = ()

    def matches(self, exc: BaseException) -> bool:
        """Whether ``exc`` is an instance of a listed class, by the names in its MRO."""
        return any(_name(cls) in self.on for cls in type(exc).__mro__)

    def delay(self) -> float:
        """Seconds the retry after the current attempt waits (retry ``len(tries) + 1``):
        exponential from ``base``, capped, jittered."""
        d = min(self.cap, self.base * 2.0 ** min(len(self.tries), 64))
        return random.uniform(0.75 * d, 1.25 * d)

    def after(self, type_name: str, message: str, traceback: str) -> Retry:
        """The policy with one more failed try kept (its texts cut to size)."""
        tried = (type_name[:MAX_NAME], message[:MAX_MESSAGE], traceback[-MAX_TRACEBACK:])
        return Retry(self.on, self.retries, self.base, self.cap, (*self.tries, tried))

    def wire(self) -> list[Any]:
        """The policy as it travels in a call (lists only: msgpack arrays)."""
        return [list(self.on), self.retries, self.base, self.cap, tries_wire(self.tries)]


def _name(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def merged(
    old: Retry | None,
    *,
    retry_on: Any = None,
    retries: Any = None,
    backoff: Any = None,
) -> Retry | None:
    """``old`` with the options given (None: keep ``old``'s, or the default); None when
    nothing is retried (no ``retry_on``, or ``retries=0``).

    Raises:
        ConfigurationError: ``retry_on`` is not a tuple of exception classes, ``retries``
            not an int from 0 to ``MAX_RETRIES``, ``backoff`` not ``(base, cap)`` with
            ``0 < base <= cap <= MAX_BACKOFF``, or ``retries``/``backoff`` without
            ``retry_on``.
    """
    on = old.on if old is not None else ()
    if retry_on is not None:
        on = _names(retry_on)
    count = old.retries if old is not None else DEFAULT_RETRIES
    if retries is not None:
        if type(retries) is not int or not 0 <= retries <= MAX_RETRIES:
            raise ConfigurationError(
                f"retries must be an integer from 0 to {MAX_RETRIES}, not {retries!r:.40}"
            )
        count = retries
    base, cap = (old.base, old.cap) if old is not None else DEFAULT_BACKOFF
    if backoff is not None:
        base, cap = _backoff(backoff)
    if not on:
        if retries or backoff is not None:
            raise ConfigurationError("retries and backoff need retry_on: the exceptions to retry")
        return None
    return Retry(on, count, base, cap) if count else None


def _names(retry_on: Any) -> tuple[str, ...]:
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if not isinstance(retry_on, (tuple, list)) or not all(
        isinstance(c, type) and issubclass(c, BaseException) for c in retry_on
    ):
        raise ConfigurationError(
            f"retry_on takes a tuple of exception classes, not {retry_on!r:.100}"
        )
    names = tuple(_name(c) for c in retry_on)
    if len(names) > MAX_NAMES or any(len(n) > MAX_NAME for n in names):
        raise ConfigurationError(
            f"retry_on takes at most {MAX_NAMES} classes, each named in {MAX_NAME} characters"
        )
    return names


def _backoff(backoff: Any) -> tuple[float, float]:
    if (
        isinstance(backoff, (tuple, list))
        and len(backoff) == 2
        and all(type(x) in (int, float) for x in backoff)
    ):
        base, cap = map(float, backoff)
        if math.isfinite(cap) and 0 < base <= cap <= MAX_BACKOFF:
            return base, cap
    raise ConfigurationError(
        f"backoff takes (base, cap) in seconds with 0 < base <= cap <= {MAX_BACKOFF:g}, "
        f"not {backoff!r:.100}"
    )


def carried_retry(value: Any) -> Retry | None:
    """The policy read from a call's ``"retry"`` entry (None: the call has none).

    Raises:
        SerializationError: it is malformed or out of range.
    """
    if value is None:
        return None
    if type(value) is not list or len(value) != 5:
        raise SerializationError("malformed call: bad retry policy")
    names, retries, base, cap, tries = value
    if not (
        type(names) is list
        and 0 < len(names) <= MAX_NAMES
        and all(type(n) is str and len(n) <= MAX_NAME for n in names)
        and type(retries) is int
        and 0 < retries <= MAX_RETRIES
        and type(base) in (int, float)
        and type(cap) in (int, float)
        and math.isfinite(cap)
        and 0 < base <= cap <= MAX_BACKOFF
    ):
        raise SerializationError("malformed call: bad retry policy")
    kept = carried_tries(tries, retries)
    return Retry(tuple(names), retries, float(base), float(cap), kept)


def carried_tries(value: Any, most: int = MAX_RETRIES) -> Tries:
    """Failed tries as read from a message: at most ``most`` ``[type, message, traceback]``.

    Raises:
        SerializationError: they are malformed or too long.
    """
    if type(value) is not list or len(value) > most:
        raise SerializationError("malformed message: bad list of failed tries")
    for tried in value:
        if not (
            type(tried) is list
            and len(tried) == 3
            and all(type(x) is str for x in tried)
            and len(tried[0]) <= MAX_NAME
            and len(tried[1]) <= MAX_MESSAGE
            and len(tried[2]) <= MAX_TRACEBACK
        ):
            raise SerializationError("malformed message: bad failed try")
    return tuple((t[0], t[1], t[2]) for t in value)


def tries_wire(tries: Sequence[tuple[str, str, str]]) -> list[list[str]]:
    """``tries`` as they travel (lists only)."""
    return [list(t) for t in tries]
