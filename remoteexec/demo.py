"""``remoteexec demo``: workers and a client, on the embedded SQLite file unless told otherwise.

It starts ``remoteexec-worker`` with the task types below, then a client that keeps asking
for random multiples of pi and prints ``Submitted:`` / ``Received:`` lines, then
the tasks per second it reached, one call at a time and batched through ``map``.
"""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from .client import Client, using
from .config import redact_url, resolve
from .remote import remote

QUEUE = "demo"


@remote(queue=QUEUE)
class CalculateMultipleOfPi:
    """What is pi times n?"""

    def execute(self, n: float) -> float:
        return math.pi * n


@remote(queue=QUEUE)
class WhatMachineIsThis:
    """Which machine ran me?"""

    def execute(self) -> str:
        return socket.gethostname()


# mypy does not apply a class decorator's return type (python/mypy#3135): it would take
# these names for the plain classes. Typed code reaches the remote methods through Any.
_pi: Any = CalculateMultipleOfPi
_machine: Any = WhatMachineIsThis


def _stamp() -> str:
    return time.strftime("%a %b %d %H:%M:%S %z %Y")


def run_demo(
    url: str | None = None, *, workers: int = 2, seconds: float = 10.0, verbose: bool = False
) -> None:
    """Run the demo for about ``seconds`` and stop every process it started."""
    url = resolve(url).url
    print(f"remoteexec demo on {redact_url(url)} with {workers} worker process(es)")
    supervisor = subprocess.Popen(
        [
            sys.executable, "-c", "from remoteexec.cli import worker_main; worker_main()",
            "--queues", QUEUE, "--import", __name__,
            "--processes", str(workers), "--log-level", "WARNING",
        ],
        env=dict(os.environ, REMOTEEXEC_URL=url),  # not in argv, where ps shows a password
    )  # fmt: skip
    try:
        with Client(url) as client, using(client):
            client.backend.purge(QUEUE)
            _sequential(seconds * 0.7, verbose)
            _batched(seconds * 0.3)
            print(f"WhatMachineIsThis.execute() -> {_machine.execute()!r}")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(15)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()


def _sequential(seconds: float, verbose: bool) -> None:
    if not verbose:
        print("(printing a sample of calls, about five a second; --verbose prints all)")
    latencies: list[float] = []
    next_print = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        n = random.randint(1, 1000)
        show = verbose or time.monotonic() >= next_print
        started = time.perf_counter()
        future = _pi.execute.submit(n)
        task = f"id={future.task_id[-12:]} type=CalculateMultipleOfPi"  # the tail: unique
        if show:
            print(f"[{_stamp()}] Submitted: <Task {task} state=unstarted input={n}>")
        output = future.result()
        latencies.append(time.perf_counter() - started)
        if show:
            print(f"[{_stamp()}] Received:  <Task {task} state=finished output={output} input={n}>")
            print()
            next_print = time.monotonic() + 0.2
    rate = len(latencies) / seconds
    p50 = statistics.median(latencies) * 1000
    print(f"One at a time: {len(latencies)} calls, {rate:,.0f} tasks/s, p50 {p50:.2f} ms")


def _batched(seconds: float) -> None:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        numbers = range(done, done + 2000)
        results = list(_pi.execute.map(numbers))
        if results[-1] != math.pi * numbers[-1]:
            raise RuntimeError(f"wrong result for {numbers[-1]}: {results[-1]!r}")
        done += len(results)
    rate = done / (time.perf_counter() - started)
    print(f"Batched with map: {done} calls, {rate:,.0f} tasks/s")
