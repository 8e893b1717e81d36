"""A private MariaDB server for tests: its own data folder, loopback port, socket and pid file.

``MariaDBServer(folder)`` initialises a data directory in ``folder`` once (about a second)
and runs ``mariadbd --no-defaults`` on a free 127.0.0.1 port with settings tuned for tests
(no binary log, relaxed flushing, a small buffer pool). The root user has no password.
Tests can ``kill()`` it (SIGKILL), ``restart()`` it on the same port and data, or
``freeze()``/``thaw()`` it (SIGSTOP/SIGCONT) to simulate a hung broker.

With ``tls=`` it presents and trusts the given files and runs with
``require_secure_transport=ON``: TCP clients must use TLS (the Unix socket stays open).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pymysql

from tests._server import ServerProcess, free_port, server_binary
from tests._tls import ServerTLS

#: ``mariadbd`` as found on PATH (a bare name, which exists nowhere, when it is not there).
MARIADBD = shutil.which("mariadbd") or "mariadbd"
START_TIMEOUT = 30.0


class MariaDBServer(ServerProcess):
    """One private ``mariadbd``; ``url`` names its test database."""

    def __init__(
        self,
        folder: Path | str,
        *,
        database: str = "remoteexec_test",
        options: Sequence[str] = (),
        tls: ServerTLS | None = None,
    ) -> None:
        self.folder = Path(folder)
        #: More ``mariadbd`` options, e.g. ``["--max-allowed-packet=1M"]``.
        self.options = list(options)
        self.tls = tls
        if tls is not None:
            self.options += [
                f"--ssl-cert={tls.cert}",
                f"--ssl-key={tls.key}",
                f"--ssl-ca={tls.ca}",
                "--require-secure-transport=ON",
            ]
        self.datadir = self.folder / "data"
        self.tmpdir = self.folder / "tmp"
        self.socket = self.folder / "mysqld.sock"
        self.pid_file = self.folder / "mysqld.pid"
        self.log_file = self.error_log = self.folder / "error.log"
        self.stop_timeout = 30.0
        self.database = database
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        query = f"?ssl_ca={self.tls.ca}" if self.tls is not None else ""
        return f"mysql://root@127.0.0.1:{self.port}/{self.database}{query}"

    def _as_root(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install(self) -> None:
        # A temporary folder of its own: installs running side by side (pytest -n) in the
        # shared /tmp trip over each other's temporary tables.
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        for _attempt in (1, 2):
            done = subprocess.run(
                [
                    server_binary("mariadb-install-db"),
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--tmpdir={self.tmpdir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    *self._as_root(),
                ],
                capture_output=True,
                timeout=120,
                check=False,
            )
            if done.returncode == 0:
                return
            shutil.rmtree(self.datadir, ignore_errors=True)
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"mariadb-install-db failed twice:\n{output[-4000:]}")

    def start(self) -> None:
        """Start the server (initialising the data folder first if needed) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if not (self.datadir / "mysql").is_dir():
            self._install()
        args = [
            server_binary("mariadbd"),
            "--no-defaults",
            *self._as_root(),
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.error_log}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-buffer-pool-size=64M",
            "--innodb-doublewrite=0",
            "--max-connections=500",
            *self.options,
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_ready()
        conn = self.connect(database=None)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        finally:
            conn.close()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited ({self.proc.returncode}):\n{self._log()}")
            try:
                self.connect(database=None, timeout=1).close()
                return
            except pymysql.err.Error:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"mariadbd did not accept connections in {START_TIMEOUT:.0f}s:\n"
                        + self._log()
                    ) from None
                time.sleep(0.1)

    def restart(self) -> None:
        """Kill the server and start it again on the same port and data folder."""
        self.kill()
        self.start()

    def connect(
        self, database: str | None = "", *, timeout: float = 10
    ) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        """An autocommit PyMySQL connection as root, to the test database by default (over
        TLS with ``tls``, with the probe's client certificate and no host-name check)."""
        tls = {"ssl": self.tls.context()} if self.tls is not None else {}
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            database=self.database if database == "" else database,
            autocommit=True,
            connect_timeout=timeout,
            read_timeout=30,
            write_timeout=30,
            max_allowed_packet=64 * 1024 * 1024,
            **tls,
        )
