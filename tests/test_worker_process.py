"""The worker process model: crashed workers' claims handed back at once, restarts that back
off, workers that refuse to start, and time limits that stop only the task that overran.

Real ``remoteexec-worker`` commands (``tests/farm.py``) on every backend processes share."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteexec import Client, TimeLimitExceeded, WorkerLost, using
from remoteexec.message import Call
from remoteexec.remote import TaskType
from remoteexec.sandbox import time_limit_of
from remoteexec.worker import Worker, WorkerDied
from tests.farm import Farm, ledger, tasks, worker_command

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(farm_url: str) -> Iterator[Client]:
    with Client(farm_url) as client, using(client):
        yield client


def run_worker(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [*worker_command(), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_a_task_that_crashes_its_process_every_time_is_worker_lost_in_seconds(
    farm: Farm, client: Client
) -> None:
    farm.start(lease=30.0)  # the default lease: without the hand-back this takes 90 s
    farm.worker_pids(1)
    started = time.monotonic()
    with pytest.raises(WorkerLost, match="3 attempt"):
        tasks.Poison.execute()  # os._exit on every attempt, max_attempts=3
    assert time.monotonic() - started < 5.0, farm.logs()
    assert farm.logs().count("handed back 1 task(s) of worker process") == 3
    # The same for a time-limited task, which kills its helper process, not the worker.
    pids = farm.worker_pids(1)
    started = time.monotonic()
    with pytest.raises(WorkerLost, match="3 attempt"):
        tasks.LimitedPoison.execute()
    assert time.monotonic() - started < 5.0, farm.logs()
    assert farm.worker_pids(1) == pids
    assert tasks.CalculateMultipleOfPi.execute(2) == math.pi * 2  # the farm still serves


def test_a_time_limit_stops_only_the_task_that_overran(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    farm.start("--threads", "2", lease=30.0)
    pids = farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    stuck = tasks.Sleepy.execute.submit(3600)  # time_limit=1
    started = time.monotonic()
    healthy = tasks.Slow.execute.submit(3, str(book), "healthy")
    assert healthy.result(timeout=30) == pids[0]  # ran in the worker process itself
    assert 3.0 <= time.monotonic() - started < 5.0
    with pytest.raises(TimeLimitExceeded, match="time limit of 1 s"):
        stuck.result(timeout=30)
    assert [line[0] for line in ledger(book)] == ["start", "end"]  # ran once
    assert farm.worker_pids(1) == pids
    # A fresh helper runs the next time-limited task.
    assert tasks.Sleepy.execute(0.1) == 0.1
    with pytest.raises(TimeLimitExceeded, match="time limit of 1 s"):
        tasks.Sleepy.execute(5)
    # A task in a helper process calls other tasks through the same broker.
    helper, value = tasks.LimitedNested.execute(3)
    assert value == math.pi * 3 and helper != pids[0]
    time.sleep(0.5)  # the ledger would show a second run of the healthy call by now
    assert len(ledger(book)) == 2 and farm.worker_pids(1) == pids
    assert "Traceback" not in farm.logs()


@pytest.mark.parametrize(
    ("own", "asked", "limit"),
    [(None, None, None), (1, None, 1), (1, 100, 1), (10, 0.5, 0.5), (None, 2, 2),
     (5, float("nan"), 5), (5, -(10**400), 5), (5, float("inf"), 5), (None, 0, None)],
)  # fmt: skip
def test_a_caller_can_lower_a_time_limit_but_never_raise_it(own, asked, limit) -> None:
    task = TaskType("T", object, time_limit=own)
    call = Call("id", "T", "execute", (), {}, None, 3, asked)
    assert time_limit_of(task, call) == limit


@pytest.mark.parametrize("queues", ["", ",", "x" * 129])
def test_bad_queue_names_stop_the_worker_at_once(queues: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    started = time.monotonic()
    out = run_worker("--url", url, "--import", "json", "--queues", queues, cwd=tmp_path)
    assert out.returncode != 0 and "queue name" in out.stderr, out.stderr
    assert time.monotonic() - started < 15
    assert "started worker process" not in out.stderr


def test_an_unreachable_broker_stops_the_worker_after_the_bounded_retry(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "one_task.py").write_text(
        "from remoteexec import remote\n\n@remote\nclass One:\n    def execute(self):\n"
        "        return 1\n"
    )
    url = f"redis://127.0.0.1:{port}/0"
    started = time.monotonic()
    out = run_worker("--url", url, "--import", "one_task", "--connect-timeout", "2", cwd=tmp_path)
    took = time.monotonic() - started
    assert out.returncode == 69, out.stderr
    assert "unreachable" in out.stderr and "could not start" in out.stderr
    assert 2.0 <= took < 30, took
    assert out.stderr.count("started worker process") == 1  # not restarted in a loop


def test_a_worker_without_task_types_refuses_to_start_unless_allowed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    out = run_worker("--url", url, cwd=tmp_path)
    assert out.returncode == 78 and "no task types" in out.stderr, out.stderr
    assert out.stderr.count("started worker process") == 1
    out = run_worker("--url", url, "--allow-empty", "--burst", cwd=tmp_path)
    assert out.returncode == 0, out.stderr


def test_restarts_of_a_crashing_worker_back_off(tmp_path: Path) -> None:
    (tmp_path / "dies_at_import.py").write_text("import os\n\nos._exit(3)\n")
    log = tmp_path / "supervisor.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    cmd = [*worker_command(), "--url", url, "--import", "dies_at_import"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("replacing it in") < 4:  # pauses 0.5 + 1 + 2 s
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        first = _restarts(log)
        time.sleep(2.0)
        assert len(_restarts(log)) <= len(first) + 1  # the next pause is 4 s, then 8 s
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    pauses = [float(p) for p in _restarts(log)]
    assert pauses[:4] == [0.5, 1.0, 2.0, 4.0], log.read_text()


def _restarts(log: Path) -> list[str]:
    return re.findall(r"exited with 3: replacing it in ([0-9.]+) s", log.read_text())


def _run_until_death(worker: Worker) -> BaseException | None:
    died: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            died.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    return died[0] if died else None


def test_a_serving_thread_or_monitor_that_dies_stops_the_worker_visibly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    # One of two serving threads dies (a fault injected past the loop's own error handling):
    # the worker stops instead of serving on with one thread.
    worker = Worker(url, threads=2, lease=5)
    calls = 0
    real = worker.outbox.settle

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return broken() if calls == 1 else real(*args, **kwargs)

    worker.outbox.settle = fails_once  # type: ignore[method-assign]
    with caplog.at_level(logging.CRITICAL, "remoteexec.worker"):
        died = _run_until_death(worker)
    assert isinstance(died, WorkerDied) and "serving thread" in str(died)
    assert "injected fault" in caplog.text and "Traceback" in caplog.text
    caplog.clear()
    # The monitor dies (here in its periodic sweep): the same.
    worker = Worker(url, threads=1, lease=5)
    worker.backend.sweep = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.CRITICAL, "remoteexec.worker"):
        died = _run_until_death(worker)
    assert isinstance(died, WorkerDied) and "monitor" in str(died)
    assert "injected fault" in caplog.text and "Traceback" in caplog.text
