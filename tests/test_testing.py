"""``remoteexec.testing``: application code that calls tasks, tested with no server and no
worker process; eager mode fails as a real run does; the pytest fixture; and the commands
refusing ``memory://``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import multiprocessing
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import remoteexec
import remoteexec.testing
from remoteexec import (
    PayloadTooLarge,
    RemoteError,
    SerializationError,
    TimeLimitExceeded,
    UnknownTask,
    remote,
)
from remoteexec import client as clients
from remoteexec.cli import main, worker_main
from remoteexec.testing import EagerClient, farm

pytest_plugins = ["pytester", "remoteexec.pytest_plugin"]

MODES = ["threaded", "eager"]


@remote
class Square:
    def area(self, side: float) -> float:
        return side * side

    def echo(self, value: Any) -> Any:
        return value

    def sized(self, n: int) -> bytes:
        return b"x" * n

    def unsendable(self) -> object:
        return object()

    def boom(self, text: str) -> None:
        raise ValueError(f"bad side: {text}")  # the remote traceback names this line

    async def later(self, side: float) -> float:
        await asyncio.sleep(0.01)
        return side * side

    def nested(self, side: float) -> float:
        return Square.area.options(timeout=10)(side)  # type: ignore[no-any-return]

    def thread(self) -> int:
        return threading.get_ident()


@remote(keep_result=60)
class KeptByDefault:
    def double(self, x: int) -> int:
        return 2 * x


@remote(time_limit=1)
class Overruns:
    def execute(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def total_area(sides: list[float]) -> float:
    """Application code under test: it calls a task, one call and a batch."""
    return Square.area(sides[0]) + sum(Square.area.map(sides[1:]))


def _children() -> set[int]:
    """The pids of this process's child processes (any kind: multiprocessing, subprocess)."""
    return {
        int(pid)
        for path in Path("/proc/self/task").glob("*/children")
        for pid in path.read_text().split()
    }


@contextmanager
def nothing_left_behind() -> Iterator[None]:
    """Asserts that the block starts no process and leaves no thread running."""
    threads, children = set(threading.enumerate()), _children()
    yield
    assert _children() <= children
    assert multiprocessing.active_children() == []
    assert set(threading.enumerate()) - threads == set()


@pytest.mark.parametrize("mode", MODES)
def test_application_code_runs_on_the_context_managers_farm(mode: str) -> None:
    children = _children()
    with nothing_left_behind():
        with farm(eager=mode == "eager") as client:
            assert client.settings.url.startswith("memory://")
            assert total_area([1, 2, 3]) == 14
            assert Square.echo((1, {2}, b"3")) == (1, {2}, b"3")  # through the codec
            assert _children() == children  # no worker process, no server
        with pytest.raises(remoteexec.RemoteExecError, match="closed"):
            client.submit("Square", "area", [1], {})


@pytest.mark.parametrize("mode", MODES)
def test_threads_the_code_starts_call_through_the_farm_too(mode: str) -> None:
    before = clients._default
    with farm(eager=mode == "eager") as client:
        assert clients.current_client() is client
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert list(pool.map(Square.area, [2, 3])) == [4, 9]
    assert clients._default is before


def test_eager_calls_run_in_the_callers_thread_and_threaded_ones_do_not() -> None:
    with farm(eager=True) as client:
        assert isinstance(client, EagerClient)
        assert Square.thread() == threading.get_ident()
    with farm():
        assert Square.thread() != threading.get_ident()


def test_the_fixture_runs_application_code(remoteexec_farm: remoteexec.Client) -> None:
    children = _children()
    assert remoteexec_farm.settings.url.startswith("memory://")
    assert not isinstance(remoteexec_farm, EagerClient)
    assert total_area([1, 2, 3]) == 14
    assert _children() == children
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("remoteexec_farm", [{"eager": True}], indirect=True)
def test_the_fixture_takes_farm_options_by_parametrization(
    remoteexec_farm: remoteexec.Client,
) -> None:
    assert isinstance(remoteexec_farm, EagerClient)
    assert total_area([1, 2, 3]) == 14
    assert Square.thread() == threading.get_ident()


MARKED_TEST = """
import threading

import pytest

from remoteexec import remote
from remoteexec.testing import EagerClient


@remote
class Cube:
    def volume(self, side):
        return side ** 3


def total(sides):
    return sum(Cube.volume.map(sides))


def test_threaded(remoteexec_farm):
    assert not isinstance(remoteexec_farm, EagerClient)
    assert total([1, 2]) == 9


@pytest.mark.remoteexec_farm(eager=True)
def test_eager(remoteexec_farm):
    assert isinstance(remoteexec_farm, EagerClient)
    assert total([1, 2]) == 9


def test_a_test_without_the_fixture_gets_no_farm():
    assert threading.active_count() == 1
"""


def test_the_plugin_gives_the_fixture_and_its_marker_however_it_is_loaded(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest('pytest_plugins = ["remoteexec.pytest_plugin"]')
    pytester.makepyfile(test_marked=MARKED_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "remoteexec.pytest_plugin", "-p", "no:cacheprovider", "-W", "error",
        "--strict-markers",
    )  # fmt: skip
    result.assert_outcomes(passed=3)


# Eager mode fails where and as a real run does ------------------------------------------

#: Each case: farm options, and what the test does with a ``submit`` function.
CASES: dict[str, tuple[dict[str, Any], Callable[[], Any]]] = {
    "object argument": ({}, lambda: Square.area.submit(object())),
    "lambda argument": ({}, lambda: Square.echo.submit(lambda: 1)),
    "unsendable result": ({}, lambda: Square.unsendable.submit()),
    "argument too large": ({"max_message_size": 2000}, lambda: Square.echo.submit(b"x" * 4000)),
    "result too large": ({"max_message_size": 2000}, lambda: Square.sized.submit(4000)),
    "the task raises": ({}, lambda: Square.boom.submit("x")),
    "signed, the task raises": ({"secret": "k1"}, lambda: Square.boom.submit("x")),
    "unknown task": ({}, lambda: remoteexec.proxy("NoSuchTask").execute.submit()),
    "unknown method": ({}, lambda: remoteexec.proxy("Square").no_such_method.submit()),
}
EXPECTED = {
    "object argument": ("submit", SerializationError),
    "lambda argument": ("submit", SerializationError),
    "unsendable result": ("result", SerializationError),
    "argument too large": ("submit", PayloadTooLarge),
    "result too large": ("result", PayloadTooLarge),
    "the task raises": ("result", RemoteError),
    "signed, the task raises": ("result", RemoteError),
    "unknown task": ("result", UnknownTask),
    "unknown method": ("result", UnknownTask),
}


def _outcome(mode: str, options: dict[str, Any], submit: Callable[[], Any]) -> tuple[Any, ...]:
    """Where the error was raised (``submit`` or ``result``), its type and message."""
    with farm(eager=mode == "eager", **options):
        try:
            future = submit()
        except Exception as exc:
            return ("submit", type(exc), str(exc))
        try:
            future.result(timeout=30)
        except Exception as exc:
            return ("result", type(exc), str(exc))
    raise AssertionError("no error")


@pytest.mark.parametrize("case", CASES)
def test_eager_mode_fails_where_and_as_a_worker_thread_does(case: str) -> None:
    options, submit = CASES[case]
    outcomes = {mode: _outcome(mode, options, submit) for mode in MODES}
    assert outcomes["eager"] == outcomes["threaded"]
    where, kind, _ = outcomes["eager"]
    assert where == EXPECTED[case][0]
    assert issubclass(kind, EXPECTED[case][1])


@pytest.mark.parametrize("mode", MODES)
def test_a_remote_exception_is_a_remote_error_and_the_builtin_type(mode: str) -> None:
    with farm(eager=mode == "eager", secret="k1"):
        try:
            Square.boom("x")
        except ValueError as exc:  # the existing rule: `except ValueError` works
            caught: Exception = exc
        assert isinstance(caught, RemoteError)
        assert (caught.type_name, caught.message) == ("ValueError", "bad side: x")
        assert "the remote traceback names this line" in caught.remote_traceback


def test_submit_map_await_options_and_nested_calls_in_eager_mode() -> None:
    with nothing_left_behind(), farm(eager=True):
        future = Square.area.submit(3)
        assert future.done() and future.result() == 9
        seen: list[float] = []
        future.add_done_callback(lambda f: seen.append(f.result()))
        assert seen == [9]
        assert future.cancel() is False
        assert list(Square.area.map(range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        assert Square.area.options(timeout=5, queue="elsewhere", max_attempts=1)(4) == 16
        assert Square.nested(5) == 25
        assert Square.later(2) == 4  # an async method, from a thread with no loop

        async def gather() -> list[float]:  # async methods, from inside a running loop
            futures = [Square.later.submit(i) for i in range(3)]
            return list(await asyncio.gather(*futures))

        assert asyncio.run(gather()) == [0, 1, 4]
        echoed = Square.echo({"at": datetime.datetime(2026, 12, 2, 16, 0), "ids": (1, 2)})
        assert echoed == {"at": datetime.datetime(2026, 12, 2, 16, 0), "ids": (1, 2)}


def test_a_nested_call_on_a_threaded_farm_needs_a_second_thread() -> None:
    with farm(threads=2):
        assert Square.nested(5) == 25


def test_a_task_module_that_calls_a_task_while_imported_fails_at_once(tmp_path: Path) -> None:
    name = f"rx_testing_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("from remoteexec import proxy\nproxy('Square').area(2)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(remoteexec.ConfigurationError, match="while the worker imports"):
            with farm([name]):
                pass
    finally:
        sys.path.remove(str(tmp_path))


# Time limits ---------------------------------------------------------------------------


def test_time_limits_hold_on_a_threaded_farm_in_a_helper_process() -> None:
    threads = set(threading.enumerate())
    with farm([__name__]):
        assert Overruns.execute(0) == 0
        (helper,) = multiprocessing.active_children()  # the one process a farm starts
        assert helper.name == "remoteexec-sandbox"
        with pytest.raises(TimeLimitExceeded):
            Overruns.execute(10)
    assert multiprocessing.active_children() == []
    assert set(threading.enumerate()) - threads == set()


def test_eager_mode_does_not_enforce_time_limits() -> None:
    with farm(eager=True):
        assert Overruns.execute(1.2) == 1.2  # past its limit of 1 s: not stopped


# The commands refuse memory:// ---------------------------------------------------------

COMMANDS = [
    ["demo", "--seconds", "1"],
    ["status"],
    ["watch", "--count", "1"],
    ["call", "Square", "2"],
    ["purge"],
]


@pytest.fixture
def process_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The commands set up the process's logging (root handlers on this test's captured
    stderr, hooks): put it back, so later tests in this process log nowhere stale."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for name in ("excepthook", "unraisablehook"):
        monkeypatch.setattr(sys, name, getattr(sys, name))
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setenv("REMOTEEXEC_LOG", os.environ.get("REMOTEEXEC_LOG", ""))
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.parametrize("source", ["--url", "REMOTEEXEC_URL"])
@pytest.mark.parametrize("argv", COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.usefixtures("process_logging")
def test_the_commands_refuse_memory_urls(
    argv: list[str], source: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    if source == "--url":
        argv = [*argv, "--url", "memory://shared"]
    else:
        monkeypatch.setenv("REMOTEEXEC_URL", "memory://shared")
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert f"remoteexec {argv[0]}: ConfigurationError: memory:// cannot be used here" in err


@pytest.mark.usefixtures("process_logging")
def test_the_worker_command_refuses_memory_urls(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    children = _children()
    with pytest.raises(SystemExit) as exited:
        worker_main(["--url", "memory://shared", "--allow-empty"])
    assert exited.value.code == 78  # the status of a worker that cannot start
    said = capsys.readouterr().err + caplog.text  # the worker's own log handler, or pytest's
    assert "remoteexec-worker cannot start: memory:// cannot be used here" in said
    assert _children() == children  # refused before any worker process started


def test_results_by_id_in_a_threaded_farm() -> None:
    with farm():
        sent = Square.area.options(keep_result=60).send(3)
        failed = Square.boom.options(keep_result=60).send("kept")
        assert remoteexec.result(sent, timeout=10) == 9
        with pytest.raises(ValueError, match="bad side: kept"):
            remoteexec.result(failed, timeout=10)
        assert (remoteexec.status(sent), remoteexec.status(failed)) == ("done", "failed")
        assert remoteexec.status(Square.area.send(1)) in ("waiting", "running", "lost")
        assert remoteexec.result(KeptByDefault.double.send(4), timeout=10) == 8  # @remote's
        not_kept = KeptByDefault.double.options(keep_result=None).submit(5)
        assert not_kept.result(timeout=10) == 10
        assert remoteexec.status(not_kept.task_id) == "lost"
