"""How ``remoteexec-worker`` processes log: one format for the supervisor and its workers.

``configure`` sets up the root logger of a process: ``text`` (one line per record, with the
process's role and id; a traceback follows on the next lines) or ``json`` (one JSON object
per line, a traceback inside it). It also routes what would otherwise reach stderr
unformatted through logging: uncaught exceptions in any thread, exceptions Python ignores
(in ``__del__``, say) and warnings. The format and level are put in the environment, so a
helper process started for time-limited tasks logs the same way (``inherit``).

Extra fields given to a log call (``extra={"task": ...}``) become keys of the JSON object; a
``traceback`` field (a task's own traceback, as text) is printed under the line in ``text``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

FORMATS = ("text", "json")
_ENV = "REMOTEEXEC_LOG"  # "<format>:<level>", read by helper processes
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class TextFormatter(logging.Formatter):
    """``asctime LEVEL [role pid] logger: message`` (the supervisor's without its pid), then
    a task's ``traceback`` field if any."""

    def __init__(self, role: str) -> None:
        label = role if role == "supervisor" else f"{role} %(process)d"
        super().__init__(f"%(asctime)s %(levelname)s [{label}] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tb = getattr(record, "traceback", None)
        return f"{text}\n{tb.rstrip()}" if tb else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``role``, ``pid``, ``message``, the extra fields, and ``exc_info`` (the
    formatted exception) when there is one."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "role": self.role,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=repr)


def configure(level: str, fmt: str, role: str) -> None:
    """Log at ``level`` in format ``fmt`` (``text`` or ``json``) to stderr, as ``role``
    (``supervisor``, ``worker``, ``helper``).

    Replaces the root logger's handlers, and sends uncaught exceptions and warnings
    through logging too.

    Raises:
        ValueError: an unknown format or level.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(role) if fmt == "json" else TextFormatter(role))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread
    sys.unraisablehook = _unraisable
    os.environ[_ENV] = f"{fmt}:{level.upper()}"


def describe_url(url: str) -> str:
    """``url`` with its password masked, and for SQLite the absolute path of the file (a
    relative one depends on the working directory)."""
    from .config import redact_url

    shown = redact_url(url)
    prefix = "sqlite:///"
    if url[: len(prefix)].lower() == prefix:
        shown += f" (file {os.path.abspath(url[len(prefix) :])})"
    return shown


def inherit(role: str) -> None:
    """In a helper process: log as the worker that started it does, if it configured logs."""
    fmt, _, level = os.environ.get(_ENV, "").partition(":")
    if fmt in FORMATS and level:
        configure(level, fmt, role)


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("remoteexec").critical("uncaught exception", exc_info=(kind, exc, tb))


def _unraisable(unraisable: Any) -> None:  # sys.UnraisableHookArgs
    exc = unraisable.exc_value or unraisable.exc_type()
    try:
        what = repr(unraisable.object)
    except Exception:  # a repr that raises too
        what = object.__repr__(unraisable.object)
    logging.getLogger("remoteexec").error(
        "%s: %s",
        unraisable.err_msg or "Exception ignored in",
        what,
        exc_info=(unraisable.exc_type, exc, unraisable.exc_traceback),
    )


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("remoteexec").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
