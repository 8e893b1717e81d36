"""Raw Redis baselines, client side (the workers are in ``raw_workers``).

* ``raw-redis``: the seed's round trip. The client LPUSHes ``[id, n]`` (msgpack) onto
  ``unstarted`` and BLPOPs ``finished:<id>``; a worker BLPOPs ``unstarted``, computes and
  LPUSHes the result onto ``finished:<id>``. One call outstanding at a time: its
  throughput is the sequential loop's calls per second.
* ``raw-redis-pipelined``: the client RPUSHes the tasks in batches of 500 values per
  command; each worker BLPOPs one task, LPOPs up to 499 more, and RPUSHes all the
  results in one command onto one reply list, which the client drains with BLPOP plus
  LPOP with a count. Results are put back in order, as ``map`` does.
* ``raw-redis-pipelined-cmds``: the same, pipelined one command per task instead of many
  values per command: the client sends 500 RPUSHes per pipeline round trip, a worker
  sends its results as one RPUSH each in one pipeline. Each task pays redis-py's
  per-command cost, as a design that keeps one message per task must.
* ``raw-redis-seed-pipelined``: the seed's round trip itself, pipelined and batched, its
  protocol kept: the client LPUSHes the ``[id, n]`` of 500 tasks onto ``sunstarted`` at
  once (one LPUSH per chunk, which the protocol allows) and BLPOPs each result from its
  own ``sfinished:<id>`` (500 BLPOPs per pipeline, so results come back in order); a
  worker BLPOPs one task, LPOPs up to 499 more, and LPUSHes each result onto its
  ``sfinished:<id>``, all in one pipeline.

No acknowledgements, leases, envelopes or timeouts: the least work a Redis RPC can do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import redis

from .servers import RawWorkers

pack = msgpack.packb
unpack = msgpack.unpackb
CHUNK = 500  # tasks per RPUSH on the pipelined client
WAIT = 30  # seconds a BLPOP waits before the bench calls the run broken


class RawRedis:
    """The seed's simple LPUSH / BLPOP round trip."""

    name = "raw-redis"
    scenarios = "AD"  # B is the A loop's rate, with one call outstanding
    kind = "redis-simple"

    def __init__(self, server: Any, folder: Path) -> None:
        self.server = server
        self.folder = folder
        self.workers: RawWorkers | None = None
        self.r: redis.Redis | None = None
        self._seq = 0

    def start(self, processes: int) -> list[int]:
        self.r = redis.Redis(host="127.0.0.1", port=self.server.port, socket_timeout=WAIT + 5)
        self.r.flushall()
        self.workers = RawWorkers(self.kind, self.folder, processes, port=str(self.server.port))
        return self.workers.pids

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None
        if self.r is not None:
            self.r.close()
            self.r = None

    def call(self, n: int) -> float:
        r = self.r
        self._seq += 1
        task_id = b"%d" % self._seq
        r.lpush("unstarted", pack((task_id, n)))  # type: ignore[union-attr]
        item = r.blpop(b"finished:" + task_id, timeout=WAIT)  # type: ignore[union-attr]
        if item is None:
            raise RuntimeError(f"{self.name}: no result within {WAIT} s")
        return unpack(item[1])  # type: ignore[arg-type, no-any-return]


class RawRedisPipelined(RawRedis):
    """Batches both ways: many values per RPUSH, many results per LPOP."""

    name = "raw-redis-pipelined"
    scenarios = "BCD"
    kind = "redis-pipelined"

    def run_many(self, ns: range) -> list[float]:
        r = self.r
        assert r is not None
        total = len(ns)
        for start in range(0, total, CHUNK):
            r.rpush("ptasks", *[pack((i, ns[i])) for i in range(start, min(start + CHUNK, total))])
        return _drain(r, "presults", total, self.name)


class RawRedisPipelinedCmds(RawRedis):
    """Pipelined round trips, one Redis command per task each way."""

    name = "raw-redis-pipelined-cmds"
    scenarios = "BC"
    kind = "redis-pipelined-cmds"

    def run_many(self, ns: range) -> list[float]:
        r = self.r
        assert r is not None
        total = len(ns)
        for start in range(0, total, CHUNK):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(start + CHUNK, total)):
                pipe.rpush("ctasks", pack((i, ns[i])))
            pipe.execute()
        return _drain(r, "cresults", total, self.name)


class RawRedisSeedPipelined(RawRedis):
    """The seed's LPUSH / BLPOP round trip, pipelined and batched, its protocol unchanged.

    All the chunks are sent first (one LPUSH of 500 tasks each), then the results are
    collected chunk by chunk (one pipeline of 500 BLPOPs each, one ``sfinished:<id>`` per
    task). Tried against sending then collecting each chunk in turn, and against keeping 2,
    4 or 8 chunks in flight: all the same within the noise on 2 cores (medians of 23k-36k
    calls/s for each); this one is kept as it is at least as fast as any and lets the
    workers start while the client still sends.
    """

    name = "raw-redis-seed-pipelined"
    scenarios = "BC"
    kind = "redis-seed-pipelined"

    def run_many(self, ns: range) -> list[float]:
        r = self.r
        assert r is not None
        total = len(ns)
        ids = [b"%d" % (self._seq + 1 + i) for i in range(total)]
        self._seq += total
        for start in range(0, total, CHUNK):  # one LPUSH per chunk, as the protocol allows
            chunk = range(start, min(start + CHUNK, total))
            r.lpush("sunstarted", *[pack((ids[i], ns[i])) for i in chunk])
        out: list[float] = []
        for start in range(0, total, CHUNK):
            pipe = r.pipeline(transaction=False)
            for task_id in ids[start : start + CHUNK]:
                pipe.blpop(b"sfinished:" + task_id, timeout=WAIT)
            for item in pipe.execute():
                if item is None:
                    raise RuntimeError(f"{self.name}: no result within {WAIT} s")
                out.append(unpack(item[1]))
        return out


def _drain(r: redis.Redis, key: str, total: int, name: str) -> list[Any]:
    """BLPOP one result, LPOP up to 1,000 more, until ``total``; put them in order."""
    out: list[Any] = [None] * total
    got = 0
    while got < total:
        item = r.blpop(key, timeout=WAIT)
        if item is None:
            raise RuntimeError(f"{name}: no result within {WAIT} s")
        bodies = [item[1]]
        more = r.lpop(key, 1000)
        if more:
            bodies.extend(more)  # type: ignore[arg-type]
        for body in bodies:
            i, value = unpack(body)  # type: ignore[arg-type]
            out[i] = value
        got += len(bodies)
    return out
