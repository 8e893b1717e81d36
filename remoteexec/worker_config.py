"""A worker's own settings: its options, from arguments, environment, file and defaults.

Each worker option is taken from the first of these that gives it (as ``config.resolve``
does for the shared settings):

1. the ``remoteexec-worker`` flag (``--queues``, ``--processes``, ...);
2. its ``REMOTEEXEC_*`` environment variable (lists comma-separated, booleans
   ``1/true/yes/on`` or ``0/false/no/off``); an empty variable counts as unset;
3. the ``worker:`` section of the config file (``remoteexec.yaml``)::

       queue: jobs            # clients send here; workers serve it when no queues are given
       worker:
         imports: [mytasks]
         processes: 4
         threads: 8

4. the defaults in ``OPTIONS``. ``queues`` left unset serves the shared ``queue`` setting
   and ``lease`` left unset takes the shared ``lease`` setting (``config.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .config import check_name, read_config_file
from .errors import ConfigurationError

_MAX_QUEUE_NAME = 128  # characters of a queue name

__all__ = ["LOG_LEVELS", "OPTIONS", "resolve_worker"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value.strip()


def _names(kind: str) -> Callable[[Any], list[str]]:
    def convert(value: Any) -> list[str]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"a list of {kind} names (or a comma-separated string)")
        names = [_text(v) for v in items if not (isinstance(v, str) and not v.strip())]
        if not names:
            raise ValueError(f"at least one {kind} name")
        return [check_name("queue", n) for n in names] if kind == "queue" else names

    return convert


def _count(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if type(value) is not int or value < 1:
        raise ValueError("a whole number of at least 1")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("a positive number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("a positive number of seconds")
    if not (math.isfinite(value) and value > 0):
        raise ValueError("a positive, finite number of seconds")
    return float(value)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _level(value: Any) -> str:
    if not isinstance(value, str) or value.strip().upper() not in LOG_LEVELS:
        raise ValueError(f"one of {', '.join(LOG_LEVELS)}")
    return value.strip().upper()


class Option(NamedTuple):
    """One worker option: its converter (raises ValueError saying what it expects) and
    its default (None: unset, see the module's docstring)."""

    convert: Callable[[Any], Any]
    default: Any

    @staticmethod
    def env(name: str) -> str:
        return f"REMOTEEXEC_{name.upper()}"

    @staticmethod
    def flag(name: str) -> str:
        return "--" + {"imports": "import"}.get(name, name).replace("_", "-")


#: Every worker option, under its ``worker:`` key.
OPTIONS: dict[str, Option] = {
    "imports": Option(_names("module"), []),
    "tasks_dir": Option(_text, None),
    "queues": Option(_names("queue"), None),
    "processes": Option(_count, 1),
    "threads": Option(_count, 1),
    "lease": Option(_seconds, None),
    "burst": Option(_flag, False),
    "allow_empty": Option(_flag, False),
    "connect_timeout": Option(_seconds, 10.0),
    "log_level": Option(_level, "INFO"),
}


def resolve_worker(**arguments: Any) -> dict[str, Any]:
    """Every worker option (``OPTIONS``), from ``arguments`` (None: not given), the
    environment, the config file's ``worker:`` section and the defaults.

    Raises:
        ConfigurationError: a value that is not valid, naming the setting and where it
            came from (the flag, the variable, or the key and the file), or an unknown key.
    """
    values = {name: option.default for name, option in OPTIONS.items()}
    found = read_config_file()
    if found is not None:
        source, data = found
        section = data.get("worker") or {}
        if not isinstance(section, dict):
            raise ConfigurationError(f"worker in {source} must be a mapping of worker options")
        for key, value in section.items():
            if key not in OPTIONS:
                raise ConfigurationError(
                    f"unknown key worker.{str(key)[:100]} in {source}; "
                    f"known keys: {', '.join(OPTIONS)}"
                )
            if value is not None:
                values[key] = _convert(key, value, f"worker.{key} in {source}")
    for name in OPTIONS:
        raw = os.environ.get(Option.env(name), "")
        if raw.strip():
            values[name] = _convert(name, raw, f"the environment variable {Option.env(name)}")
    for name, value in arguments.items():
        if name not in OPTIONS:
            raise ConfigurationError(f"unknown worker option {name!r}")
        if value is not None:
            values[name] = _convert(name, value, f"the option {Option.flag(name)}")
    return values


def _convert(name: str, value: Any, source: str) -> Any:
    try:
        return OPTIONS[name].convert(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name}: {exc} ({source})") from None
    except ValueError as exc:
        shown = f"{value!r:.80}" if not isinstance(value, (dict, list)) else type(value).__name__
        raise ConfigurationError(f"{name} must be {exc}, not {shown} ({source})") from None


def checked_queues(queues: Sequence[str]) -> list[str]:
    """``queues`` as a list, if it is a non-empty list of sane queue names.

    Raises:
        ConfigurationError: no queue, or a name that is empty or too long.
    """
    if isinstance(queues, str) or not queues:
        raise ConfigurationError(f"no queue name given (queues={queues!r:.80})")
    for queue in queues:
        if not isinstance(queue, str) or not queue or len(queue) > _MAX_QUEUE_NAME:
            raise ConfigurationError(
                f"a queue name must be 1 to {_MAX_QUEUE_NAME} characters, got {queue!r:.80}"
            )
    return list(queues)
