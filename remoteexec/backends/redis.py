"""``redis://``, ``rediss://``, ``unix://``: the Redis adapter (Redis 7.0 or later).

Why lists and not Streams: a consumer group gives delivery counts and blocking reads over
several queues, but its lease is an entry's idle time judged by the *claimer's*
``min-idle-time`` (not the holder's lease), ``XACK`` does not check which consumer holds the
entry, and a released entry cannot be un-delivered: closing those gaps takes WATCH on hot
stream keys (aborts under load) or Lua. With lists one idea makes every token check free:
**a claim is a list of its own**, ``{q}:c:<token>``, holding the task while (and only while)
that lease is held. Commands that act only on an existing list (``RPUSHX``, ``LMOVE`` out of
it) make each step of ``complete`` conditional on the lease inside one ``MULTI``: a worker
whose lease was taken over changes nothing, in one round trip, with no WATCH and no script,
so a worker's ACL may deny ``@scripting``. Where scripting is allowed, two Lua scripts
(``redis_lua``) do the same on the same keys in one command per batch instead of one or
two per task: an optional fast path, measured there.

Keys, under a prefix (``remoteexec:``; ``?prefix=`` in the URL), a queue's all in its
``{queue}`` hash slot: ``{q}:w`` waiting tasks (pushed left, taken right), ``{q}:l`` lease
deadlines by token (and ``redis_wire.SKIPLIST_KEEPER``), ``{q}:c:<token>`` a claimed task,
``{q}:b`` doorbells for workers waiting on several queues (gone 2 s after the last ring);
``{reply_to}:r`` a client's replies (TTL ``result_ttl``, refreshed on each push);
``epoch``, ``queues``, ``workers``, ``dead``.

Round trips: ``enqueue``, ``complete``, ``renew``, ``release`` 1 per batch;
``send_and_wait`` (a blocking call) 1: the enqueue, then ``BLMPOP`` on the reply list.
``claim`` on one queue 1: with work waiting, one ``CLAIM`` script call (or, without scripts,
``ZADD`` the new tokens and one ``LMOVE`` per task); on an empty queue ``BLMOVE`` waiting ->
claim list, so an idle worker waits inside its claim. A lease it saw in the last second
that is due costs 1 non-blocking pass first. On several queues, 1 per queue tried, then
``BLMPOP`` on doorbells. ``complete_and_claim`` (what a worker does between batches) 1: the
completion is written first, then the next pass. ``replies`` 1 (``BLMPOP ... COUNT``);
``lost`` 1. Requeuing expired leases costs ``claim`` 2 more, only when one expired. A
token reserved by a claim that found no task is dropped by the next. The hot paths send
raw commands on a connection kept per thread (``redis_wire.run``), not ``Pipeline``.

Guarantees and limits:

* ``complete`` and ``renew`` succeed while the claim list exists: a lease that expired but
  was not taken over yet may still complete (its result is then the only one).
* A claim that waited in ``BLMOVE`` is leased for ``lease`` plus that wait (<= 1 s). A
  lease another worker took after this one's last pass and that ran out before this claim
  is seen when that claim's wait ends (<= 1 s), as a lease running out during a wait is.
* ``lost(ids)`` compares epochs: each enqueue runs ``SET epoch <random> NX GET``, and this
  object remembers the epoch of every id it sent until its reply comes back. A Redis that
  came back empty, or was flushed, has a different epoch or none: those ids are lost. The
  others are looked for in the waiting lists, claim lists and the reply list (``LRANGE``:
  a check reads every waiting task, so its cost grows with the backlog); ids this object
  did not send are never reported. ``purge`` leaves a tombstone per id in the ``purged``
  sorted set for ``result_ttl``. Redis must run with ``maxmemory-policy noeviction``.
* Nothing is resent automatically (a resent claim would double up a claim list): a driver
  error is ``BackendUnavailable``, and the next call reconnects. ``BLMPOP`` pops replies:
  if Redis dies between popping them and sending them, they are gone.
* Redis Cluster: a queue's keys share a slot; ``complete`` also writes the reply list's slot.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import NoPermissionError

from ..errors import BackendUnavailable
from .base import Claim, Done, Job
from .redis_lua import Scripts, claim_args, complete_calls
from .redis_watch import RedisWatching
from .redis_wire import (
    BadElement,
    Keys,
    Link,
    blocking_wait,
    claim_pass,
    complete_batch,
    connect,
    hand_back,
    log,
    map_redis_errors,
    pack_task,
    quarantine,
    raw,
    requeue,
    ring_commands,
    run,
    secrets_in,
    split_prefix,
    unpack_reply,
    unpack_task,
)

_MAX_SENT = 200_000  # ids remembered for lost(), newest kept
_DRAIN = 1000  # replies taken per round trip
_SCRIPT_MIN = 3  # results completed by the COMPLETE script (fewer: by MULTI, cheaper then)


class RedisBackend(RedisWatching):
    """A Redis broker. See ``base.Backend`` for the contract and the module for the design."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "remoteexec:",
        result_ttl: float = 3600.0,
        socket_timeout: float = 10.0,
    ) -> None:
        super().__init__(result_ttl=result_ttl)
        self._secrets = secrets_in(url)
        self._mapper = map_redis_errors(self._secrets)
        self._url, self._keys, self._socket_timeout = url, Keys(prefix), socket_timeout
        self._lock = threading.Lock()
        self._stale: dict[str, list[str]] = {}  # reserved tokens that got no task, per queue
        self._due: dict[str, float] = {}  # per queue: until when no lease seen is due
        self._ask: dict[str, int] = {}  # per queue: how many tasks the next pass asks for
        self._idle: dict[str, bool] = {}  # per queue: the last pass left nothing waiting
        self._sent: dict[str, bytes] = {}  # id -> epoch, until its reply is returned
        self._epoch: bytes | None = None
        self._known: set[str] = set()  # queues registered under self._epoch
        self._seq = itertools.count()
        self._pid = -1
        self._r = self._connect()

    @classmethod
    def from_url(cls, url: str, *, result_ttl: float = 3600.0) -> RedisBackend:
        """Open ``url``; ``?prefix=`` sets the key prefix, other options go to redis-py.

        Raises:
            ConfigurationError: the URL or one of its options is invalid.
        """
        rest, prefix = split_prefix(url)
        return cls(rest, prefix=prefix, result_ttl=result_ttl)

    def _connect(self) -> redis.Redis:
        client = connect(self._url, socket_timeout=self._socket_timeout, secrets=self._secrets)
        self._wait = blocking_wait(client)
        self._link = Link(client)  # connections for the hot paths, one per thread
        self._scripts = Scripts()  # the Lua fast path (redis_lua), loaded on first use
        self._pid, self._mine = os.getpid(), os.urandom(8).hex()
        return client

    def _redis(self) -> redis.Redis:
        if self._pid != os.getpid():  # a forked child never shares its parent's sockets
            with self._lock:
                if self._pid != os.getpid():
                    self._r, self._stale, self._sent = self._connect(), {}, {}
        return self._r

    def _linked(self) -> Link:
        self._redis()  # after a fork: new connections
        return self._link

    def _errors(self) -> map_redis_errors:
        return self._mapper

    def _pipe(self, *, transaction: bool = True) -> Pipeline:
        return self._redis().pipeline(transaction=transaction)

    def _cmd(self, *args: Any) -> Any:
        return raw(self._redis())(*args)

    def _run(
        self,
        commands: list[tuple[Any, ...]],
        *,
        multi: bool = False,
        errors: bool = True,
        then: Callable[[], list[tuple[Any, ...]]] | None = None,
    ) -> list[Any]:
        return run(self._linked(), commands, multi=multi, raise_errors=errors, then=then)

    def _token(self) -> str:
        return f"{self._mine}{next(self._seq):x}"

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
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job)
        if not by_queue:
            return self._run(then) if then else []
        new = [q for q in by_queue if q not in self._known]
        commands: list[tuple[Any, ...]] = [("SET", self._keys.epoch, self._mine, "NX", "GET")]
        for queue, group in by_queue.items():
            tasks = [pack_task(j.id, j.reply_to, 1, j.body) for j in group]
            commands.append(("LPUSH", self._keys.waiting(queue), *tasks))
            commands += ring_commands(self._keys, queue, len(group))
        if new:
            commands.append(("SADD", self._keys.queues, *new))
        # No MULTI needed: nothing is lost if only the first commands run.
        with self._errors():
            try:
                out, cut_off = self._run(commands + then), False
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                read = getattr(exc, "replies", [])
                if not then or len(read) < len(commands):
                    raise  # whether the jobs got through is unknown
                # They did; only the wait after them was cut off: their replies come later.
                out, cut_off = [*read[: len(commands)], *[None] * len(then)], True
            epoch = out[0] or self._mine.encode()
            if cut_off:
                self._epoch, self._known = None, set()  # register queues on the next enqueue
            elif epoch != self._epoch:  # a new data set: register every queue again
                if new != list(by_queue):
                    self._cmd("SADD", self._keys.queues, *by_queue)
                self._epoch, self._known = epoch, set()
        if not cut_off:
            self._known.update(by_queue)
        with self._lock:
            self._sent.update(dict.fromkeys((j.id for j in jobs), epoch))
            while len(self._sent) > _MAX_SENT:
                del self._sent[next(iter(self._sent))]
        return out[len(out) - len(then) :]

    def claim(
        self, queues: Sequence[str], *, worker: str, limit: int, lease: float, wait: float
    ) -> list[Claim]:
        deadline = time.monotonic() + wait
        with self._errors():
            while limit > 0:
                remaining = deadline - time.monotonic()
                if len(queues) == 1 and remaining >= 0.01 and self._calm(queues[0]):
                    # No lease known to be due: one pass that waits for work if none is there.
                    seconds = min(remaining, self._wait)
                    claims = self._claim_queue(queues[0], limit, lease, seconds)
                else:
                    claims = []
                    for queue in queues:
                        if len(claims) < limit:
                            claims += self._claim_queue(queue, limit - len(claims), lease)
                    remaining = deadline - time.monotonic()
                    if not claims and remaining >= 0.01:
                        claims = self._block(queues, limit, lease, min(remaining, self._wait))
                if claims or deadline - time.monotonic() < 0.01:
                    return claims
        return []

    def _calm(self, queue: str) -> bool:
        """True while no lease of ``queue`` seen by the last pass (<= 1 s ago) is due."""
        return time.time() < self._due.get(queue, 0.0)

    def _claim_queue(self, queue: str, n: int, lease: float, block: float = 0.0) -> list[Claim]:
        """Move up to ``n`` tasks into claim lists; the first move may wait ``block`` s.

        With scripts, a pass while work is waiting is one ``CLAIM`` call; a queue left
        empty is waited on by the script-free pass.
        """
        for last in (False, True):  # a second pass follows requeued expired leases
            claims: list[Claim] | None = None
            expired: list[bytes] = []
            if self._scripts.shas(self._linked()) is not None:
                if not (block and self._idle.get(queue, True)):
                    with contextlib.suppress(NoPermissionError):  # then scripts are off
                        claims, expired, _ = self._script_pass(queue, n, lease)
                if claims == [] and not expired and block:
                    claims = None
            if claims is None:
                ask = min(n, self._ask.get(queue, n))  # grows while passes fill up
                claims, expired, _ = self._plain_pass(queue, ask, lease, block)
            if not expired or last:
                break
            # Expired tasks are older than any waiting one: they go first, then these again.
            requeue(self._redis(), self._keys, queue, expired, claims)
            block, self._ask[queue] = 0.0, n
        return claims or []

    def _script_pass(
        self,
        queue: str,
        n: int,
        lease: float,
        before: list[tuple[Any, ...]] | None = None,
        sha: bytes = b"",
    ) -> tuple[list[Claim], list[bytes], list[Any]]:
        """One ``CLAIM`` call: the claims, the expired lease tokens, and the replies
        (errors included) of ``before``: commands written first, in the same round trip,
        so that they reach Redis while this pass is built. With ``before``, a refused
        script claims nothing instead of raising."""
        now, tokens = time.time(), [self._token() for _ in range(n)]

        def args() -> tuple[Any, ...]:
            return claim_args(self._keys, queue, tokens, now=now, lease=lease)

        if before is None:
            first, reply = [], self._scripts.run(self._linked(), [("claim", args())])[0]
        else:  # sha: the CLAIM script's, as loaded when ``before`` was built
            *first, reply = self._run(
                before, errors=False, then=lambda: [("EVALSHA", sha, *args())]
            )
            if isinstance(reply, redis.ResponseError):
                return [], [], first  # NOSCRIPT or NOPERM: nothing ran
        expired, due, moved, waiting = reply
        self._note_due(queue, now, due)
        self._idle[queue] = waiting == 0
        claims = self._unpacked(queue, zip(tokens, moved, strict=False))
        return claims, expired, first

    def _plain_pass(
        self,
        queue: str,
        ask: int,
        lease: float,
        block: float,
        before: list[tuple[Any, ...]] | None = None,
    ) -> tuple[list[Claim], list[bytes], list[Any]]:
        """The script-free pass; returns as ``_script_pass``."""
        now, tokens = time.time(), [self._token() for _ in range(ask)]

        def commands() -> list[tuple[Any, ...]]:
            with self._lock:
                stale = self._stale.pop(queue, [])
            return [
                *claim_pass(
                    self._keys, queue, tokens, stale=stale, now=now, lease=lease, block=block
                ),
                ("LLEN", self._keys.waiting(queue)),
            ]

        if before:
            out = self._run(before, errors=False, then=commands)
            first, out = out[: len(before)], out[len(before) :]
            for reply in out:
                if isinstance(reply, redis.ResponseError):
                    raise reply
        else:
            first, out = [], self._run(commands())
        expired, *out, waiting = out
        self._note_due(queue, now, out[-ask - 1])
        self._idle[queue] = waiting == 0
        moved = list(zip(tokens, out[-ask:], strict=True))
        claims = self._unpacked(queue, [(t, e) for t, e in moved if e is not None])
        self._forget(queue, [t for t, e in moved if e is None])
        full = len(claims) == ask and waiting > 0  # then ask for more next time
        self._ask[queue] = 2 * len(claims) if full else max(1, len(claims))
        return claims, expired, first

    def _unpacked(self, queue: str, moved: Iterable[tuple[str, bytes]]) -> list[Claim]:
        """The claims of the task elements moved under each token; malformed elements go
        to the dead letters (``redis_wire.quarantine``), never to the caller."""
        claims, bad = [], []
        for token, elem in moved:
            try:
                claims.append(unpack_task(elem, queue, token))
            except BadElement as exc:
                bad.append((token, elem, str(exc)))
        if bad:
            quarantine(self._redis(), self._keys, queue, bad)
        return claims

    def _note_due(self, queue: str, now: float, due: Any) -> None:
        """Remember when the next lease seen (``[member, score]``) is due, within 1 s."""
        due = due[0] if due and isinstance(due[0], list) else due  # [[m, s]] in RESP3
        self._due[queue] = min(now + 1.0, float(due[1]) if due else now + 1.0)

    def _forget(self, queue: str, tokens: list[str]) -> None:
        if tokens:
            with self._lock:
                self._stale.setdefault(queue, []).extend(tokens)

    def _block(
        self, queues: Sequence[str], limit: int, lease: float, seconds: float
    ) -> list[Claim]:
        """Wait up to ``seconds`` for work: on the queue itself, or on several doorbells."""
        if len(queues) == 1:
            return self._claim_queue(queues[0], limit, lease, seconds)
        bells = [self._keys.bells(q) for q in queues]
        self._cmd("BLMPOP", round(seconds, 3), len(bells), *bells, "LEFT")
        return []

    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        if not claims:
            return []
        with self._errors(), self._pipe() as p:
            for c in claims:
                p.exists(self._keys.claim(c.queue, c.token))
                p.zadd(self._keys.leases(c.queue), {c.token: time.time() + lease}, xx=True)
            return [bool(held) for held in p.execute()[::2]]

    def complete(self, done: Sequence[Done]) -> list[bool]:
        if not done:
            return []
        with self._errors():
            if len(done) >= _SCRIPT_MIN and self._scripts.shas(self._linked()) is not None:
                with contextlib.suppress(NoPermissionError):  # then scripts are off
                    calls = complete_calls(self._keys, done, ttl=self._ttl_ms())
                    return _accepted(done, self._scripts.run(self._linked(), calls))
            cmds, marks = complete_batch(self._keys, done, ttl=self._ttl_ms())
            out = self._run(cmds, multi=True)
        return [i >= 0 and out[i] > 0 for i in marks]

    def complete_and_claim(
        self,
        done: Sequence[Done],
        queues: Sequence[str],
        *,
        worker: str,
        limit: int,
        lease: float,
        wait: float,
    ) -> tuple[list[bool], list[Claim]]:
        """With scripts, on one queue with no lease due: ``COMPLETE`` calls, then the next
        claim pass, in one round trip (the results are delivered before the pass waits)."""
        queue = queues[0]
        with self._errors():
            shas = self._scripts.shas(self._linked()) if done else None
            if shas is None or len(queues) != 1 or wait < 0.01 or not self._calm(queue):
                return super().complete_and_claim(
                    done, queues, worker=worker, limit=limit, lease=lease, wait=wait
                )
            if len(done) < _SCRIPT_MIN:  # the script's fixed cost outweighs what it saves
                cmds, marks = complete_batch(self._keys, done, ttl=self._ttl_ms())
                before = [("MULTI",), *cmds, ("EXEC",)]
            else:
                calls = complete_calls(self._keys, done, ttl=self._ttl_ms())
                before = [("EVALSHA", shas[name], *rest) for name, rest in calls]
            if self._idle.get(queue, True):
                ask, block = min(limit, self._ask.get(queue, limit)), min(wait, self._wait)
                claims, expired, out = self._plain_pass(queue, ask, lease, block, before)
            else:
                claims, expired, out = self._script_pass(queue, limit, lease, before, shas["claim"])
            if before[0][0] == "MULTI":
                applied = out[-1]
                if not isinstance(applied, list):  # EXECABORT: nothing ran
                    raise redis.ResponseError(f"transaction aborted: {applied}")
                accepted = [i >= 0 and applied[i] > 0 for i in marks]
            elif any(isinstance(reply, redis.ResponseError) for reply in out):
                accepted = self.complete(done)  # NOSCRIPT or NOPERM: nothing ran; again
            else:
                accepted = _accepted(done, out)
            if expired:  # as in _claim_queue: the expired tasks go first
                requeue(self._redis(), self._keys, queue, expired, claims)
                claims = self._claim_queue(queue, limit, lease)
        return accepted, claims

    def _ttl_ms(self) -> int:
        return max(1, int(self.result_ttl * 1000))

    def release(self, claims: Sequence[Claim]) -> None:
        if not claims:
            return
        with self._errors(), self._pipe() as p:
            hand_back(p, self._keys, claims)
            p.execute()

    def cancel(self, job: Job) -> bool:
        elem = pack_task(job.id, job.reply_to, 1, job.body)  # as enqueued: never claimed
        with self._errors():
            removed = bool(self._cmd("LREM", self._keys.waiting(job.queue), 1, elem))
        if removed:
            with self._lock:
                self._sent.pop(job.id, None)
        return removed

    def replies(self, reply_to: str, *, wait: float) -> list[bytes]:
        box, deadline = self._keys.replies(reply_to), time.monotonic() + wait
        with self._errors():
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

    def close(self) -> None:
        with contextlib.suppress(BackendUnavailable), self._errors():
            self._drop_stale()
        self._r.close()


def _accepted(done: Sequence[Done], out: list[Any]) -> list[bool]:
    """Per item of ``done``, in order: the ``COMPLETE`` replies of ``complete_calls``."""
    queues = dict.fromkeys(d.claim.queue for d in done)  # the order of complete_calls
    by_queue = {q: iter(held) for q, held in zip(queues, out, strict=True)}
    return [next(by_queue[d.claim.queue]) == 1 for d in done]
