"""Every call ends: a caller whose task vanished from the broker (purged, flushed, deleted)
learns it within the documented bound; a caller interrupted by Ctrl-C withdraws its task;
a malformed reply never stops the reply listener. Real brokers, real worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteexec import CallLost, CallPurged, Client, Worker, register_type, remote, using
from remoteexec.backends import open_backend
from remoteexec.backends.sqlite import SCHEMA_VERSION
from remoteexec.liveness import LIVENESS_AFTER, LIVENESS_EVERY
from tests.conftest import fresh_url
from tests.farm import Farm, ledger, tasks

pytestmark = pytest.mark.timeout(120)

#: The documented bound (liveness.py): a vanished task's call ends within about 7 s (a
#: purged one 5 s: it needs no second check).
BOUND = LIVENESS_AFTER + 2 * LIVENESS_EVERY + 1.0
SLACK = 2.0  # the machine is shared and loaded


@pytest.fixture(params=["sqlite", "redis", "mysql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_url(str(request.param), request, tmp_path)


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url) as client, using(client):
        yield client


@pytest.fixture
def farm(url: str, tmp_path: Path) -> Iterator[Farm]:
    farm = Farm(url, tmp_path)
    yield farm
    farm.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def waiting(url: str) -> int:
    backend = open_backend(url)
    try:
        return sum(backend.stats().queues.values())
    finally:
        backend.close()


class Blocked:
    """A thread blocked in a call (``Echo.value``); what it ended with, and when."""

    def __init__(self, client: Client, value: Any = "blocked") -> None:
        self.outcome: Any = None
        self.ended_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(client, value), daemon=True)
        self._thread.start()

    def _run(self, client: Client, value: Any) -> None:
        with using(client):
            try:
                self.outcome = tasks.Echo.value(value)
            except BaseException as exc:
                self.outcome = exc
        self.ended_at = time.monotonic()

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the blocked caller never ended"
        return self.outcome


def delete_tasks_behind_the_clients_back(url: str) -> int:
    """Delete every task straight from the broker's storage, as a broker that lost it."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :])) as conn, conn:
            return conn.execute("DELETE FROM tasks").rowcount
    if url.startswith("redis"):
        import redis

        with contextlib.closing(redis.Redis.from_url(url)) as r:
            n = int(r.llen("remoteexec:{default}:w"))
            r.delete("remoteexec:{default}:w")
            return n
    backend: Any = open_backend(url)
    try:
        return int(backend._db.run(lambda cur: cur.execute("DELETE FROM remoteexec_tasks")))
    finally:
        backend.close()


def test_purge_ends_a_blocked_caller_and_a_pending_future_with_call_purged(
    url: str, client: Client, tmp_path: Path
) -> None:
    future = tasks.Echo.value.submit("future")
    blocked = Blocked(client)
    wait_for(lambda: waiting(url) == 2, what="both tasks to be queued")
    time.sleep(LIVENESS_AFTER)  # both calls are old enough to be checked at once
    purge = subprocess.run(
        [sys.executable, "-m", "remoteexec", "purge", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    purged_at = time.monotonic()
    assert purge.returncode == 0 and "purged 2" in purge.stdout, purge
    outcome = blocked.join(BOUND + SLACK + 10)
    assert isinstance(outcome, CallPurged), outcome
    assert blocked.ended_at - purged_at < BOUND + SLACK
    assert isinstance(future.exception(timeout=BOUND + SLACK), CallPurged)


def test_redis_flushdb_ends_a_blocked_caller_and_a_future_with_call_lost(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = fresh_url("redis", request, tmp_path)
    with Client(url) as client, using(client):
        future = tasks.Echo.value.submit("future")
        blocked = Blocked(client)
        wait_for(lambda: waiting(url) == 2, what="both tasks to be queued")
        request.getfixturevalue("redis_server").client().flushdb()  # no restart
        flushed_at = time.monotonic()
        outcome = blocked.join(LIVENESS_AFTER + BOUND + SLACK + 10)
        assert type(outcome) is CallLost, outcome
        assert blocked.ended_at - flushed_at < LIVENESS_AFTER + BOUND + SLACK
        assert type(future.exception(timeout=BOUND + SLACK)) is CallLost


def test_a_task_the_broker_lost_ends_its_caller_with_call_lost(url: str, client: Client) -> None:
    future = tasks.Echo.value.submit("future")
    blocked = Blocked(client)
    wait_for(lambda: waiting(url) == 2, what="both tasks to be queued")
    assert delete_tasks_behind_the_clients_back(url) == 2
    deleted_at = time.monotonic()
    outcome = blocked.join(LIVENESS_AFTER + BOUND + SLACK + 10)
    assert type(outcome) is CallLost, outcome
    assert blocked.ended_at - deleted_at < LIVENESS_AFTER + BOUND + SLACK
    assert type(future.exception(timeout=BOUND + SLACK)) is CallLost


def test_calls_waiting_or_running_longer_than_the_bound_still_return(
    url: str, client: Client, farm: Farm
) -> None:
    early = tasks.Echo.value.submit("waited")
    # No worker yet: several liveness checks pass over the waiting task.
    time.sleep(LIVENESS_AFTER + 2 * LIVENESS_EVERY + 0.5)
    assert not early.done()
    farm.start()
    assert early.result(timeout=60) == "waited"
    # Claimed and running for longer than the bound, through several checks.
    seconds = LIVENESS_AFTER + 2 * LIVENESS_EVERY + 1
    started = time.monotonic()
    assert isinstance(tasks.Slow.execute(seconds), int)
    assert time.monotonic() - started >= seconds


CALLER = """
import sys
import remoteexec, rx_e2e_tasks
remoteexec.configure(sys.argv[1])
print("calling", flush=True)
rx_e2e_tasks.Slow.execute(0, sys.argv[2], "interrupted")
"""


def test_ctrl_c_in_a_blocking_call_withdraws_its_task(url: str, farm: Farm, tmp_path: Path) -> None:
    notes = tmp_path / "ledger.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(farm.folder), *sys.path]))
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, url, str(notes)],
        cwd=farm.folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: waiting(url) == 1, what="the call to be queued")
        caller.send_signal(signal.SIGINT)
        _, err = caller.communicate(timeout=30)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
    assert b"KeyboardInterrupt" in err, err.decode(errors="replace")
    assert waiting(url) == 0  # withdrawn, not left queued
    farm.start()
    with Client(url) as client, using(client):
        assert isinstance(tasks.Slow.execute(0, str(notes), "probe"), int)
    backend = open_backend(url)
    try:
        wait_for(lambda: backend.stats().running == 0, what="the worker to be idle")
        assert sum(backend.stats().queues.values()) == 0
    finally:
        backend.close()
    assert [fields[1] for fields in ledger(notes)] == ["probe", "probe"]  # start, end


def write_malformed_reply(url: str, reply_to: str) -> None:
    """One reply element (or row) that decodes to nothing, addressed to ``reply_to``."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url[len("sqlite:///") :])) as conn, conn:
            conn.execute(
                "INSERT INTO replies (reply_to, body, created) VALUES (?, ?, ?)",
                (reply_to, b"\x00", time.time()),
            )
        return
    if url.startswith("redis"):
        import redis

        with contextlib.closing(redis.Redis.from_url(url)) as r:
            r.rpush(f"remoteexec:{{{reply_to}}}:r", b"\x00")
        return
    backend: Any = open_backend(url)
    sql = (
        "INSERT INTO remoteexec_replies (reply_to, task_id, body, created) "
        "VALUES (%s, 'junk', x'00', 0)"
    )
    try:
        backend._db.run(lambda cur: cur.execute(sql, (reply_to,)))
    finally:
        backend.close()


def test_a_malformed_reply_stops_neither_the_listener_nor_other_calls(
    url: str, client: Client, farm: Farm
) -> None:
    farm.start()
    assert tasks.Echo.value(0) == 0  # the worker is up; the tables exist
    futures = [tasks.Echo.value.submit(i) for i in range(1, 4)]
    write_malformed_reply(url, client.reply_to)
    futures += [tasks.Echo.value.submit(i) for i in range(4, 7)]
    assert [f.result(timeout=BOUND + SLACK + 30) for f in futures] == [1, 2, 3, 4, 5, 6]
    write_malformed_reply(url, client.reply_to)
    assert tasks.Echo.value(7) == 7  # a blocking call reads the junk itself
    listener = client.replies.listener
    assert listener is not None and listener.is_alive()


# The contract behind it, on every backend ---------------------------------------------


def test_lost_and_purged_name_the_tasks_purge_deleted(backend: Any) -> None:
    from remoteexec.backends import Done, Job

    kept, purged, answered = (Job(f"id-{n}", "q", "client", b"x") for n in "abc")
    backend.enqueue([answered])
    [claim] = backend.claim(["q"], limit=1, lease=30, wait=1)
    backend.complete([Done(claim, b"reply")])
    backend.enqueue([purged])
    assert backend.purge("q") == 1
    backend.enqueue([kept])
    ids = [kept.id, purged.id, answered.id]
    assert backend.lost(ids, "client") == {purged.id}
    assert backend.purged(ids) == {purged.id}
    assert backend.purged([kept.id, answered.id]) == set()


def test_sqlite_schema_version_1_is_migrated(tmp_path: Path) -> None:
    from remoteexec.backends import Done, Job

    path = tmp_path / "old.db"
    fresh = open_backend(f"sqlite:///{path}")
    fresh.stats()  # creates the schema; then back to version 1's tables
    fresh.close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE replies DROP COLUMN task_id")
        conn.execute("DROP TABLE purged")
        for column in ("traceback", "reply_to", "body", "deadline"):  # version 3's
            conn.execute(f"ALTER TABLE dead DROP COLUMN {column}")
        for column in ("failed", "durations"):  # version 4's
            conn.execute(f"ALTER TABLE workers DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 1")
    backend = open_backend(f"sqlite:///{path}")
    try:
        job = Job("t1", "q", "client", b"x")
        backend.enqueue([job])
        [claim] = backend.claim(["q"], limit=1, lease=30, wait=1)
        backend.complete([Done(claim, b"reply")])
        assert backend.lost([job.id], "client") == set()
        assert backend.purge() == 0
    finally:
        backend.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# The reply listener never dies silently ----------------------------------------------


class Fatal(BaseException):
    """Raised by a decoding hook: not an Exception, so nothing on the way catches it."""


class Deadly:
    """A result whose decoding raises ``Fatal`` in whichever thread reads the reply."""


def _fatal(_: Any) -> Deadly:
    raise Fatal("decoding hook gave up")


register_type(Deadly, lambda _: 0, _fatal)


@remote
class Results:
    def deadly(self) -> Deadly:
        return Deadly()

    def value(self, x: Any, delay: float = 0.0) -> Any:
        time.sleep(delay)
        return x


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_listener_that_dies_fails_its_calls_and_the_next_call_restarts_it() -> None:
    url = f"memory://{os.urandom(8).hex()}"
    worker = Worker(url, threads=2)
    serving = threading.Thread(target=worker.run, daemon=True)
    serving.start()
    try:
        with Client(url) as client, using(client):
            slow = Results.value.submit("late", delay=1.0)
            Results.deadly.submit()
            listener = client.replies.listener
            assert listener is not None
            listener.join(30)
            assert not listener.is_alive()  # killed by the hook, as nothing else could
            with pytest.raises(CallLost, match="listener"):
                slow.result(timeout=10)
            assert Results.value.submit("again").result(timeout=30) == "again"
            assert client.replies.listener is not None and client.replies.listener.is_alive()
    finally:
        worker.stop()
        serving.join(10)
