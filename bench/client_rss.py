"""The client's memory over many calls through ``map`` (not part of the default run).

``python -m bench.client_rss [--calls 10000000] [--processes 2]``: a private Redis (as
Debian ships it), ``--processes`` worker processes, and this process as the client calling
``CalculateMultipleOfPi.execute.map`` over chunks of 100,000. Prints the client's RSS
(``VmRSS``) after each million calls and the ratio of the last to the first; it passes
when that ratio is at most 1.10.
"""

from __future__ import annotations

import argparse
import sys
import time

from .servers import CLEANUP, RemoteexecWorkers, Servers

CHUNK = 100_000


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.client_rss", description=__doc__)
    p.add_argument("--calls", type=int, default=10_000_000)
    p.add_argument("--processes", type=int, default=2)
    args = p.parse_args(argv)
    import remoteexec

    from .tasks import CalculateMultipleOfPi

    servers = Servers()
    try:
        server = servers.redis("debian")
        workers = RemoteexecWorkers(server.url, servers.folder("workers"), args.processes)
        workers.wait_ready()
        first = None
        start = time.monotonic()
        with remoteexec.Client(server.url) as client, remoteexec.using(client):
            done = 0
            while done < args.calls:
                n = min(CHUNK, args.calls - done)
                got = sum(1 for _ in CalculateMultipleOfPi.execute.map(range(n)))
                assert got == n, f"{got} results for {n} calls"
                done += n
                if done % 1_000_000 == 0 or done == args.calls:
                    rss = rss_mib()
                    first = rss if first is None else first
                    sent = len(getattr(client.backend, "_sent", ()))
                    print(
                        f"{done:>10,} calls: client RSS {rss:.1f} MiB, in flight {sent}, "
                        f"{time.monotonic() - start:.0f} s",
                        flush=True,
                    )
        assert first is not None
        ratio = rss / first
        print(f"RSS last/first-million: {ratio:.3f} ({'ok' if ratio <= 1.10 else 'OVER 1.10'})")
        return 0 if ratio <= 1.10 else 1
    finally:
        CLEANUP.run_all()


if __name__ == "__main__":
    sys.exit(main())
