"""Names and URLs: checked at the caller before anything is sent, and compared exactly.

* Queue names and reply addresses match only themselves on every backend: ``"iso "`` is
  not ``"iso"`` (MariaDB's PAD SPACE collations said it was), with a migration for MySQL
  databases made by the older schema.
* Over-long or malformed queue, task and method names are a ``ConfigurationError`` where
  they are given (``@remote``, ``proxy()``, ``.options()``, ``Client``), naming the value.
* Only methods a task class defines are remote methods: never ``mro`` and the like.
* ``unix://`` Redis URLs work; an unknown URL option is a ``ConfigurationError`` naming it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import remoteexec
from remoteexec import Client, ConfigurationError, UnknownTask, Worker, remote, using
from remoteexec.backends import Backend, Done, Job, open_backend
from remoteexec.proxy import CallOptions
from remoteexec.remote import lookup
from tests.conftest import _need, fresh_url


@remote(name="names.Echo")
class Echo:
    """A task with one method, a class attribute and a nested class."""

    LIMIT = 10

    class Nested:
        pass

    def run(self, value: Any) -> Any:
        return value

    @staticmethod
    def shout(value: str) -> str:
        return value.upper()


def job(queue: str, reply_to: str = "client") -> Job:
    return Job(uuid.uuid4().hex, queue, reply_to, b"body")


# -- queue names and reply addresses compare exactly --------------------------------------


def test_a_queue_name_padded_with_spaces_is_another_queue(
    make_backend: Callable[..., Backend],
) -> None:
    backend = make_backend()
    padded, plain = job("iso ", reply_to="me "), job("iso", reply_to="me")
    backend.enqueue([padded])
    assert backend.claim(["iso"], limit=5, lease=30, wait=0) == []
    assert backend.claim(["ISO "], limit=5, lease=30, wait=0) == []
    backend.enqueue([plain])
    [got] = backend.claim(["iso"], limit=5, lease=30, wait=1)
    assert (got.id, got.queue) == (plain.id, "iso")
    [got_padded] = backend.claim(["iso "], limit=5, lease=30, wait=1)
    assert (got_padded.id, got_padded.queue) == (padded.id, "iso ")
    assert backend.complete([Done(got_padded, b"to me-space")]) == [True]
    assert backend.complete([Done(got, b"to me")]) == [True]
    # Each reply reaches its own address only.
    assert backend.replies("me", wait=1) == [b"to me"]
    assert backend.replies("me", wait=0) == []
    assert backend.replies("me ", wait=1) == [b"to me-space"]


def _column_collations(conn: Any, table: str) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(f"SHOW FULL COLUMNS FROM {table}")
        return {row[0]: row[2] for row in cur.fetchall() if row[2]}


def test_a_mysql_database_of_the_padded_schema_is_migrated(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A database made by the schema whose names were ``utf8mb4_bin`` (PAD SPACE) is
    migrated on first use: its tasks are kept, and its queue names compare exactly."""
    from remoteexec.backends.mysql import schema_sql
    from remoteexec.backends.mysql.schema import SCHEMA_VERSION

    url = fresh_url("mysql", request, tmp_path)
    server = request.getfixturevalue("mariadb_server")
    conn = server.connect(database=url.rsplit("/", 1)[1])
    try:
        with conn.cursor() as cur:
            for sql in schema_sql():  # the old schema: the same tables, padded names
                cur.execute(sql.replace("utf8mb4_nopad_bin", "utf8mb4_bin"))
            cur.execute("UPDATE remoteexec_schema SET version = 1")
            cur.execute(  # version 1 had no dead letters' tasks
                "ALTER TABLE remoteexec_dead_letters DROP COLUMN traceback, "
                "DROP COLUMN reply_to, DROP COLUMN body, DROP COLUMN deadline, DROP KEY ix_dead_id"
            )
            cur.execute(
                "INSERT INTO remoteexec_tasks (id, queue, reply_to, body, created) "
                "VALUES ('old-task', 'iso ', 'me', 'x', UNIX_TIMESTAMP())"
            )
        assert _column_collations(conn, "remoteexec_tasks")["queue"] == "utf8mb4_bin"
        backend = open_backend(url)
        try:
            assert backend.claim(["iso"], limit=5, lease=30, wait=0) == []
            [claim] = backend.claim(["iso "], limit=5, lease=30, wait=1)
            assert claim.id == "old-task"
        finally:
            backend.close()
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM remoteexec_schema")
            assert cur.fetchall() == ((SCHEMA_VERSION,),)
        for table in ("remoteexec_tasks", "remoteexec_replies", "remoteexec_dead_letters"):
            collations = set(_column_collations(conn, table).values())
            assert collations <= {"utf8mb4_nopad_bin", "ascii_bin"}, (table, collations)
    finally:
        conn.close()


# -- names are checked where they are given -----------------------------------------------

LONG = "q" * 10_000
MAX_NAME = 128  # the documented limit (config.MAX_NAME)
BAD_QUEUES = [LONG, "", "a\nb", "tab\there", "nul\x00", "\u2028line", 7]


@pytest.fixture
def client(backend_url: str) -> Iterator[Client]:
    with Client(backend_url) as client, using(client):
        yield client


def _nothing_sent(client: Client) -> None:
    stats = client.backend.stats()
    assert sum(stats.queues.values()) == 0 and stats.running == 0


@pytest.mark.parametrize("queue", BAD_QUEUES, ids=lambda v: repr(v)[:12])
def test_a_bad_queue_name_is_refused_before_anything_is_sent(client: Client, queue: Any) -> None:
    with pytest.raises(ConfigurationError, match="queue name") as info:
        Echo.run.options(queue=queue)
    assert len(str(info.value)) < 300  # names the value, cut short
    if isinstance(queue, str) and queue:
        assert repr(queue)[:40] in str(info.value)
    with pytest.raises(ConfigurationError, match="queue name"):
        remoteexec.proxy("names.Echo", queue=queue)
    with pytest.raises(ConfigurationError, match="queue name"):
        client.submit("names.Echo", "run", (1,), {}, CallOptions(queue=queue))
    with pytest.raises(ConfigurationError, match="queue name"):
        Client(client.settings.url, queue=queue)
    with pytest.raises(ConfigurationError, match="queue name"):

        @remote(name="names.Refused", queue=queue)
        class Refused:
            def run(self) -> None: ...

    assert lookup("names.Refused") is None
    _nothing_sent(client)


def test_a_queue_name_of_the_longest_length_is_sent(client: Client) -> None:
    queue = "q" * MAX_NAME
    future = Echo.run.options(queue=queue).submit(1)
    assert client.backend.stats().queues == {queue: 1}
    assert future.cancel()


@pytest.mark.parametrize(
    "name", ["t" * 10_000, "", "a\nb", "\x1b[31m", None], ids=lambda v: repr(v)[:12]
)
def test_a_bad_task_name_is_refused(name: Any) -> None:
    with pytest.raises(ConfigurationError, match="task name"):
        remoteexec.proxy(name)
    if name is not None:
        with pytest.raises(ConfigurationError, match="task name"):

            @remote(name=name)
            class Refused:
                def run(self) -> None: ...


@pytest.mark.parametrize(
    "method", ["m" * 10_000, "two words", "dash-ed", "a\nb", "1st"], ids=lambda v: repr(v)[:12]
)
def test_a_bad_method_name_is_refused(method: str) -> None:
    with pytest.raises(ConfigurationError, match="method name"):
        getattr(remoteexec.proxy("names.Echo"), method)


# -- only methods the class defines are remote --------------------------------------------


def test_names_of_the_class_machinery_are_not_remote_methods() -> None:
    for name in ("mro", "__subclasses__"):
        with pytest.raises(AttributeError):
            getattr(remoteexec.proxy("names.Echo"), name)
    with pytest.raises(AttributeError, match="mro"):
        Echo.mro  # noqa: B018
    task = lookup("names.Echo")
    assert task is not None
    for name in ("mro", "__init__", "__class__", "__subclasses__", "LIMIT", "Nested", "nope"):
        assert task.method(name) is None, name
    assert task.method("run") is not None and task.method("shout") is not None
    assert Echo.LIMIT == 10 and Echo.Nested.__name__ == "Nested"  # still reachable locally


@pytest.mark.parametrize("method", ["mro", "LIMIT", "Nested", "__init__"])
def test_a_worker_refuses_a_call_of_anything_but_a_method(farm_url: str, method: str) -> None:
    """A call sent by hand (no proxy to stop it) of ``mro`` or an attribute that is not
    a method is an ``UnknownTask``: the worker never looks it up on the instance."""
    worker = Worker(farm_url, threads=1, lease=5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        with Client(farm_url, timeout=30) as client:
            with pytest.raises(UnknownTask):
                client.call("names.Echo", method, (), {}, None)
            assert client.call("names.Echo", "run", ("ok",), {}, None) == "ok"
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()


# -- URLs ------------------------------------------------------------------------------------


def test_a_unix_socket_redis_url_works() -> None:
    _need("redis-server")
    from tests._redis_server import RedisServer

    with RedisServer(unix_socket=True) as server:
        assert server.socket is not None
        url = f"unix://{server.socket}?db=2&prefix=sock:"
        backend = open_backend(url)
        try:
            sent = job("default", reply_to="me")
            backend.enqueue([sent])
            [claim] = backend.claim(["default"], limit=1, lease=30, wait=1)
            assert claim.id == sent.id
            assert backend.complete([Done(claim, b"over the socket")]) == [True]
            assert backend.replies("me", wait=1) == [b"over the socket"]
            backend.enqueue([job("default")])
            assert any(k.startswith(b"sock:") for k in _keys_in_db(server, 2))
        finally:
            backend.close()
        with Client(url) as client:
            assert client.backend.stats().queues == {"default": 1}


def _keys_in_db(server: Any, db: int) -> list[bytes]:
    import redis

    conn = redis.Redis(unix_socket_path=str(server.socket), db=db)
    try:
        return list(conn.keys("*"))
    finally:
        conn.close()


UNKNOWN_OPTIONS = [
    "redis://127.0.0.1:1/0?bogus=1",
    "redis://127.0.0.1:1/0?socket_timeout=2&bogus=1",
    "redis://127.0.0.1:1/0?ssl_cert_reqs=required&bogus",  # TLS options need rediss://
    "rediss://127.0.0.1:1/0?bogus=1",
    "unix:///tmp/none.sock?bogus=1",
    "mysql://u@127.0.0.1:1/db?bogus=1",
    "sqlite:///queue.db?bogus=1",
    "memory://names?bogus=1",
]


@pytest.mark.parametrize("url", UNKNOWN_OPTIONS)
def test_an_unknown_url_option_is_a_configuration_error_naming_it(url: str) -> None:
    option = "ssl_cert_reqs" if "ssl_cert_reqs" in url else "bogus"
    with pytest.raises(ConfigurationError, match=option):
        open_backend(url)
    with pytest.raises(ConfigurationError, match=option):
        Client(url)
