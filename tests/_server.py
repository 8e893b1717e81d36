"""What the private test servers (Redis, MariaDB) share: one child process that a test can
stop, kill, freeze and thaw, and a log to quote when it fails."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any


def server_binary(name: str) -> str:
    """The path of ``name`` found on PATH, and only there: hiding a server from PATH hides it.

    Raises:
        RuntimeError: ``name`` is not on PATH.
    """
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not on PATH; scripts/test installs it")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server child process; subclasses set ``log_file``, ``stop_timeout`` and ``start``."""

    log_file: Path
    stop_timeout = 10.0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def _log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Shut the server down (SIGTERM), killing it if it takes too long."""
        if self.proc is None:
            return
        self.thaw()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server: no shutdown at all."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.thaw()
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        """Stop the server process (SIGSTOP): requests hang until ``thaw``.

        Returns once every thread of the server is stopped: the signal is asynchronous, and a
        busy server could otherwise still answer a request sent right after it.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGSTOP)
        tasks = Path(f"/proc/{self.proc.pid}/task")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                states = [
                    (t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()
                ]
            except OSError:
                continue  # a thread ended while we looked
            if all(state in ("T", "t") for state in states):
                return
            time.sleep(0.005)

    def thaw(self) -> None:
        """Resume a frozen server (SIGCONT)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def _cleanup(self) -> None:
        """Remove what the server left behind, after ``stop`` (subclasses may extend)."""

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._cleanup()
