"""README promises, each checked end to end: real ``remoteexec-worker`` processes on sqlite,
redis and mysql (or the one backend a promise is about), a client in this process.

- a task running three times its lease completes once (the lease is renewed);
- a malformed and an oversized message get a typed error while the worker serves on;
- a Redis that comes back empty fails the pending calls with ``BackendUnavailable``;
- MySQL refuses a message above ``max_allowed_packet`` with ``PayloadTooLarge``;
- SIGTERM hands back claimed-but-unstarted tasks at once (not by lease expiry), and a
  second signal exits at once;
- ``map`` raises the first failure in order; call options never collide with the task's
  own keyword arguments;
- passwords never appear in logs or error messages.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteexec import (
    BackendUnavailable,
    CallTimeout,
    Client,
    PayloadTooLarge,
    RemoteExecError,
    SerializationError,
    using,
)
from remoteexec.backends import Job, open_backend
from remoteexec.liveness import LIVENESS_AFTER, LIVENESS_EVERY
from tests._server import free_port
from tests.conftest import _need, fresh_url
from tests.farm import Farm, ledger, tasks

pytestmark = pytest.mark.timeout(180)

SLACK = 5.0  # seconds: the machine is shared and loaded


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


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "it") -> None:
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


def log_of(farm: Farm, index: int) -> str:
    return (farm.folder / f"worker-{index}.log").read_text(errors="replace")


# Leases ---------------------------------------------------------------------------------


def test_a_task_running_three_times_its_lease_completes_once(
    client: Client, farm: Farm, tmp_path: Path
) -> None:
    # Two workers: were the lease not renewed, the idle one would claim the task again
    # (attempt 2), and OnlyOnce (max_attempts=1) would end as WorkerLost.
    farm.start(lease=1.5)
    farm.start(lease=1.5)
    pids = farm.worker_pids(2)
    book = tmp_path / "ledger.txt"
    ran_on = tasks.OnlyOnce.execute(4.5, str(book), "long")
    assert ran_on in pids
    lines = ledger(book)
    assert [(line[0], line[1], int(line[2])) for line in lines] == [
        ("start", "long", ran_on),
        ("end", "long", ran_on),
    ]
    assert float(lines[1][3]) - float(lines[0][3]) >= 4.5  # it did run three leases long
    logs = farm.logs()
    assert "lease on task" not in logs and "giving up" not in logs, logs


# Bad input -------------------------------------------------------------------------------


def test_malformed_and_oversized_messages_get_typed_errors_and_the_worker_serves_on(
    url: str, client: Client, farm: Farm
) -> None:
    # The workers run in farm.folder and read its remoteexec.yaml; this client does not.
    (farm.folder / "remoteexec.yaml").write_text("max_message_size: 100000\n")
    farm.start()
    [pid] = farm.worker_pids(1)

    with pytest.raises(PayloadTooLarge, match=r"max_message_size \(100000 bytes\)"):
        tasks.Echo.value(b"x" * 200_000)  # 64 MiB for this client: the worker refuses it
    assert tasks.Echo.value("after the oversized one") == "after the oversized one"

    # A pending call whose task is then replaced, under the same id and reply address, by
    # bytes that are no message at all: the worker answers that id with the typed error.
    parked = tasks.Echo.value.options(queue="parked").submit("never run")
    assert client.backend.cancel(parked.job)
    client.backend.enqueue([Job(parked.task_id, "default", client.reply_to, b"\xc1 not msgpack")])
    error = parked.exception(timeout=30)
    assert type(error) is SerializationError, error
    assert tasks.Echo.value("after the malformed one") == "after the malformed one"

    assert farm.worker_pids(1) == [pid]  # the same process served throughout
    assert "rejected task" in log_of(farm, 0)


# Redis without persistence -------------------------------------------------------------


class Blocked:
    """A thread blocked in ``Echo.value``: what it ended with."""

    def __init__(self, client: Client) -> None:
        self.outcome: Any = None
        self._thread = threading.Thread(target=self._run, args=(client,), daemon=True)
        self._thread.start()

    def _run(self, client: Client) -> None:
        with using(client):
            try:
                self.outcome = tasks.Echo.value("blocked")
            except BaseException as exc:
                self.outcome = exc

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the blocked caller never ended"
        return self.outcome


def test_a_redis_that_comes_back_empty_fails_pending_calls_with_backend_unavailable(
    tmp_path: Path,
) -> None:
    _need("redis-server")
    from tests._redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as server, Client(server.url) as client, using(client):
        future = tasks.Echo.value.submit("future")
        blocked = Blocked(client)
        wait_for(lambda: waiting(server.url) == 2, what="both calls to be queued")
        server.kill()
        wait_for(lambda: client.replies.in_outage, what="the client to see the outage")
        server.restart(keep_data=False)  # back on the same port, empty
        bound = LIVENESS_AFTER + LIVENESS_EVERY + SLACK
        error = future.exception(timeout=bound)
        assert type(error) is BackendUnavailable, error
        assert "while it was unavailable" in str(error)
        outcome = blocked.join(bound)
        assert type(outcome) is BackendUnavailable, outcome


# MySQL's packet limit --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_packet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private MariaDB whose max_allowed_packet is 1 MiB."""
    _need("mariadbd")
    from tests._mariadb_server import MariaDBServer

    folder = tmp_path_factory.mktemp("small-packet")
    with MariaDBServer(folder, options=["--max-allowed-packet=1M"]) as server:
        yield server


@pytest.fixture
def small_packet_url(small_packet_server: Any) -> str:
    """A new database on ``small_packet_server``."""
    db = f"t_{uuid.uuid4().hex[:12]}"
    conn = small_packet_server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {db}")
    finally:
        conn.close()
    return str(small_packet_server.url).rsplit("/", 1)[0] + f"/{db}"


IN_BAND = 64 * 2**20  # a blob_threshold that keeps every message in band


def test_mysql_refuses_a_message_above_max_allowed_packet_with_payload_too_large(
    small_packet_url: str,
) -> None:
    with Client(small_packet_url, blob_threshold=IN_BAND) as client, using(client):
        with pytest.raises(PayloadTooLarge, match="max_allowed_packet"):
            tasks.Echo.value.submit(b"x" * (2 * 2**20))  # under max_message_size (64 MiB)
        assert waiting(small_packet_url) == 0  # nothing was sent
        tasks.Echo.value.submit(b"x" * 100_000)  # the connection is still good
        assert waiting(small_packet_url) == 1


def test_mysql_answers_a_result_above_max_allowed_packet_with_payload_too_large(
    small_packet_url: str, tmp_path: Path
) -> None:
    farm = Farm(small_packet_url, tmp_path)
    (farm.folder / "remoteexec.yaml").write_text(f"blob_threshold: {IN_BAND}\n")
    try:
        with Client(small_packet_url) as client, using(client):
            farm.start()
            farm.worker_pids(1)
            with pytest.raises(PayloadTooLarge):
                tasks.Sized.execute.options(timeout=15)(2 * 2**20)
            assert tasks.Echo.value.options(timeout=15)("after") == "after"
    finally:
        farm.stop()


def test_mysql_carries_arguments_and_results_above_max_allowed_packet_out_of_band(
    small_packet_url: str, tmp_path: Path
) -> None:
    farm = Farm(small_packet_url, tmp_path)  # the default blob_threshold: 256 KiB
    try:
        with Client(small_packet_url) as client, using(client):
            farm.start()
            value = os.urandom(3 * 2**20)  # three times the server's max_allowed_packet
            assert tasks.Echo.value.options(timeout=120)(value) == value
            assert tasks.Sized.execute.options(timeout=120)(3 * 2**20) == b"x" * 3 * 2**20
    finally:
        farm.stop()


# Signals ------------------------------------------------------------------------------------


def test_sigterm_hands_back_unstarted_tasks_at_once(
    url: str, client: Client, farm: Farm, tmp_path: Path
) -> None:
    # A 60 s lease: a task recovered by lease expiry would come back a minute later, with
    # its attempt raised (OnlyOnce, max_attempts=1, would then end as WorkerLost).
    leaving = farm.start(lease=60.0)
    farm.worker_pids(1)
    method = tasks.OnlyOnce.execute
    for round_ in range(3):
        # Quick tasks first, so the worker claims big batches; then a slow task with 30
        # quick ones behind it, enqueued in one step: one claim takes several of them.
        assert list(tasks.Echo.value.map(range(300))) == list(range(300))
        book = tmp_path / f"ledger-{round_}.txt"
        calls = [((5.0, str(book), "first"), {})]
        calls += [((0, str(book), f"t{i}"), {}) for i in range(30)]
        futures = client.submit_many(method.task, method.method, calls, method._opts)
        wait_for(lambda book=book: ledger(book), what="the first task to start")
        held = len(calls) - waiting(url)  # claimed by the only worker, one of them running
        if held > 1:
            break
        assert [f.result(timeout=60) for f in futures]  # a batch of one: nothing to hand back
    else:
        raise AssertionError("the worker never claimed more than one task at once")
    farm.start(lease=60.0)
    [leaving_pid] = [int(line[2]) for line in ledger(book) if line[1] == "first"]
    staying_pid = next(p for p in farm.worker_pids(2) if p != leaving_pid)
    leaving.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert leaving.wait(30) == 0
    results = [f.result(timeout=30) for f in futures]
    assert time.monotonic() - signalled < 30  # long before a 60 s lease could expire
    handed_back = sum(map(int, re.findall(r"handed back (\d+) unstarted", log_of(farm, 0))))
    assert handed_back == held - 1, log_of(farm, 0)  # every claimed task but the running one
    assert results[0] == leaving_pid  # the running task finished where it started
    assert results[1:].count(staying_pid) >= handed_back
    starts = [line[1] for line in ledger(book) if line[0] == "start"]
    assert sorted(starts) == sorted(["first", *(f"t{i}" for i in range(30))])  # each once


def test_a_second_signal_exits_at_once(client: Client, farm: Farm, tmp_path: Path) -> None:
    proc = farm.start(lease=60.0)
    [pid] = farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    tasks.Slow.execute.submit(60, str(book), "long")
    wait_for(lambda: ledger(book), what="the task to start")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping workers gracefully" in log_of(farm, 0), what="the first signal")
    time.sleep(0.5)
    assert proc.poll() is None  # the first signal waits for the running task
    proc.send_signal(signal.SIGTERM)
    again = time.monotonic()
    proc.wait(20)
    assert time.monotonic() - again < 10  # the task had a minute left
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, what="the worker to go")
    assert [line[0] for line in ledger(book)] == ["start"]


# The call API ---------------------------------------------------------------------------


def test_map_raises_the_first_failure_in_order(client: Client, farm: Farm) -> None:
    # Two workers: item 12 fails at once while item 5 takes half a second to fail.
    farm.start()
    farm.start()
    farm.worker_pids(2)
    got: list[int] = []
    with pytest.raises(ValueError, match=r"bad item 5$"):
        for value in tasks.FailsOn.execute.map(range(20), [[5, 12]] * 20, [[5]] * 20):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]


def test_call_options_never_collide_with_the_tasks_keyword_arguments(
    client: Client, farm: Farm
) -> None:
    farm.start()
    farm.worker_pids(1)
    assert tasks.TakesTimeout.execute.options(timeout=5)(0, timeout=3) == 3
    # The call's timeout is 5, not the task's 3: a task running 8 s times out at 5 s.
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        tasks.TakesTimeout.execute.options(timeout=5)(8, timeout=3)
    assert 4.9 <= time.monotonic() - started < 8


# Secrets -------------------------------------------------------------------------------------


def _texts_of(error: BaseException) -> str:
    """Everything an error shows: its chain's messages, reprs and traceback."""
    return "".join(traceback.format_exception(error)) + repr(error) + repr(error.__cause__)


@pytest.mark.parametrize("kind", ["redis", "mysql"])
def test_passwords_never_appear_in_logs_or_error_messages(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    if kind == "redis":  # nothing listens there
        url = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    else:  # a real server, which refuses the password
        server = request.getfixturevalue("mariadb_server")
        url = f"mysql://root:{password}@127.0.0.1:{server.port}/{server.database}"
    caplog.set_level(logging.DEBUG)
    shown = []
    with Client(url, timeout=3) as client, using(client):
        shown.append(repr(client))
        with pytest.raises(RemoteExecError) as caught:
            tasks.Echo.value("x")
        shown.append(_texts_of(caught.value))
    shown.append(caplog.text)
    farm = Farm(url, tmp_path)
    worker = farm.start("--connect-timeout", "1", "--log-level", "DEBUG")
    assert worker.wait(60) == 69, farm.logs()  # the broker is unreachable
    shown.append(farm.logs())
    assert "unreachable" in farm.logs()
    assert password not in "\n".join(shown)
