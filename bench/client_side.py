"""The client's side of ``map``, measured apart (not part of the default run).

``python -m bench.client_side [--calls 20000] [--rounds 3] [--processes 1] [--profile]``:
a private Redis (persisting as ``--redis-fsync`` says; Debian's defaults unless told),
``--processes`` worker processes, and this process as the client calling
``CalculateMultipleOfPi.execute.map`` over ``--calls`` numbers, ``--rounds`` times. Prints
each round's calls/s and the client's CPU per call (user + system of this process, every
thread). With ``--profile``, one more round runs under cProfile and prints where the main
thread and the reply listener spend their time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from typing import Any

from .servers import CLEANUP, RemoteexecWorkers, Servers


def round_trip(method: Any, calls: int) -> tuple[float, float]:
    """Calls per second and the client's CPU microseconds per call, over one ``map``."""
    cpu, wall = time.process_time(), time.perf_counter()
    got = sum(1 for _ in method.map(range(calls)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert got == calls, f"{got} results for {calls} calls"
    return calls / wall, cpu / calls * 1e6


def profiled(url: str, method: Any, calls: int) -> None:
    """One ``map`` on a new client, its main thread and reply listener under cProfile."""
    import remoteexec
    from remoteexec import replies

    listening = replies.Replies._listen
    profiles: list[cProfile.Profile] = []

    def listen(self: replies.Replies) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.runcall(listening, self)

    replies.Replies._listen = listen  # type: ignore[method-assign]
    try:
        with remoteexec.Client(url) as client, remoteexec.using(client):
            main = cProfile.Profile()
            main.runcall(lambda: sum(1 for _ in method.map(range(calls))))
    finally:
        replies.Replies._listen = listening  # type: ignore[method-assign]
    print("--- the main thread")
    pstats.Stats(main).sort_stats("tottime").print_stats(20)
    for profile in profiles:
        print("--- the reply listener")
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.client_side", description=__doc__)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument(
        "--redis-fsync", choices=["debian", "always", "everysec", "no"], default="debian"
    )
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    import remoteexec

    from .tasks import CalculateMultipleOfPi

    servers = Servers()
    try:
        server = servers.redis(args.redis_fsync)
        workers = RemoteexecWorkers(server.url, servers.folder("workers"), args.processes)
        workers.wait_ready()
        method = CalculateMultipleOfPi.execute
        with remoteexec.Client(server.url) as client, remoteexec.using(client):
            round_trip(method, 2_000)  # connections made, the worker warm
            for n in range(1, args.rounds + 1):
                rate, cpu = round_trip(method, args.calls)
                print(f"round {n}: {rate:,.0f} calls/s, client CPU {cpu:.1f} µs/call", flush=True)
            if args.profile:
                profiled(server.url, method, args.calls)
        return 0
    finally:
        CLEANUP.run_all()


if __name__ == "__main__":
    sys.exit(main())
