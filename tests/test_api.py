"""The public API, workers as threads: on the in-process ``memory://`` backend, and the
client-level behaviour (routing, cancel, ``using``, signing, nested calls) on every backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import remoteexec
from remoteexec import (
    CallTimeout,
    Client,
    ConfigurationError,
    RemoteFuture,
    SerializationError,
    UnknownTask,
    Worker,
    remote,
    using,
)
from tests.conftest import ONE_PER_BACKEND, fresh_url


@remote
class MultiplyPi:
    """A task with an expensive set-up that must happen once per worker thread."""

    made = 0

    def __init__(self) -> None:
        type(self).made += 1

    def execute(self, n: float) -> float:
        return math.pi * n

    def add(self, a: int, b: int = 0, *, timeout: int = 0) -> int:
        return a + b + timeout

    async def slow_double(self, n: int) -> int:
        await asyncio.sleep(0.01)
        return 2 * n

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def _private(self) -> None:
        raise AssertionError("never called")

    LIMIT = 10


#: Marks a test to run once per backend (sqlite, redis and mysql as well as memory).
on_every_backend = pytest.mark.parametrize("url", ONE_PER_BACKEND, indirect=True)


@pytest.fixture
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh broker's URL: ``memory://`` unless the test names backends."""
    return fresh_url(getattr(request, "param", "memory"), request, tmp_path)


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url) as client, using(client):
        yield client


@pytest.fixture
def worker(url: str, client: Client) -> Iterator[Worker]:
    worker = Worker(url, threads=2, lease=5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    yield worker
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()


def test_public_names_are_exported() -> None:
    for name in remoteexec.__all__:
        assert hasattr(remoteexec, name), name
    exported = {n for n in dir(remoteexec) if not n.startswith("_")}
    modules = {n for n in exported if isinstance(getattr(remoteexec, n), types.ModuleType)}
    assert exported - modules <= set(remoteexec.__all__)


def test_the_proxy_keeps_the_class_reachable() -> None:
    assert MultiplyPi.__wrapped__().execute(1) == math.pi
    assert MultiplyPi.LIMIT == 10
    assert isinstance(MultiplyPi.__wrapped__(), MultiplyPi)
    assert MultiplyPi.__name__ == "MultiplyPi"


def test_private_and_unknown_names_fail_at_once(client: Client) -> None:
    with pytest.raises(AttributeError):
        MultiplyPi._private  # noqa: B018
    with pytest.raises(AttributeError):
        MultiplyPi.no_such_method  # noqa: B018
    with pytest.raises(AttributeError):
        remoteexec.proxy("MultiplyPi")._private  # noqa: B018


def test_registering_another_class_under_a_taken_name_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="MultiplyPi"):

        @remote(name="MultiplyPi")
        class Impostor:
            def execute(self) -> None: ...


def test_calls_futures_callbacks_and_map(worker: Worker) -> None:
    assert MultiplyPi.execute(42) == math.pi * 42
    assert MultiplyPi.add(1, b=2, timeout=3) == 6  # a task's own `timeout` argument
    future = MultiplyPi.execute.submit(2)
    assert isinstance(future, RemoteFuture)
    assert isinstance(future, concurrent.futures.Future)
    seen: list[float] = []
    done = threading.Event()
    future.add_done_callback(lambda f: (seen.append(f.result()), done.set()))
    assert done.wait(10) and seen == [math.pi * 2]
    assert list(MultiplyPi.execute.map(range(2000), chunksize=100)) == [
        math.pi * i for i in range(2000)
    ]
    assert list(MultiplyPi.add.map([1, 2], [10, 20])) == [11, 22]
    assert remoteexec.proxy("MultiplyPi").execute(1) == math.pi


def test_futures_can_be_awaited_and_async_methods_run(worker: Worker) -> None:
    async def main() -> list[int]:
        return list(await asyncio.gather(*(MultiplyPi.slow_double.submit(i) for i in range(5))))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


def test_one_instance_per_worker_thread(worker: Worker) -> None:
    before = MultiplyPi.made
    list(MultiplyPi.execute.map(range(200)))
    assert 1 <= MultiplyPi.made - before <= worker.threads


@on_every_backend
def test_options_route_to_a_queue_and_time_out(url: str, client: Client, worker: Worker) -> None:
    started = time.monotonic()
    with pytest.raises(CallTimeout) as caught:
        MultiplyPi.execute.options(queue="nobody-serves-this", timeout=0.5)(1)
    assert isinstance(caught.value, TimeoutError)
    assert 0.3 < time.monotonic() - started < 3
    gpu = Worker(url, queues=["gpu"])
    thread = threading.Thread(target=gpu.run)
    thread.start()
    try:
        assert MultiplyPi.execute.options(queue="gpu", timeout=5)(2) == math.pi * 2
    finally:
        gpu.stop()
        thread.join(10)


@on_every_backend
def test_cancel_withdraws_a_call_no_worker_has_started(client: Client) -> None:
    future = MultiplyPi.execute.options(queue="idle").submit(1)
    assert future.cancel() is True
    assert future.cancelled()
    assert client.backend.stats().queues.get("idle", 0) == 0


@on_every_backend
def test_cancel_fails_once_a_worker_has_the_task(worker: Worker) -> None:
    future = MultiplyPi.sleep.submit(0.5)
    deadline = time.monotonic() + 10
    while worker.backend.stats().running == 0:  # until a worker has claimed it
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert future.cancel() is False
    assert future.result(timeout=10) == 0.5


def test_unknown_task_and_unserializable_arguments(worker: Worker) -> None:
    # The error names what the answering worker knows, and how to teach it more.
    with pytest.raises(UnknownTask, match=r"knows are .*MultiplyPi.*--import"):
        remoteexec.proxy("Nope").execute()
    with pytest.raises(UnknownTask, match=r"no remote method 'not_a_method' \(it has: .*execute"):
        remoteexec.proxy("MultiplyPi").not_a_method()
    with pytest.raises(SerializationError):
        MultiplyPi.execute.submit(object())


@on_every_backend
def test_using_routes_calls_through_the_given_client(url: str, worker: Worker) -> None:
    other = Client(f"memory://{uuid.uuid4().hex}")
    with using(other):
        future = MultiplyPi.execute.submit(1)
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.3)  # nobody serves the other broker
    other.close()
    assert MultiplyPi.execute(1) == math.pi


def _serve(url: str, **options) -> tuple[Worker, threading.Thread]:
    worker = Worker(url, **options)
    thread = threading.Thread(target=worker.run)
    thread.start()
    return worker, thread


@on_every_backend
@pytest.mark.parametrize(
    ("client_secret", "worker_secret", "works"),
    [("k1", "k1", True), ("k1", None, False), (None, "k1", False), ("k2", "k1", False)],
)
def test_signed_calls_work_and_a_mismatch_fails_the_call(
    url: str,
    client_secret: str | None,
    worker_secret: str | None,
    works: bool,
) -> None:
    worker, thread = _serve(url, secret=worker_secret)
    try:
        with Client(url, secret=client_secret) as client, using(client):
            if works:
                assert MultiplyPi.execute(2) == math.pi * 2
            elif worker_secret is None:  # the worker runs it; the client refuses the reply
                with pytest.raises(remoteexec.SignatureError):
                    MultiplyPi.execute.options(timeout=10)(2)
            else:  # refused unrun and buried; nothing is sent to its unverified address
                with pytest.raises(remoteexec.CallLost):
                    MultiplyPi.execute.options(timeout=10)(2)
                (letter,) = client.backend.stats().dead
                assert "SignatureError" in letter.reason
    finally:
        worker.stop()
        thread.join(10)


@on_every_backend
def test_a_nested_call_runs_on_the_workers_backend(url: str, client: Client) -> None:
    worker, thread = _serve(url, threads=2)
    try:
        assert NestedPi.execute(3) == math.pi * 3
    finally:
        worker.stop()
        thread.join(10)


def test_a_call_waiting_on_an_unserved_queue_logs_one_warning(
    client: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    future = MultiplyPi.execute.options(queue="nobody").submit(1)
    future.submitted -= 11  # as if it had waited 11 s
    deadline = time.monotonic() + 10
    for _ in range(3):  # three check periods, each started now and seen to have run
        client.replies.next_worker_check = 0
        while client.replies.next_worker_check == 0:
            assert time.monotonic() < deadline, "the client did not check for workers"
            time.sleep(0.02)
    assert caplog.text.count("no live worker serves") == 1
    assert "'nobody'" in caplog.text
    assert future.cancel()


@remote
class NestedPi:
    def execute(self, n: float) -> float:
        return MultiplyPi.execute.options(timeout=5)(n)  # type: ignore[no-any-return]


def test_a_thread_started_inside_using_gets_a_clear_error_not_the_default_broker(
    url: str, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextvars

    from remoteexec import client as clients

    monkeypatch.setattr(clients, "_default", None)  # a process that never configured one
    got: list[object] = []

    def call() -> None:
        try:
            got.append(MultiplyPi.execute(1))
        except ConfigurationError as exc:
            got.append(exc)

    with Client(url) as client, using(client):
        thread = threading.Thread(target=call)
        thread.start()
        thread.join(10)
        # The same thread, run in a copy of the caller's context, reaches the client.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(call,))
        thread.start()
        thread.join(10)
    assert isinstance(got[0], ConfigurationError), got
    assert "using" in str(got[0]) and "configure" in str(got[0])
    assert got[1] == math.pi
    assert clients._default is None  # no default client was made on the side
