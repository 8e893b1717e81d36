"""The ``remoteexec`` and ``remoteexec-worker`` commands.

Every command that takes ``--url`` also takes ``--url-file PATH`` (the URL read from a
file) and ``--password-file PATH`` (the password kept apart from the URL, as
``REMOTEEXEC_PASSWORD_FILE``): a password given in ``--url`` shows in ``ps``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import RemoteError, RemoteExecError
from .worker_config import LOG_LEVELS

log = logging.getLogger("remoteexec.cli")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _url_options(
    p: argparse.ArgumentParser, default: str = "REMOTEEXEC_URL, config, sqlite"
) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--url", help=f"backend URL (default: {default}); a password here shows in ps"
    )
    where.add_argument("--url-file", metavar="PATH", help="read the backend URL from PATH")
    p.add_argument(
        "--password-file",
        metavar="PATH",
        help="the broker password, read from PATH and filled into the URL "
        "(as REMOTEEXEC_PASSWORD_FILE)",
    )


_PASSWORD_VARS = ("REMOTEEXEC_PASSWORD", "REMOTEEXEC_PASSWORD_FILE")


@contextlib.contextmanager
def _credentials(args: argparse.Namespace) -> Iterator[str | None]:
    """The URL the options give (``--url``, or ``--url-file``'s content; None: resolved
    as usual), with ``--password-file`` set as ``REMOTEEXEC_PASSWORD_FILE`` meanwhile, so
    that this process and those it starts all read the password from there.

    Raises:
        ConfigurationError: a file that is missing, unreadable or empty.
    """
    from .credentials import read_secret_file

    url = args.url if args.url_file is None else read_secret_file(args.url_file, "URL")
    if args.password_file is None:
        yield url
        return
    path = os.path.abspath(args.password_file)  # worker processes may change directory
    read_secret_file(path, "password")  # fail here, before anything starts
    saved = {name: os.environ.pop(name, None) for name in _PASSWORD_VARS}
    os.environ["REMOTEEXEC_PASSWORD_FILE"] = path
    try:
        yield url
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remoteexec-worker", description="Run remoteexec worker processes."
    )
    _url_options(p)
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import a module that defines task types (repeatable)",
    )
    p.add_argument("--tasks-dir", metavar="DIR", help="import every *.py in DIR")
    p.add_argument("--queues", help="queues to serve, in order (a,b; default: the queue setting)")
    p.add_argument(
        "--processes",
        type=_positive_int,
        metavar="N",
        help="worker processes to keep running (default 1)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        metavar="M",
        help="tasks each process runs at once, one per thread (default 1)",
    )
    p.add_argument(
        "--lease",
        type=_positive_float,
        metavar="SECONDS",
        help="claim lease, renewed while a task runs (default 30)",
    )
    p.add_argument(
        "--burst", action="store_true", default=None, help="exit once the queues are empty"
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        default=None,
        help="start even if no task type is registered",
    )
    p.add_argument(
        "--connect-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="how long a starting worker retries an unreachable broker (default 10)",
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="DEBUG, INFO (the default), WARNING or ERROR; any case",
    )
    return p


def worker_main(argv: Sequence[str] | None = None) -> None:
    """``remoteexec-worker``: supervise worker processes (see ``supervisor.py``)."""
    from .errors import ConfigurationError
    from .supervisor import EXIT_CONFIG, Supervisor, WorkerSettings
    from .worker import checked_queues
    from .worker_config import OPTIONS, resolve_worker

    parser = worker_parser()
    args = parser.parse_args(argv)
    try:
        given = {name: getattr(args, name) for name in OPTIONS}
        options = resolve_worker(**given)
        queues = None if options["queues"] is None else checked_queues(options["queues"])
    except ConfigurationError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=options["log_level"],
        format="%(asctime)s %(levelname)s [supervisor] %(name)s: %(message)s",
    )
    processes = options.pop("processes")
    try:
        with _credentials(args) as url:
            # The URL reaches the worker processes in their environment, never in argv.
            settings = WorkerSettings(url=url, **dict(options, queues=queues))
            status = Supervisor(settings, processes).run()
    except ConfigurationError as exc:
        log.error("remoteexec-worker cannot start: %s", exc)
        status = EXIT_CONFIG
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> None:
    """``remoteexec``: demo, status, watch, call, purge, init-db."""
    parser = argparse.ArgumentParser(prog="remoteexec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a demo: workers and a client asking for pi")
    _url_options(demo, "REMOTEEXEC_URL, config, an embedded SQLite file")
    demo.add_argument("--workers", type=_positive_int, default=2, metavar="N")
    demo.add_argument("--seconds", type=_positive_float, default=10.0, metavar="S")
    demo.add_argument("--verbose", action="store_true", help="print every call, not a sample")

    for name, text in (
        ("status", "queues, workers, dead letters"),
        ("watch", "tasks completed per second, live"),
    ):
        cmd = sub.add_parser(name, help=text)
        _url_options(cmd)
    sub.choices["watch"].add_argument("--count", type=_positive_int, help="stop after N lines")

    call = sub.add_parser("call", help="call a task from the shell (JSON arguments)")
    _url_options(call)
    call.add_argument("name")
    call.add_argument("--method", default="execute")
    call.add_argument("--timeout", type=_positive_float)
    call.add_argument("args", nargs="*", help="JSON values, e.g. 42 '\"text\"' '[1,2]'")

    purge = sub.add_parser("purge", help="delete waiting tasks")
    _url_options(purge)
    purge.add_argument("--queue")

    init = sub.add_parser("init-db", help="create the MySQL schema")
    _url_options(init, "REMOTEEXEC_URL, config")
    init.add_argument("--print", action="store_true", help="print the SQL, change nothing")

    # Options may come between a call's JSON arguments: collect what follows them too.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "call":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args += extra
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with _credentials(args) as args.url:
            _COMMANDS[args.command](args)
    except RemoteError as exc:
        print(f"{exc.remote_traceback}remoteexec {args.command}: the task raised {exc}",
              file=sys.stderr)  # fmt: skip
        sys.exit(1)
    except RemoteExecError as exc:
        print(f"remoteexec {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(url=args.url, workers=args.workers, seconds=args.seconds, verbose=args.verbose)


def _status(args: argparse.Namespace) -> None:
    from .monitor import print_status

    print_status(args.url)


def _watch(args: argparse.Namespace) -> None:
    from .monitor import watch

    watch(args.url, count=args.count)


def _call(args: argparse.Namespace) -> None:
    from .client import Client
    from .future import CallOptions

    try:
        values: list[Any] = [json.loads(a) for a in args.args]
    except json.JSONDecodeError as exc:
        raise SystemExit(
            f"remoteexec call: arguments must be JSON values (a string needs quotes: "
            f"'\"text\"'): {exc}"
        ) from exc
    with Client(args.url) as client:
        started = time.perf_counter()
        future = client.submit(
            args.name, args.method, values, {}, CallOptions(timeout=args.timeout)
        )
        result = future.result()
    print(json.dumps(result, default=repr))
    log.info("took %.1f ms", (time.perf_counter() - started) * 1000)


def _purge(args: argparse.Namespace) -> None:
    from .client import Client

    with Client(args.url) as client:
        print(f"purged {client.backend.purge(args.queue)} waiting task(s)")


def _init_db(args: argparse.Namespace) -> None:
    from .backends.mysql import MySQLBackend, schema_sql

    if args.print:
        print(";\n\n".join(schema_sql()) + ";")
        return
    from urllib.parse import urlsplit

    from .config import resolve
    from .errors import ConfigurationError

    url = resolve(args.url).backend_url
    if urlsplit(url).scheme != "mysql":
        raise ConfigurationError(
            "init-db takes a mysql:// URL (--url, --url-file or REMOTEEXEC_URL)"
        )
    backend = MySQLBackend.from_url(url, result_ttl=3600)
    backend.init_db()
    backend.close()
    print("schema ready")


_COMMANDS = {
    "demo": _demo,
    "status": _status,
    "watch": _watch,
    "call": _call,
    "purge": _purge,
    "init-db": _init_db,
}
