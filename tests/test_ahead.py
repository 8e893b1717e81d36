"""Claiming ahead (``ahead.py``): while tasks are slow, a serving thread's next claim is made
while the last task of its batch runs, and tasks claimed ahead behind a long task go back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteexec import Client, Worker, remote, using
from remoteexec.ahead import HOLD, Courier
from remoteexec.backends import Claim
from tests.conftest import ONE_PER_BACKEND, fresh_url


@remote
class Nap:
    def nap(self, seconds: float) -> float:
        """Sleep, then say when it ended."""
        time.sleep(seconds)
        return time.time()


def claim(n: int) -> Claim:
    return Claim(f"id{n}", "q", "r", b"", 1, f"t{n}")


def test_a_serving_thread_ready_in_time_gets_the_tasks_claimed_ahead() -> None:
    courier, handed_back = Courier("test-ahead"), []
    try:
        ahead = courier.send([], lambda: ([True], [claim(1)]), handed_back.extend)
        time.sleep(HOLD / 5)
        assert ahead.answer() == ([True], [claim(1)])
        assert ahead.exchange.result() == ([True], [claim(1)])
    finally:
        courier.close()
    assert handed_back == []


def test_tasks_claimed_ahead_go_back_when_the_running_task_takes_longer_than_the_hold() -> None:
    courier, handed_back = Courier("test-ahead"), []
    try:
        ahead = courier.send([], lambda: ([True], [claim(1), claim(2)]), handed_back.extend)
        time.sleep(HOLD * 3)
        assert handed_back == [claim(1), claim(2)]
        assert ahead.answer() == ([True], [])  # the results' answer stands
    finally:
        courier.close()


def test_a_failed_exchange_raises_in_the_serving_thread() -> None:
    def fail() -> Any:
        raise ConnectionError("gone")

    courier = Courier("test-ahead")
    try:
        with pytest.raises(ConnectionError):
            courier.send([], fail, lambda _: None).answer()
    finally:
        courier.close()


@pytest.fixture(params=ONE_PER_BACKEND)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_url(request.param, request, tmp_path)


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url) as client, using(client):
        yield client


def serve(url: str) -> tuple[Worker, threading.Thread, list[float]]:
    """A one-thread worker that records the ``wait`` of each claim it makes."""
    worker, waits = Worker(url, threads=1, lease=10), []
    real = worker.backend.complete_and_claim

    def complete_and_claim(*args: Any, **kwargs: Any) -> Any:
        waits.append(kwargs["wait"])
        return real(*args, **kwargs)

    worker.backend.complete_and_claim = complete_and_claim  # type: ignore[method-assign]
    thread = threading.Thread(target=worker.run)
    thread.start()
    return worker, thread, waits


def stop(worker: Worker, thread: threading.Thread) -> None:
    worker.stop()
    thread.join(15)
    assert not thread.is_alive()


def test_slow_tasks_are_claimed_while_the_last_one_runs_and_all_end(
    url: str, client: Client
) -> None:
    worker, thread, waits = serve(url)
    try:
        ends = list(Nap.nap.map([0.003] * 60))
    finally:
        stop(worker, thread)
    assert len(ends) == 60
    assert waits.count(0.0) >= 20, waits  # claims made ahead, without waiting
    assert worker.info.done == 60


def test_a_task_claimed_ahead_behind_a_long_one_runs_on_another_worker(
    url: str, client: Client
) -> None:
    first, first_thread, _ = serve(url)
    second: tuple[Worker, threading.Thread, list[float]] | None = None
    try:
        list(Nap.nap.map([0.005] * 5))  # the first worker now finds its tasks slow
        # Sent in one batch: the short one is there to claim ahead when the long one starts.
        futures = client.submit_many(Nap.__name__, "nap", [((1.5,), {}), ((0.0,), {})])
        time.sleep(0.3)  # the first runs the long task, holding the short one ahead
        second = serve(url)
        long_end, short_end = (f.result(timeout=30) for f in futures)
    finally:
        stop(first, first_thread)
        if second is not None:
            stop(*second[:2])
    assert short_end < long_end - 0.5  # not run after the long task by the first worker
