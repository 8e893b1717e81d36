"""The dashboard's JSON snapshot: queues, workers, dead letters and throughput.

Throughput comes from the workers' ``done`` counters in their heartbeats (as ``watch``
reads them), sampled at most once per ``interval`` seconds whatever the number of pages open,
so the broker's cost does not grow with viewers. A worker whose heartbeat (sent every second)
is older than ``stale`` seconds is left off the page: it is gone or stuck, even while
``Backend.stats()`` still counts it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from ..backends import Backend, Stats


class Sampler:
    """Reads ``backend.stats()`` at most every ``interval`` s and keeps a throughput history."""

    def __init__(
        self, backend: Backend, *, interval: float = 1.0, history: int = 300, stale: float = 5.0
    ) -> None:
        self.backend = backend
        self.interval = interval
        self.stale = stale
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._points: deque[tuple[float, float]] = deque(maxlen=history)
        self._last: tuple[float, Stats] | None = None

    def stats(self) -> tuple[float, Stats]:
        """The newest snapshot, read from the backend when the last one is stale."""
        with self._lock:
            now = time.time()
            if self._last is not None and now - self._last[0] < self.interval:
                return self._last
            stats = self.backend.stats()
            if self._last is not None:
                done = sum(max(0, w.done - self._seen.get(w.id, w.done)) for w in stats.workers)
                self._points.append((now, done / max(now - self._last[0], 1e-3)))
            self._seen = {w.id: w.done for w in stats.workers}
            self._last = (now, stats)
            return self._last

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        now, stats = self.stats()
        with self._lock:
            points = list(self._points)
        return {
            "at": now,
            "queues": dict(sorted(stats.queues.items())),
            "parts": dict(sorted(stats.parts.items())),
            "oldest": {q: max(0.0, now - at) for q, at in sorted(stats.oldest.items())},
            "running": stats.running,
            "throughput": [{"at": t, "completed": rate} for t, rate in points],
            "workers": [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "queues": list(w.queues),
                    "heartbeat_age": max(0.0, now - w.last_seen),
                    "running": w.running,
                    "done": w.done,
                }
                for w in sorted(stats.workers, key=lambda w: (w.host, w.pid))
                if now - w.last_seen <= self.stale
            ],
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
