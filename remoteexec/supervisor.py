"""``remoteexec-worker``'s supervisor: N worker processes, each replaced when it dies.

The supervisor imports no task code; it starts each worker as a fresh interpreter
(``child_main``) in a session of its own, with its settings in the environment (never on
the command line, where a password would show in ``ps``), and a file in which the worker
posts the claims each serving thread holds (``ClaimBoard``).

* **A dead worker's claims are handed back at once.** When a worker process dies (a task
  called ``os._exit``, a segfault, a kill), the supervisor reads its board and ends the
  leases it still held, as if they had expired: the attempt counts, and the tasks are
  claimable again at once. A task that kills its worker on every attempt reaches ``WorkerLost``
  in seconds, not after ``max_attempts`` leases. This is the only time the supervisor
  opens a connection to the broker.
* **Restarts back off.** A worker that died holding claims (a task killed it) is replaced
  at once; any other is replaced after a pause that doubles from 0.5 s to 30 s, and
  starts again from 0.5 s once a worker has lived ``_HEALTHY_AFTER`` seconds.
* **A worker that cannot start stops the supervisor** with its exit status and reason in
  the log: bad options or a task module that cannot be imported (``EXIT_CONFIG``), and a
  broker still unreachable after ``--connect-timeout`` before any worker served
  (``EXIT_UNAVAILABLE``).

SIGTERM or SIGINT is passed on to the workers, which finish their running tasks and hand
back the rest; a second signal kills them at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from types import FrameType
from typing import TYPE_CHECKING

from .board import read_board
from .errors import RemoteExecError
from .logs import configure, describe_url

if TYPE_CHECKING:
    from .backends import Backend
    from .metrics import MetricsServer

log = logging.getLogger("remoteexec.supervisor")

EXIT_CONFIG = 78  # a worker could not start: bad options, task module not importable
EXIT_UNAVAILABLE = 69  # the broker stayed unreachable while a worker started
EXIT_DIED = 70  # a thread a worker needs died of an unexpected exception (logged)
_ENV = "REMOTEEXEC_WORKER_SETTINGS"
_FIRST_DELAY, _MAX_DELAY = 0.5, 30.0  # seconds between restarts of a failing worker
_HEALTHY_AFTER = 30.0  # seconds a worker lives before its slot's pause starts over


@dataclass
class WorkerSettings:
    """What a worker process is started with (the CLI's flags)."""

    url: str | None = None
    imports: list[str] = field(default_factory=list)
    tasks_dir: str | None = None
    queues: list[str] | None = None  # None: the queue setting
    threads: int = 1
    lease: float | None = None
    burst: bool = False
    log_level: str = "INFO"
    log_format: str = "text"
    log_tasks: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    allow_empty: bool = False
    connect_timeout: float = 10.0
    board_fd: int | None = None


@dataclass
class _Child:
    """A worker process and the file it posts its claims in (``ClaimBoard``)."""

    process: subprocess.Popen[bytes]
    board: int  # file descriptor
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Keeps ``processes`` worker processes running until stopped."""

    def __init__(self, settings: WorkerSettings, processes: int = 1) -> None:
        self.settings = settings
        self.processes = processes
        self.children: dict[int, _Child] = {}
        self._restart_at: dict[int, float] = {}  # slot: when to start its next worker
        self._delay: dict[int, float] = dict.fromkeys(range(processes), 0.0)
        self._signals = 0
        self._backend: Backend | None = None
        self._metrics: MetricsServer | None = None

    def run(self) -> int:
        """Run until a signal (exit 0), or until burst workers are done; return the status."""
        url = self._banner()
        if self.settings.metrics_port is not None:
            try:
                self._metrics = self._serve_metrics(url, self.settings.metrics_port)
            except RemoteExecError as exc:
                log.error("%s: stopping", exc)
                return EXIT_CONFIG
        try:
            return self._supervise()
        finally:
            if self._metrics is not None:
                self._metrics.close()

    def _banner(self) -> str:
        """Log what this farm serves, and from where; return the broker's URL."""
        from .config import resolve

        s = self.settings
        try:
            settings = resolve(s.url)
            url, lease, queue = settings.url, s.lease or settings.lease, settings.queue
        except RemoteExecError:  # the workers say why, and stop the supervisor
            url, lease, queue = s.url or "?", s.lease or 0.0, "?"
        modules = [*s.imports, *([f"{s.tasks_dir}/*.py"] if s.tasks_dir else [])]
        log.info(
            "remoteexec-worker on %s: queues %s, %d process(es) x %d thread(s), lease %g s, "
            "tasks from %s",
            describe_url(url), ",".join(s.queues or [queue]), self.processes, s.threads, lease,
            ", ".join(modules) or "nothing",
        )  # fmt: skip
        return url

    def _serve_metrics(self, url: str, port: int) -> MetricsServer:
        from .config import resolve
        from .metrics import MetricsServer

        queues = self.settings.queues or [resolve(self.settings.url).queue]
        return MetricsServer(url, queues, self.settings.metrics_host, port)

    def _supervise(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for slot in range(self.processes):
            self._start(slot)
        status = 0
        while self.children or (self._restart_at and not (status or self._signals)):
            time.sleep(0.05)
            for slot, child in list(self.children.items()):
                code = child.process.poll()
                if code is not None:
                    del self.children[slot]
                    status = self._ended(slot, child, code, status)
            now = time.monotonic()
            for slot, at in list(self._restart_at.items()):
                if now >= at and not (status or self._signals):
                    del self._restart_at[slot]
                    self._start(slot)
        if self._backend is not None:
            self._backend.close()
        log.info("supervisor exiting with status %d", status)
        return status

    def _ended(self, slot: int, child: _Child, code: int, status: int) -> int:
        """Hand back what ``child`` held; plan its replacement; return the new status."""
        ready, claims = read_board(child.board)
        os.close(child.board)
        held = self._hand_back(child.process.pid, claims) if code != 0 else 0
        if self._metrics is not None:
            self._metrics.process_dead(child.process.pid)
            self._metrics.farm.handed_back += held
        if self._signals or status or (self.settings.burst and code == 0):
            return status
        served = ready or any(read_board(c.board)[0] for c in self.children.values())
        if code == EXIT_CONFIG or (code == EXIT_UNAVAILABLE and not served):
            pid = child.process.pid
            log.error("worker process %d could not start (status %d): stopping", pid, code)
            self._terminate(signal.SIGTERM)
            return code
        if time.monotonic() - child.started >= _HEALTHY_AFTER:
            self._delay[slot] = 0.0
        if held:  # a task killed it: its attempt is counted, replace it now
            delay = 0.0
        else:
            delay = self._delay[slot] = min(max(2 * self._delay[slot], _FIRST_DELAY), _MAX_DELAY)
        pid = child.process.pid
        log.warning("worker process %d exited with %s: replacing it in %.1f s", pid, code, delay)
        self._restart_at[slot] = time.monotonic() + delay
        return status

    def _hand_back(self, pid: int, posted: list[list[str]]) -> int:
        """End the leases still held of the ``posted`` claims, as if expired; count them."""
        if not posted:
            return 0
        from .backends import Claim, open_backend
        from .config import resolve
        from .errors import RemoteExecError
        from .leases import EXPIRE_NOW

        claims = [Claim(i, q, "", b"", 0, t) for i, q, t in posted]
        try:
            if self._backend is None:
                self._backend = open_backend(resolve(self.settings.url).backend_url)
            held = sum(self._backend.renew(claims, lease=EXPIRE_NOW))
        except RemoteExecError as exc:
            log.warning("handing back the tasks of worker process %d failed: %s", pid, exc)
            return 0
        if held:
            log.info("handed back %d task(s) of worker process %d", held, pid)
        return held

    def _start(self, slot: int) -> None:
        with tempfile.TemporaryFile(prefix="remoteexec-claims-") as board:
            fd = os.dup(board.fileno())
        settings = replace(self.settings, board_fd=fd)
        env = dict(os.environ, **{_ENV: json.dumps(asdict(settings))})
        process = subprocess.Popen(
            [sys.executable, "-c", "import remoteexec.supervisor as s; s.child_main()"],
            env=env,
            pass_fds=(fd,),
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
        )
        self.children[slot] = _Child(process, fd)
        log.info("started worker process %d", process.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal %d: stopping workers gracefully (again to kill them)", signum)
            self._terminate(signal.SIGTERM)
        else:
            log.warning("signal %d again: killing workers", signum)
            self._terminate(signal.SIGKILL)
            if self._metrics is not None:
                self._metrics.remove_folder()
            os._exit(1)

    def _terminate(self, sig: int) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(sig)


def child_main() -> None:
    """Entry point of a worker process started by the supervisor."""
    from .errors import BackendUnavailable, ConfigurationError
    from .observe import observer_for
    from .tasks import import_tasks
    from .worker import Worker, WorkerDied

    settings = WorkerSettings(**json.loads(os.environ.pop(_ENV)))
    configure(settings.log_level, settings.log_format, "worker")
    try:
        if not import_tasks(settings.imports, settings.tasks_dir) and not settings.allow_empty:
            raise ConfigurationError(
                "no task types: name their modules with --import or --tasks-dir "
                "(or pass --allow-empty to serve none)"
            )
        worker = Worker(
            settings.url,
            queues=settings.queues,
            threads=settings.threads,
            lease=settings.lease,
            burst=settings.burst,
            imports=settings.imports,
            tasks_dir=settings.tasks_dir,
            connect_timeout=settings.connect_timeout,
            board_fd=settings.board_fd,
        )
        metrics = settings.metrics_port is not None
        worker.observer = observer_for(log_tasks=settings.log_tasks, metrics=metrics)
    except Exception as exc:
        log.error("worker cannot start: %s", exc)
        sys.exit(EXIT_CONFIG)
    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            os._exit(1)
        worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        worker.run()
    except BackendUnavailable as exc:
        log.error("worker cannot start: %s", exc)
        sys.exit(EXIT_UNAVAILABLE)
    except WorkerDied as exc:
        log.error("worker process exits: %s", exc)
        sys.exit(EXIT_DIED)
    sys.exit(0)
