"""remoteexec itself, driven as a user would: the real worker command, the public API.

The client is a ``remoteexec.Client`` made current with ``remoteexec.using``; A calls
``CalculateMultipleOfPi.execute(n)`` in a loop, B and C consume
``CalculateMultipleOfPi.execute.map(range(N))``. Workers are ``remoteexec-worker
--processes P --import bench.tasks`` with their defaults (one thread, 30 s lease).
Every start gets an empty broker: a flushed Redis, a new MySQL database, a new SQLite file.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .servers import RemoteexecWorkers, drop_database, new_database, tail
from .tasks import CalculateMultipleOfPi as _Task
from .tasks import Sleepy as _Sleepy

TASK: Any = _Task  # the proxy (typed loosely: the bench drives it like a user)
IO_TASK: Any = _Sleepy


#: URL options of the systems on a Redis Cluster or behind Sentinel.
_OPTIONS = {"redis-cluster-shards6": "?shards=6", "redis-sentinel-durable": "?durable=1"}


class Remoteexec:
    """remoteexec on ``backend`` (sqlite, redis, redis-noscript, mysql, mysql-optimistic,
    redis-cluster, redis-cluster-shards6, redis-sentinel, redis-sentinel-durable).

    ``redis-noscript`` connects as a user whose ACL denies ``@scripting``: the adapter's
    script-free path, to show what its Lua fast path buys.
    """

    scenarios = "ABCDS"

    def __init__(self, backend: str, folder: Path, server: Any = None) -> None:
        self.backend = backend
        self.name = f"remoteexec-{backend}"
        if backend.startswith(("redis-cluster", "redis-sentinel")):
            self.scenarios = "ABCD"  # scaling: measured on the single-server backends
        self.folder = folder
        self.server = server
        self.workers: RemoteexecWorkers | None = None
        self._stack = ExitStack()
        self._runs = 0
        self._db: str | None = None

    def _fresh_url(self) -> str:
        self._runs += 1
        if self.backend == "sqlite":
            return f"sqlite:///{self.folder / f'bench-{self._runs}.db'}"
        if self.backend.startswith(("redis-cluster", "redis-sentinel")):
            self.server.flushall()
            return str(self.server.url) + _OPTIONS.get(self.backend, "")
        if self.backend.startswith("redis"):
            probe = self.server.client()
            try:
                probe.flushall()
                if self.backend == "redis-noscript":  # an ACL that denies Lua: plain commands
                    probe.acl_setuser(
                        "noscript", enabled=True, passwords=["+pw"], keys=["*"],
                        commands=["+@all", "-@scripting"],
                    )  # fmt: skip
                    return f"redis://noscript:pw@127.0.0.1:{self.server.port}/0"
            finally:
                probe.close()
            return str(self.server.url)
        self._db = new_database(self.server, "rx_" + self.backend.replace("-", "_"))
        url = f"mysql://root@127.0.0.1:{self.server.port}/{self._db}"
        return url + ("?claim=optimistic" if self.backend.endswith("optimistic") else "")

    def start(self, processes: int) -> list[int]:
        import remoteexec

        url = self._fresh_url()
        self.workers = RemoteexecWorkers(url, self.folder, processes)
        pids = self.workers.wait_ready()
        client = self._stack.enter_context(remoteexec.Client(url))
        self._stack.enter_context(remoteexec.using(client))
        return pids

    def stop(self) -> None:
        try:
            self._stack.close()
        finally:
            if self.workers is not None:
                self.workers.stop()
                self.workers = None
            if self._db is not None:
                drop_database(self.server, self._db)
                self._db = None

    def diagnose(self) -> str:
        """The worker log's last error line, if any (to explain a failed step)."""
        if self.workers is None:
            return ""
        lines = [x for x in tail(self.workers.log, 20000).splitlines() if "Error" in x]
        return f" [worker log: {lines[-1].strip()}]" if lines else ""

    def call(self, n: int) -> float:
        return TASK.execute(n)  # type: ignore[no-any-return]

    def submit_call(self, n: int) -> float:
        return TASK.execute.submit(n).result()  # type: ignore[no-any-return]

    def run_many(self, ns: range) -> list[float]:
        return list(TASK.execute.map(ns))

    def run_many_io(self, ns: range) -> list[float]:
        return list(IO_TASK.execute.map(ns))
