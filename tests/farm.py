"""Real ``remoteexec-worker`` processes for end-to-end tests."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from remoteexec.backends import open_backend

TASKS_SOURCE = Path(__file__).parent / "tasks" / "rx_e2e_tasks.py"

__all__ = ["Farm", "ledger", "worker_command"]  # and `tasks`, on demand


def __getattr__(name: str) -> Any:
    # ``from tests.farm import tasks``: the task module, under the name the workers import
    # it by. Imported on demand, so that importing Farm registers no task types.
    if name != "tasks":
        raise AttributeError(name)
    if str(TASKS_SOURCE.parent) not in sys.path:
        sys.path.insert(0, str(TASKS_SOURCE.parent))
    return importlib.import_module(TASKS_SOURCE.stem)


def ledger(path: Path) -> list[list[str]]:
    """The lines a task wrote to ``path`` (see rx_e2e_tasks._note), split into fields."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def worker_command() -> list[str]:
    script = Path(sys.executable).parent / "remoteexec-worker"
    if script.exists():
        return [str(script)]
    found = shutil.which("remoteexec-worker")
    if found:
        return [found]
    return [sys.executable, "-c", "from remoteexec.cli import worker_main; worker_main()"]


class Farm:
    """Starts ``remoteexec-worker`` commands serving ``url`` from ``folder``."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        shutil.copy(TASKS_SOURCE, folder / TASKS_SOURCE.name)
        self.commands: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        *extra: str,
        processes: int = 1,
        lease: float = 2.0,
        url_args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a ``remoteexec-worker`` command; ``url_args`` replace ``--url URL`` (e.g.
        ``["--url-file", path]``, or ``[]`` for ``REMOTEEXEC_URL`` in ``env``), and ``env``
        adds to its environment."""
        url = ["--url", self.url] if url_args is None else list(url_args)
        cmd = [
            *worker_command(),
            *url, "--import", "rx_e2e_tasks", "--processes", str(processes),
            "--lease", str(lease), "--log-level", "INFO", *extra,
        ]  # fmt: skip
        path = os.pathsep.join([str(self.folder), *sys.path])
        env = dict(os.environ, **(env or {}), PYTHONPATH=path)
        with open(self.folder / f"worker-{len(self.commands)}.log", "ab") as log:
            proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=log, stderr=log)
        self.commands.append(proc)
        return proc

    def worker_pids(self, expected: int, timeout: float = 20.0) -> list[int]:
        """The pids of the live worker processes, once ``expected`` have sent a heartbeat."""
        backend = open_backend(self.url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pids = sorted({w.pid for w in backend.stats().workers if _alive(w.pid)})
                if len(pids) >= expected:
                    return pids
                time.sleep(0.1)
        finally:
            backend.close()
        raise AssertionError(f"fewer than {expected} workers came up\n{self.logs()}")

    def command_lines(self) -> dict[int, str]:
        """The command line of every live process the commands started, and of theirs
        (worker processes, helper processes), by pid, as ``ps`` shows them."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue  # gone meanwhile
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found: dict[int, str] = {}
        todo = [p.pid for p in self.commands if p.poll() is None]
        while todo:
            pid = todo.pop()
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo += children.get(pid, [])
        return found

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("*.log")))

    def stop(self) -> None:
        for proc in self.commands:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.commands:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
