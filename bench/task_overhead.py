"""What per-task log lines and metrics cost a worker: a ``memory://`` worker thread serving
``--calls`` calls (``map``, batched) in this process, once per mode and repetition, the
modes interleaved. Prints the median microseconds per call of each mode and its difference
to ``off`` (no observer: what every worker pays when neither is asked for).

    PYTHONPATH=. .venv/bin/python -m bench.task_overhead [--calls 20000] [--reps 5]
        [--modes off,log-tasks,metrics,both] [--multiproc]

``log-tasks`` writes its lines to a file in a temporary folder; ``metrics`` counts into a
private registry, or with ``--multiproc`` into prometheus_client's multiprocess files (as
under ``remoteexec-worker --metrics-port``). On code without ``remoteexec.observe`` only
``off`` runs: that is the figure before the observer existed.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
import uuid
from typing import Any


def _observer(mode: str) -> Any:
    from remoteexec.observe import observer_for

    return observer_for(
        log_tasks=mode in ("log-tasks", "both"), metrics=mode in ("metrics", "both")
    )


def _run(mode: str, calls: int) -> float:
    """Seconds per call with ``mode``."""
    from bench.tasks import CalculateMultipleOfPi
    from remoteexec import Client, Worker, using

    url = f"memory://{uuid.uuid4().hex}"
    worker = Worker(url, threads=1, lease=30)
    if mode != "off":
        worker.observer = _observer(mode)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        with Client(url) as client, using(client):
            list(CalculateMultipleOfPi.execute.map(range(1000)))  # warm-up
            started = time.perf_counter()
            results = list(CalculateMultipleOfPi.execute.map(range(calls)))
            took = time.perf_counter() - started
            assert len(results) == calls
    finally:
        worker.stop()
        thread.join()
    return took / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--modes", default="off,log-tasks,metrics,both")
    parser.add_argument("--multiproc", action="store_true")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="remoteexec-overhead-")
    if args.multiproc:  # before prometheus_client is imported: it reads this once
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    logging.basicConfig(filename=os.path.join(folder, "tasks.log"), level=logging.INFO)
    modes = args.modes.split(",")
    try:
        import remoteexec.observe  # noqa: F401
    except ImportError:
        modes = ["off"]
    figures: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.reps):
        for mode in modes:
            figures[mode].append(_run(mode, args.calls) * 1e6)
    off = statistics.median(figures["off"])
    for mode in modes:
        median = statistics.median(figures[mode])
        each = " ".join(f"{x:.1f}" for x in figures[mode])
        print(f"{mode:10} {median:7.1f} us/call  ({median - off:+.1f} vs off)  [{each}]")


if __name__ == "__main__":
    main()
