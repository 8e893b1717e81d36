"""``python -m bench --payloads``: large arguments and results, in band and out of band.

For each backend (and a shared folder, ``file://``, with a SQLite broker), 1 MiB and
100 MiB payloads: ``Echo.value(data)`` called one after another (10 calls of 1 MiB, 2 of
100 MiB, after a warm-up call), so every call moves its payload twice (argument and
result). Reported: calls/s and MB/s (argument + result bytes, 10^6 per MB), median over
``--reps``. *In band* sets ``blob_threshold`` above the payload (and ``max_message_size``
to 1 GiB), *out of band* keeps the default 256 KiB. A payload the broker refuses in band
(MySQL's ``max_allowed_packet``) is reported as refused.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from .measure import progress
from .servers import CLEANUP, RemoteexecWorkers, Servers, drop_database, new_database

MiB = 2**20
SIZES = {"1 MiB": (MiB, 10), "100 MiB": (100 * MiB, 2)}
MODES = ("in band", "out of band")


def _url(backend: str, servers: Servers, server: Any, run: int) -> str:
    if backend in ("sqlite", "file"):
        return f"sqlite:///{servers.folder('payloads-sqlite') / f'bench-{run}.db'}"
    if backend == "redis":
        probe = server.client()
        probe.flushall()
        probe.close()
        return str(server.url)
    db = new_database(server, f"payloads_{run}")
    CLEANUP.push(f"database {db}", lambda: drop_database(server, db))
    return f"mysql://root@127.0.0.1:{server.port}/{db}"


def _settings(mode: str, folder: Path, blob_url: str | None) -> Path:
    """A YAML file of the settings of ``mode``, read by the client and the workers."""
    path = folder / f"{mode.replace(' ', '-')}.yaml"
    lines = ["max_message_size: 1073741824"]
    if mode == "in band":
        lines.append("blob_threshold: 1099511627776")
    if blob_url:
        lines.append(f"blob_url: {blob_url}")
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(url: str, folder: Path, size: int, calls: int) -> tuple[float, float] | str:
    """calls/s and MB/s of ``calls`` echo calls of ``size`` bytes, or why they failed."""
    import remoteexec

    from .tasks import Echo

    workers = RemoteexecWorkers(url, folder, 1)
    try:
        workers.wait_ready()
        with remoteexec.Client(url) as client, remoteexec.using(client):
            echo: Any = Echo
            data = os.urandom(size)
            try:
                assert echo.value(data[:MiB]) == data[:MiB]  # warm-up
                started = time.perf_counter()
                for _ in range(calls):
                    if echo.value(data) != data:
                        return "wrong result"
                seconds = time.perf_counter() - started
            except remoteexec.RemoteExecError as exc:
                return f"refused: {type(exc).__name__}"
        return calls / seconds, 2 * size * calls / seconds / 1e6
    finally:
        workers.stop()


def main(args: argparse.Namespace) -> int:
    servers = Servers(keep=args.keep)
    rows: list[tuple[str, str, str, str]] = []
    run = 0
    try:
        for backend in [*args.backends, "file"]:
            server = None
            if backend == "redis":
                server = servers.redis(args.redis_fsync)
            elif backend == "mysql":
                server = servers.mariadb()
            folder = servers.folder(f"payloads-{backend}")
            blob_url = None
            if backend == "file":
                (folder / "blobs").mkdir()
                blob_url = f"file://{folder / 'blobs'}"
            for label, (size, calls) in SIZES.items():
                for mode in MODES if backend != "file" else MODES[1:]:
                    os.environ["REMOTEEXEC_CONFIG"] = str(_settings(mode, folder, blob_url))
                    got: list[tuple[float, float]] = []
                    outcome = ""
                    for _ in range(args.reps):
                        run += 1
                        result = measure(_url(backend, servers, server, run), folder, size, calls)
                        if isinstance(result, str):
                            outcome = result
                            break
                        got.append(result)
                    if got:
                        rate = statistics.median(r[0] for r in got)
                        mbs = statistics.median(r[1] for r in got)
                        outcome = f"{rate:8.3f} calls/s {mbs:8.1f} MB/s"
                    progress(f"bench payloads: {backend} {label} {mode}: {outcome}")
                    rows.append((backend, label, mode, outcome))
    finally:
        os.environ.pop("REMOTEEXEC_CONFIG", None)
        CLEANUP.run_all()
    print("| backend | payload | mode | calls/s, MB/s |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0
