"""The dashboard's own cost: ``python -m bench.dashboard [--seconds S] [--reps N]``, or
``python -m bench --dashboard [--reps N] [--quick]``.

Runs ``remoteexec demo`` on a fresh SQLite file alone, then with ``remoteexec dashboard``
serving the same file and a reader fetching ``/api/snapshot`` every second (what an open page
does), and prints both throughputs (median of the reps), their ratio and the drop in percent.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

RX = [sys.executable, "-m", "remoteexec"]


def demo(url: str, seconds: float) -> float:
    out = subprocess.run([*RX, "demo", "--url", url, "--seconds", str(seconds)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    rates = re.findall(r"([\d,]+) tasks/s", out)
    return sum(float(r.replace(",", "")) for r in rates)


def with_page(url: str, seconds: float, port: int) -> float:
    server = subprocess.Popen([*RX, "dashboard", "--url", url, "--port", str(port)])
    stop = threading.Event()

    def read() -> None:
        while not stop.wait(1.0):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/snapshot", timeout=5).read()
            except OSError:
                pass

    reader = threading.Thread(target=read, daemon=True)
    try:
        time.sleep(2)
        reader.start()
        return demo(url, seconds)
    finally:
        stop.set()
        server.terminate()
        server.wait(10)


def report(*, seconds: float, reps: int, port: int = 8799) -> float:
    """Measure, print, and return the ratio of the throughput with the page open to alone."""
    alone, opened = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(reps):
            alone.append(demo(f"sqlite:///{Path(tmp) / f'a{i}.db'}", seconds))
            opened.append(with_page(f"sqlite:///{Path(tmp) / f'b{i}.db'}", seconds, port))
    a, b = statistics.median(alone), statistics.median(opened)
    print(f"demo alone {a:,.0f} tasks/s (sum of its two phases), with the page open {b:,.0f}; "
          f"ratio {b / a:.3f}, drop {100 * (a - b) / a:.1f} %")  # fmt: skip
    return b / a


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--port", type=int, default=8799)
    args = p.parse_args()
    report(seconds=args.seconds, reps=args.reps, port=args.port)


if __name__ == "__main__":
    main()
