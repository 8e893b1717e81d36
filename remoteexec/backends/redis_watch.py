"""The watching half of the Redis adapter: ``lost``, ``stats``, ``purge``, ``sweep``,
heartbeats and dead letters. None of it is on the hot path, so it uses redis-py's
``Pipeline`` freely. ``RedisBackend`` (``redis.py``) inherits it and owns the state.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import redis
from redis.client import Pipeline

from .base import Backend, DeadLetter, Stats, WorkerInfo
from .redis_wire import Keys, map_redis_errors, requeue, unpack_reply, unpack_task

_MAX_DEAD = 1000


class RedisWatching(Backend):
    """Reads and housekeeping over the keys that ``RedisBackend`` writes."""

    _keys: Keys
    _lock: threading.Lock
    _mine: str  # this adapter's random id, the epoch it would set
    _sent: dict[str, bytes]  # id -> epoch, for calls sent and not yet answered
    _stale: dict[str, list[str]]  # reserved tokens that got no task, per queue

    def _errors(self) -> map_redis_errors:
        raise NotImplementedError

    def _redis(self) -> redis.Redis:
        raise NotImplementedError

    def _cmd(self, *args: Any) -> Any:
        raise NotImplementedError

    def _pipe(self, *, transaction: bool = True) -> Pipeline:
        raise NotImplementedError

    def lost(self, ids: Sequence[str], reply_to: str) -> set[str]:
        """Ids sent under an epoch the server no longer has, or found nowhere (see the module).

        The second test catches a reply lost on the wire: ``BLMPOP`` pops replies, and a
        connection cut before its answer arrives loses them. A task that moved between
        two lists while they were read is found by a second look.
        """
        with self._errors():
            epoch = self._cmd("GET", self._keys.epoch)
            with self._lock:
                mine = {i: self._sent[i] for i in ids if i in self._sent}
            gone = {i for i, sent_under in mine.items() if sent_under != epoch}
            missing = set(mine) - gone
            for _ in range(2):
                if missing:
                    missing -= self._traceable(reply_to)
        with self._lock:
            for i in gone | missing:
                self._sent.pop(i, None)
        return gone | missing

    def _traceable(self, reply_to: str) -> set[str]:
        """Ids waiting, claimed, or answered to ``reply_to``: one snapshot, then claim lists."""
        queues = sorted(q.decode() for q in self._cmd("SMEMBERS", self._keys.queues))
        with self._pipe(transaction=True) as p:
            p.lrange(self._keys.replies(reply_to), 0, -1)
            for q in queues:
                p.lrange(self._keys.waiting(q), 0, -1)
                p.zrange(self._keys.leases(q), 0, -1)
            replies, *out = p.execute()
        found = {unpack_reply(e)[0] for e in replies}
        found.update(unpack_task(e, "", "").id for ts in out[::2] for e in ts)
        claims = [(q, t.decode()) for q, ts in zip(queues, out[1::2], strict=True) for t in ts]
        with self._pipe(transaction=False) as p:
            for q, t in claims:
                p.lrange(self._keys.claim(q, t), 0, -1)
            for elems in p.execute():
                found.update(unpack_task(e, "", "").id for e in elems[:1])
        return found

    def heartbeat(self, info: WorkerInfo) -> None:
        with self._errors(), self._pipe(transaction=False) as p:
            p.hset(self._keys.workers, info.id, json.dumps(asdict(info)))
            p.set(self._keys.epoch, self._mine, nx=True)
            if info.queues:
                p.sadd(self._keys.queues, *info.queues)
            p.execute()

    def forget_worker(self, worker: str) -> None:
        with self._errors():
            self._cmd("HDEL", self._keys.workers, worker)

    def bury(self, letter: DeadLetter) -> None:
        with self._errors(), self._pipe() as p:
            p.lpush(self._keys.dead, json.dumps(asdict(letter)))
            p.ltrim(self._keys.dead, 0, _MAX_DEAD - 1)
            p.execute()

    def stats(self) -> Stats:
        """Depths count waiting tasks plus those whose lease expired but was not requeued."""
        with self._errors():
            with self._pipe(transaction=False) as p:
                p.smembers(self._keys.queues)
                p.hgetall(self._keys.workers)
                p.lrange(self._keys.dead, 0, -1)
                names, workers, dead = p.execute()
            queues = sorted(q.decode() for q in names)
            with self._pipe(transaction=False) as p:
                for q in queues:
                    p.llen(self._keys.waiting(q))
                    p.zrange(self._keys.leases(q), 0, -1, withscores=True)
                out = p.execute()
            leases = [(q, t, s) for q, ts in zip(queues, out[1::2], strict=True) for t, s in ts]
            with self._pipe(transaction=False) as p:
                for q, t, _ in leases:
                    p.exists(self._keys.claim(q, t.decode()))
                held = p.execute()
        now, depth, running = time.time(), dict(zip(queues, out[::2], strict=True)), 0
        for (q, _, deadline), exists in zip(leases, held, strict=True):
            running += bool(exists and deadline > now)
            depth[q] += bool(exists and deadline <= now)
        infos = [WorkerInfo(**json.loads(w)) for w in workers.values()]
        live = [w for w in infos if now - w.last_seen < self.worker_ttl]
        return Stats(depth, running, live, [DeadLetter(**json.loads(d)) for d in dead])

    def purge(self, queue: str | None = None) -> int:
        """Delete waiting tasks, and those whose lease expired, of one queue or all."""
        removed = 0
        with self._errors():
            names = [queue] if queue is not None else self._cmd("SMEMBERS", self._keys.queues)
            for name in names:
                q = name if isinstance(name, str) else name.decode()
                expired = self._cmd("ZRANGEBYSCORE", self._keys.leases(q), "-inf", time.time())
                if expired:
                    requeue(self._redis(), self._keys, q, [t.decode() for t in expired])
                with self._pipe() as p:
                    p.llen(self._keys.waiting(q))
                    p.delete(self._keys.waiting(q), self._keys.bells(q))
                    removed += p.execute()[0]
        return removed

    def sweep(self) -> None:
        """Forget workers silent for ten heartbeat TTLs; drop unused reserved tokens."""
        cutoff = time.time() - 10 * self.worker_ttl
        with self._errors():
            workers = self._cmd("HGETALL", self._keys.workers)
            gone = [k for k, v in workers.items() if json.loads(v)["last_seen"] < cutoff]
            if gone:
                self._cmd("HDEL", self._keys.workers, *gone)
            self._drop_stale()

    def _drop_stale(self) -> None:
        with self._lock:
            stale, self._stale = self._stale, {}
        if stale:
            with self._pipe(transaction=False) as p:
                for queue, tokens in stale.items():
                    p.zrem(self._keys.leases(queue), *tokens)
                p.execute()
