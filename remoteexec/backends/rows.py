"""Registry and dead-letter rows read back from a broker, parsed as untrusted input.

Anyone with write access to the broker may have written them, so every field is checked
for type: a row that is not what a backend writes gives None, for the caller to skip (and,
for a worker's registry row, to remove). Nothing here raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from ..figures import BOUNDS, MAX_TYPES
from .base import DeadLetter, WorkerInfo

__all__ = ["dead_letter", "dead_letter_json", "worker_info", "worker_json"]

_WORKER_FIELDS = tuple(f.name for f in fields(WorkerInfo))
_ALL_WORKER = set(_WORKER_FIELDS)
_BASIC = 8  # the fields before failed and durations
_DEAD_FIELDS = tuple(f.name for f in fields(DeadLetter))
_DEAD_DEFAULTS: tuple[Any, ...] = (
    "",
    False,
    0.0,
)  # traceback, retryable, deadline: newer than the rest


def _time(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _count(value: Any) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63


def worker_info(row: Sequence[Any]) -> WorkerInfo | None:
    """A ``WorkerInfo`` from its fields in order (``queues`` a list of str, or that list
    as JSON text; ``durations`` a dict, or that dict as JSON text; those two and
    ``failed`` may be left out, as older workers do); None if a field has the wrong type."""
    if len(row) not in (_BASIC, len(_WORKER_FIELDS)):
        return None
    wid, host, pid, queues, started, last_seen, done, running = row[:_BASIC]
    failed, durations = row[_BASIC:] or (0, {})
    if type(queues) is str:
        queues = _json(queues)
    if durations is None:  # a column added to older rows
        durations = {}
    elif type(durations) is str:
        durations = _json(durations)
    if not (
        type(wid) is str
        and type(host) is str
        and _count(pid)
        and type(queues) is list
        and all(type(q) is str for q in queues)
        and _time(started)
        and _time(last_seen)
        and _count(done)
        and _count(running)
        and _count(failed)
        and _histograms(durations)
    ):
        return None
    times = float(started), float(last_seen)
    return WorkerInfo(wid, host, pid, queues, *times, done, running, failed, durations)


def _histograms(value: Any) -> bool:
    return (
        type(value) is dict
        and len(value) <= MAX_TYPES + 1
        and all(
            type(k) is str
            and type(v) is list
            and len(v) <= len(BOUNDS) + 1
            and all(_count(n) and n >= 0 for n in v)
            for k, v in value.items()
        )
    )


def worker_json(text: Any) -> WorkerInfo | None:
    """A ``WorkerInfo`` from the JSON object a backend stored; None if it is not one."""
    data = _json(text)
    if type(data) is not dict or set(data) not in (set(_WORKER_FIELDS[:_BASIC]), _ALL_WORKER):
        return None
    return worker_info([data[name] for name in _WORKER_FIELDS if name in data])


def dead_letter(row: Sequence[Any]) -> DeadLetter | None:
    """A ``DeadLetter`` from its fields in order (those after ``at`` may be left out;
    ``retryable`` may be 0 or 1); None if a field has the wrong type."""
    if not len(_DEAD_FIELDS) - len(_DEAD_DEFAULTS) <= len(row) <= len(_DEAD_FIELDS):
        return None
    task_id, queue, name, reason, at = row[:5]
    extra: list[Any] = [*row[5:], *_DEAD_DEFAULTS[len(row) - 5 :]]
    traceback, retryable, deadline = extra
    strings = (task_id, queue, name, reason, traceback)
    if not (all(type(s) is str for s in strings) and _time(at) and _time(deadline)):
        return None
    if type(retryable) not in (bool, int) or retryable not in (0, 1):
        return None
    return DeadLetter(
        task_id, queue, name, reason, float(at), traceback, bool(retryable), float(deadline)
    )


def dead_letter_json(text: Any) -> DeadLetter | None:
    """A ``DeadLetter`` from the JSON object a backend stored; None if it is not one."""
    data = _json(text)
    required = _DEAD_FIELDS[: -len(_DEAD_DEFAULTS)]
    if type(data) is not dict or not set(required) <= set(data) <= set(_DEAD_FIELDS):
        return None
    defaults = dict(zip(_DEAD_FIELDS[len(required) :], _DEAD_DEFAULTS, strict=True))
    return dead_letter([data[n] if n in data else defaults[n] for n in _DEAD_FIELDS])


def _json(text: Any) -> Any:
    if not isinstance(text, (str, bytes)):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
