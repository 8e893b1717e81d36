"""Results by id: ``keep_result``, ``remoteexec.result`` and ``remoteexec.status`` on real
``remoteexec-worker`` processes, every backend that processes can share (sqlite, redis,
mysql)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pymysql
import pytest
import redis

import remoteexec
from remoteexec import CallTimeout, ConfigurationError, RemoteError, ResultExpired
from remoteexec.backends.mysql.connection import parse_url
from remoteexec.client import current_client, new_future
from remoteexec.future import CallOptions
from tests.farm import Farm, tasks
from tests.test_e2e import client, wait_for  # noqa: F401  (the fixture, used by name)

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("client")]

_READER = """
import sys, remoteexec
from remoteexec import RemoteError
client = remoteexec.configure(sys.argv[1])
try:
    print("value", repr(remoteexec.result(sys.argv[2], timeout=60)))
except RemoteError as exc:
    print("error", exc.type_name, exc.message)
print("status", remoteexec.status(sys.argv[2]))
"""


def read_elsewhere(url: str, task_id: str) -> list[str]:
    """What ``result`` and ``status`` say of ``task_id`` in a process of its own."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", _READER, url, task_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.splitlines()


def test_a_sent_call_s_result_is_read_by_id_from_another_process(farm: Farm, farm_url: str) -> None:
    sent = tasks.Echo.value.options(keep_result=60).send({"answer": 42})
    failed = tasks.Failing.execute.options(keep_result=60).send("kept boom")
    farm.start()
    assert read_elsewhere(farm_url, sent) == ["value {'answer': 42}", "status done"]
    assert read_elsewhere(farm_url, failed) == [
        "error ValueError bad value: kept boom",
        "status failed",
    ]


def test_status_goes_from_waiting_to_running_to_done(farm: Farm) -> None:
    sent = tasks.Slow.execute.options(keep_result=60).send(2.0)
    assert remoteexec.status(sent) == "waiting"
    with pytest.raises(CallTimeout, match=sent):
        remoteexec.result(sent, timeout=0.3)  # nobody serves the queue yet
    farm.start()
    wait_for(lambda: remoteexec.status(sent) == "running", message="the call to start")
    pid = remoteexec.result(sent, timeout=60)
    assert pid in farm.worker_pids(1)
    assert remoteexec.status(sent) == "done"


def test_a_remote_error_is_raised_and_the_status_reads_failed(farm: Farm) -> None:
    farm.start()
    sent = tasks.Failing.execute.options(keep_result=60).send("kept failure")
    with pytest.raises(ValueError, match="bad value: kept failure") as caught:
        remoteexec.result(sent, timeout=60)
    assert isinstance(caught.value, RemoteError)
    assert "rx_e2e_tasks.py" in caught.value.remote_traceback
    assert remoteexec.status(sent) == "failed"


def test_a_result_expires_after_keep_result(farm: Farm) -> None:
    farm.start()
    sent = tasks.Echo.value.options(keep_result=1).send("short-lived")
    assert remoteexec.result(sent, timeout=60) == "short-lived"
    time.sleep(1.5)
    assert remoteexec.status(sent) == "lost"
    with pytest.raises(ResultExpired, match=f"no result is kept for call {sent}: it expired"):
        remoteexec.result(sent, timeout=5)


def test_a_call_without_keep_result_reads_lost_once_it_ended(farm: Farm) -> None:
    farm.start()
    future = tasks.Echo.value.submit("not kept")
    assert future.result(timeout=60) == "not kept"
    assert current_client().status(future.task_id) == "lost"
    with pytest.raises(ResultExpired, match="never kept"):
        current_client().result(future.task_id)


def test_a_submitted_call_keeps_its_result_and_a_large_one_its_blob(farm: Farm) -> None:
    farm.start()
    size = 300 * 1024  # above the default blob_threshold: the value travels as a blob
    future = tasks.Sized.execute.options(keep_result=60).submit(size)
    assert future.result(timeout=60) == b"x" * size  # read by its caller first
    assert remoteexec.result(future.task_id) == b"x" * size
    assert remoteexec.result(future.task_id) == b"x" * size  # every reader gets it
    assert remoteexec.status(future.task_id) == "done"


def test_ids_and_keep_result_are_checked() -> None:
    for bad in ["", "x" * 192, 42, None]:
        with pytest.raises(ConfigurationError, match="call id"):
            remoteexec.status(bad)  # type: ignore[arg-type]
    for timeout in [-1, float("nan"), "5"]:
        with pytest.raises(ConfigurationError, match="timeout"):
            remoteexec.result("some-id", timeout=timeout)  # type: ignore[arg-type]
    for keep in [0, -1, float("nan"), float("inf"), 10**9, "60"]:
        with pytest.raises(ConfigurationError, match="keep_result"):
            tasks.Echo.value.options(keep_result=keep)  # type: ignore[arg-type]


# -- bounded: 100,000 results nobody reads ---------------------------------------------------

_TABLES = ("tasks", "replies", "kept", "blobs")


def footprint(url: str) -> dict[str, int]:
    """What the broker holds: keys and memory (Redis), or rows per table (SQL)."""
    if url.startswith("redis"):
        r = redis.Redis.from_url(url)
        try:
            return {"keys": int(r.dbsize()), "memory": int(r.info("memory")["used_memory"])}
        finally:
            r.close()
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
            count = "SELECT count(*) FROM {}"
            return {t: conn.execute(count.format(t)).fetchone()[0] for t in _TABLES if t in names}
        finally:
            conn.close()
    connect, _ = parse_url(url)
    mysql = pymysql.connect(**connect, autocommit=True)
    try:
        with mysql.cursor() as cur:
            found = {}
            for table in _TABLES:
                cur.execute(f"SELECT count(*) FROM remoteexec_{table}")
                found[table] = int(cur.fetchone()[0])
            return found
    finally:
        mysql.close()


def at_baseline(url: str, baseline: dict[str, int]) -> bool:
    now = footprint(url)
    if "memory" in now:  # Redis: no more keys, and memory back within 2 MiB
        return now["keys"] <= baseline["keys"] and now["memory"] < baseline["memory"] + 2**21
    return {t: n for t, n in now.items() if n} == {t: n for t, n in baseline.items() if n}


@pytest.mark.big
@pytest.mark.timeout(900)
def test_results_nobody_reads_leave_the_backend_at_its_baseline(farm: Farm, farm_url: str) -> None:
    sender, n, keep = current_client(), 100_000, 10.0
    farm.start(processes=2)
    assert tasks.Echo.value(0) == 0  # tables, queue and worker records made
    time.sleep(2.5)  # Redis: the doorbells of that call are gone (they live 2 s)
    baseline = footprint(farm_url)
    options = CallOptions(keep_result=keep)
    ids: list[str] = []
    for start in range(0, n, 5000):  # send(), in batches of one enqueue each
        calls = [((i,), {}) for i in range(start, start + 5000)]
        jobs, _ = sender._prepare("Echo", "value", calls, options, new_future, reply=False)
        sender.backend.enqueue(jobs)
        ids += [j.id for j in jobs]
    backend = sender.backend

    def drained() -> bool:
        stats = backend.stats()
        return not any(stats.queues.values()) and stats.running == 0

    wait_for(drained, timeout=600, message="the 100,000 calls to run")
    ended = time.monotonic()
    peak = footprint(farm_url)
    assert peak != baseline  # the results are kept meanwhile
    last = ids[-100:]
    assert len(backend.results(last)) == 100  # kept, unread
    assert sender.result(last[-1]) == n - 1
    time.sleep(max(0.0, ended + keep + 0.5 - time.monotonic()))
    assert backend.results(ids[:500] + last) == {}
    backend.sweep()
    deadline = time.monotonic() + 30
    while not at_baseline(farm_url, baseline):
        now = footprint(farm_url)
        assert time.monotonic() < deadline, f"{now} is not back at {baseline} (peak: {peak})"
        time.sleep(0.2)
