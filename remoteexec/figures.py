"""What a worker counts about the tasks it runs, for its heartbeat: failures, and how long
each task type's calls take, as a histogram a dashboard can add up across workers.

A call's duration falls in the first bucket of ``BOUNDS`` (seconds, doubling from 100 µs to
about 105 s) that it does not exceed; the last bucket holds the longer ones. A worker keeps
one row of counts per task type (``Class.method``), at most ``MAX_TYPES`` of them (the
others share ``OTHER``), so a heartbeat stays small whatever the tasks.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["BOUNDS", "MAX_TYPES", "OTHER", "TaskFigures", "merged", "percentile"]

BOUNDS: tuple[float, ...] = tuple(1e-4 * 2.0**k for k in range(21))
MAX_TYPES = 100
OTHER = "(other)"


class TaskFigures:
    """Failures and duration histograms per task type, safe to add to from many threads."""

    def __init__(self) -> None:
        self.failed = 0
        self._rows: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def add(self, label: str, seconds: float, *, failed: bool) -> None:
        """Count one call of ``label`` that took ``seconds`` (and failed, or not)."""
        bucket = bisect_left(BOUNDS, seconds)
        with self._lock:
            row = self._rows.get(label)
            if row is None:
                if len(self._rows) >= MAX_TYPES:
                    label = OTHER
                row = self._rows.setdefault(label, [0] * (len(BOUNDS) + 1))
            row[bucket] += 1
            self.failed += failed

    def durations(self) -> dict[str, list[int]]:
        """A copy of the histograms, each without its trailing empty buckets."""
        with self._lock:
            rows = {label: list(row) for label, row in self._rows.items()}
        for row in rows.values():
            while row and not row[-1]:
                row.pop()
        return rows


def merged(histograms: Iterable[Mapping[str, Sequence[int]]]) -> dict[str, list[int]]:
    """The histograms of several workers added up per task type."""
    total: dict[str, list[int]] = {}
    for histogram in histograms:
        for label, row in histogram.items():
            into = total.setdefault(label, [0] * (len(BOUNDS) + 1))
            for i, n in enumerate(row[: len(into)]):
                into[i] += n
    return total


def percentile(row: Sequence[int], share: float) -> float | None:
    """The upper bound (seconds) of the bucket that holds the ``share`` (0-1) percentile of
    the calls counted in ``row``; twice the last bound for the longest; None if empty."""
    total = sum(row)
    if total <= 0:
        return None
    rank, seen = share * total, 0
    for i, n in enumerate(row):
        seen += n
        if seen >= rank and n:
            return BOUNDS[i] if i < len(BOUNDS) else 2 * BOUNDS[-1]
    return 2 * BOUNDS[-1]
