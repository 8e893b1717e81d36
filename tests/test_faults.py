"""Faults the Redis and MySQL issues name: frozen workers, broker restarts, dead clients,
large payloads, many workers racing for claims. Real servers, real worker processes."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest

from remoteexec import BackendUnavailable, Client, WorkerLost, using
from tests.conftest import fresh_url
from tests.farm import Farm, ledger, tasks

pytestmark = pytest.mark.timeout(300)


def test_a_frozen_worker_loses_its_task_and_its_late_result_is_discarded(
    farm: Farm, farm_url: str, tmp_path: Path
) -> None:
    farm.start(lease=1.0)
    farm.start(lease=1.0)
    farm.worker_pids(2)
    book = tmp_path / "ledger.txt"
    with Client(farm_url) as client, using(client):
        future = tasks.Slow.execute.submit(1.0, str(book), "frozen")
        deadline = time.monotonic() + 20
        while not ledger(book) and time.monotonic() < deadline:
            time.sleep(0.02)
        frozen = int(ledger(book)[0][2])
        os.kill(frozen, signal.SIGSTOP)
        try:
            assert future.result(timeout=30) != frozen  # ran again elsewhere
        finally:
            os.kill(frozen, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while len([x for x in ledger(book) if x[0] == "end"]) < 2:
            assert time.monotonic() < deadline, ledger(book)
            time.sleep(0.05)
        time.sleep(0.5)  # let the thawed worker try to deliver
        assert client.backend.replies(client.reply_to, wait=0.5) == []  # no second result
    assert "discarded" in farm.logs()


def test_large_arguments_and_results_round_trip_and_leave_no_rows(
    farm: Farm, farm_url: str
) -> None:
    farm.start()
    blob = os.urandom(10 * 2**20)
    with Client(farm_url) as client, using(client):
        assert tasks.Echo.value(blob) == blob
        stats = client.backend.stats()
        assert sum(stats.queues.values()) == 0 and stats.running == 0


@pytest.mark.parametrize("mode", ["skip_locked", "optimistic"])
def test_mysql_eight_workers_twenty_thousand_tasks_never_run_twice_at_once(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    url = fresh_url("mysql", request, tmp_path) + f"?claim={mode}"
    farm = Farm(url, tmp_path)
    book = tmp_path / "ledger.txt"
    try:
        farm.start(processes=8, lease=10.0)
        farm.worker_pids(8)
        with Client(url) as client, using(client):
            got = list(tasks.Ledgered.execute.map(range(20_000), [str(book)] * 20_000))
        assert got == list(range(20_000))
    finally:
        farm.stop()
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    open_at: dict[tuple[str, str], float] = {}
    for kind, task, pid, at in ledger(book):
        if kind == "start":
            open_at[task, pid] = float(at)
        else:
            spans[task].append((open_at.pop((task, pid)), float(at)))
    assert set(spans) == {str(i) for i in range(20_000)}
    for task, runs in spans.items():
        runs.sort()
        for (_, end), (start, _) in itertools.pairwise(runs):
            assert start >= end, f"task {task} ran twice at the same time"
    assert "Deadlock" not in farm.logs() and "Lock wait" not in farm.logs()


def _redis_keys_and_memory(server) -> tuple[int, int]:
    info = server.client().info("memory")
    return server.client().dbsize(), int(info["used_memory"])


def test_redis_results_of_killed_clients_expire(
    redis_server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = fresh_url("redis", request, tmp_path)
    (tmp_path / "remoteexec.yaml").write_text("result_ttl: 2\n")
    farm = Farm(url, tmp_path)
    farm.start(processes=2)
    farm.worker_pids(2)
    keys_before, memory_before = _redis_keys_and_memory(redis_server)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent / "tasks")!r})
        import remoteexec, rx_e2e_tasks as t
        client = remoteexec.configure({url!r}, result_ttl=2)
        futures = [t.CalculateMultipleOfPi.execute.submit(i) for i in range(5000)]
        print("submitted", flush=True)
        sys.stdin.read()
    """)
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        for proc in clients:
            assert proc.stdout is not None and proc.stdout.readline() == b"submitted\n"
            proc.kill()
        with Client(url) as watcher:
            deadline = time.monotonic() + 120
            while sum(watcher.backend.stats().queues.values()) or watcher.backend.stats().running:
                assert time.monotonic() < deadline, "the workers did not finish the calls"
                time.sleep(0.2)
        time.sleep(3.5)  # result_ttl (2 s) and a margin
        redis_server.client().execute_command("MEMORY PURGE")
        keys_after, memory_after = _redis_keys_and_memory(redis_server)
    finally:
        for proc in clients:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        farm.stop()
    assert keys_after <= keys_before
    assert memory_after <= memory_before + 256 * 1024, (memory_before, memory_after)


@pytest.mark.parametrize("in_flight", [0, 1000])
def test_redis_restart_workers_and_clients_carry_on(
    redis_server, tmp_path: Path, request: pytest.FixtureRequest, in_flight: int
) -> None:
    url = fresh_url("redis", request, tmp_path)
    farm = Farm(url, tmp_path)
    farm.start(processes=2, lease=3.0)
    farm.worker_pids(2)
    try:
        with Client(url) as client, using(client):
            futures = [tasks.Slow.execute.submit(0.002) for _ in range(in_flight)]
            time.sleep(0.3)
            redis_server.restart()
            outcomes: dict[str, int] = defaultdict(int)
            for f in futures:
                try:
                    f.result(timeout=60)
                    outcomes["ok"] += 1
                except (BackendUnavailable, WorkerLost) as exc:
                    outcomes[type(exc).__name__] += 1
            assert sum(outcomes.values()) == in_flight
            # Without restarting anything, the farm serves again within 10 s.
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert tasks.CalculateMultipleOfPi.execute.options(timeout=2)(3) == (
                        math.pi * 3
                    )
                    break
                except Exception:
                    assert time.monotonic() < deadline, farm.logs()[-3000:]
    finally:
        farm.stop()
