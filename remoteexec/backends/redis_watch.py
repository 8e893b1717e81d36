"""The watching half of the Redis adapter: ``lost``, ``stats``, ``purge``, ``sweep``,
heartbeats and dead letters. None of it is on the hot path, so it uses redis-py's
``Pipeline`` freely. ``RedisBackend`` (``redis.py``) inherits it and owns the state.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence, Set
from dataclasses import asdict
from typing import Any

import redis
from redis.client import Pipeline

from .base import Backend, DeadLetter, Stats, WorkerInfo
from .redis_wire import Keys, log, map_redis_errors, requeue, unpack_reply, unpack_task
from .rows import dead_letter_json, worker_json

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

    def _traceable(self, reply_to: str) -> set[str | None]:
        """Ids waiting, claimed, or answered to ``reply_to``: one snapshot, then claim lists."""
        queues = _names(self._cmd("SMEMBERS", self._keys.queues))
        with self._pipe(transaction=True) as p:
            p.lrange(self._keys.replies(reply_to), 0, -1)
            for q in queues:
                p.lrange(self._keys.waiting(q), 0, -1)
                p.zrange(self._keys.leases(q), 0, -1)
            replies, *out = p.execute()
        found = {_reply_id(e) for e in replies}
        found.update(_task_id(e) for ts in out[::2] for e in ts)
        claims = [(q, t) for q, ts in zip(queues, out[1::2], strict=True) for t in ts]
        with self._pipe(transaction=False) as p:
            for q, t in claims:
                p.lrange(self._keys.claim_raw(q, t), 0, -1)
            for elems in p.execute():
                found.update(_task_id(e) for e in elems[:1])
        return found

    def purged(self, ids: Sequence[str]) -> set[str]:
        """Ids with a tombstone younger than ``result_ttl`` in the ``purged`` sorted set."""
        if not ids:
            return set()
        with self._errors():
            scores = self._cmd("ZMSCORE", self._keys.prefix + "purged", *ids)
        cutoff = time.time() - self.result_ttl
        return {i for i, at in zip(ids, scores, strict=True) if at and float(at) > cutoff}

    def _bury_ids(self, elems: Sequence[bytes], skip: Set[str] = frozenset()) -> set[str]:
        """Leave a tombstone for each task element's id (except ``skip``); the ids."""
        ids = {i for i in map(_task_id, elems) if i is not None} - skip
        if ids:
            now, key = time.time(), self._keys.prefix + "purged"
            with self._pipe() as p:
                p.zadd(key, dict.fromkeys(ids, now))
                p.zremrangebyscore(key, "-inf", now - self.result_ttl)
                p.pexpire(key, max(1, int(self.result_ttl * 1000)))
                p.execute()
        return ids

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

    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        """One hash per id (``starts:<id>``: ``n``, ``done``), expiring at its keep_until."""
        with self._errors(), self._pipe(transaction=False) as p:
            for task_id, keep_until in starts:
                key = self._keys.prefix + "starts:" + task_id
                p.hincrby(key, "n", 1)
                p.hget(key, "done")
                p.expireat(key, int(keep_until) + 1, gt=True)
                p.expireat(key, int(keep_until) + 1, nx=True)
            out = p.execute(raise_on_error=False)
        if any(isinstance(x, Exception) for x in out):  # e.g. "n" is not an integer
            return [(2**31, True)] * len(starts)
        return [(int(n) - 1, done is not None) for n, done in zip(out[::4], out[1::4], strict=True)]

    def note_completed(self, ids: Sequence[str]) -> None:
        with self._errors(), self._pipe(transaction=False) as p:
            for task_id in ids:
                key = self._keys.prefix + "starts:" + task_id
                p.hset(key, "done", 1)
                p.expire(key, 86400, nx=True)  # a record deleted meanwhile: still expires
            p.execute()

    def stats(self) -> Stats:
        """Depths count waiting tasks plus those whose lease expired but was not requeued."""
        with self._errors():
            with self._pipe(transaction=False) as p:
                p.smembers(self._keys.queues)
                p.hgetall(self._keys.workers)
                p.lrange(self._keys.dead, 0, -1)
                names, workers, dead = p.execute()
            queues = _names(names)
            with self._pipe(transaction=False) as p:
                for q in queues:
                    p.llen(self._keys.waiting(q))
                    p.zrange(self._keys.leases(q), 0, -1, withscores=True)
                out = p.execute()
            leases = [(q, t, s) for q, ts in zip(queues, out[1::2], strict=True) for t, s in ts]
            with self._pipe(transaction=False) as p:
                for q, t, _ in leases:
                    p.exists(self._keys.claim_raw(q, t))
                held = p.execute()
        now, depth, running = time.time(), dict(zip(queues, out[::2], strict=True)), 0
        for (q, _, deadline), exists in zip(leases, held, strict=True):
            running += bool(exists and deadline > now)
            depth[q] += bool(exists and deadline <= now)
        infos = [w for w in map(worker_json, workers.values()) if w is not None]
        live = [w for w in infos if now - w.last_seen < self.worker_ttl]
        letters = [d for d in map(dead_letter_json, dead) if d is not None]
        return Stats(depth, running, live, letters)

    def purge(self, queue: str | None = None) -> int:
        """Delete waiting tasks, and those whose lease expired, of one queue or all.

        The tombstones go in first, so ``lost`` never sees a purged task with none; one
        left for a task claimed meanwhile is harmless (``lost`` finds that task).
        """
        removed = 0
        with self._errors():
            members = [] if queue is not None else self._cmd("SMEMBERS", self._keys.queues)
            names = [queue] if queue is not None else _names(members)
            for q in names:
                expired = self._cmd("ZRANGEBYSCORE", self._keys.leases(q), "-inf", time.time())
                if expired:
                    requeue(self._redis(), self._keys, q, expired)
                buried = self._bury_ids(self._cmd("LRANGE", self._keys.waiting(q), 0, -1))
                with self._pipe() as p:
                    p.lrange(self._keys.waiting(q), 0, -1)
                    p.delete(self._keys.waiting(q), self._keys.bells(q))
                    deleted = p.execute()[0]
                self._bury_ids(deleted, skip=buried)  # enqueued between the two looks
                removed += len(deleted)
        return removed

    def sweep(self) -> None:
        """Forget workers silent for ten heartbeat TTLs; drop unused reserved tokens."""
        cutoff = time.time() - 10 * self.worker_ttl
        with self._errors():
            workers = self._cmd("HGETALL", self._keys.workers)
            # A row that is not a worker's record (written by someone else) goes too.
            infos = {k: worker_json(v) for k, v in workers.items()}
            gone = [k for k, w in infos.items() if w is None or w.last_seen < cutoff]
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


def _names(members: Any) -> list[str]:
    """Queue names from the ``queues`` set, sorted; a member that is not UTF-8 is skipped."""
    names = []
    for member in members:
        try:
            names.append(member.decode())
        except UnicodeDecodeError:
            log.warning("skipped a queue name that is not UTF-8: %r", member[:100])
    return sorted(names)


def _task_id(elem: bytes) -> str | None:
    """A task element's id; None for an element too malformed to have one."""
    try:
        return unpack_task(elem, "", "").id
    except Exception:  # anything written into the broker may be garbage
        return None


def _reply_id(elem: bytes) -> str | None:
    """A reply element's task id; None for an element too malformed to have one."""
    try:
        return unpack_reply(elem)[0]
    except Exception:
        return None
