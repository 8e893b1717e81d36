"""What per-task log lines and metrics cost a worker, in microseconds per task.

Two ways, each mode once per repetition, the modes interleaved:

* ``direct`` (default): a ``memory://`` worker's own per-task step (``Worker._execute``:
  decode, run ``CalculateMultipleOfPi``, encode the reply) on ``--calls`` claims made here,
  in this thread, in CPU time: no client, no broker, so the observer's cost is not lost in
  their noise (nor much in other processes' load).
* ``served``: a ``memory://`` worker thread serving ``--calls`` calls made with ``map``.

Modes: ``off`` (no observer: what every worker pays when neither is asked for),
``log-tasks`` (lines written to a file in a temporary folder), ``metrics`` (a private
registry, or with ``--multiproc`` prometheus_client's multiprocess files, as under
``remoteexec-worker --metrics-port``), ``both``. On code without ``remoteexec.observe``
only ``off`` runs: the figure before the observer existed.

    PYTHONPATH=. .venv/bin/python -m bench.task_overhead [--how direct|served]
        [--calls 20000] [--reps 7] [--modes off,log-tasks,metrics,both] [--multiproc]

Prints, per mode, the best and the median repetition and the median's difference to
``off``.
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


def _worker(mode: str) -> Any:
    from remoteexec import Worker

    worker = Worker(f"memory://{uuid.uuid4().hex}", threads=1, lease=30)
    if mode != "off":
        from remoteexec.observe import observer_for

        both = mode == "both"
        observer = observer_for(
            log_tasks=both or mode == "log-tasks", metrics=both or mode == "metrics"
        )
        worker.observer = observer
    return worker


def _direct(mode: str, calls: int) -> float:
    """CPU seconds per ``Worker._execute`` with ``mode``."""
    from remoteexec.backends import Claim
    from remoteexec.message import Call
    from remoteexec.sandbox import Runner

    worker = _worker(mode)
    worker._local.index, worker._local.runner, worker._local.sandbox = 0, Runner(), None
    call = Call("c", "CalculateMultipleOfPi", "execute", (2,), {}, None, 3, None)
    call.queue, call.reply_to, call.created = "default", "r", time.time()
    body = worker.codec.encode_call(call)
    claims = [Claim(f"c{i}", "default", "r", body, 1, f"t{i}") for i in range(calls)]
    worker._leases.take(claims)
    started = time.thread_time()  # CPU time: other processes on the machine count less
    for claim in claims:
        worker._execute(claim)
    took = time.thread_time() - started
    worker.backend.close()
    return took / calls


def _served(mode: str, calls: int) -> float:
    """Seconds per call served by a worker thread with ``mode``."""
    from bench.tasks import CalculateMultipleOfPi
    from remoteexec import Client, using

    worker = _worker(mode)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        with Client(worker.settings.url) as client, using(client):
            list(CalculateMultipleOfPi.execute.map(range(1000)))  # warm-up
            started = time.perf_counter()
            assert len(list(CalculateMultipleOfPi.execute.map(range(calls)))) == calls
            took = time.perf_counter() - started
    finally:
        worker.stop()
        thread.join()
    return took / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--how", choices=["direct", "served"], default="direct")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--modes", default="off,log-tasks,metrics,both")
    parser.add_argument("--multiproc", action="store_true")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="remoteexec-overhead-")
    if args.multiproc:  # before prometheus_client is imported: it reads this once
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    logging.basicConfig(filename=os.path.join(folder, "tasks.log"), level=logging.INFO)
    import bench.tasks  # noqa: F401 (registers CalculateMultipleOfPi)

    modes = args.modes.split(",")
    try:
        import remoteexec.observe  # noqa: F401
    except ImportError:
        modes = ["off"]
    measure = _direct if args.how == "direct" else _served
    figures: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.reps):
        for mode in modes:
            figures[mode].append(measure(mode, args.calls) * 1e6)
    off = statistics.median(figures["off"])
    for mode in modes:
        best, median = min(figures[mode]), statistics.median(figures[mode])
        print(f"{mode:10} best {best:6.2f}  median {median:6.2f} us/task  ({median - off:+.2f})")


if __name__ == "__main__":
    main()
