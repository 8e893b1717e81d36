"""Fixtures: private broker servers and a ``backend_url`` parametrized over every backend.

Redis and MariaDB tests run against private servers started here, on free loopback ports
in temporary folders, so a test can kill, freeze or restart its broker. Outside CI a
missing server binary or package skips those tests; with ``CI=true`` every skip is a
failure, so nothing missing can hide in a green run.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteexec.backends import Backend, open_backend

ALL_BACKENDS = ["memory", "sqlite", "redis", "mysql", "mysql_optimistic"]
#: Every mode a user can run, for the contract suite: Redis with its Lua scripts and as a
#: user whose ACL denies ``@scripting``, MySQL's two claim modes with either way of waiting.
EVERY_MODE = [
    "memory",
    "sqlite",
    "redis_scripts",
    "redis_noscript",
    "redis_cluster",
    "redis_sentinel",
    "mysql_skip_locked_server",
    "mysql_skip_locked_client",
    "mysql_optimistic_server",
    "mysql_optimistic_client",
]
#: One mode per backend: for the client-level tests.
ONE_PER_BACKEND = ["memory", "sqlite", "redis", "mysql"]
_MYSQL_QUERY = {
    "mysql": "",
    "mysql_optimistic": "?claim=optimistic",
    "mysql_skip_locked_server": "?claim=skip_locked&wait=server",
    "mysql_skip_locked_client": "?claim=skip_locked&wait=client",
    "mysql_optimistic_server": "?claim=optimistic&wait=server",
    "mysql_optimistic_client": "?claim=optimistic&wait=client",
}
#: Backends that worker processes on one host can share.
FARM_BACKENDS = ["sqlite", "redis", "mysql", "mysql_optimistic"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With ``CI`` set, a skipped test fails: a missing server or package is an error there."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``big`` (hundreds of MiB, minutes) run only when ``-m`` names them."""
    if "big" in (config.getoption("markexpr") or ""):
        return
    big = [item for item in items if item.get_closest_marker("big")]
    if big:
        items[:] = [item for item in items if not item.get_closest_marker("big")]
        config.hook.pytest_deselected(items=big)


def _need(binary: str) -> None:
    # PATH only: a server hidden from PATH must count as missing, wherever it is installed.
    if shutil.which(binary) is None:
        if IN_CI:
            pytest.fail(f"{binary} is not installed; scripts/test installs it")
        pytest.skip(f"{binary} is not installed")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _need("redis-server")
    from tests._redis_server import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Three primaries forming a Redis Cluster (no replicas: nothing here fails over)."""
    _need("redis-server")
    _need("redis-cli")
    from tests._redis_cluster import RedisClusterSet

    with RedisClusterSet(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A primary, a replica and three Sentinels watching them."""
    _need("redis-server")
    from tests._redis_cluster import SentinelSet

    with SentinelSet(tmp_path_factory.mktemp("redis-sentinel")) as sentinels:
        yield sentinels


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _need("mariadbd")
    from tests._mariadb_server import MariaDBServer

    with MariaDBServer(tmp_path_factory.mktemp("mariadb")) as server:
        yield server


def fresh_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL naming an empty broker of ``kind`` for one test."""
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'remoteexec.db'}"
    if kind in ("redis", "redis_scripts"):
        server = request.getfixturevalue("redis_server")
        server.client().flushall()
        return str(server.url)
    if kind == "redis_noscript":  # the adapter finds scripts denied and runs without them
        server = request.getfixturevalue("redis_server")
        server.client().flushall()
        server.client().acl_setuser(
            "noscript", enabled=True, passwords=["+pw"], keys=["*"],
            commands=["+@all", "-@scripting"],
        )  # fmt: skip
        return f"redis://noscript:pw@127.0.0.1:{server.port}/0"
    if kind in ("redis_cluster", "redis_sentinel"):
        topology = request.getfixturevalue(
            "redis_cluster" if kind == "redis_cluster" else "redis_sentinels"
        )
        topology.flushall()
        return str(topology.url)
    if kind in _MYSQL_QUERY:
        server = request.getfixturevalue("mariadb_server")
        db = f"t_{uuid.uuid4().hex[:12]}"
        conn = server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {db}")
        finally:
            conn.close()
        base = str(server.url).rsplit("/", 1)[0]
        return f"{base}/{db}{_MYSQL_QUERY[kind]}"
    raise ValueError(kind)


@pytest.fixture(params=ALL_BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty broker's URL, once per backend."""
    return fresh_url(str(request.param), request, tmp_path)


@pytest.fixture(params=FARM_BACKENDS)
def farm_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh broker's URL that several processes can share, once per such backend."""
    return fresh_url(str(request.param), request, tmp_path)


@pytest.fixture
def farm(farm_url: str, tmp_path: Path) -> Iterator[Any]:
    """Real ``remoteexec-worker`` commands on ``farm_url``, stopped after the test."""
    from tests.farm import Farm

    farm = Farm(farm_url, tmp_path)
    yield farm
    farm.stop()


@pytest.fixture
def make_backend(backend_url: str) -> Iterator[Callable[..., Backend]]:
    """Open backends on ``backend_url``; all are closed after the test."""
    opened: list[Backend] = []

    def make(**options: Any) -> Backend:
        backend = open_backend(backend_url, **options)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


@pytest.fixture
def backend(make_backend: Callable[..., Backend]) -> Backend:
    return make_backend()
