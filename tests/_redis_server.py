"""A private Redis server for tests: its own folder, loopback port and append-only file.

``RedisServer(folder)`` runs ``redis-server`` on a free 127.0.0.1 port with
``--appendonly yes --appendfsync always`` and no RDB snapshots, so a SIGKILL loses nothing.
Tests can ``kill()`` it, ``restart()`` it on the same port (with its data, or empty, as a
Redis without persistence would come back), or ``freeze()``/``thaw()`` it (SIGSTOP/SIGCONT)
to simulate a hung broker.

With ``tls=`` it listens only for TLS (``--port 0 --tls-port``), presenting and trusting the
given files; ``tls_auth_clients`` is redis-server's ``--tls-auth-clients`` (``optional``:
a client certificate is checked if sent, ``yes``: one is required).

With ``password``, the server requires it (``requirepass``) and ``url`` holds none:
clients give it themselves.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests._server import ServerProcess, free_port, server_binary
from tests._tls import ServerTLS

START_TIMEOUT = 10.0


class RedisServer(ServerProcess):
    """One private ``redis-server``; ``url`` names database 0 on it."""

    def __init__(
        self,
        folder: Path | str | None = None,
        *,
        unix_socket: bool = False,
        tls: ServerTLS | None = None,
        tls_auth_clients: str = "optional",
        password: str | None = None,
        extra: Callable[[], list[str]] = list,
    ) -> None:
        #: More ``redis-server`` arguments (cluster or replication settings), made at start.
        self.extra = extra
        self._tmp = None if folder is not None else tempfile.TemporaryDirectory()
        self.folder = Path(folder if folder is not None else self._tmp.name)  # type: ignore[union-attr]
        self.datadir = self.folder / "data"
        self.log_file = self.folder / "redis.log"
        self.port = free_port()
        #: With ``unix_socket``, the server also listens on this socket (``unix://`` URLs).
        self.socket = self.folder / "redis.sock" if unix_socket else None
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.proc: subprocess.Popen[bytes] | None = None
        #: The password the default user needs (``requirepass``), or None.
        self.password = password

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        args = [
            server_binary("redis-server"),
            *self._listen(),
            "--bind", "127.0.0.1",
            "--dir", str(self.datadir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--logfile", str(self.log_file),
            "--daemonize", "no",
            *self.extra(),
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.socket is not None:
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_ready()

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", self.tls_auth_clients,
        ]  # fmt: skip

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        probe = self.client(timeout=1)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited ({self.proc.returncode}):\n{self._log()}"
                    )
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"redis-server did not answer PING in {START_TIMEOUT:.0f}s:\n" + self._log()
                    )
                time.sleep(0.05)
        finally:
            probe.close()

    def restart(self, *, keep_data: bool = True) -> None:
        """Kill the server and start it again on the same port.

        With ``keep_data=False`` the data folder is wiped first: the server comes back
        empty, as a Redis without persistence does.
        """
        self.kill()
        if not keep_data:
            shutil.rmtree(self.datadir, ignore_errors=True)
        self.start()

    def client(self, *, timeout: float = 10) -> redis.Redis:
        """A plain redis-py client (bytes responses) for assertions (over TLS with ``tls``,
        with the probe's client certificate and no host-name check)."""
        if self.tls is None:
            return redis.Redis(
                host="127.0.0.1", port=self.port, password=self.password, socket_timeout=timeout
            )
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.tls.ca),
            ssl_certfile=str(self.tls.probe.cert),
            ssl_keyfile=str(self.tls.probe.key),
            ssl_check_hostname=False,
        )

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
