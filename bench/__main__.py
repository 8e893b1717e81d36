"""``python -m bench``: remoteexec beside raw baselines, per backend, in one run.

See ``bench/README.md`` for what each figure means and how the baselines are built.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from .extra import extra_table
from .measure import Results, Sizes, progress, run_rep
from .report import machine, table, target_lines, targets, write_json
from .servers import CLEANUP, MARIADB_SETTINGS, Servers, redis_persistence

BACKENDS = ("sqlite", "redis", "mysql", "cluster")
#: The secondary MySQL pair (the seed's design, remoteexec's optimistic mode) runs half the
#: calls, to keep a full run under 10 minutes.
SCALE = {"raw-mysql-seed": 0.5, "remoteexec-mysql-optimistic": 0.5}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated, among sqlite,redis,mysql,cluster (default: all); cluster: "
        "one Redis beside a 3-primary Redis Cluster (1 and 6 shards) and Sentinel",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported")
    p.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 rep, fewer calls")
    p.add_argument(
        "--skip",
        default="",
        metavar="SYSTEMS",
        help="comma-separated systems to leave out (e.g. raw-mysql-seed)",
    )
    p.add_argument(
        "--redis-fsync",
        default="debian",
        choices=["debian", "always", "everysec", "no"],
        help="the private Redis's persistence: debian (as Debian's redis.conf ships it: no "
        "AOF, RDB save points 3600 1 300 100 60 10000; the default), or an AOF with this "
        "appendfsync and no snapshots",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=1200.0,
        metavar="SECONDS",
        help="stop starting new measurements after this long (default 1200)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="measure the dashboard's own cost instead (bench/dashboard.py): the demo's "
        "throughput alone and with the page open, and their ratio",
    )
    p.add_argument(
        "--payloads",
        action="store_true",
        help="measure 1 MiB and 100 MiB payloads in band and out of band instead",
    )
    args = p.parse_args(argv)  # fmt: skip
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        p.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.reps = 1
    if args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def groups(args: argparse.Namespace, servers: Servers) -> list[tuple[str, Callable[[], list[Any]]]]:
    """Per backend: a function that starts its server and returns its systems, in order."""
    from .raw_mysql import RawMySQL
    from .raw_redis import (
        RawRedis,
        RawRedisPipelined,
        RawRedisPipelinedCmds,
        RawRedisSeedPipelined,
    )
    from .rx import Remoteexec

    def sqlite() -> list[Any]:
        return [Remoteexec("sqlite", servers.folder("sqlite"))]

    def redis() -> list[Any]:
        server = servers.redis(args.redis_fsync)
        folder = servers.folder("redis-workers")
        return [
            RawRedis(server, folder),
            RawRedisPipelined(server, folder),
            RawRedisPipelinedCmds(server, folder),
            RawRedisSeedPipelined(server, folder),
            Remoteexec("redis", folder, server),
            Remoteexec("redis-noscript", folder, server),
        ]

    def mysql() -> list[Any]:
        server = servers.mariadb()
        folder = servers.folder("mysql-workers")
        return [
            RawMySQL(server, folder, "skip"),
            Remoteexec("mysql", folder, server),
            RawMySQL(server, folder, "seed"),
            Remoteexec("mysql-optimistic", folder, server),
        ]

    def cluster() -> list[Any]:
        single, folder = servers.redis(args.redis_fsync), servers.folder("cluster-workers")
        several, watched = servers.cluster(args.redis_fsync), servers.sentinels(args.redis_fsync)
        return [
            Remoteexec("redis", folder, single),
            Remoteexec("redis-cluster", folder, several),
            Remoteexec("redis-cluster-shards6", folder, several),
            Remoteexec("redis-sentinel", folder, watched),
            Remoteexec("redis-sentinel-durable", folder, watched),
        ]

    makers = {"sqlite": sqlite, "redis": redis, "mysql": mysql, "cluster": cluster}
    return [(b, makers[b]) for b in args.backends]


def run(args: argparse.Namespace, results: Results, sizes: Sizes) -> list[str]:
    """Measure every group; the names of the systems measured, in order."""
    servers = Servers(keep=args.keep)
    if args.keep:
        progress(f"bench: temporary folder {servers.root} is kept")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    deadline = time.monotonic() + args.time_limit
    order: list[str] = []
    for backend, make in groups(args, servers):
        progress(f"bench: starting the {backend} server")
        try:
            systems = [s for s in make() if s.name not in skip]
        except Exception as exc:
            progress(f"bench: {backend} server failed to start: {exc}")
            results.error(backend, f"server failed to start: {exc}")
            continue
        order += [s.name for s in systems]
        for rep in range(args.reps):
            for system in systems:
                label = f"{backend} rep {rep + 1}/{args.reps}"
                if time.monotonic() > deadline:
                    results.error(system.name, f"{label}: skipped, --time-limit reached")
                    continue
                run_rep(system, sizes.scaled(SCALE.get(system.name, 1.0)), results, label)
    return order


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if args.payloads:
        from .payloads import main as payloads

        return payloads(args)
    if args.dashboard:
        from .dashboard import report

        report(seconds=4.0 if args.quick else 10.0, reps=args.reps)
        return 0
    sizes = Sizes()
    if args.quick:
        sizes = Sizes(latency_calls=300, latency_warmup=50, batch_calls=2000, batch_warmup=200,
                      bound=60.0)  # fmt: skip
    results = Results()
    started = time.monotonic()
    try:
        systems = run(args, results, sizes)
    except KeyboardInterrupt:
        progress("bench: interrupted; cleaning up")
        return 130
    finally:
        CLEANUP.run_all()
    print(header(args, sizes, time.monotonic() - started))
    print(table(results, systems))
    extra = extra_table(results.median, systems)
    if extra:
        print()
        print(extra)
    print()
    print("Targets (docs/performance.md):")
    print(target_lines(targets(results)))
    for system, errors in results.errors.items():
        for error in errors:
            print(f"ERROR {system}: {error}")
    if args.json:
        settings = {k: v for k, v in vars(args).items()}
        settings["mariadb"] = {**MARIADB_SETTINGS, "log-bin": "off"}
        settings["redis"] = redis_persistence(args.redis_fsync)
        write_json(args.json, results, sizes, settings, systems)
        progress(f"bench: figures written to {args.json}")
    return 0


def redis_label(mode: str) -> str:
    """The private Redis's persistence, as the header prints it."""
    settings = ", ".join(f"{k} {v!r}" for k, v in redis_persistence(mode).items())
    return f"{settings}; as Debian ships it" if mode == "debian" else settings


def header(args: argparse.Namespace, sizes: Sizes, seconds: float) -> str:
    m = machine()
    return (
        f"remoteexec bench: {' '.join(['python -m bench', *sys.argv[1:]])}\n"
        f"machine: {m['nproc']} x {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, "
        f"hiredis {'yes' if m['hiredis'] else 'no'}\n"
        f"servers: {m['redis-server']} ({redis_label(args.redis_fsync)}); {m['mariadbd']} "
        f"({', '.join(f'{k}={v}' for k, v in MARIADB_SETTINGS.items())}, no binary log)\n"
        f"sizes: A {sizes.latency_calls} calls after {sizes.latency_warmup} warm-up; "
        f"B, C {sizes.batch_calls} calls after {sizes.batch_warmup} warm-up "
        f"(half that for {' and '.join(SCALE)}); "
        f"{args.reps} rep(s); run took {seconds:.0f} s\n"
    )


if __name__ == "__main__":
    sys.exit(main())
