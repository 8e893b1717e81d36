"""``remoteexec-worker``'s supervisor: N worker processes, each replaced when it dies.

The supervisor imports no task code and opens no connection; it starts each worker as a
fresh interpreter (``child_main``) in a session of its own, with its settings in the
environment (never on the command line, where a password would show in ``ps``). A worker
that dies for any reason (a task called ``os._exit``, a segfault, a time limit) is
replaced; one that fails to start (a task module that cannot be imported) stops the
supervisor with ``EXIT_CONFIG``. SIGTERM or SIGINT is passed on to the workers, which
finish their running tasks and hand back the rest; a second signal kills them at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from types import FrameType

log = logging.getLogger("remoteexec.supervisor")

EXIT_CONFIG = 78  # a worker could not start: bad URL, task module not importable
_ENV = "REMOTEEXEC_WORKER_SETTINGS"


@dataclass
class WorkerSettings:
    """What a worker process is started with (the CLI's flags)."""

    url: str | None = None
    imports: list[str] = field(default_factory=list)
    tasks_dir: str | None = None
    queues: list[str] = field(default_factory=lambda: ["default"])
    threads: int = 1
    lease: float | None = None
    burst: bool = False
    log_level: str = "INFO"


class Supervisor:
    """Keeps ``processes`` worker processes running until stopped."""

    def __init__(self, settings: WorkerSettings, processes: int = 1) -> None:
        self.settings = settings
        self.processes = processes
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self._signals = 0

    def run(self) -> int:
        """Run until a signal (exit 0), or until burst workers are done; return the status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for slot in range(self.processes):
            self._start(slot)
        status = 0
        while self.children:
            time.sleep(0.05)
            for slot, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    continue
                del self.children[slot]
                if self._signals or (self.settings.burst and code == 0):
                    continue
                if code == EXIT_CONFIG:
                    log.error("worker process %d could not start: stopping", child.pid)
                    self._terminate(signal.SIGTERM)
                    status = EXIT_CONFIG
                    continue
                if status == 0:
                    log.warning("worker process %d exited with %s: replacing it", child.pid, code)
                    self._start(slot)
        log.info("supervisor exiting with status %d", status)
        return status

    def _start(self, slot: int) -> None:
        env = dict(os.environ, **{_ENV: json.dumps(asdict(self.settings))})
        child = subprocess.Popen(
            [sys.executable, "-c", "import remoteexec.supervisor as s; s.child_main()"],
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
        )
        self.children[slot] = child
        log.info("started worker process %d", child.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal %d: stopping workers gracefully (again to kill them)", signum)
            self._terminate(signal.SIGTERM)
        else:
            log.warning("signal %d again: killing workers", signum)
            self._terminate(signal.SIGKILL)
            os._exit(1)

    def _terminate(self, sig: int) -> None:
        for child in self.children.values():
            try:
                child.send_signal(sig)
            except ProcessLookupError:
                pass


def child_main() -> None:
    """Entry point of a worker process started by the supervisor."""
    from .tasks import import_tasks
    from .worker import Worker

    settings = WorkerSettings(**json.loads(os.environ.pop(_ENV)))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(name)s: %(message)s",
    )
    try:
        import_tasks(settings.imports, settings.tasks_dir)
        worker = Worker(
            settings.url,
            queues=settings.queues,
            threads=settings.threads,
            lease=settings.lease,
            burst=settings.burst,
            exit_on_time_limit=True,
        )
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
    worker.run()
    sys.exit(0)
