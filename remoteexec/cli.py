"""The ``remoteexec`` and ``remoteexec-worker`` commands.

Every command that takes ``--url`` also takes ``--url-file PATH`` (the URL read from a
file) and ``--password-file PATH`` (the password kept apart from the URL, as
``REMOTEEXEC_PASSWORD_FILE``): a password given in ``--url`` shows in ``ps``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .cli_call import add_call_parser, call_command, plain
from .cli_dead import add_dead_parsers, dead_command
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


def _version() -> str:
    """The installed distribution's version, else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("remoteexec-farm")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _url_options(
    p: argparse.ArgumentParser, default: str = "REMOTEEXEC_URL, config, sqlite"
) -> None:
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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


def _refuse_memory(url: str | None) -> None:
    """Refuse a ``memory://`` broker (given, or from the environment or config file): it
    lives inside one process, so a command could only wait on an empty broker of its own.

    Raises:
        ConfigurationError: the resolved URL is ``memory://`` (or any other bad setting).
    """
    from .config import resolve
    from .errors import ConfigurationError

    if resolve(url).url.startswith("memory:"):
        raise ConfigurationError(
            "memory:// cannot be used here: that broker lives inside one process, which no "
            "other process can reach. Use redis://, mysql:// or sqlite:/// instead; "
            "memory:// is for workers run as threads in one program (remoteexec.testing)"
        )


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number (1 to 65535), got {text}")
    return value


def _closed_pipe_ends_quietly(command: Callable[..., None]) -> Callable[..., None]:
    """``command``, ending with status 141 and no traceback when its output's reader has
    gone (``remoteexec status | head -1``); SIGPIPE is left ignored, so that a broken
    socket still raises."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            try:
                command(*args, **kwargs)
            finally:
                sys.stdout.flush()  # here, so that a closed pipe is caught below
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)  # as a shell reports a process ended by SIGPIPE

    return run


def worker_parser(prog: str = "remoteexec-worker") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run remoteexec worker processes. Each option is also a REMOTEEXEC_* "
        "variable and a key of the worker: section of remoteexec.yaml (docs/operations.md).",
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
        help="the log level (default INFO; any case)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object per line (default text)",
    )
    p.add_argument(
        "--log-tasks",
        action="store_true",
        help="log each task received and succeeded, with durations (on at DEBUG too)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on this port (needs remoteexec-farm[metrics])",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics are served on (default 127.0.0.1)",
    )
    return p


@_closed_pipe_ends_quietly
def worker_main(argv: Sequence[str] | None = None, prog: str = "remoteexec-worker") -> None:
    """``remoteexec-worker``: supervise worker processes (see ``supervisor.py``)."""
    from .errors import ConfigurationError
    from .logs import configure
    from .supervisor import EXIT_CONFIG, Supervisor, WorkerSettings
    from .worker_config import OPTIONS, checked_queues, resolve_worker

    parser = worker_parser(prog)
    args = parser.parse_args(argv)
    try:
        given = {name: getattr(args, name) for name in OPTIONS}
        options = resolve_worker(**given)
        queues = None if options["queues"] is None else checked_queues(options["queues"])
    except ConfigurationError as exc:  # from a flag, a variable or the config file
        print(f"{prog} cannot start: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    configure(options["log_level"], args.log_format, "supervisor")
    processes = options.pop("processes")
    try:
        with _credentials(args) as url:
            _refuse_memory(url)
            # The URL reaches the worker processes in their environment, never in argv.
            settings = WorkerSettings(
                url=url,
                log_format=args.log_format,
                log_tasks=args.log_tasks,
                metrics_port=args.metrics_port,
                metrics_host=args.metrics_host,
                **dict(options, queues=queues),
            )
            status = Supervisor(settings, processes).run()
    except ConfigurationError as exc:
        log.error("remoteexec-worker cannot start: %s", exc)
        status = EXIT_CONFIG
    sys.exit(status)


@_closed_pipe_ends_quietly
def main(argv: Sequence[str] | None = None) -> None:
    """``remoteexec``: demo, status, watch, call, purge, dead, init-db, worker."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:  # the same command as remoteexec-worker
        worker_main(argv[1:], prog="remoteexec worker")
    parser = argparse.ArgumentParser(prog="remoteexec", description=plain(__doc__))
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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

    _url_options(add_call_parser(sub, _positive_float))

    purge = sub.add_parser("purge", help="delete waiting tasks")
    _url_options(purge)
    purge.add_argument("--queue")

    for dead in add_dead_parsers(sub):
        _url_options(dead)
    dash = sub.add_parser("dashboard", help="a web page of the farm (remoteexec[dashboard])")
    _url_options(dash)
    dash.add_argument("--bind", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    dash.add_argument("--port", type=int, default=8765)
    dash.add_argument(
        "--allow-actions", action="store_true", help="allow purge, retry and drop (needs a token)"
    )
    dash.add_argument("--token", default=os.environ.get("REMOTEEXEC_DASHBOARD_TOKEN"),
                      help="token to log in with, to read and act "
                           "(default: $REMOTEEXEC_DASHBOARD_TOKEN)")  # fmt: skip

    init = sub.add_parser("init-db", help="create the MySQL schema")
    _url_options(init, "REMOTEEXEC_URL, config")
    init.add_argument("--print", action="store_true", help="print the SQL, change nothing")
    sub.add_parser("worker", help="run worker processes (remoteexec-worker; see its --help)")

    # Options may come between a call's JSON arguments: collect what follows them too.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "call":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args += extra
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with _credentials(args) as args.url:
            if args.command != "init-db":  # init-db takes only mysql:// and says so
                _refuse_memory(args.url)
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


def _purge(args: argparse.Namespace) -> None:
    from .client import Client

    with Client(args.url) as client:
        print(f"purged {client.backend.purge(args.queue)} waiting task(s)")


def _dashboard(args: argparse.Namespace) -> None:
    from .dashboard import serve

    serve(args.url, bind=args.bind, port=args.port, allow_actions=args.allow_actions,
          token=args.token)  # fmt: skip


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
    "call": call_command,
    "purge": _purge,
    "init-db": _init_db,
    "dead": dead_command,
    "dashboard": _dashboard,
}
