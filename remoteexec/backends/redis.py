"""``redis://``, ``rediss://``, ``unix://``: the Redis adapter (Redis 7.0 or later, no Lua).

Why lists and not Streams: a consumer group gives delivery counts and blocking reads over
several queues, but its lease is an entry's idle time judged by the *claimer's*
``min-idle-time`` (not the holder's lease), ``XACK`` does not check which consumer holds the
entry, and a released entry cannot be un-delivered: closing those gaps takes WATCH on hot
stream keys (aborts under load) or Lua. With lists one idea makes every token check free:
**a claim is a list of its own**, ``{q}:c:<token>``, holding the task while (and only while)
that lease is held. Commands that act only on an existing list (``RPUSHX``, ``LMOVE`` out of
it) make each step of ``complete`` conditional on the lease inside one ``MULTI``: a worker
whose lease was taken over changes nothing, in one round trip, with no WATCH and no script,
so a worker's ACL may deny ``@scripting``.

Keys, under a prefix (``remoteexec:``; ``?prefix=`` in the URL), a queue's all in its
``{queue}`` hash slot: ``{q}:w`` waiting tasks (pushed left, taken right), ``{q}:l`` lease
deadlines by token, ``{q}:c:<token>`` a claimed task, ``{q}:b`` doorbells for workers waiting
on several queues (gone 2 s after the last ring); ``{reply_to}:r`` a client's replies (TTL
``result_ttl``, refreshed on each push); ``epoch``, ``queues``, ``workers``, ``dead``.

Round trips: ``enqueue``, ``complete``, ``renew``, ``release`` 1 per batch; ``claim`` on
one queue 1 (``ZADD`` the new tokens, then ``BLMOVE`` waiting -> claim list and ``LMOVE``
for the rest, so an idle worker waits inside its claim), unless a lease it saw in the last
second is due: then 1 non-blocking pass first. On several queues, 1 per queue tried, then
``BLMPOP`` on doorbells. A pass asks for twice what the last one got (up to ``limit``).
``replies`` 1 (``BLMPOP ... COUNT``); ``lost`` 1. Requeuing expired leases costs ``claim`` 2
more, only when one expired. A token reserved by a claim that found no task is dropped by
the next. ``claim`` and ``complete`` (2 commands a task, plus 2 a queue) skip ``Pipeline``.

Guarantees and limits:

* ``complete`` and ``renew`` succeed while the claim list exists: a lease that expired but
  was not taken over yet may still complete (its result is then the only one).
* A claim that waited in ``BLMOVE`` is leased for ``lease`` plus that wait (<= 1 s). A
  lease another worker took after this one's last pass and that ran out before this claim
  is seen when that claim's wait ends (<= 1 s), as a lease running out during a wait is.
* ``lost(ids)`` compares epochs: each enqueue runs ``SET epoch <random> NX GET``, and this
  object remembers the epoch of every id it sent until its reply comes back. A Redis that
  came back empty (or with another data set) has a different epoch or none: those ids are
  lost. A partial loss (an older snapshot under the same epoch) is not seen; ids this object
  did not send are never reported. Redis must run with ``maxmemory-policy noeviction``.
* Nothing is resent automatically (a resent claim would double up a claim list): a driver
  error is ``BackendUnavailable``, and the next call reconnects. ``BLMPOP`` pops replies:
  if Redis dies between popping them and sending them, they are gone.
* Redis Cluster: a queue's keys share a slot; ``complete`` also writes the reply list's slot.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from ..errors import BackendUnavailable, ConfigurationError
from .base import Backend, Claim, DeadLetter, Done, Job, Stats, WorkerInfo

log = logging.getLogger("remoteexec.redis")

_MAX_DEAD = 1000
_MAX_SENT = 200_000  # ids remembered for lost(), newest kept
_BELLS = 16  # doorbells kept per queue
_DRAIN = 1000  # replies taken per round trip
_HEAD = struct.Struct(">IHH")  # attempt, len(id), len(reply_to); then id, reply_to, body
_ID = struct.Struct(">H")  # a reply element: len(id), id, reply


def _pack(task_id: str, reply_to: str, attempt: int, body: bytes) -> bytes:
    i, r = task_id.encode(), reply_to.encode()
    return _HEAD.pack(attempt, len(i), len(r)) + i + r + body


def _unpack(elem: bytes, queue: str, token: str) -> Claim:
    attempt, n, m = _HEAD.unpack_from(elem)
    i = _HEAD.size
    ident, reply_to = elem[i : i + n].decode(), elem[i + n : i + n + m].decode()
    return Claim(ident, queue, reply_to, elem[i + n + m :], attempt, token)


def _raw(target: redis.Redis | Pipeline) -> Callable[..., Any]:
    """A command sender without redis-py's per-command signatures (they type values as str)."""
    return target.execute_command


class RedisBackend(Backend):
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
        parts = urlsplit(url)
        secrets = [parts.password, dict(parse_qsl(parts.query)).get("password")]
        self._secrets = [s for s in secrets if s] + [unquote(s) for s in secrets if s]
        self._url, self._p, self._socket_timeout = url, prefix, socket_timeout
        self._lock = threading.Lock()
        self._stale: dict[str, list[str]] = {}  # reserved tokens that got no task, per queue
        self._due: dict[str, float] = {}  # per queue: until when no lease seen is due
        self._ask: dict[str, int] = {}  # per queue: how many tasks the next pass asks for
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
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = dict(query).get("prefix", "remoteexec:")
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        return cls(urlunsplit(parts._replace(query=rest)), prefix=prefix, result_ttl=result_ttl)

    def _connect(self) -> redis.Redis:
        try:
            client = redis.Redis.from_url(
                self._url,
                decode_responses=False,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=5.0,
                # No automatic resend: a claim sent twice would put two tasks in one claim
                # list. A pooled connection the server closed is replaced on checkout.
                retry=Retry(NoBackoff(), 0),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid Redis URL: {self._scrub(str(exc))}") from None
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        # Server-side blocking stays well below the socket timeout, and short enough that a
        # stopping worker notices within a second.
        self._wait = min(1.0, float(timeout) / 2) if timeout else 1.0
        self._pid, self._mine = os.getpid(), os.urandom(8).hex()
        return client

    def _redis(self) -> redis.Redis:
        if self._pid != os.getpid():  # a forked child never shares its parent's sockets
            with self._lock:
                if self._pid != os.getpid():
                    self._r, self._stale, self._sent = self._connect(), {}, {}
        return self._r

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Map every redis-py error to ``BackendUnavailable`` (secrets scrubbed)."""
        try:
            yield
        except redis.RedisError as exc:
            message = f"Redis: {type(exc).__name__}: {self._scrub(str(exc))}"
            raise BackendUnavailable(message) from None

    def _pipe(self, *, transaction: bool = True) -> Pipeline:
        return self._redis().pipeline(transaction=transaction)

    def _cmd(self, *args: Any) -> Any:
        return _raw(self._redis())(*args)

    def _run(self, commands: list[tuple[Any, ...]], *, multi: bool = False) -> list[Any]:
        """Send ``commands`` in one round trip (in ``MULTI`` if asked); return raw replies.

        The hot paths use this instead of a ``Pipeline``, which spends a third of a busy
        worker's time on per-command bookkeeping and response callbacks.
        """
        pool = self._redis().connection_pool
        conn = pool.get_connection()
        try:
            sent = [("MULTI",), *commands, ("EXEC",)] if multi else commands
            conn.send_packed_command(conn.pack_commands(sent))  # type: ignore[no-untyped-call]
            out = [conn.read_response() for _ in sent]  # an error reply raises here
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # replies may be left unread
            raise
        finally:
            pool.release(conn)
        if multi:
            out = out[-1]
            if out is None or len(out) != len(commands):
                raise redis.ResponseError("transaction aborted")
        for reply in out:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return list(out)

    def _key(self, queue: str, kind: str) -> str:
        return f"{self._p}{{{queue}}}:{kind}"

    def _box(self, reply_to: str) -> str:
        return f"{self._p}{{{reply_to}}}:r"

    def _token(self) -> str:
        return f"{self._mine}{next(self._seq):x}"

    def _ring(self, p: Pipeline, queue: str, n: int) -> None:
        """Ring the doorbells; claims trim them, and they expire when the rings stop."""
        p.lpush(self._key(queue, "b"), *[b""] * min(n, _BELLS))
        p.pexpire(self._key(queue, "b"), 2000)  # waiters look again every second anyway

    # Tasks ---------------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[Job]) -> None:
        by_queue: dict[str, list[Job]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job)
        if not by_queue:
            return
        new = [q for q in by_queue if q not in self._known]
        # No MULTI needed: nothing is lost if only the first commands run.
        with self._errors(), self._pipe(transaction=False) as p:
            p.set(self._p + "epoch", self._mine, nx=True, get=True)
            for queue, group in by_queue.items():
                p.lpush(self._key(queue, "w"), *[_pack(j.id, j.reply_to, 1, j.body) for j in group])
                self._ring(p, queue, len(group))
            if new:
                p.sadd(self._p + "queues", *new)
            epoch = p.execute()[0] or self._mine.encode()
            if epoch != self._epoch:  # a new data set: register every queue again
                if new != list(by_queue):
                    self._cmd("SADD", self._p + "queues", *by_queue)
                self._epoch, self._known = epoch, set()
        self._known.update(by_queue)
        with self._lock:
            self._sent.update(dict.fromkeys((j.id for j in jobs), epoch))
            while len(self._sent) > _MAX_SENT:
                del self._sent[next(iter(self._sent))]

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
        """Move up to ``n`` tasks into claim lists; the first move may wait ``block`` s."""
        leases, waiting = self._key(queue, "l"), self._key(queue, "w")
        ask = min(n, self._ask.get(queue, n))  # grows while passes fill up, shrinks when not
        for last in (False, True):  # a second pass follows requeued expired leases
            now, tokens = time.time(), [self._token() for _ in range(ask)]
            keys = [self._key(queue, "c:" + t) for t in tokens]
            with self._lock:
                stale = self._stale.pop(queue, [])
            # No MULTI needed: each move is atomic, and its token is leased before it runs.
            first: tuple[Any, ...] = ("LMOVE", waiting, keys[0], "RIGHT", "LEFT")
            if block:
                first = ("BLMOVE", *first[1:], round(block, 3))
            expired, *out = self._run(
                [
                    ("ZRANGEBYSCORE", leases, "-inf", now, "LIMIT", 0, max(ask, 100)),
                    ("LTRIM", self._key(queue, "b"), 0, _BELLS - 1),
                    *([("ZREM", leases, *stale)] if stale else []),
                    ("ZADD", leases, *itertools.chain(*((now + block + lease, t) for t in tokens))),
                    ("ZRANGE", leases, 0, 0, "WITHSCORES"),  # the next lease due
                    first,
                    *[("LMOVE", waiting, key, "RIGHT", "LEFT") for key in keys[1:]],
                ]
            )
            due = out[-ask - 1]  # [member, score], or [[member, score]] in RESP3
            due = due[0] if due and isinstance(due[0], list) else due
            self._due[queue] = min(now + 1.0, float(due[1]) if due else now + 1.0)
            moved = list(zip(tokens, out[-ask:], strict=True))
            claims = [_unpack(e, queue, t) for t, e in moved if e is not None]
            self._forget(queue, [t for t, e in moved if e is None])
            self._ask[queue] = 2 * len(claims) if len(claims) == ask else max(1, len(claims))
            if not expired or last:
                break
            # Expired tasks are older than any waiting one: they go first, then these again.
            self._requeue(queue, [t.decode() for t in expired], claims)
            ask, block = n, 0.0
        return claims

    def _forget(self, queue: str, tokens: list[str]) -> None:
        if tokens:
            with self._lock:
                self._stale.setdefault(queue, []).extend(tokens)

    def _requeue(self, queue: str, tokens: list[str], claims: Sequence[Claim] = ()) -> None:
        """Put the tasks of expired leases back at the head of their queue, attempt + 1.

        Each step is conditional on the claim list still existing, so a holder completing
        or releasing meanwhile wins, and a second reaper changes nothing. ``claims`` are
        handed back first, so they end up behind the requeued tasks.
        """
        keys = [self._key(queue, "c:" + t) for t in tokens]
        with self._pipe(transaction=False) as p:
            for key in keys:
                p.lindex(key, 0)
            elems = p.execute()
        with self._pipe() as p:
            self._hand_back(p, claims)
            for key, elem in zip(keys, elems, strict=True):
                if elem is None:
                    continue  # completed, released, or a token that never got a task
                attempt, n, m = _HEAD.unpack_from(elem)
                log.warning("lease expired on attempt %d of a task in %r: requeued", attempt, queue)
                _raw(p)("RPUSHX", key, _HEAD.pack(attempt + 1, n, m) + elem[_HEAD.size :])
                p.lmove(key, self._key(queue, "w"), "RIGHT", "RIGHT")
                p.delete(key)
            p.zrem(self._key(queue, "l"), *tokens)
            self._ring(p, queue, len(tokens))
            p.execute()

    def _block(
        self, queues: Sequence[str], limit: int, lease: float, seconds: float
    ) -> list[Claim]:
        """Wait up to ``seconds`` for work: on the queue itself, or on several doorbells."""
        if len(queues) == 1:
            return self._claim_queue(queues[0], limit, lease, seconds)
        bells = [self._key(q, "b") for q in queues]
        self._cmd("BLMPOP", round(seconds, 3), len(bells), *bells, "LEFT")
        return []

    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        if not claims:
            return []
        with self._errors(), self._pipe() as p:
            for c in claims:
                p.exists(self._key(c.queue, "c:" + c.token))
                p.zadd(self._key(c.queue, "l"), {c.token: time.time() + lease}, xx=True)
            return [bool(held) for held in p.execute()[::2]]

    def complete(self, done: Sequence[Done]) -> list[bool]:
        if not done:
            return []
        ttl, boxes, marks = max(1, int(self.result_ttl * 1000)), set(), []
        ended: dict[str, tuple[list[str], list[str]]] = {}  # queue -> (tokens, claim lists)
        seen: set[str] = set()
        cmds: list[tuple[Any, ...]] = []
        for d in done:
            c, key = d.claim, self._key(d.claim.queue, "c:" + d.claim.token)
            if key in seen:  # the same claim twice in one batch: only the first counts
                marks.append(-1)
                continue
            seen.add(key)
            marks.append(len(cmds))
            if d.reply is not None:  # pushed into the claim list, so only if still held
                ident, box = c.id.encode(), self._box(c.reply_to)
                boxes.add(box)
                cmds.append(("RPUSHX", key, _ID.pack(len(ident)) + ident + d.reply))
                cmds.append(("LMOVE", key, box, "RIGHT", "RIGHT"))
            else:
                cmds.append(("DEL", key))
            tokens, keys = ended.setdefault(c.queue, ([], []))
            tokens.append(c.token)
            keys.append(key)
        for queue, (tokens, keys) in ended.items():  # one ZREM and one DEL per queue
            cmds += [("ZREM", self._key(queue, "l"), *tokens), ("DEL", *keys)]
        cmds += [("PEXPIRE", box, ttl) for box in boxes]
        with self._errors():
            out = self._run(cmds, multi=True)
        return [i >= 0 and out[i] > 0 for i in marks]

    def release(self, claims: Sequence[Claim]) -> None:
        if not claims:
            return
        with self._errors(), self._pipe() as p:
            self._hand_back(p, claims)
            p.execute()

    def _hand_back(self, p: Pipeline, claims: Sequence[Claim]) -> None:
        for c in reversed(claims):  # the first claimed ends up first in line again
            key = self._key(c.queue, "c:" + c.token)
            p.lmove(key, self._key(c.queue, "w"), "LEFT", "RIGHT")
            p.delete(key)
            p.zrem(self._key(c.queue, "l"), c.token)
            self._ring(p, c.queue, 1)

    def cancel(self, job: Job) -> bool:
        elem = _pack(job.id, job.reply_to, 1, job.body)  # as enqueued: never claimed
        with self._errors():
            removed = bool(self._cmd("LREM", self._key(job.queue, "w"), 1, elem))
        if removed:
            with self._lock:
                self._sent.pop(job.id, None)
        return removed

    def replies(self, reply_to: str, *, wait: float) -> list[bytes]:
        box, deadline = self._box(reply_to), time.monotonic() + wait
        with self._errors():
            while True:
                remaining = deadline - time.monotonic()
                if remaining < 0.01:
                    got = self._cmd("LMPOP", 1, box, "LEFT", "COUNT", _DRAIN)
                    break
                seconds = round(min(remaining, self._wait), 3)
                got = self._cmd("BLMPOP", seconds, 1, box, "LEFT", "COUNT", _DRAIN)
                if got:
                    break
        bodies = []
        with self._lock:
            for elem in got[1] if got else ():
                start = _ID.size + _ID.unpack_from(elem)[0]
                self._sent.pop(elem[_ID.size : start].decode(), None)
                bodies.append(elem[start:])
        return bodies

    def lost(self, ids: Sequence[str]) -> set[str]:
        """Ids this object sent under an epoch the server no longer has (see the module)."""
        with self._errors():
            epoch = self._cmd("GET", self._p + "epoch")
        with self._lock:
            gone = {i for i in ids if self._sent.get(i, epoch) != epoch}
            for i in gone:
                del self._sent[i]
        return gone

    # Watching ------------------------------------------------------------------------

    def heartbeat(self, info: WorkerInfo) -> None:
        with self._errors(), self._pipe(transaction=False) as p:
            p.hset(self._p + "workers", info.id, json.dumps(asdict(info)))
            p.set(self._p + "epoch", self._mine, nx=True)
            if info.queues:
                p.sadd(self._p + "queues", *info.queues)
            p.execute()

    def forget_worker(self, worker: str) -> None:
        with self._errors():
            self._cmd("HDEL", self._p + "workers", worker)

    def bury(self, letter: DeadLetter) -> None:
        with self._errors(), self._pipe() as p:
            p.lpush(self._p + "dead", json.dumps(asdict(letter)))
            p.ltrim(self._p + "dead", 0, _MAX_DEAD - 1)
            p.execute()

    def stats(self) -> Stats:
        """Depths count waiting tasks plus those whose lease expired but was not requeued."""
        with self._errors():
            with self._pipe(transaction=False) as p:
                p.smembers(self._p + "queues")
                p.hgetall(self._p + "workers")
                p.lrange(self._p + "dead", 0, -1)
                names, workers, dead = p.execute()
            queues = sorted(q.decode() for q in names)
            with self._pipe(transaction=False) as p:
                for q in queues:
                    p.llen(self._key(q, "w"))
                    p.zrange(self._key(q, "l"), 0, -1, withscores=True)
                out = p.execute()
            leases = [(q, t, s) for q, ts in zip(queues, out[1::2], strict=True) for t, s in ts]
            with self._pipe(transaction=False) as p:
                for q, t, _ in leases:
                    p.exists(self._key(q, "c:" + t.decode()))
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
            names = [queue] if queue is not None else self._cmd("SMEMBERS", self._p + "queues")
            for name in names:
                q = name if isinstance(name, str) else name.decode()
                expired = self._cmd("ZRANGEBYSCORE", self._key(q, "l"), "-inf", time.time())
                if expired:
                    self._requeue(q, [t.decode() for t in expired])
                with self._pipe() as p:
                    p.llen(self._key(q, "w"))
                    p.delete(self._key(q, "w"), self._key(q, "b"))
                    removed += p.execute()[0]
        return removed

    def sweep(self) -> None:
        """Forget workers silent for ten heartbeat TTLs; drop unused reserved tokens."""
        cutoff = time.time() - 10 * self.worker_ttl
        with self._errors():
            workers = self._cmd("HGETALL", self._p + "workers")
            gone = [k for k, v in workers.items() if json.loads(v)["last_seen"] < cutoff]
            if gone:
                self._cmd("HDEL", self._p + "workers", *gone)
            self._drop_stale()

    def _drop_stale(self) -> None:
        with self._lock:
            stale, self._stale = self._stale, {}
        if stale:
            with self._pipe(transaction=False) as p:
                for queue, tokens in stale.items():
                    p.zrem(self._key(queue, "l"), *tokens)
                p.execute()

    def close(self) -> None:
        with contextlib.suppress(BackendUnavailable), self._errors():
            self._drop_stale()
        self._r.close()
