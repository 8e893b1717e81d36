"""End to end: real ``remoteexec-worker`` processes, a client in this process, every backend
that processes can share (sqlite, redis, mysql in both claim modes)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import remoteexec
from remoteexec import CallTimeout, Client, RemoteError, UnknownTask, WorkerLost, using
from tests.farm import Farm, ledger, tasks

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def client(farm_url: str) -> Iterator[Client]:
    with Client(farm_url) as client, using(client):
        yield client


def wait_for(predicate, timeout: float = 20.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.05)


EXTENSION_VALUES = [
    (1, "two", 3.0),
    {1, 2, 3},
    frozenset({"a", "b"}),
    b"\x00\xffbytes",
    dt.datetime(2010, 6, 5, 18, 15, 59, 123456),
    dt.datetime(2010, 6, 5, 18, 15, 59, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    dt.date(2010, 6, 5),
    dt.time(18, 15, 59),
    dt.timedelta(days=2, seconds=5, microseconds=7),
    Decimal("3.14159265358979323846"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    complex(1.5, -2),
    {"nested": [(1, 2), {frozenset({1}): dt.date(2020, 1, 1)}]},
]


def test_calls_look_local_across_processes(farm: Farm, client: Client) -> None:
    farm.start()
    farm.start()
    farm.worker_pids(2)
    assert tasks.CalculateMultipleOfPi.execute(759) == math.pi * 759
    assert tasks.Echo.both(1, "a", key=[1, 2]) == [[1, "a"], {"key": [1, 2]}]
    for value in EXTENSION_VALUES:
        got = tasks.Echo.value(value)
        assert got == value and type(got) is type(value)
    assert tasks.Echo.later("async") == "async"


def test_remote_errors_unknown_tasks_many_submits_and_map(farm: Farm, client: Client) -> None:
    farm.start()
    farm.start()
    workers = farm.worker_pids(2)
    with pytest.raises(ValueError, match="bad value: x") as caught:
        tasks.Failing.execute("x")
    error = caught.value
    assert isinstance(error, RemoteError) and error.type_name == "ValueError"
    assert "rx_e2e_tasks.py" in error.remote_traceback
    assert "the traceback must name this line" in error.remote_traceback
    with pytest.raises(UnknownTask):
        remoteexec.proxy("NoSuchTask").execute()
    futures = [tasks.CalculateMultipleOfPi.execute.submit(i) for i in range(1000)]
    assert [f.result(timeout=120) for f in futures] == [math.pi * i for i in range(1000)]
    assert list(tasks.CalculateMultipleOfPi.execute.map(range(3000))) == [
        math.pi * i for i in range(3000)
    ]
    # Still serving, by the same two worker processes: no failure cost a worker its life.
    pids = {tasks.Echo.pid() for _ in range(20)}
    assert pids <= set(workers), (pids, workers)
    assert farm.worker_pids(2) == workers


def test_futures_waited_on_one_at_a_time_or_from_many_threads_all_end(
    farm: Farm, client: Client
) -> None:
    """``result()`` on the only pending call reads the reply in the waiting thread; its
    timeout still holds, and calls from several threads at once all get their results."""
    farm.start()
    farm.worker_pids(1)
    assert [tasks.CalculateMultipleOfPi.execute.submit(i).result(30) for i in range(200)] == [
        math.pi * i for i in range(200)
    ]
    slow = tasks.Slow.execute.submit(3.0)
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.result(timeout=0.3)
    assert not slow.done()
    assert isinstance(slow.result(timeout=30), int)
    results: dict[int, list[float]] = {}

    def caller(n: int) -> None:
        with using(client):
            results[n] = [
                tasks.CalculateMultipleOfPi.execute.submit(n * 1000 + i).result(30)
                for i in range(50)
            ]

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {n: [math.pi * (n * 1000 + i) for i in range(50)] for n in range(4)}


def test_a_lone_future_is_read_as_soon_as_anything_waits_for_it(
    farm: Farm, farm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener is not woken for a lone call: whatever waits for its future (``result``,
    ``exception``, a callback, ``concurrent.futures.wait`` or ``as_completed``, ``await``)
    gets its reply read, although the idle listener would sleep for a minute."""
    monkeypatch.setattr("remoteexec.replies._IDLE_WAIT", 60.0)
    farm.start()
    farm.worker_pids(1)
    pi = tasks.CalculateMultipleOfPi.execute
    with Client(farm_url) as client, using(client):
        assert pi.submit(1).result(30) == math.pi  # the listener now exists, and idles
        assert pi.submit(2).result(30) == math.pi * 2  # read by this thread
        assert isinstance(tasks.Failing.execute.submit("no").exception(30), RemoteError)
        called = threading.Event()
        pi.submit(3).add_done_callback(lambda f: called.set())
        assert called.wait(30)
        done, _ = concurrent.futures.wait([pi.submit(4)], timeout=30)
        assert [f.result() for f in done] == [math.pi * 4]
        got = [f.result() for f in concurrent.futures.as_completed([pi.submit(5)], 30)]
        assert got == [math.pi * 5]

        async def awaited() -> float:
            return await pi.submit(6)  # type: ignore[no-any-return]

        assert asyncio.run(asyncio.wait_for(awaited(), 30)) == math.pi * 6


def test_a_lone_future_nobody_waits_for_is_read_by_the_listener(
    farm: Farm, farm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("remoteexec.replies._IDLE_WAIT", 0.1)
    farm.start()
    farm.worker_pids(1)
    pi = tasks.CalculateMultipleOfPi.execute
    with Client(farm_url) as client, using(client):
        assert pi.submit(1).result(30) == math.pi
        future = pi.submit(7)
        wait_for(future.done, message="the listener to read the reply")
        assert future.result() == math.pi * 7


def test_map_times_out_fails_in_order_and_withdraws_what_it_no_longer_needs(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    """``map``'s calls (light slots, not futures) end as calls do: a timeout is raised at
    its turn, and a consumer that stops early withdraws the calls no worker started."""
    farm.start()
    farm.worker_pids(1)
    with pytest.raises(CallTimeout):
        list(tasks.Slow.execute.options(timeout=0.5).map([3.0]))
    book = tmp_path / "ledger.txt"
    calls = tasks.Slow.execute.map([0.05] * 200, [str(book)] * 200, range(200))
    assert [next(calls) for _ in range(3)] == [farm.worker_pids(1)[0]] * 3
    calls.close()  # the consumer stops
    started = len([line for line in ledger(book) if line[0] == "start"])
    time.sleep(1.0)  # what was not withdrawn would run meanwhile (20 calls a second)
    lines = ledger(book)
    assert len([line for line in lines if line[0] == "start"]) < started + 10 < 200, lines
    assert list(tasks.CalculateMultipleOfPi.execute.map([7])) == [math.pi * 7]


def test_killed_worker_task_completes_elsewhere_once(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    farm.start(lease=2.0)
    farm.start(lease=2.0)
    farm.worker_pids(2)
    book = tmp_path / "ledger.txt"
    future = tasks.Slow.execute.submit(1.5, str(book), "victim")
    wait_for(lambda: ledger(book), message="the task to start")
    victim = int(ledger(book)[0][2])
    os.kill(victim, signal.SIGKILL)
    finished_by = future.result(timeout=2.0 + 15)
    assert finished_by != victim
    starts = [line for line in ledger(book) if line[0] == "start"]
    ends = [line for line in ledger(book) if line[0] == "end"]
    assert len(starts) == 2 and len(ends) == 1 and int(ends[0][2]) == finished_by


def test_task_that_always_kills_its_worker_ends_as_worker_lost(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    farm.start(lease=1.0)
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    with pytest.raises(WorkerLost, match="2 attempt"):
        tasks.KillsItsWorker.execute(str(book))  # max_attempts=2
    assert len(ledger(book)) == 2
    assert tasks.CalculateMultipleOfPi.execute(2) == math.pi * 2  # the farm still serves


def test_sigterm_finishes_running_task_and_hands_back_the_rest(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    book = tmp_path / "ledger.txt"
    # Queued before the worker starts: one quick call, then the slow ones. A worker claims
    # one task first, then as many as its budget allows after so quick a one (several): so
    # the batch that starts with the first slow call holds unstarted calls behind it.
    quick = tasks.CalculateMultipleOfPi.execute.submit(1)
    # max_attempts=1: a call handed back is delivered again with the same attempt and runs;
    # one that came back only by lease expiry would count a second attempt: WorkerLost.
    slow = tasks.Slow.execute.options(max_attempts=1)
    futures = [slow.submit(0.5, str(book), f"t{i}") for i in range(12)]
    leaving = farm.start(lease=5.0)
    wait_for(lambda: ledger(book), message="the first slow task to start")
    staying = farm.start(lease=5.0)
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(20) == 0
    assert quick.result(timeout=60) == math.pi
    assert all(f.result(timeout=60) > 0 for f in futures)  # none lost, none WorkerLost
    lines = ledger(book)
    started = [line[1] for line in lines if line[0] == "start"]
    ended = [line[1] for line in lines if line[0] == "end"]
    assert sorted(started) == sorted(ended) == sorted(f"t{i}" for i in range(12))  # once each
    log = (tmp_path / "worker-0.log").read_text()  # the leaving worker's
    handed = [int(n) for n in re.findall(r"handed back (\d+) unstarted", log)]
    assert sum(handed) >= 1, log[-3000:]
    assert staying.poll() is None


def test_sigterm_while_a_worker_claims_ahead_stops_it_and_loses_no_call(
    farm: Farm, client: Client
) -> None:
    """Tasks of a few milliseconds make a worker claim its next batch while its last task
    runs. SIGTERM at any moment of that cycle stops the worker within the grace, and what it
    had claimed but not started goes back to the queue: every call ends in its result."""
    # max_attempts=1: a call that came back only by lease expiry would be WorkerLost.
    sleepy = tasks.Sleepy.execute.options(max_attempts=1)
    futures = [sleepy.submit(0.003) for _ in range(400)]
    for turn in range(6):
        worker = farm.start(lease=60.0)
        goal = sum(f.done() for f in futures) + 20
        wait_for(lambda g=goal: sum(f.done() for f in futures) >= g, message="some results")
        time.sleep(turn * 0.0007)  # a different moment of the claim cycle each time
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    farm.start(lease=60.0)
    assert [f.result(timeout=60) for f in futures] == [0.003] * 400


def test_timeout_without_workers_and_expired_tasks_are_not_run(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    book = tmp_path / "ledger.txt"
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        tasks.Slow.execute.options(timeout=1).submit(0, str(book), "late").result()
    assert 0.5 <= time.monotonic() - started <= 1.5
    burst = farm.start("--burst")
    assert burst.wait(30) == 0
    assert ledger(book) == []
    # A call whose timeout has not passed is run normally by the next worker.
    future = tasks.Slow.execute.options(timeout=60).submit(0, str(book), "fine")
    farm.start()
    assert future.result(timeout=60) > 0
    assert [line[1] for line in ledger(book)] == ["fine", "fine"]


def test_worker_command_rejects_a_task_module_that_cannot_be_imported(
    farm_url: str, tmp_path: Path
) -> None:
    farm = Farm(farm_url, tmp_path)
    proc = farm.start("--import", "no_such_module_here")
    try:
        assert proc.wait(30) == 78
    finally:
        farm.stop()
    assert "no_such_module_here" in farm.logs()


def test_demo_runs_on_the_embedded_default_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEEXEC_")}
    out = subprocess.run(
        [sys.executable, "-m", "remoteexec", "demo", "--seconds", "3", "--workers", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Submitted: <Task" in out.stdout and "Received:  <Task" in out.stdout
    assert "tasks/s" in out.stdout
    assert (tmp_path / "remoteexec.db").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps and "--queues demo" not in ps
