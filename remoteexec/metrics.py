"""Prometheus metrics for ``remoteexec-worker --metrics-port`` (the ``metrics`` extra).

Nothing here is imported unless metrics are asked for. The supervisor (``MetricsServer``)
makes a private folder, names it in ``PROMETHEUS_MULTIPROC_DIR`` for its worker processes,
and serves ``/metrics`` from it with prometheus_client's ``MultiProcessCollector``: each
worker process counts its own tasks into files there (``TaskMetrics``), and the supervisor
adds them up. The folder is removed when the supervisor exits.

Per task type (``task``, as ``Name.method``) and ``queue``, counted by the workers:

* ``remoteexec_tasks_started_total``, ``remoteexec_tasks_succeeded_total``,
  ``remoteexec_tasks_failed_total``; ``remoteexec_tasks_retried_total`` (started again
  after a lease expired or its worker died: attempt > 1); ``remoteexec_tasks_lost_total``
  (given up after ``max_attempts``, or buried as a dead letter unrun; ``task="?"`` when the
  message names no registered task);
* ``remoteexec_task_duration_seconds`` and ``remoteexec_task_queue_wait_seconds``
  (histograms: the run, and from the call's creation to its start);
* ``remoteexec_leases_lost_total`` (per ``queue``): results refused because their lease
  had expired and another worker may have run the task.

From the supervisor: ``remoteexec_queue_depth`` (per served ``queue``, tasks waiting),
``remoteexec_tasks_running`` and ``remoteexec_workers`` (from ``Backend.stats()``, at most
every ``_REFRESH`` seconds, whether or not anyone reads them), and
``remoteexec_tasks_handed_back_total`` (claims of dead worker processes whose leases the
supervisor ended).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigurationError, RemoteExecError
from .remote import lookup

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric

    from .backends import Backend, Stats

log = logging.getLogger("remoteexec.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_REFRESH = 5.0  # seconds between two reads of the queue depths
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0, 60.0, 300.0, 1800.0, float("inf"))  # fmt: skip


def require() -> None:
    """Check that prometheus-client is installed.

    Raises:
        ConfigurationError: it is not, saying which extra to install.
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "--metrics-port needs prometheus-client: pip install 'remoteexec-farm[metrics]'"
        ) from exc


class TaskMetrics:
    """A worker process's task counters and histograms (see the module docstring).

    Under the supervisor they are written to its ``PROMETHEUS_MULTIPROC_DIR``; otherwise
    they live in ``registry`` (a private one if None).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        require()
        from prometheus_client import CollectorRegistry, Counter, Histogram

        reg = CollectorRegistry() if registry is None else registry
        by = ("task", "queue")

        def counter(name: str, text: str) -> Counter:
            return Counter(f"remoteexec_tasks_{name}", text, by, registry=reg)

        def histogram(name: str, text: str) -> Histogram:
            return Histogram(f"remoteexec_task_{name}", text, by, registry=reg, buckets=_BUCKETS)

        self._started = counter("started", "Tasks started.")
        self._retried = counter("retried", "Tasks started again (attempt > 1).")
        self._succeeded = counter("succeeded", "Tasks that returned a value.")
        self._failed = counter("failed", "Tasks that raised or were stopped.")
        self._lost = counter("lost", "Tasks given up on or buried unrun.")
        self._duration = histogram("duration_seconds", "Seconds a task ran.")
        self._wait = histogram("queue_wait_seconds", "Seconds from a call's creation to its start.")
        self._leases = Counter(
            "remoteexec_leases_lost", "Results refused: their lease had expired.", ["queue"],
            registry=reg,
        )  # fmt: skip
        self._series: dict[tuple[str, str], _Series] = {}

    def _of(self, task: str, queue: str) -> _Series:
        series = self._series.get((task, queue))
        if series is None:  # labels() looks up a dict of its own under a lock: once is enough
            series = _Series(
                self._started.labels(task, queue),
                self._retried.labels(task, queue),
                self._succeeded.labels(task, queue),
                self._failed.labels(task, queue),
                self._duration.labels(task, queue),
                self._wait.labels(task, queue),
            )
            self._series[task, queue] = series
        return series

    def started(self, task: str, queue: str, attempt: int, wait: float) -> None:
        series = self._of(task, queue)
        series.started.inc()
        if attempt > 1:
            series.retried.inc()
        series.wait.observe(wait)

    def ended(self, task: str, queue: str, ok: bool, seconds: float) -> None:
        series = self._of(task, queue)
        (series.succeeded if ok else series.failed).inc()
        series.duration.observe(seconds)

    def lost(self, label: str, queue: str) -> None:
        name, _, method = label.rpartition(".")
        task = lookup(name)  # a label from the broker: only registered names become labels
        known = task is not None and task.method(method) is not None
        self._lost.labels(label if known else "?", queue).inc()

    def lease_lost(self, queue: str) -> None:
        self._leases.labels(queue).inc()


@dataclass(slots=True)
class _Series:
    """One task type's and queue's counters and histograms."""

    started: Counter
    retried: Counter
    succeeded: Counter
    failed: Counter
    duration: Histogram
    wait: Histogram


class MetricsServer:
    """The supervisor's side: the shared folder, ``/metrics`` on ``host:port``, the depths.

    Args:
        url: the broker's URL, to read queue depths from.
        queues: the queues whose depth is reported.
        host, port: where to serve ``/metrics``.

    Raises:
        ConfigurationError: prometheus-client is missing, or the port cannot be bound.
    """

    def __init__(self, url: str, queues: list[str], host: str, port: int) -> None:
        require()
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        self.folder = tempfile.mkdtemp(prefix="remoteexec-metrics-")
        os.environ[MULTIPROC_ENV] = self.folder  # the worker processes inherit it
        self._mark_dead: Callable[[int, str], None] = multiprocess.mark_process_dead
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=self.folder
        )  # adds up what the worker processes write in the folder
        self.farm = FarmCollector(url, queues)
        registry.register(self.farm)
        try:
            self._server, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            self.remove_folder()
            raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self.farm.start()
        log.info("serving metrics on http://%s:%d/metrics", host, port)

    def process_dead(self, pid: int) -> None:
        """Worker process ``pid`` exited: its live gauges go, its counters stay."""
        self._mark_dead(pid, self.folder)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.farm.close()
        self.remove_folder()

    def remove_folder(self) -> None:
        if os.environ.get(MULTIPROC_ENV) == self.folder:
            del os.environ[MULTIPROC_ENV]
        shutil.rmtree(self.folder, ignore_errors=True)


class FarmCollector:
    """Queue depths, running tasks and live workers, read every ``_REFRESH`` s by a thread
    of its own (its own broker connection); and the supervisor's hand-backs."""

    def __init__(self, url: str, queues: list[str]) -> None:
        self.url = url
        self.queues = queues
        self.handed_back = 0
        self._stats: Stats | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._refresh, name="remoteexec-metrics-stats", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._stats
        if stats is not None:
            depth = GaugeMetricFamily(
                "remoteexec_queue_depth", "Tasks waiting in a queue.", labels=["queue"]
            )
            for queue in self.queues:
                depth.add_metric([queue], stats.queues.get(queue, 0))
            yield depth
            yield GaugeMetricFamily(
                "remoteexec_tasks_running", "Tasks under a live lease.", value=stats.running
            )
            yield GaugeMetricFamily(
                "remoteexec_workers", "Workers with a recent heartbeat.", value=len(stats.workers)
            )
        yield CounterMetricFamily(
            "remoteexec_tasks_handed_back",
            "Claims of dead worker processes whose leases the supervisor ended.",
            value=self.handed_back,
        )

    def _refresh(self) -> None:
        backend: Backend | None = None
        try:
            while not self._stop.is_set():
                try:
                    if backend is None:
                        from .backends import open_backend

                        backend = open_backend(self.url)
                    self._stats = backend.stats()
                except RemoteExecError as exc:  # no stale depths: none until a read works
                    self._stats = None
                    log.warning("reading queue depths for metrics failed: %s", exc)
                except Exception:  # keep serving the other metrics; say why these are missing
                    self._stats = None
                    log.exception("reading queue depths for metrics failed")
                self._stop.wait(_REFRESH)
        finally:
            if backend is not None:
                with contextlib.suppress(Exception):
                    backend.close()
