"""``RedisBackend``: what each call of the contract sends, and what the adapter remembers.

The design, the key layout and the round trips of each call are in the package's
docstring. The adapter holds one connection set per process (a forked child opens its
own): the client, a ``wire.Link`` for the hot paths, the ``lua.Scripts``, a
``claiming.Claimer`` and a ``watch.Watch``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoPermissionError

from ...errors import BackendUnavailable
from ..base import Backend, Claim, DeadLetter, Done, Job, Stats, WorkerInfo
from .blobs import RedisBlobStore
from .claiming import Claimer
from .commands import (
    complete_batch,
    complete_calls,
    completed,
    hand_back,
    pushes,
    scripted,
)
from .connection import blocking_wait, connect, map_redis_errors, secrets_in, split_prefix
from .deferred import cancel_commands
from .elements import BadElement, pack_task, unpack_reply
from .keys import Keys
from .lua import Scripts
from .pairing import completed_then_claimed, routed_then_claimed
from .shards import Shards, inward, outward
from .topology import ClusterLink, complete_routed, split_own
from .watch import Watch, health
from .wire import Link, raw, run

log = logging.getLogger("remoteexec.redis")

_MAX_SENT = 200_000  # ids remembered for lost(), newest kept
_DRAIN = 1000  # replies taken per round trip


class RedisBackend(Backend):
    """A Redis broker. See ``base.Backend`` for the contract and the package for the design."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "remoteexec:",
        result_ttl: float = 3600.0,
        socket_timeout: float = 10.0,
        shards: int = 1,
        durable: bool = False,
    ) -> None:
        super().__init__(result_ttl=result_ttl)
        self._wanted_shards, self._durable = shards, durable
        self._asked_shards: dict[str, int] = {}  # queue -> shards, from shard()
        self._secrets = secrets_in(url)
        self._mapper = map_redis_errors(self._secrets, url=url)
        self._url, self._keys, self._socket_timeout = url, Keys(prefix), socket_timeout
        self._lock = threading.Lock()
        self._sent: dict[str, bytes] = {}  # id -> epoch, until its reply is returned
        self._epoch: bytes | None = None
        self._known: set[str] = set()  # queues registered under self._epoch
        self._pid = -1
        self._r = self._connect()

    @classmethod
    def from_url(cls, url: str, *, result_ttl: float = 3600.0) -> RedisBackend:
        """Open ``url``; ``?prefix=`` sets the key prefix, other options go to redis-py.

        Raises:
            ConfigurationError: the URL or one of its options is invalid.
        """
        rest, prefix = split_prefix(url)
        rest, shards, durable = split_own(rest)
        return cls(rest, prefix=prefix, result_ttl=result_ttl, shards=shards, durable=durable)

    def _connect(self) -> redis.Redis:
        client = connect(self._url, socket_timeout=self._socket_timeout, secrets=self._secrets)
        self._wait = blocking_wait(client, self._socket_timeout)
        self._cluster = isinstance(client, RedisCluster)
        # Connections for the hot paths, one per thread (and per primary on a cluster).
        self._link = ClusterLink(client) if isinstance(client, RedisCluster) else Link(client)
        self._link.durable = self._durable
        self._shards = Shards(
            self._keys, self._wanted_shards, self._resolve_shards, self._asked_shards
        )
        self._scripts = Scripts()  # loaded on first use
        self._pid, self._mine = os.getpid(), os.urandom(8).hex()  # the epoch this one sets
        self._claimer = Claimer(
            self._keys, client, self._link, self._scripts, mine=self._mine, wait=self._wait
        )
        self._watch = Watch(self._keys, client, mine=self._mine)
        return client

    def shard(self, queue: str, n: int) -> None:
        if self._cluster:
            self._asked_shards.setdefault(queue, n)

    def _resolve_shards(self, key: str, wanted: int) -> Any:
        """A queue's stored shard count, set to ``wanted`` if none is (on a cluster)."""
        if not self._cluster:
            return 1
        with self._mapper:
            if wanted > 1:
                return raw(self._r)("SET", key, wanted, "NX", "GET")
            return raw(self._r)("GET", key)

    def _redis(self) -> redis.Redis:
        if self._pid != os.getpid():  # a forked child never shares its parent's sockets
            with self._lock:
                if self._pid != os.getpid():
                    self._r, self._sent = self._connect(), {}
        return self._r

    def _linked(self) -> Link:
        self._redis()  # after a fork: new connections
        return self._link

    def _claiming(self) -> Claimer:
        self._redis()
        return self._claimer

    def _watching(self) -> Watch:
        self._redis()
        return self._watch

    def _cmd(self, *args: Any) -> Any:
        return raw(self._redis())(*args)

    def _run(self, commands: list[tuple[Any, ...]], *, multi: bool = False) -> list[Any]:
        return run(self._linked(), commands, multi=multi)

    # Tasks ---------------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Job]) -> None:
        self._send(jobs, [])

    def send_and_wait(self, jobs: Sequence[Job], reply_to: str, *, wait: float) -> list[bytes]:
        """One round trip: the enqueue's commands, then ``BLMPOP`` on the reply list."""
        box, seconds = self._keys.replies(reply_to), round(min(wait, self._wait), 3)
        pop = ("BLMPOP", seconds, 1) if seconds >= 0.01 else ("LMPOP", 1)
        got = self._send(jobs, [(*pop, box, "LEFT", "COUNT", _DRAIN)])
        return self._taken(got[0])

    def _send(self, jobs: Sequence[Job], then: list[tuple[Any, ...]]) -> list[Any]:
        """Enqueue ``jobs``, then run ``then`` in the same round trip; ``then``'s replies."""
        by_queue: dict[str, list[Job]] = {}
        for job in self._shards.spread(jobs) if self._cluster else jobs:
            by_queue.setdefault(job.queue, []).append(job)
        if not by_queue:
            with self._mapper:
                return self._run(then) if then else []
        new = [q for q in by_queue if q not in self._known]
        commands: list[tuple[Any, ...]] = [("SET", self._keys.epoch, self._mine, "NX", "GET")]
        commands += pushes(self._keys, by_queue)
        if new:
            commands.append(("SADD", self._keys.queues, *new))
        ids = [j.id for j in jobs]
        before = self._in_flight(ids)
        with self._mapper:
            out, cut_off = self._round_trip(commands, then, ids)
            epoch = out[0] or self._mine.encode()
            if cut_off:
                self._epoch, self._known = None, set()  # register queues on the next enqueue
            elif epoch != self._epoch:  # a new data set: register every queue again
                if new != list(by_queue):
                    self._cmd("SADD", self._keys.queues, *by_queue)
                self._epoch, self._known = epoch, set()
        if not cut_off:
            self._known.update(by_queue)
        if epoch != before:
            with self._lock:
                sent = self._sent
                for i in ids:
                    if i in sent:
                        sent[i] = epoch
        return out[len(out) - len(then) :]

    def _in_flight(self, ids: list[str]) -> bytes:
        """Note ``ids`` as sent under the last epoch seen (returned), before they are: a
        reply listener in another thread may take a reply before the round trip returns."""
        before = self._epoch or self._mine.encode()
        with self._lock:
            self._sent.update(dict.fromkeys(ids, before))
            while len(self._sent) > _MAX_SENT:
                del self._sent[next(iter(self._sent))]
        return before

    def _round_trip(
        self, commands: list[tuple[Any, ...]], then: list[tuple[Any, ...]], ids: list[str]
    ) -> tuple[list[Any], bool]:
        """The replies of ``commands + then``, and whether a cut-off wait lost ``then``'s."""
        # No MULTI needed: nothing is lost if only the first commands run.
        try:
            return self._run(commands + then), False
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            read = getattr(exc, "replies", [])
            if then and len(read) >= len(commands):
                # The jobs got through; only the wait after them was cut off: their
                # replies come later.
                return [*read[: len(commands)], *[None] * len(then)], True
            self._forget_sent(ids)
            raise  # whether the jobs got through is unknown
        except BaseException:
            self._forget_sent(ids)
            raise

    def _forget_sent(self, ids: list[str]) -> None:
        with self._lock:
            for i in ids:
                self._sent.pop(i, None)

    def claim(self, queues: Sequence[str], *, limit: int, lease: float, wait: float) -> list[Claim]:
        with self._mapper:
            if self._cluster:
                queues = self._shards.claim_order(queues)
            claims = self._claiming().claim(queues, limit=limit, lease=lease, wait=wait)
        return outward(claims)

    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        if not claims:
            return []
        held: dict[int, bool] = {}
        with self._mapper:
            for group in self._by_slot(inward(claims)):
                with self._redis().pipeline(transaction=True) as p:
                    for _, c in group:
                        p.exists(self._keys.claim(c.queue, c.token))
                        p.zadd(self._keys.leases(c.queue), {c.token: time.time() + lease}, xx=True)
                    out = p.execute()[::2]
                held.update((i, bool(h)) for (i, _), h in zip(group, out, strict=True))
        return [held[i] for i in range(len(claims))]

    def _by_slot(self, claims: Sequence[Claim]) -> list[list[tuple[int, Claim]]]:
        """``claims`` numbered, in one group, or one per queue on a cluster."""
        groups: dict[str, list[tuple[int, Claim]]] = {}
        for i, c in enumerate(claims):
            groups.setdefault(c.queue if self._cluster else "", []).append((i, c))
        return list(groups.values())

    def complete(self, done: Sequence[Done]) -> list[bool]:
        if not done:
            return []
        if self._cluster:
            with self._mapper:
                ttl = self._ttl_ms()
                return complete_routed(self._keys, self._link, self._scripts, done, ttl)[0]
        with self._mapper:
            if scripted(done) and self._scripts.shas(self._linked()) is not None:
                with contextlib.suppress(NoPermissionError):  # then scripts are off
                    calls = complete_calls(self._keys, done, ttl=self._ttl_ms())
                    return completed(done, self._scripts.run(self._link, calls))
            cmds, marks = complete_batch(self._keys, done, ttl=self._ttl_ms())
            out = self._run(cmds, multi=True)
        return [i >= 0 and out[i] > 0 for i in marks]

    def complete_and_claim(
        self,
        done: Sequence[Done],
        queues: Sequence[str],
        *,
        limit: int,
        lease: float,
        wait: float,
    ) -> tuple[list[bool], list[Claim]]:
        """On one queue with no lease due, with or without scripts: the completion, then
        the next claim pass, in one round trip (the results are delivered before the pass
        waits, if it waits); on a cluster, the leases' ends first, then the replies and the
        pass.
        ``COMPLETE`` calls for three results or more where scripts are allowed, a ``MULTI``
        otherwise (the script's fixed cost outweighs what it saves for fewer)."""
        claimer = self._claiming()
        one = len(queues) == 1 and (not self._cluster or len(self._shards.of(queues[0])) == 1)
        if not (done and one and claimer.calm(queues[0])):
            return super().complete_and_claim(done, queues, limit=limit, lease=lease, wait=wait)
        pair = routed_then_claimed if self._cluster else completed_then_claimed
        with self._mapper:
            at = (self._keys, self._link, self._scripts, claimer, done, queues[0])
            accepted, claims = pair(*at, ttl=self._ttl_ms(), limit=limit, lease=lease, wait=wait)
            if accepted is None:
                accepted = self.complete(done)  # NOSCRIPT or NOPERM: nothing ran; again
        return accepted, claims

    def results(self, ids: Sequence[str]) -> dict[str, bytes]:
        with self._mapper:
            return self._watching().results(ids) if ids else {}

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        with self._mapper:
            return self._watching().states(ids) if ids else {}

    def _ttl_ms(self) -> int:
        return max(1, int(self.result_ttl * 1000))

    def release(self, claims: Sequence[Claim]) -> None:
        if not claims:
            return
        with self._mapper:
            for group in self._by_slot(inward(claims)):
                with self._redis().pipeline(transaction=True) as p:
                    hand_back(p, self._keys, [c for _, c in group])
                    p.execute()

    def cancel(self, job: Job) -> bool:
        elem = pack_task(job.id, job.reply_to, 1, job.body)  # as enqueued: never claimed
        removed = False
        with self._mapper:
            for queue in self._shards.of(job.queue) if self._cluster else [job.queue]:
                if not removed:
                    commands = [("LREM", self._keys.waiting(queue), 1, elem)]
                    if job.not_before:  # it may wait deferred: deferred.py
                        commands += cancel_commands(self._keys, queue, job.id)
                    removed = any(self._run(commands)[:2])
        if removed:
            with self._lock:
                self._sent.pop(job.id, None)
        return removed

    def replies(self, reply_to: str, *, wait: float) -> list[bytes]:
        box, deadline = self._keys.replies(reply_to), time.monotonic() + wait
        with self._mapper:
            while True:
                remaining = deadline - time.monotonic()
                if remaining < 0.01:
                    got = self._run([("LMPOP", 1, box, "LEFT", "COUNT", _DRAIN)])[0]
                    break
                seconds = round(min(remaining, self._wait), 3)
                got = self._run([("BLMPOP", seconds, 1, box, "LEFT", "COUNT", _DRAIN)])[0]
                if got:
                    break
        return self._taken(got)

    def _taken(self, got: Any) -> list[bytes]:
        """The replies in an ``LMPOP`` answer; their ids are no longer in flight."""
        bodies = []
        with self._lock:
            for elem in got[1] if got else ():
                try:
                    ident, body = unpack_reply(elem)
                except BadElement as exc:  # written by someone else: no call is waiting on it
                    log.error("dropped a malformed reply element: %s", exc)
                    continue
                self._sent.pop(ident, None)
                bodies.append(body)
        return bodies

    # Watching ------------------------------------------------------------------------

    def lost(self, ids: Sequence[str], reply_to: str) -> set[str]:
        """Ids sent under an epoch the server no longer has, or found nowhere (see the
        package).

        The second test catches a reply lost on the wire: ``BLMPOP`` pops replies, and a
        connection cut before its answer arrives loses them. A task that moved between
        two lists while they were read is found by a second look.
        """
        with self._mapper:
            epoch = self._cmd("GET", self._keys.epoch)
            with self._lock:
                mine = {i: self._sent[i] for i in ids if i in self._sent}
            gone = {i for i, sent_under in mine.items() if sent_under != epoch}
            missing = set(ids) - gone  # ids whose reply came back are looked for too
            for _ in range(2):
                if missing:
                    missing -= self._watching().traceable(reply_to)
        with self._lock:
            for i in gone | missing:
                self._sent.pop(i, None)
        return gone | missing

    def purged(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        with self._mapper:
            return self._watching().purged(ids, result_ttl=self.result_ttl)

    def heartbeat(self, info: WorkerInfo) -> None:
        with self._mapper:
            self._watching().heartbeat(info)

    def forget_worker(self, worker: str) -> None:
        with self._mapper:
            self._watching().forget_worker(worker)

    def bury(self, letter: DeadLetter, task: Job | None = None) -> None:
        with self._mapper:
            self._watching().bury(letter, task)

    def retry_dead(self, ids: Sequence[str]) -> int:
        with self._mapper:
            return self._watching().retry_dead(ids, self.enqueue)

    def drop_dead(self, ids: Sequence[str]) -> int:
        with self._mapper:
            return self._watching().drop_dead(ids)

    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        with self._mapper:
            return self._watching().note_starts(starts)

    def note_completed(self, ids: Sequence[str]) -> None:
        with self._mapper:
            self._watching().note_completed(ids)

    def stats(self) -> Stats:
        with self._mapper:  # on a cluster: totals per queue; per shard and node in parts
            return self._watching().stats(worker_ttl=self.worker_ttl)

    def health(self) -> dict[str, float | str]:
        with self._mapper:
            return health(self._redis())

    def purge(self, queue: str | None = None) -> int:
        with self._mapper:
            return self._watching().purge(queue, result_ttl=self.result_ttl)

    def withdraw(self, ids: Sequence[str]) -> list[str]:
        with self._mapper:
            return self._watching().withdraw(ids, result_ttl=self.result_ttl) if ids else []

    def sweep(self) -> None:
        """Forget workers silent for ten heartbeat TTLs; drop unused reserved tokens."""
        with self._mapper:
            self._watching().forget_silent_workers(cutoff=time.time() - 10 * self.worker_ttl)
            self._claimer.drop_stale()

    def blob_store(self) -> RedisBlobStore:
        """Blobs in hashes under the key prefix, expiring by themselves (``blobs.py``)."""
        return RedisBlobStore(self._redis, self._keys.prefix, self._mapper)

    def close(self) -> None:
        with contextlib.suppress(BackendUnavailable), self._mapper:
            self._claiming().drop_stale()
        self._r.close()
