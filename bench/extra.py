"""The figures beside A-D: where the CPU goes, how throughput scales, what MySQL commits.

* **CPU per call in B**, in µs: this process (the client; every thread), the worker
  processes, and the broker's server process (none for SQLite), from ``/proc/<pid>/stat``
  around B's timed batch. Far less sensitive to other load than the wall-clock figures.
* **InnoDB commits per call in B** (``Handler_commit``, server-wide, on the bench's
  private MariaDB: nothing else runs there).
* **A via a future**: ``submit(n).result()`` one call at a time, p50, beside A's
  ``execute(n)`` (remoteexec only), in ten blocks taken in turn with A's.
* **Scaling** (remoteexec only): B's batch with 4 worker processes (``c4_calls_s``), and with
  a task that sleeps 1 ms (I/O, not CPU) on 4 worker processes (``io4_calls_s``, against an
  ideal of 4,000 calls/s).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EXTRA_METRICS = (
    "a_submit_p50_us",
    "b_cpu_client_us",
    "b_cpu_worker_us",
    "b_cpu_broker_us",
    "b_commits_per_call",
    "c4_calls_s",
    "io4_calls_s",
)
HEADINGS = ("A fut p50", "CPU cli", "CPU wrk", "CPU brk", "commits", "C4 /s", "IO4 /s")

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def broker_pid(system: Any) -> int | None:
    """The pid of ``system``'s server process, if it has one of its own."""
    proc = getattr(getattr(system, "server", None), "proc", None)
    return getattr(proc, "pid", None)


def _commits(system: Any) -> int | None:
    server = getattr(system, "server", None)
    if server is None or not hasattr(server, "connect") or "mysql" not in system.name:
        return None
    conn = server.connect(database=None)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Handler_commit'")
            row = cur.fetchone()
    finally:
        conn.close()
    return int(row[1]) if row else None


@contextmanager
def cost(
    system: Any, workers: list[int], calls: int, add: Callable[[str, float], None]
) -> Iterator[None]:
    """Record CPU per call of client, workers and broker, and commits per call, for the
    ``calls`` made in the block."""
    broker = broker_pid(system)
    commits = _commits(system)
    before = (os.times(), [cpu_seconds(p) for p in workers], cpu_seconds(broker or 0))
    yield
    t, w, b = os.times(), [cpu_seconds(p) for p in workers], cpu_seconds(broker or 0)
    t0 = before[0]
    add("b_cpu_client_us", (t.user + t.system - t0.user - t0.system) / calls * 1e6)
    add("b_cpu_worker_us", (sum(w) - sum(before[1])) / calls * 1e6)
    if broker is not None:
        add("b_cpu_broker_us", (b - before[2]) / calls * 1e6)
    if commits is not None:
        after = _commits(system)
        if after is not None:
            add("b_commits_per_call", (after - commits) / calls)


def figure(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "b_commits_per_call":
        return f"{value:.1f}"
    if metric.endswith("_us"):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def extra_table(median: Callable[[str, str], float | None], systems: list[str]) -> str:
    """The extra figures' medians, one row per system that has any."""
    rows = [(s, [median(s, m) for m in EXTRA_METRICS]) for s in systems]
    rows = [(s, v) for s, v in rows if any(x is not None for x in v)]
    if not rows:
        return ""
    width = max([len(s) for s, _ in rows] + [28])
    lines = [f"{'system':<{width}}" + "".join(f"{h:>11}" for h in HEADINGS)]
    lines.append("-" * len(lines[0]))
    for system, values in rows:
        cells = [figure(m, v) for m, v in zip(EXTRA_METRICS, values, strict=True)]
        lines.append(f"{system:<{width}}" + "".join(f"{c:>11}" for c in cells))
    lines.append("-" * len(lines[0]))
    lines.append(
        "A fut: submit(n).result() one at a time, p50 µs. CPU cli/wrk/brk: CPU µs per call\n"
        "in B of the client process, the worker process(es) and the broker's server.\n"
        "commits: InnoDB Handler_commit per call in B. C4: B's batch with 4 worker\n"
        "processes; IO4: the same with a task sleeping 1 ms (ideal: 4,000 calls/s)."
    )
    return "\n".join(lines)
