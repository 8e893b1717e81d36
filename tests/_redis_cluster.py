"""Private Redis topologies for tests: a Redis Cluster, and a primary watched by Sentinels.

``RedisClusterSet(folder, replicas=0|1)`` starts three primaries (and one replica each with
``replicas=1``) with ``--cluster-enabled yes`` on free loopback ports, joins them with
``redis-cli --cluster create``, and waits (bounded) until every node reports
``cluster_state:ok``. ``SentinelSet(folder)`` starts a primary, a replica and three
``redis-server --sentinel`` processes, and waits until the sentinels agree on the primary
and see the replica and each other. Both stop every process they started on ``stop()``
(and on leaving a ``with`` block); tests kill single nodes to force a failover.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis

from tests._redis_server import RedisServer
from tests._server import free_port, server_binary

START_TIMEOUT = 30.0  # a whole topology, joined and agreed
NODE_TIMEOUT_MS = 1500  # cluster-node-timeout and Sentinel's down-after-milliseconds


def _until(what: str, check: Callable[[], bool], logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached in {START_TIMEOUT:.0f}s:\n{logs()}")
        time.sleep(0.1)


class _Topology:
    nodes: list[RedisServer]
    _tmp: tempfile.TemporaryDirectory[str] | None

    def _logs(self) -> str:
        return "\n".join(f"--- {n.port}\n{n._log()[-1500:]}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def fsync(self, mode: str) -> None:
        """Set ``appendfsync`` on every data node (not on Sentinels)."""
        for node in self.nodes:
            if node in getattr(self, "sentinels", ()):
                continue
            c = node.client()
            try:
                c.config_set("appendfsync", mode)
            finally:
                c.close()

    def __enter__(self) -> _Topology:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._cleanup()

    def start(self) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


class RedisClusterSet(_Topology):
    """Three primaries (``replicas`` replicas each) forming one Redis Cluster on loopback."""

    def __init__(self, folder: Path | str | None = None, *, replicas: int = 0) -> None:
        self._tmp = None if folder is not None else tempfile.TemporaryDirectory()
        self.folder = Path(folder if folder is not None else self._tmp.name)  # type: ignore[union-attr]
        self.replicas = replicas
        self.nodes = []
        for i in range(3 * (1 + replicas)):
            bus = free_port()
            self.nodes.append(RedisServer(self.folder / f"node{i}", extra=self._args(bus)))

    @staticmethod
    def _args(bus: int) -> Callable[[], list[str]]:
        return lambda: [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-port", str(bus),
            "--cluster-require-full-coverage", "no",
            # A replica takes over however long ago it last heard from its primary: in a
            # cluster seconds old, its link's age otherwise reads as stale data.
            "--cluster-replica-validity-factor", "0",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])
        return f"redis+cluster://{hosts}/"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        create = [server_binary("redis-cli"), "--cluster", "create"]
        create += [f"127.0.0.1:{n.port}" for n in self.nodes]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, timeout=START_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]!r}")
        _until("cluster_state:ok on every node", self._agreed, self._logs)

    def _agreed(self) -> bool:
        for node in self.nodes:
            c = node.client()
            try:
                info = c.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                known = f"cluster_known_nodes:{len(self.nodes)}"
                if "cluster_state:ok" not in text or known not in text:
                    return False
                if len(c.execute_command("CLUSTER", "SLOTS")) != 3:
                    return False
            finally:
                c.close()
        return True

    def primaries(self) -> list[RedisServer]:
        """The nodes that are primaries right now (a killed node is none)."""
        out = []
        for node in self.nodes:
            if node.proc is None:
                continue
            c = node.client()
            try:
                if c.info("replication").get("role") == "master":
                    out.append(node)
            finally:
                c.close()
        return out

    def flushall(self) -> None:
        for node in self.primaries():
            c = node.client()
            try:
                c.flushall()
                c.script_flush()
            finally:
                c.close()


class SentinelSet(_Topology):
    """A primary, one replica, and three Sentinels watching them as ``service``."""

    def __init__(self, folder: Path | str | None = None, *, service: str = "mymaster") -> None:
        self._tmp = None if folder is not None else tempfile.TemporaryDirectory()
        self.folder = Path(folder if folder is not None else self._tmp.name)  # type: ignore[union-attr]
        self.service = service
        primary = RedisServer(self.folder / "primary")
        replica = RedisServer(
            self.folder / "replica", extra=lambda: ["--replicaof", "127.0.0.1", str(primary.port)]
        )
        self.data = [primary, replica]
        self.sentinels = [
            RedisServer(self.folder / f"sentinel{i}", extra=self._sentinel(i)) for i in range(3)
        ]
        self.nodes = [*self.data, *self.sentinels]

    def _sentinel(self, i: int) -> Callable[[], list[str]]:
        def args() -> list[str]:
            conf = self.folder / f"sentinel{i}.conf"
            port = self.data[0].port
            conf.write_text(
                f"sentinel monitor {self.service} 127.0.0.1 {port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {self.service} 3000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            return [str(conf), "--sentinel"]

        return args

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self) -> None:
        for node in self.nodes:
            # A sentinel's config file goes first on its command line: rebuild its args.
            node.start() if node not in self.sentinels else self._start_sentinel(node)
        _until("sentinels agreeing on the primary", self._agreed, self._logs)

    def _start_sentinel(self, node: RedisServer) -> None:
        node.datadir.mkdir(parents=True, exist_ok=True)
        args = [server_binary("redis-server"), *node.extra()]
        args += ["--port", str(node.port), "--bind", "127.0.0.1", "--dir", str(node.datadir)]
        args += ["--logfile", str(node.log_file), "--daemonize", "no"]
        node.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        node._wait_ready()

    def _agreed(self) -> bool:
        for s in self.sentinels:
            c = s.client()
            try:
                if len(c.execute_command("SENTINEL", "REPLICAS", self.service)) < 1:
                    return False
                if len(c.execute_command("SENTINEL", "SENTINELS", self.service)) < 2:
                    return False
            finally:
                c.close()
        return True

    def primary(self) -> RedisServer:
        """The data node the sentinels name as primary now."""
        c = self.sentinels[0].client()
        try:
            _, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        finally:
            c.close()
        return next(n for n in self.data if n.port == int(port))

    def flushall(self) -> None:
        c = self.primary().client()
        try:
            c.flushall()
            c.script_flush()
        finally:
            c.close()
