"""What the Redis adapter reads and tidies off the hot path: where sent tasks are (for
``lost`` and ``states``), kept results, ``stats``, ``purge``, ``withdraw``, heartbeats,
start records and dead letters.

None of it is on the hot path, so it uses redis-py's ``Pipeline`` freely. ``RedisBackend``
holds one ``Watch`` per connection set and maps its errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence, Set
from dataclasses import asdict, replace
from typing import Any

import redis
from redis.client import Pipeline
from redis.cluster import RedisCluster

from ...errors import BackendUnavailable
from ..base import (
    MAX_DEAD_LETTERS,
    RUNNING,
    WAITING,
    DeadLetter,
    Job,
    Stats,
    WorkerInfo,
    buried_task,
)
from ..rows import dead_letter_json, worker_json
from .commands import requeue
from .deferred import PREFIX, is_deferred
from .elements import pack_task, unpack_reply, unpack_task
from .keys import Keys
from .topology import spread_of, spread_oldest
from .wire import raw

log = logging.getLogger("remoteexec.redis")


class Watch:
    """Reads and housekeeping over the keys under ``keys``, on ``client``."""

    def __init__(self, keys: Keys, client: redis.Redis, *, mine: str) -> None:
        self._keys, self._client, self._mine = keys, client, mine
        # queue -> (the task at its head when stats last looked, when stats first saw it)
        self._heads: dict[str, tuple[bytes, float]] = {}

    def _pipe(self, *, transaction: bool = True) -> Pipeline:
        return self._client.pipeline(transaction=transaction)

    def _cmd(self, *args: Any) -> Any:
        return raw(self._client)(*args)

    def traceable(self, reply_to: str) -> set[str | None]:
        """Ids waiting, claimed, or answered to ``reply_to``: one snapshot, then claim lists."""
        queues = _names(self._cmd("SMEMBERS", self._keys.queues))
        # On a cluster the lists are in many slots: no snapshot, the second look covers it.
        with self._pipe(transaction=not isinstance(self._client, RedisCluster)) as p:
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

    def results(self, ids: Sequence[str]) -> dict[str, bytes]:
        """The first reply kept under each of ``ids`` (``keys.kept``), where one is."""
        with self._pipe(transaction=False) as p:
            for i in ids:
                p.lrange(self._keys.kept(i), 0, 0)  # LRANGE: a client's commands have no LINDEX
            out = [first[0] if type(first) is list and first else None for first in p.execute()]
        return {i: body for i, body in zip(ids, out, strict=True) if type(body) is bytes}

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """``WAITING`` or ``RUNNING`` for each of ``ids`` in a waiting list or a claim list
        (a task claimed while this reads is found in its claim list, read after)."""
        wanted: set[str | None] = set(ids)
        found: dict[str | None, str] = {}
        queues = _names(self._cmd("SMEMBERS", self._keys.queues))
        with self._pipe(transaction=not isinstance(self._client, RedisCluster)) as p:
            for q in queues:
                p.lrange(self._keys.waiting(q), 0, -1)
                p.zrange(self._keys.leases(q), 0, -1)
            out = p.execute()
        for elems in out[::2]:
            found.update((i, WAITING) for e in elems if (i := _task_id(e)) in wanted)
        claims = [(q, t) for q, ts in zip(queues, out[1::2], strict=True) for t in ts]
        with self._pipe(transaction=False) as p:
            for q, t in claims:
                p.lrange(self._keys.claim_raw(q, t), 0, 0)
            elems = [first[0] if first else None for first in p.execute()]
        for e in elems:
            if e is not None and (i := _task_id(e)) in wanted:
                found[i] = RUNNING  # a lease due but not yet requeued reads running
        return {i: s for i, s in found.items() if i is not None}

    def purged(self, ids: Sequence[str], *, result_ttl: float) -> set[str]:
        """Ids with a tombstone younger than ``result_ttl`` in the ``purged`` sorted set."""
        scores = self._cmd("ZMSCORE", self._keys.purged, *ids)
        cutoff = time.time() - result_ttl
        return {i for i, at in zip(ids, scores, strict=True) if at and float(at) > cutoff}

    def _bury_ids(
        self, elems: Sequence[bytes], result_ttl: float, skip: Set[str] = frozenset()
    ) -> set[str]:
        """Leave a tombstone for each task element's id (except ``skip``); the ids."""
        ids = {i for i in map(_task_id, elems) if i is not None} - skip
        if ids:
            now, key = time.time(), self._keys.purged
            with self._pipe() as p:
                p.zadd(key, dict.fromkeys(ids, now))
                p.zremrangebyscore(key, "-inf", now - result_ttl)
                p.pexpire(key, max(1, int(result_ttl * 1000)))
                p.execute()
        return ids

    def heartbeat(self, info: WorkerInfo) -> None:
        with self._pipe(transaction=False) as p:
            p.hset(self._keys.workers, info.id, json.dumps(asdict(info)))
            p.set(self._keys.epoch, self._mine, nx=True)
            if info.queues:
                p.sadd(self._keys.queues, *info.queues)
            p.execute()

    def forget_worker(self, worker: str) -> None:
        self._cmd("HDEL", self._keys.workers, worker)

    def bury(self, letter: DeadLetter, task: Job | None) -> None:
        """The letter goes in the ``dead`` list, its task (a task element) in the
        ``dead_tasks`` hash; the tasks of letters trimmed off the list go after them."""
        task, dead = buried_task(task), self._keys.dead
        stored = json.dumps(asdict(replace(letter, retryable=task is not None)))
        with self._pipe() as p:
            p.lpush(dead, stored)
            if task is not None:
                p.hset(
                    self._keys.dead_tasks,
                    letter.id,
                    pack_task(letter.id, task.reply_to, 0, task.body),
                )
            p.lrange(dead, MAX_DEAD_LETTERS, -1)
            p.ltrim(dead, 0, MAX_DEAD_LETTERS - 1)
            trimmed = p.execute()[-2]
        gone = [d.id for d in map(dead_letter_json, trimmed) if d is not None and d.retryable]
        if gone:
            self._cmd("HDEL", self._keys.dead_tasks, *gone)

    def _letters(self, ids: Set[str]) -> dict[str, list[bytes]]:
        """The stored text of the letters of ``ids``, by id, newest first."""
        found: dict[str, list[bytes]] = {}
        for raw_letter in self._cmd("LRANGE", self._keys.dead, 0, -1):
            letter = dead_letter_json(raw_letter)
            if letter is not None and letter.id in ids:
                found.setdefault(letter.id, []).append(raw_letter)
        return found

    def drop_dead(self, ids: Sequence[str]) -> int:
        """Each matching entry is removed by its exact stored text."""
        dropped = 0
        for task_id, texts in self._letters(set(ids)).items():
            for raw_letter in texts:
                dropped += int(self._cmd("LREM", self._keys.dead, 1, raw_letter))
            self._cmd("HDEL", self._keys.dead_tasks, task_id)
        return dropped

    def retry_dead(self, ids: Sequence[str], enqueue: Callable[[list[Job]], None]) -> int:
        """Two steps: ``take_dead``, then ``enqueue`` the tasks taken; if that fails, the
        letters and tasks are put back (best effort) and it raises."""
        taken = self.take_dead(ids)
        try:
            enqueue([job for job, _ in taken])
        except BackendUnavailable:
            with contextlib.suppress(redis.RedisError):
                self.unbury(taken)
            raise
        return len(taken)

    def take_dead(self, ids: Sequence[str]) -> list[tuple[Job, list[bytes]]]:
        """Take the tasks of the letters ``ids`` that keep one, with the letters' stored
        texts: the tasks and letters are deleted in one transaction (a task another
        caller took meanwhile is not returned) and the tasks' start records after it."""
        wanted = list(set(ids))
        letters = self._letters(set(wanted)) if wanted else {}
        found = [i for i in wanted if i in letters]
        with self._pipe(transaction=False) as p:  # HGET: the worker's ACL has no HMGET
            for task_id in found:
                p.hget(self._keys.dead_tasks, task_id)
            elems = p.execute()
        jobs: list[tuple[Job, list[bytes]]] = []
        for task_id, elem in zip(found, elems, strict=True):
            queue = json.loads(letters[task_id][0])["queue"]  # a letter read as valid
            try:
                claim = unpack_task(elem, queue, "")
            except Exception:  # anything read from the broker may be garbage
                continue
            if claim.id == task_id:
                jobs.append((Job(task_id, queue, claim.reply_to, claim.body), letters[task_id]))
        if not jobs:
            return []
        with self._pipe() as p:
            for job, texts in jobs:
                p.hdel(self._keys.dead_tasks, job.id)
                for raw_letter in texts:
                    p.lrem(self._keys.dead, 1, raw_letter)  # type: ignore[arg-type]
            out = p.execute()
        taken, i = [], 0
        for job, texts in jobs:
            if out[i] == 1:
                taken.append((job, texts))
            i += 1 + len(texts)
        with self._pipe(transaction=False) as p:  # one slot each on a cluster
            for job, _ in taken:
                p.delete(self._keys.starts(job.id))
            p.execute()
        return taken

    def unbury(self, taken: list[tuple[Job, list[bytes]]]) -> None:
        """Put back the letters and tasks ``take_dead`` took (their enqueue failed)."""
        with self._pipe() as p:
            for job, texts in taken:
                p.rpush(self._keys.dead, *texts)
                p.hset(self._keys.dead_tasks, job.id, pack_task(job.id, job.reply_to, 0, job.body))
            p.execute()

    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        """One hash per id (``starts:<id>``: ``n``, ``done``), expiring at its keep_until."""
        with self._pipe(transaction=False) as p:
            for task_id, keep_until in starts:
                key = self._keys.starts(task_id)
                p.hincrby(key, "n", 1)
                p.hget(key, "done")
                p.expireat(key, int(keep_until) + 1, gt=True)
                p.expireat(key, int(keep_until) + 1, nx=True)
            out = p.execute(raise_on_error=False)
        if any(isinstance(x, Exception) for x in out):  # e.g. "n" is not an integer
            return [(2**31, True)] * len(starts)
        return [(int(n) - 1, done is not None) for n, done in zip(out[::4], out[1::4], strict=True)]

    def note_completed(self, ids: Sequence[str]) -> None:
        with self._pipe(transaction=False) as p:
            for task_id in ids:
                key = self._keys.starts(task_id)
                p.hset(key, "done", 1)
                p.expire(key, 86400, nx=True)  # a record deleted meanwhile: still expires
            p.execute()

    def stats(self, *, worker_ttl: float) -> Stats:
        """Depths count waiting and deferred tasks plus those whose lease expired but was not
        requeued."""
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
                p.lrange(self._keys.waiting(q), -1, -1)  # the oldest: pushed on the left
            out = p.execute()
        oldest = self._oldest(queues, [tail[0] if tail else None for tail in out[2::3]])
        out = [x for i, x in enumerate(out) if i % 3 != 2]
        leases = [(q, t, s) for q, ts in zip(queues, out[1::2], strict=True) for t, s in ts]
        with self._pipe(transaction=False) as p:
            for q, t, _ in leases:
                p.exists(self._keys.claim_raw(q, t))
            held = p.execute()
        now, depth, running = time.time(), dict(zip(queues, out[::2], strict=True)), 0
        for (q, token, deadline), exists in zip(leases, held, strict=True):
            later = is_deferred(token)
            running += bool(exists and deadline > now and not later)
            depth[q] += bool(exists and (deadline <= now or later))
        infos = [w for w in map(worker_json, workers.values()) if w is not None]
        live = [w for w in infos if now - w.last_seen < worker_ttl]
        letters = [d for d in map(dead_letter_json, dead) if d is not None]
        if not isinstance(self._client, RedisCluster):
            return Stats(depth, running, live, letters, oldest=oldest)
        totals, parts = spread_of(depth, self._keys, self._client)  # per shard and node in parts
        return Stats(totals, running, live, letters, parts, spread_oldest(oldest))

    def _oldest(self, queues: Sequence[str], heads: Sequence[bytes | None]) -> dict[str, float]:
        """When each queue's head task was first seen there (the lists hold no time)."""
        now, seen = time.time(), {}
        for q, head in zip(queues, heads, strict=True):
            if head is None:
                continue
            key = head[:512]  # enough to tell tasks apart: the head holds the id
            before = self._heads.get(q)
            seen[q] = (key, before[1] if before is not None and before[0] == key else now)
        self._heads = seen
        return {q: at for q, (_, at) in seen.items()}

    def purge(self, queue: str | None, *, result_ttl: float) -> int:
        """Delete waiting and deferred tasks, and those whose lease expired, of one queue
        or all.

        The tombstones go in first, so ``lost`` never sees a purged task with none; one
        left for a task claimed meanwhile is harmless (``lost`` finds that task).
        """
        removed = 0
        members = [] if queue is not None else self._cmd("SMEMBERS", self._keys.queues)
        for q in [queue] if queue is not None else _names(members):
            expired = self._cmd("ZRANGEBYSCORE", self._keys.leases(q), "-inf", time.time())
            if expired:
                requeue(self._client, self._keys, q, expired)
            waiting = self._cmd("LRANGE", self._keys.waiting(q), 0, -1)
            buried = self._bury_ids(waiting, result_ttl)
            with self._pipe() as p:
                p.lrange(self._keys.waiting(q), 0, -1)
                p.delete(self._keys.waiting(q), self._keys.bells(q))
                deleted = p.execute()[0]
            self._bury_ids(deleted, result_ttl, skip=buried)  # enqueued between the looks
            removed += len(deleted) + self._purge_deferred(q, result_ttl)
        return removed

    def _purge_deferred(self, queue: str, result_ttl: float) -> int:
        """Delete the deferred tasks of ``queue`` (tombstones first); how many there were."""
        tokens = [t for t in self._cmd("ZRANGE", self._keys.leases(queue), 0, -1) if is_deferred(t)]
        lists = [self._keys.claim_raw(queue, t) for t in tokens]
        with self._pipe(transaction=False) as p:
            for key in lists:
                p.lindex(key, 0)
            elems = [e for e in p.execute() if e is not None]
        self._bury_ids(elems, result_ttl)
        if not tokens:
            return 0
        with self._pipe() as p:
            for key in lists:
                p.delete(key)
            p.zrem(self._keys.leases(queue), *tokens)
            return sum(p.execute()[:-1])

    def withdraw(self, ids: Sequence[str], *, result_ttl: float) -> list[str]:
        """Delete the waiting and deferred tasks ``ids`` (tombstones first); the ids deleted.

        Redis keeps no index of ids, so this reads every queue's waiting list (``LRANGE``)
        and leases set, then removes each task found by its exact element (``LREM``) or by
        its deferred claim list: its cost grows with the backlog, fine for an operator's
        action. A task claimed (or come due and requeued) meanwhile stays where it went.
        """
        wanted: set[str | None] = set(ids)
        queues = _names(self._cmd("SMEMBERS", self._keys.queues))
        with self._pipe(transaction=False) as p:
            for q in queues:
                p.lrange(self._keys.waiting(q), 0, -1)
                p.zrange(self._keys.leases(q), 0, -1)
            out = p.execute()
        waiting = [(q, e) for q, es in zip(queues, out[::2], strict=True) for e in es]
        waiting = [(q, e) for q, e in waiting if _task_id(e) in wanted]
        tokens = [(q, t) for q, ts in zip(queues, out[1::2], strict=True) for t in ts]
        deferred = [(q, t) for q, t in tokens if is_deferred(t) and _may_be(t, wanted)]
        with self._pipe(transaction=False) as p:
            for q, t in deferred:
                p.lrange(self._keys.claim_raw(q, t), 0, 0)
            firsts = [first[0] if first else b"" for first in p.execute()]
        deferred = [d for d, e in zip(deferred, firsts, strict=True) if _task_id(e) in wanted]
        elems = [e for _, e in waiting] + [e for e in firsts if _task_id(e) in wanted]
        self._bury_ids(elems, result_ttl)
        with self._pipe(transaction=False) as p:
            for q, e in waiting:
                p.lrem(self._keys.waiting(q), 1, e)
            for q, t in deferred:
                p.delete(self._keys.claim_raw(q, t))
                p.zrem(self._keys.leases(q), t)
            done = p.execute()
        counts = done[: len(waiting)] + done[len(waiting) :: 2]  # LREM's, then DEL's
        gone = {_task_id(e) for e, n in zip(elems, counts, strict=True) if n}
        return [i for i in dict.fromkeys(ids) if i in gone]

    def forget_silent_workers(self, *, cutoff: float) -> None:
        """Remove the records of workers last seen before ``cutoff``, and of rows that are
        not a worker's record (written by someone else)."""
        workers = self._cmd("HGETALL", self._keys.workers)
        infos = {k: worker_json(v) for k, v in workers.items()}
        gone = [k for k, w in infos.items() if w is None or w.last_seen < cutoff]
        if gone:
            self._cmd("HDEL", self._keys.workers, *gone)


def health(client: redis.Redis) -> dict[str, float | str]:
    """Memory used, its limit and eviction policy, and keys evicted since the server
    started; summed over the primaries of a cluster (the policy of the first)."""
    if isinstance(client, RedisCluster):
        infos = [
            client.info(section, target_nodes=RedisCluster.PRIMARIES)
            for section in ("memory", "stats")
        ]
        nodes = [{**infos[0][n], **infos[1].get(n, {})} for n in sorted(infos[0])]
    else:
        nodes = [{**client.info("memory"), **client.info("stats")}]
    figures: dict[str, float | str] = {"nodes": len(nodes)} if len(nodes) > 1 else {}
    for name in ("used_memory", "used_memory_peak", "maxmemory", "evicted_keys"):
        figures[name] = sum(int(n.get(name, 0)) for n in nodes)
    figures["maxmemory_policy"] = str(nodes[0].get("maxmemory_policy", "?")) if nodes else "?"
    return figures


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


def _may_be(token: bytes, wanted: Set[str | None]) -> bool:
    """Whether a deferred task's token (``~:<id>`` or ``~:<id>:<token>``) may be one of
    ``wanted``'s: its element tells for sure."""
    text = token[len(PREFIX) :].decode("utf-8", "replace")
    return any(i is not None and (text == i or text.startswith(i + ":")) for i in wanted)


def _reply_id(elem: bytes) -> str | None:
    """A reply element's task id; None for an element too malformed to have one."""
    try:
        return unpack_reply(elem)[0]
    except Exception:
        return None
