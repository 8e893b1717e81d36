"""Private servers, worker processes, and the clean-up that removes them all.

Everything the bench starts is registered with ``CLEANUP`` as it starts and undone in
reverse order on the normal path, on an exception, on Ctrl-C or SIGTERM (turned into
``KeyboardInterrupt`` by ``__main__``) and at interpreter exit (``atexit``). Child
processes run in sessions of their own, so a terminal's Ctrl-C reaches only the bench,
which then stops them in order. Servers listen on free 127.0.0.1 ports only.
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests._redis_server and friends live beside the package
    sys.path.insert(0, str(REPO))


class Cleanup:
    """A stack of undo actions; each runs once, errors are printed and skipped."""

    def __init__(self) -> None:
        self._undo: dict[int, tuple[str, Callable[[], None]]] = {}
        self._next = 0

    def push(self, what: str, undo: Callable[[], None]) -> int:
        self._next += 1
        self._undo[self._next] = (what, undo)
        return self._next

    def run(self, token: int) -> None:
        entry = self._undo.pop(token, None)
        if entry is not None:
            _quietly(*entry)

    def run_all(self) -> None:
        for token in sorted(self._undo, reverse=True):
            self.run(token)


def _quietly(what: str, undo: Callable[[], None]) -> None:
    try:
        undo()
    except BaseException as exc:  # clean-up goes on whatever one step does
        print(f"bench: clean-up of {what} failed: {exc!r}", file=sys.stderr)


CLEANUP = Cleanup()
atexit.register(CLEANUP.run_all)


# Processes --------------------------------------------------------------------------------


def spawn(cmd: list[str], log: Path, *, env: dict[str, str] | None = None, pipe: bool = False):
    """Start ``cmd`` in its own session from the repo root, stderr (and stdout) to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe else out,
            stderr=out,
            start_new_session=True,
        )


def stop_process(
    proc: subprocess.Popen[Any], *, grace: float = 10.0, also: Sequence[int] = ()
) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``grace`` seconds; then SIGKILL ``also`` if alive."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pid in also:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.stdout is not None:
        proc.stdout.close()


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s live children (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def wait_ready_line(proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    """Wait until ``proc`` prints a line on stdout (its "ready" signal)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if not line:
        raise RuntimeError(f"worker {proc.args!r} did not start:\n{tail(log)}")


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


def python_env() -> dict[str, str]:
    """The environment for child interpreters: the repo root first on PYTHONPATH."""
    old = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *([old] if old else [])]))


# Servers ----------------------------------------------------------------------------------


class Servers:
    """One temporary folder for the run, and the private servers started in it."""

    def __init__(self, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="remoteexec-bench-"))
        if not keep:
            CLEANUP.push(f"folder {self.root}", lambda: shutil.rmtree(self.root, True))
        self._count = 0

    def folder(self, name: str) -> Path:
        self._count += 1
        path = self.root / f"{self._count:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def redis(self, fsync: str) -> Any:
        """A private ``redis-server`` persisting as ``fsync`` says (``redis_persistence``)."""
        from tests._redis_server import RedisServer

        server = RedisServer(self.folder("redis"))
        CLEANUP.push("redis-server", server.stop)
        server.start()
        client = server.client()
        try:
            for name, value in redis_persistence(fsync).items():
                client.config_set(name, value)
        finally:
            client.close()
        return server

    def cluster(self, fsync: str) -> Any:
        """Three private ``redis-server`` primaries forming a Redis Cluster."""
        from tests._redis_cluster import RedisClusterSet

        return self._topology(RedisClusterSet(self.folder("redis-cluster")), fsync)

    def sentinels(self, fsync: str) -> Any:
        """A private primary, its replica and three Sentinels."""
        from tests._redis_cluster import SentinelSet

        return self._topology(SentinelSet(self.folder("redis-sentinel")), fsync)

    @staticmethod
    def _topology(topology: Any, fsync: str) -> Any:
        CLEANUP.push("redis topology", topology.stop)
        topology.start()
        # Debian's settings are for one server: a topology keeps its AOF, at everysec.
        topology.fsync("everysec" if fsync == "debian" else fsync)
        return topology

    def mariadb(self) -> Any:
        """A private ``mariadbd`` (data folder initialised on first start), durable as
        Debian ships it (``MARIADB_SETTINGS``), not as the test suite runs it."""
        from tests._mariadb_server import MariaDBServer

        options = [f"--{name}={value}" for name, value in MARIADB_SETTINGS.items()]
        server = MariaDBServer(self.folder("mariadb"), database="bench", options=options)
        CLEANUP.push("mariadbd", server.stop)
        server.start()
        return server


#: The bench's MariaDB: MariaDB's own defaults, which Debian's configuration keeps (each
#: commit flushed to disk, the doublewrite buffer on, no binary log), over the test suite's
#: faster settings (``tests/_mariadb_server.py``).
MARIADB_SETTINGS = {
    "innodb-flush-log-at-trx-commit": 1,
    "innodb-doublewrite": 1,
    "innodb-buffer-pool-size": "128M",
}


def new_database(server: Any, name: str) -> str:
    """Create an empty database ``name`` on ``server`` (a ``MariaDBServer``)."""
    conn = server.connect(database=None)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}`")
    finally:
        conn.close()
    return name


def drop_database(server: Any, name: str) -> None:
    conn = server.connect(database=None)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


# remoteexec workers -----------------------------------------------------------------------


class RemoteexecWorkers:
    """``remoteexec-worker --processes N --import bench.tasks`` serving ``url``."""

    def __init__(self, url: str, folder: Path, processes: int) -> None:
        from tests.farm import worker_command

        self.url = url
        self.log = folder / f"remoteexec-worker-{processes}p.log"
        cmd = [
            *worker_command(), "--url", url, "--import", "bench.tasks",
            "--processes", str(processes), "--log-level", "WARNING",
        ]  # fmt: skip
        self.processes = processes
        self.proc = spawn(cmd, self.log, env=python_env())
        self.pids: list[int] = []
        self._token = CLEANUP.push("remoteexec-worker", self._stop)

    def wait_ready(self, timeout: float = 30.0) -> list[int]:
        """Wait until every worker process runs and has sent a heartbeat; their pids."""
        from remoteexec.backends import open_backend

        backend = open_backend(self.url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                self.pids = children(self.proc.pid)
                beating = {w.pid for w in backend.stats().workers}
                if len(self.pids) >= self.processes and beating.issuperset(self.pids):
                    return self.pids
                time.sleep(0.05)
        finally:
            backend.close()
        raise RuntimeError(
            f"{self.processes} worker process(es) did not come up:\n{tail(self.log)}"
        )

    def _stop(self) -> None:
        stop_process(self.proc, grace=15.0, also=self.pids or children(self.proc.pid))

    def stop(self) -> None:
        CLEANUP.run(self._token)


# Raw baseline workers ---------------------------------------------------------------------


class RawWorkers:
    """``processes`` raw baseline worker processes (``bench.raw_workers KIND``)."""

    def __init__(self, kind: str, folder: Path, processes: int, **options: str) -> None:
        args = [x for key, value in options.items() for x in (f"--{key}", value)]
        self.log = folder / f"{kind}-{processes}p.log"
        cmd = [sys.executable, "-m", "bench.raw_workers", kind, *args]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._token = CLEANUP.push(f"{kind} workers", self._stop)
        for _ in range(processes):
            self.procs.append(spawn(cmd, self.log, env=python_env(), pipe=True))
        for proc in self.procs:
            wait_ready_line(proc, self.log)
        self.pids = [p.pid for p in self.procs]

    def _stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, grace=5.0)

    def stop(self) -> None:
        CLEANUP.run(self._token)


#: Debian's /etc/redis/redis.conf (redis-server 7.0): no AOF, and RDB snapshots at Redis's
#: default save points (its ``save`` lines are commented out).
REDIS_DEBIAN = {"appendonly": "no", "save": "3600 1 300 100 60 10000"}


def redis_persistence(mode: str) -> dict[str, str]:
    """The ``CONFIG SET`` settings of ``--redis-fsync`` ``mode``: ``debian`` (the default) as
    Debian ships Redis, or an AOF with that ``appendfsync`` and no snapshots."""
    if mode == "debian":
        return dict(REDIS_DEBIAN)
    return {"appendonly": "yes", "appendfsync": mode, "save": ""}
