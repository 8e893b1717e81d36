"""The raw baselines' worker loops: the least work per task, nothing else.

Run as ``python -m bench.raw_workers KIND --port P [--db NAME]``; KIND is one of
``redis-simple``, ``redis-pipelined``, ``redis-pipelined-cmds``, ``redis-seed-pipelined``,
``mysql-skip`` and ``mysql-seed``. Each prints ``ready`` once connected, then serves until
killed (or until its parent, the bench, is gone).
This module imports only its driver and msgpack, so its peak memory is the floor the
remoteexec worker is compared with.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import msgpack

pack = msgpack.packb
unpack = msgpack.unpackb
PIPELINE_BATCH = 500  # tasks a pipelined worker takes per round trip


def redis_simple(r, parent: int) -> None:
    """The seed's loop: BLPOP ``unstarted``, compute, LPUSH the result on ``finished:<id>``."""
    while True:
        item = r.blpop("unstarted", timeout=1)
        if item is None:
            if os.getppid() != parent:
                return
            continue
        task_id, n = unpack(item[1])
        r.lpush(b"finished:" + task_id, pack(math.pi * n))


def redis_pipelined(r, parent: int) -> None:
    """BLPOP one task, LPOP up to a batch more, one RPUSH of all the results."""
    while True:
        item = r.blpop("ptasks", timeout=1)
        if item is None:
            if os.getppid() != parent:
                return
            continue
        bodies = [item[1]]
        more = r.lpop("ptasks", PIPELINE_BATCH - 1)
        if more:
            bodies.extend(more)
        r.rpush("presults", *[pack((i, math.pi * n)) for i, n in map(unpack, bodies)])


def redis_pipelined_cmds(r, parent: int) -> None:
    """As ``redis_pipelined``, but the results go back one RPUSH each, in one pipeline."""
    while True:
        item = r.blpop("ctasks", timeout=1)
        if item is None:
            if os.getppid() != parent:
                return
            continue
        bodies = [item[1]]
        more = r.lpop("ctasks", PIPELINE_BATCH - 1)
        if more:
            bodies.extend(more)
        pipe = r.pipeline(transaction=False)
        for i, n in map(unpack, bodies):
            pipe.rpush("cresults", pack((i, math.pi * n)))
        pipe.execute()


def redis_seed_pipelined(r, parent: int) -> None:
    """The seed's protocol, batched: BLPOP ``sunstarted``, LPOP up to a batch more, then one
    pipeline of an LPUSH on ``sfinished:<id>`` per result."""
    while True:
        item = r.blpop("sunstarted", timeout=1)
        if item is None:
            if os.getppid() != parent:
                return
            continue
        bodies = [item[1]]
        more = r.lpop("sunstarted", PIPELINE_BATCH - 1)
        if more:
            bodies.extend(more)
        pipe = r.pipeline(transaction=False)
        for task_id, n in map(unpack, bodies):
            pipe.lpush(b"sfinished:" + task_id, pack(math.pi * n))
        pipe.execute()


def mysql_skip_locked(conn, parent: int) -> None:
    """One row per claim in one transaction: SELECT ... FOR UPDATE SKIP LOCKED, UPDATE."""
    cur = conn.cursor()
    while True:
        cur.execute(
            "SELECT id, arg FROM tasks WHERE state = 0 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        row = cur.fetchone()
        if row is None:
            conn.commit()
            if os.getppid() != parent:
                return
            time.sleep(0.001)
            continue
        n = unpack(row[1])
        cur.execute(
            "UPDATE tasks SET state = 2, result = %s WHERE id = %s",
            (pack((n, math.pi * n)), row[0]),
        )
        conn.commit()


def mysql_seed(conn, parent: int) -> None:
    """The seed's design: poll for an unstarted row, claim it by optimistic locking."""
    cur = conn.cursor()
    while True:
        cur.execute("SELECT id, lock_version, arg FROM tasks WHERE state = 0 ORDER BY id LIMIT 1")
        row = cur.fetchone()
        if row is None:
            if os.getppid() != parent:
                return
            time.sleep(0.001)
            continue
        cur.execute(
            "UPDATE tasks SET state = 1, lock_version = lock_version + 1"
            " WHERE id = %s AND lock_version = %s",
            (row[0], row[1]),
        )
        if cur.rowcount != 1:
            continue  # another worker got it first
        n = unpack(row[2])
        cur.execute(
            "UPDATE tasks SET state = 2, result = %s WHERE id = %s",
            (pack((n, math.pi * n)), row[0]),
        )


def main(argv: list[str]) -> None:
    kind, options = argv[0], dict(zip(argv[1::2], argv[2::2], strict=True))
    port, parent = int(options["--port"]), os.getppid()
    conn: Any
    loop: Callable[[Any, int], None]
    if kind.startswith("redis-"):
        import redis

        conn = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        conn.ping()
        loop = {
            "redis-simple": redis_simple,
            "redis-pipelined": redis_pipelined,
            "redis-pipelined-cmds": redis_pipelined_cmds,
            "redis-seed-pipelined": redis_seed_pipelined,
        }[kind]
    else:
        import pymysql

        conn = pymysql.connect(
            host="127.0.0.1", port=port, user="root", database=options["--db"],
            autocommit=kind == "mysql-seed", read_timeout=30, write_timeout=30,
        )  # fmt: skip
        loop = mysql_skip_locked if kind == "mysql-skip" else mysql_seed
    print("ready", flush=True)
    loop(conn, parent)


if __name__ == "__main__":
    main(sys.argv[1:])
