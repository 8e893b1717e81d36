"""``remoteexec call``: call a task from the shell and print its result as JSON.

Arguments are JSON values (a string needs quotes); ``--kw key=value`` gives a keyword
argument, its value parsed as JSON, else taken as a string. The result prints as one line
of JSON; what JSON has no type for prints as:

- ``Decimal``: a string of its exact digits (``"1.10"``), never a rounded float;
- ``datetime``, ``date``, ``time``: an ISO 8601 string; ``timedelta``: its seconds;
- ``bytes``: a base64 string; ``UUID`` and ``complex``: their ``str()``;
- ``set``, ``frozenset`` and ``tuple``: a list.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from datetime import time as clock
from decimal import Decimal
from typing import Any
from uuid import UUID

__all__ = ["add_call_parser", "call_command", "plain", "to_json"]

log = logging.getLogger("remoteexec.cli")


def plain(text: str | None) -> str:
    """``text`` (a docstring) for a terminal: ``name`` becomes name."""
    return re.sub(r"``(.+?)``", r"\1", text or "")


def add_call_parser(sub: Any, seconds: Callable[[str], float]) -> argparse.ArgumentParser:
    """The ``call`` subcommand's parser, added to ``sub`` (without the URL options);
    ``seconds`` parses ``--timeout``."""
    call: argparse.ArgumentParser = sub.add_parser(
        "call",
        help="call a task from the shell (JSON arguments), print its result as JSON",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("name", help="the task's name, e.g. Echo")
    call.add_argument("--method", default="execute", help="the method to call (default execute)")
    call.add_argument("--queue", help="the queue to send to (default: the queue setting)")
    call.add_argument(
        "--kw",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument, VALUE as JSON, else a string (repeatable)",
    )
    call.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="how long to wait for the result (default: the timeout setting)",
    )
    call.add_argument("args", nargs="*", help="JSON values, e.g. 42 '\"text\"' '[1,2]'")
    return call


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _keywords(items: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"remoteexec call: --kw takes KEY=VALUE, not {item!r:.80}")
        kwargs[key] = _json_value(value)
    return kwargs


def _plain(value: Any) -> Any:
    if isinstance(value, (Decimal, UUID, complex)):
        return str(value)
    if isinstance(value, (datetime, date, clock)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    raise TypeError(f"a {type(value).__name__} has no JSON form")


def to_json(value: Any) -> str:
    """``value`` as one line of JSON (see the module's docstring).

    Raises:
        TypeError: a value of a type with no JSON form.
    """
    return json.dumps(value, default=_plain, ensure_ascii=False)


def call_command(args: argparse.Namespace) -> None:
    """Run ``remoteexec call``; a remote error propagates (``RemoteError``)."""
    from .client import Client
    from .future import CallOptions

    try:
        values: list[Any] = [json.loads(a) for a in args.args]
    except json.JSONDecodeError as exc:
        raise SystemExit(
            f"remoteexec call: arguments must be JSON values (a string needs quotes: "
            f"'\"text\"'): {exc}"
        ) from exc
    kwargs = _keywords(args.kw)
    options = CallOptions(queue=args.queue, timeout=args.timeout)
    with Client(args.url) as client:
        started = time.perf_counter()
        result = client.submit(args.name, args.method, values, kwargs, options).result()
    try:
        print(to_json(result))
    except TypeError as exc:
        raise SystemExit(f"remoteexec call: the result cannot print as JSON: {exc}") from None
    log.info("took %.1f ms", (time.perf_counter() - started) * 1000)
