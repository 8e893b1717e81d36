"""``remoteexec-worker --metrics-port``: Prometheus metrics from every worker process, served
by the supervisor, labelled by task and queue; read with urllib and prometheus_client's own
parser from a real ``remoteexec-worker`` (``tests/farm.py``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from remoteexec import Client, WorkerLost, using
from remoteexec.metrics import TaskMetrics
from tests.farm import Farm, tasks

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(farm_url: str) -> Iterator[Client]:
    with Client(farm_url) as client, using(client):
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at http://127.0.0.1:port/metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def multiproc_dir(pid: int) -> Path:
    """The PROMETHEUS_MULTIPROC_DIR worker process ``pid`` was started with."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (folder,) = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(folder.decode())


@pytest.mark.parametrize("farm_url", ["sqlite", "redis"], indirect=True)
def test_metrics_count_the_tasks_of_every_worker_process_by_task_and_queue(
    farm: Farm, client: Client
):
    port = free_port()
    farm.start("--metrics-port", str(port), "--queues", "default,other", processes=2)
    pids = farm.worker_pids(2)
    folder = multiproc_dir(pids[0])
    assert folder.is_dir() and multiproc_dir(pids[1]) == folder
    echo = "Echo.value"
    assert list(tasks.Echo.value.map(range(40))) == list(range(40))
    assert tasks.Echo.value.options(queue="other")(1) == 1
    with pytest.raises(ValueError):
        tasks.Failing.execute("x")
    first = scrape(port)
    assert value(first, "remoteexec_tasks_started_total", task=echo, queue="default") == 40
    assert value(first, "remoteexec_tasks_succeeded_total", task=echo, queue="default") == 40
    assert value(first, "remoteexec_tasks_started_total", task=echo, queue="other") == 1
    failing = {"task": "Failing.execute", "queue": "default"}
    assert value(first, "remoteexec_tasks_failed_total", **failing) == 1
    assert value(first, "remoteexec_tasks_succeeded_total", **failing) == 0
    assert value(first, "remoteexec_task_duration_seconds_count", task=echo, queue="default") == 40
    assert value(first, "remoteexec_task_queue_wait_seconds_count", task=echo, queue="other") == 1
    assert ("remoteexec_tasks_handed_back_total", ()) in first

    # A task that kills its worker process every time: retried, then lost (max_attempts=2).
    assert list(tasks.Echo.value.map(range(10))) == list(range(10))
    with pytest.raises(WorkerLost):
        tasks.KillsItsWorker.execute()
    deadline = time.monotonic() + 20  # the depths are read every few seconds: wait for 0
    depths = [("remoteexec_queue_depth", (("queue", q),)) for q in ("default", "other")]
    while [(second := scrape(port)).get(d) for d in depths] != [0, 0]:
        assert time.monotonic() < deadline, second
        time.sleep(0.5)
    assert value(second, "remoteexec_tasks_started_total", task=echo, queue="default") == 50
    kills = {"task": "KillsItsWorker.execute", "queue": "default"}
    assert value(second, "remoteexec_tasks_started_total", **kills) == 2
    assert value(second, "remoteexec_tasks_retried_total", **kills) == 1
    assert value(second, "remoteexec_tasks_lost_total", **kills) == 1
    assert value(second, "remoteexec_tasks_handed_back_total") == 2
    farm.stop()
    assert farm.commands[0].returncode == 0
    assert not folder.exists()  # the supervisor removes its folder


def test_metrics_without_prometheus_client_are_a_configuration_error(tmp_path: Path):
    blocked = "import sys; sys.modules['prometheus_client'] = None; "  # as if not installed
    cmd = [sys.executable, "-c", blocked + "from remoteexec.cli import worker_main; worker_main()"]
    result = subprocess.run(
        [*cmd, "--url", "sqlite:///broker.db", "--allow-empty", "--metrics-port", "9"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78, result.stderr
    assert "pip install 'remoteexec-farm[metrics]'" in result.stderr
    assert "started worker process" not in result.stderr


def test_a_metrics_port_in_use_stops_the_worker_with_the_reason(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        farm = Farm("sqlite:///broker.db", tmp_path)
        code = farm.start("--metrics-port", str(port)).wait(60)
    assert code == 78
    assert (
        f"ERROR [supervisor] remoteexec.supervisor: cannot serve metrics on 127.0.0.1:{port}: "
        in farm.logs()
    )


def test_lost_tasks_are_labelled_only_by_registered_task_names():
    registry = CollectorRegistry()
    metrics = TaskMetrics(registry)
    tasks.Echo  # noqa: B018 (registers the task types)
    metrics.lost("Echo.value", "default")
    metrics.lost("Attacker.chose_this_name", "default")
    metrics.lost("Echo._private", "default")
    lost = "remoteexec_tasks_lost_total"
    assert registry.get_sample_value(lost, {"task": "Echo.value", "queue": "default"}) == 1
    assert registry.get_sample_value(lost, {"task": "?", "queue": "default"}) == 2


def test_nothing_of_metrics_is_imported_by_a_worker_without_metrics():
    code = (
        "import sys, remoteexec.cli, remoteexec.supervisor, remoteexec.worker\n"
        "from remoteexec.observe import observer_for\n"
        "assert observer_for(log_tasks=False, metrics=False) is None\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
        "assert 'remoteexec.metrics' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
