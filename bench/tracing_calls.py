"""What OpenTelemetry support costs a caller with tracing off: Python calls per remote call.

Counts the function calls (Python and C) the calling thread makes per ``Cls.method(...)``
on a ``memory://`` worker thread, after a warm-up. A count does not depend on the machine's
load, unlike a timing. ``--no-otel`` hides the ``opentelemetry`` package, as if the
``otel`` extra were not installed; otherwise it is importable but no span is active.

    PYTHONPATH=. .venv/bin/python -m bench.tracing_calls [--no-otel] [--calls 200]

Run it with ``PYTHONPATH`` naming another tree to compare with code before a change.
"""

from __future__ import annotations

import argparse
import sys
import threading
import uuid
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-otel", action="store_true", help="hide opentelemetry")
    parser.add_argument("--calls", type=int, default=200)
    options = parser.parse_args()
    if options.no_otel:
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    from remoteexec import Client, Worker, remote, using

    @remote(name="CountedTask")
    class CountedTask:
        def double(self, n: int) -> int:
            return 2 * n

    url = f"memory://{uuid.uuid4().hex}"
    worker = Worker(url, threads=1, lease=30)
    thread = threading.Thread(target=worker.run)
    thread.start()
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    try:
        with Client(url, timeout=30) as client, using(client):
            for _ in range(50):
                CountedTask.double(1)
            sys.setprofile(profile)
            for _ in range(options.calls):
                CountedTask.double(1)
            sys.setprofile(None)
    finally:
        worker.stop()
        thread.join(10)
    otel = "hidden" if options.no_otel else "importable, no span"
    print(f"opentelemetry {otel}: {count / options.calls:.1f} calls per remote call")


if __name__ == "__main__":
    main()
