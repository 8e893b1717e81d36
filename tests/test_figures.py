"""``figures.py``: a worker's failure count and duration histograms, and their percentiles."""

from __future__ import annotations

import threading

from remoteexec.backends.rows import worker_info, worker_json
from remoteexec.figures import BOUNDS, MAX_TYPES, OTHER, TaskFigures, merged, percentile


def test_calls_are_counted_per_task_type_in_doubling_buckets() -> None:
    figures = TaskFigures()
    figures.add("A.run", 0.00005, failed=False)  # under 100 µs: the first bucket
    figures.add("A.run", 0.0003, failed=True)  # 200-400 µs: the third
    figures.add("B.run", 1000.0, failed=False)  # beyond the last bound: the overflow
    assert figures.failed == 1
    rows = figures.durations()
    assert rows["A.run"] == [1, 0, 1]  # no trailing empty buckets
    assert len(rows["B.run"]) == len(BOUNDS) + 1 and rows["B.run"][-1] == 1


def test_task_types_beyond_the_cap_share_one_row() -> None:
    figures = TaskFigures()
    for i in range(MAX_TYPES + 5):
        figures.add(f"T{i}.run", 0.001, failed=False)
    rows = figures.durations()
    assert len(rows) == MAX_TYPES + 1 and sum(rows[OTHER]) == 5


def test_threads_adding_at_once_lose_no_count() -> None:
    figures = TaskFigures()

    def add() -> None:
        for _ in range(20_000):
            figures.add("A.run", 0.001, failed=True)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert figures.failed == 80_000 and sum(figures.durations()["A.run"]) == 80_000


def test_percentiles_of_merged_workers_are_bucket_bounds() -> None:
    row = merged([{"A.run": [0, 90]}, {"A.run": [0, 0, 0, 10], "B.run": [1]}])
    assert row == {"A.run": [0, 90, 0, 10] + [0] * (len(BOUNDS) - 3), "B.run": [1] + [0] * 21}
    assert percentile(row["A.run"], 0.5) == BOUNDS[1]
    assert percentile(row["A.run"], 0.9) == BOUNDS[1]
    assert percentile(row["A.run"], 0.99) == BOUNDS[3]
    assert percentile([], 0.5) is None


def test_rows_without_figures_still_read_and_bad_figures_are_refused() -> None:
    old = '{"id": "w", "host": "h", "pid": 1, "queues": ["q"], "started": 1.0, '
    old += '"last_seen": 2.0, "done": 3, "running": 0}'
    info = worker_json(old)
    assert info is not None and (info.failed, info.durations) == (0, {})
    basic = ["w", "h", 1, '["q"]', 1.0, 2.0, 3, 0]
    assert worker_info([*basic, 4, '{"A.run": [1, 2]}']).durations == {"A.run": [1, 2]}
    assert worker_info([*basic, 4, None]).durations == {}  # a column added to older rows
    for failed, durations in [
        (-1 + 0.5, "{}"),
        (0, '{"A.run": [-1]}'),
        (0, '{"A.run": "x"}'),
        (0, '{"A.run": [' + ", ".join(["1"] * 40) + "]}"),
        (0, "[1]"),
    ]:
        assert worker_info([*basic, failed, durations]) is None
