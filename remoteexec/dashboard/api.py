"""The dashboard's JSON snapshot: queues, workers, dead letters, throughput, durations.

Throughput comes from the workers' ``done`` and ``failed`` counters in their heartbeats (as
``watch`` reads them), task durations from the histograms in them (``figures.py``), sampled
at most once per ``interval`` seconds whatever the number of pages open, so the broker's
cost does not grow with viewers. A worker whose heartbeat (sent every second) is older than
``stale`` seconds is left off the page: it is gone or stuck, even while ``Backend.stats()``
still counts it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from ..backends import Backend, Stats, WorkerInfo
from ..errors import RemoteExecError
from ..figures import merged, percentile

HEALTH_EVERY = 10.0  # seconds between two reads of the backend's health


class Sampler:
    """Reads ``backend.stats()`` at most every ``interval`` s and keeps a throughput history."""

    def __init__(
        self, backend: Backend, *, interval: float = 1.0, history: int = 300, stale: float = 5.0
    ) -> None:
        self.backend = backend
        self.interval = interval
        self.stale = stale
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}  # worker -> (done, failed)
        self._points: deque[tuple[float, float, float]] = deque(maxlen=history)
        self._last: tuple[float, Stats] | None = None
        self._health: tuple[float, dict[str, float | str]] = (0.0, {})

    def stats(self) -> tuple[float, Stats]:
        """The newest snapshot, read from the backend when the last one is stale."""
        with self._lock:
            now = time.time()
            if self._last is not None and now - self._last[0] < self.interval:
                return self._last
            stats = self.backend.stats()
            if self._last is not None:
                seen = self._seen
                done = sum(max(0, w.done - seen.get(w.id, (w.done,))[0]) for w in stats.workers)
                failed = sum(
                    max(0, w.failed - seen.get(w.id, (0, w.failed))[1]) for w in stats.workers
                )
                span = max(now - self._last[0], 1e-3)
                self._points.append((now, done / span, failed / span))
            self._seen = {w.id: (w.done, w.failed) for w in stats.workers}
            self._last = (now, stats)
            return self._last

    def health(self) -> dict[str, float | str]:
        """``backend.health()``, read at most every ``HEALTH_EVERY`` seconds (it may scan)."""
        with self._lock:
            at, figures = self._health
            if time.time() - at < HEALTH_EVERY:
                return figures
            try:
                figures = self.backend.health()
            except RemoteExecError as exc:
                figures = {"unavailable": str(exc)}
            self._health = (time.time(), figures)
            return figures

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        now, stats = self.stats()
        with self._lock:
            points = list(self._points)
        live = sorted(
            (w for w in stats.workers if now - w.last_seen <= self.stale),
            key=lambda w: (w.host, w.pid),
        )
        return {
            "at": now,
            "queues": dict(sorted(stats.queues.items())),
            "parts": dict(sorted(stats.parts.items())),
            "oldest": {q: max(0.0, now - at) for q, at in sorted(stats.oldest.items())},
            "running": stats.running,
            "throughput": [{"at": t, "completed": c, "failed": f} for t, c, f in points],
            "workers": [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "queues": list(w.queues),
                    "heartbeat_age": max(0.0, now - w.last_seen),
                    "running": w.running,
                    "done": w.done,
                    "failed": w.failed,
                }
                for w in live
            ],
            "durations": durations(live),
            "health": self.health(),
            "dead": [
                {
                    "id": d.id,
                    "queue": d.queue,
                    "name": d.name,
                    "reason": d.reason,
                    "at": d.at,
                    "traceback": d.traceback,
                }
                for d in stats.dead
            ],
        }


def durations(workers: list[WorkerInfo]) -> list[dict[str, Any]]:
    """Per task type, the calls the live workers ran and their duration percentiles (s)."""
    rows = merged(w.durations for w in workers)
    return [
        {
            "task": label,
            "count": sum(row),
            "p50": percentile(row, 0.5),
            "p90": percentile(row, 0.9),
            "p99": percentile(row, 0.99),
        }
        for label, row in sorted(rows.items())
    ]
