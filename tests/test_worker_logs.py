"""What a worker logs: one WARNING per failed task with its traceback, per-task lines when
asked (``--log-tasks``, DEBUG), a banner naming the broker (password masked), and with
``--log-format json`` nothing on stderr but JSON objects, one per line.

Real ``remoteexec-worker`` commands (``tests/farm.py``); the backend does not matter to
what is logged, so most tests run on SQLite only."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from remoteexec import Client, WorkerLost, using
from remoteexec.logs import JsonFormatter, TextFormatter
from tests.farm import Farm, tasks

pytestmark = pytest.mark.timeout(120)
sqlite_only = pytest.mark.parametrize("farm_url", ["sqlite"], indirect=True)


@pytest.fixture
def client(farm_url: str) -> Iterator[Client]:
    with Client(farm_url) as client, using(client):
        yield client


@sqlite_only
def test_a_failing_task_logs_one_warning_line_with_its_traceback(farm: Farm, client: Client):
    farm.start()
    future = tasks.Failing.lookup.submit("missing")
    with pytest.raises(KeyError):
        future.result(timeout=30)
    assert tasks.Echo.value(1) == 1
    farm.stop()
    lines = farm.logs().splitlines()
    warned = [i for i, line in enumerate(lines) if " WARNING " in line]
    assert len(warned) == 1, lines
    line = lines[warned[0]]
    assert re.search(
        rf"WARNING \[worker \d+\] remoteexec\.worker: task Failing\.lookup {future.task_id} "
        r"failed after \d+\.\d ms \(queue default, attempt 1\): KeyError: 'missing'$",
        line,
    ), line
    traceback = "\n".join(lines[warned[0] + 1 : warned[0] + 8])
    assert traceback.startswith("Traceback (most recent call last):"), traceback
    assert "return {}[key]  # a KeyError" in traceback
    assert not re.search(r"remoteexec\.worker: (received|succeeded) ", "\n".join(lines))


@sqlite_only
@pytest.mark.parametrize(
    ("flags", "level"), [(("--log-tasks",), "INFO"), (("--log-level", "DEBUG"), "DEBUG")]
)
def test_log_tasks_logs_each_task_received_and_succeeded_with_durations(
    farm: Farm, client: Client, flags: tuple[str, ...], level: str
):
    farm.start(*flags)
    futures = [tasks.Echo.value.submit(i) for i in range(5)]
    assert [f.result(timeout=30) for f in futures] == list(range(5))
    farm.stop()
    logs = farm.logs()
    head = rf"^\S+ \S+ {level} \[worker \d+\] remoteexec\.worker: "
    received = re.findall(
        head + r"received Echo\.value (\S+) \(queue default, attempt 1, waited \d+\.\d ms\)$",
        logs,
        re.MULTILINE,
    )
    succeeded = re.findall(head + r"succeeded Echo\.value (\S+) in \d+\.\d ms$", logs, re.M)
    assert sorted(received) == sorted(succeeded) == sorted(f.task_id for f in futures), logs


@sqlite_only
def test_with_log_format_json_every_line_of_stderr_is_a_json_object(farm: Farm, client: Client):
    farm.start("--log-format", "json", "--log-tasks", processes=2)
    farm.worker_pids(2)
    with pytest.raises(KeyError):
        tasks.Failing.lookup("missing")
    assert tasks.Failing.noisy() == "done"  # a warning, and a thread dying of an exception
    assert tasks.LimitedNoisy.execute() == "done"  # the same in a helper process
    assert tasks.Echo.value(7) == 7
    with pytest.raises(WorkerLost):  # the supervisor replaces the processes it kills
        tasks.KillsItsWorker.execute()
    farm.stop()
    records = [json.loads(line) for line in farm.logs().splitlines()]  # each line parses
    assert all({"time", "level", "logger", "role", "pid", "message"} <= set(r) for r in records)
    assert {r["role"] for r in records} == {"supervisor", "worker", "helper"}
    assert any("exited with 9: replacing it" in r["message"] for r in records)
    (failed,) = [
        r for r in records if r["level"] == "WARNING" and r.get("task") == "Failing.lookup"
    ]
    assert failed["attempt"] == 1 and failed["queue"] == "default" and failed["duration"] > 0
    assert failed["error"] == "KeyError"
    assert "return {}[key]" in failed["traceback"]
    died = [r for r in records if r["message"] == "uncaught exception in thread task-thread"]
    assert sorted(r["role"] for r in died) == ["helper", "worker"]
    assert all(
        r["level"] == "CRITICAL" and "KeyError: 'no such key'" in r["exc_info"] for r in died
    )
    warned = [r for r in records if "a task's own warning" in r["message"]]
    assert sorted(r["role"] for r in warned) == ["helper", "worker"]
    assert any(r["message"].startswith("succeeded Echo.value ") for r in records)


@pytest.mark.parametrize("farm_url", ["redis_noscript"], indirect=True)
def test_the_banner_names_the_url_with_its_password_masked(farm: Farm, farm_url: str):
    assert ":pw@" in farm_url
    farm.start("--threads", "2", "--queues", "default,other", processes=2)
    farm.worker_pids(2)
    farm.stop()
    logs = farm.logs()
    masked = farm_url.replace(":pw@", ":***@")
    assert (
        f"INFO [supervisor] remoteexec.supervisor: remoteexec-worker on {masked}: "
        "queues default,other, 2 process(es) x 2 thread(s), lease 2 s, tasks from rx_e2e_tasks"
    ) in logs
    assert ":pw@" not in logs
    assert len(re.findall(r"\] remoteexec\.tasks: task types: .*\bEcho, Failing\b", logs)) == 2


def test_the_banner_says_which_file_a_relative_sqlite_url_names(tmp_path: Path):
    farm = Farm("sqlite:///relative.db", tmp_path)
    farm.start("--burst").wait(60)
    expected = f"on sqlite:///relative.db (file {tmp_path.resolve() / 'relative.db'}): "
    assert expected in farm.logs()


def test_a_supervisor_that_cannot_start_its_workers_logs_json_too(tmp_path: Path):
    farm = Farm("sqlite:///broker.db", tmp_path)
    farm.start("--log-format", "json", "--import", "no_such_module").wait(60)
    records = [json.loads(line) for line in farm.logs().splitlines()]
    assert any(r["level"] == "ERROR" and "no_such_module" in r["message"] for r in records)


def test_the_formatters_keep_a_record_on_one_line_or_append_its_traceback():
    record = logging.makeLogRecord(
        {"name": "remoteexec.worker", "levelno": logging.WARNING, "levelname": "WARNING",
         "msg": "task %s failed", "args": ("T.m",), "traceback": "Traceback\n  line\nError\n",
         "task": "T.m"}
    )  # fmt: skip
    entry = json.loads(JsonFormatter("worker").format(record))
    assert entry["message"] == "task T.m failed" and entry["task"] == "T.m"
    assert entry["traceback"] == "Traceback\n  line\nError\n" and entry["role"] == "worker"
    text = TextFormatter("worker").format(record)
    assert text.endswith(f"WARNING [worker {record.process}] remoteexec.worker: task T.m failed"
                         "\nTraceback\n  line\nError")  # fmt: skip
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    assert "RuntimeError: boom" in json.loads(JsonFormatter("worker").format(record))["exc_info"]
