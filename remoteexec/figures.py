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
from threading import get_ident

__all__ = ["BOUNDS", "MAX_TYPES", "OTHER", "TaskFigures", "merged", "percentile"]

BOUNDS: tuple[float, ...] = tuple(1e-4 * 2.0**k for k in range(21))
MAX_TYPES = 100
OTHER = "(other)"


class TaskFigures:
    """Failures and duration histograms per task type, safe to add to from many threads.

    Each thread counts in rows of its own, so ``add`` (once per call) takes no lock; the
    copies ``durations`` makes of them are atomic under the GIL (``dict()`` and ``list()``
    of ints and strings run no Python code).
    """

    def __init__(self) -> None:
        self.failed = 0
        self._threads: dict[int, dict[str, list[int]]] = {}  # thread -> label -> counts
        self._labels: set[str] = set()  # of every thread, at most MAX_TYPES (and OTHER)
        self._lock = threading.Lock()  # for failed, and for a thread's first call of a label

    def add(self, label: str, seconds: float, *, failed: bool) -> None:
        """Count one call of ``label`` that took ``seconds`` (and failed, or not)."""
        rows = self._threads.get(get_ident())
        row = None if rows is None else rows.get(label)
        if row is None:
            row = self._row(label)
        row[bisect_left(BOUNDS, seconds)] += 1
        if failed:
            with self._lock:
                self.failed += 1

    def _row(self, label: str) -> list[int]:
        with self._lock:
            if label not in self._labels and len(self._labels) >= MAX_TYPES:
                label = OTHER
            self._labels.add(label)
            rows = self._threads.setdefault(get_ident(), {})
            return rows.setdefault(label, [0] * (len(BOUNDS) + 1))

    def durations(self) -> dict[str, list[int]]:
        """The histograms of every thread added up, each without its trailing empty
        buckets."""
        with self._lock:
            threads = [dict(rows) for rows in self._threads.values()]
        total = merged({label: list(row) for label, row in rows.items()} for rows in threads)
        for row in total.values():
            while row and not row[-1]:
                row.pop()
        return total


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
