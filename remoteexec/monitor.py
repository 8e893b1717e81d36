"""``remoteexec status`` and ``remoteexec watch``: a farm's queues, workers and throughput.

Both read ``Backend.stats()``. Throughput comes from the workers' own ``done`` counters in
their heartbeats, so measuring costs the broker nothing per task.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .backends import Stats
from .client import Client


def format_status(stats: Stats, now: float | None = None) -> str:
    """A human-readable report of queues, workers and dead letters."""
    now = time.time() if now is None else now
    lines = ["Queues (waiting):"]
    lines += [f"  {name:<20} {depth:>8}" for name, depth in sorted(stats.queues.items())]
    if not stats.queues:
        lines.append("  (none)")
    if stats.parts:
        lines.append("Waiting by shard and node:")
        lines += [f"  {name:<30} {depth:>8}" for name, depth in sorted(stats.parts.items())]
    lines.append(f"Running: {stats.running}")
    lines.append(f"Workers: {len(stats.workers)}")
    for w in sorted(stats.workers, key=lambda w: (w.host, w.pid)):
        lines.append(
            f"  {w.host} pid {w.pid:<7} queues {','.join(w.queues):<16} "
            f"heartbeat {now - w.last_seen:4.1f} s ago  done {w.done:>8}  running {w.running}"
        )
    lines.append(f"Dead letters: {len(stats.dead)}")
    for d in stats.dead[:20]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.at))
        lines.append(f"  {stamp} {d.name} id {d.id} queue {d.queue}: {d.reason}")
    return "\n".join(lines)


def print_status(url: str | None) -> None:
    """Print ``format_status`` for the backend at ``url``."""
    with Client(url) as client:
        print(format_status(client.backend.stats()))


def watch(url: str | None, *, count: int | None = None, out: TextIO = sys.stdout) -> None:
    """Every second, print the tasks completed in the last second, depth, running, workers."""
    with Client(url) as client:
        backend = client.backend
        seen: dict[str, int] = {}
        printed = 0
        while count is None or printed < count:
            stats = backend.stats()
            # Per worker, so a worker that stops does not make the total go backwards.
            completed = sum(max(0, w.done - seen.get(w.id, w.done)) for w in stats.workers)
            seen = {w.id: w.done for w in stats.workers}
            stamp = time.strftime("%a %b %d %H:%M:%S %Y")
            parts = sorted(stats.parts.items())
            nodes = [f"{k.removeprefix('node ')} {v}" for k, v in parts if k.startswith("node ")]
            by_node = f"  (by node: {', '.join(nodes)})" if nodes else ""
            print(
                f"[{stamp}] {completed:>7} tasks/s  waiting {sum(stats.queues.values()):>7}  "
                f"running {stats.running:>4}  workers {len(stats.workers):>3}{by_node}",
                file=out,
                flush=True,
            )
            printed += 1
            time.sleep(1.0)
