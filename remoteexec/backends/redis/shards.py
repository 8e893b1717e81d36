"""Sharded queues on a Redis Cluster: one queue spread over several hash slots.

A queue created with ``shards=N`` is N queues in the adapter's key layout: shard 0 is the
queue itself (``{q}``), shard i > 0 is ``q<US>j`` (``US`` the unit separator, which no
queue name holds) for the smallest ``j`` whose slot falls in the (k + i)-th of N equal
arcs of the 16384 slots (mod N), shard 0's slot being in the k-th. The names depend on
the queue's name and N only, so every client and worker agrees on them without asking;
with the slot ranges ``redis-cli --cluster create`` deals out (equal, contiguous, their
bounds rounded as the arcs' are), N shards, a multiple of the primaries, land evenly on
them.

A queue's shard count is kept in ``{q}:n``: the first adapter that uses the queue with
``shards`` > 1 (the URL option, or ``@remote(shards=)`` for a task type's queue, which
clients and workers both declare) sets it (``SET NX``), every other adapter reads it on
first use, so workers and clients without the option follow. It is fixed from then on
(``purge`` keeps it).

Clients put each task on the next shard in turn; a worker tries a queue's shards
starting from the next one in turn on each claim, so none starves while another has
work, and waits on shard 0's doorbells, which every shard's enqueue rings. A claim of
shard i > 0 leaves the adapter with its queue's name and the shard in its token
(``shard<LF>token``), and comes back through ``inward`` on ``complete``, ``renew`` and
``release``.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from ...config import MAX_SHARDS
from ..base import Claim, Job
from .keys import Keys

SEP = "\x1f"  # between a queue's name and a shard's suffix: no queue name holds it
_TOKEN_SEP = "\n"  # between a shard's name and a token, in a claim's token


def shard_names(keys: Keys, queue: str, n: int) -> list[str]:
    """The names of ``queue``'s ``n`` shards, shard 0 (``queue`` itself) first."""

    def slot(name: str) -> int:
        return int(key_slot(keys.waiting(name).encode()))

    def arc(s: int) -> int:
        return bisect.bisect_right(bounds, s) - 1

    bounds = [round(i * REDIS_CLUSTER_HASH_SLOTS / n) for i in range(n)]
    names, first = [queue], arc(slot(queue))
    suffixes = itertools.count(1)
    for i in range(1, n):
        while True:
            name = f"{queue}{SEP}{next(suffixes)}"
            if arc(slot(name)) == (first + i) % n:
                names.append(name)
                break
    return names


def base(name: str) -> str:
    """The queue a shard belongs to (the name itself for shard 0 and plain queues)."""
    return name.partition(SEP)[0]


def shown(name: str) -> str:
    """A shard's name for people: ``q#<suffix>``."""
    head, _, suffix = name.partition(SEP)
    return f"{head}#{suffix}" if suffix else head


def outward(claims: list[Claim]) -> list[Claim]:
    """Claims as the adapter's callers see them: the queue's name, the shard in the token."""
    for c in claims:
        if SEP in c.queue:
            c.token, c.queue = c.queue + _TOKEN_SEP + c.token, base(c.queue)
    return claims


def inward(claims: Sequence[Claim]) -> list[Claim]:
    """The claims ``outward`` made, with their shard as queue and their own token again."""
    out = []
    for c in claims:
        if _TOKEN_SEP in c.token:
            shard, _, token = c.token.partition(_TOKEN_SEP)
            if base(shard) == c.queue:
                c = dataclasses.replace(c, queue=shard, token=token)
        out.append(c)
    return out


class Shards:
    """Each queue's shards, resolved once per process; whose turn it is on each."""

    def __init__(
        self,
        keys: Keys,
        wanted: int,
        resolve: Callable[[str, int], Any],
        asked: dict[str, int] | None = None,
    ) -> None:
        """``resolve(key, wanted)`` returns the stored count (setting it if ``wanted`` > 1);
        ``asked`` holds the counts asked for single queues (``@remote(shards=)``), which
        take the place of ``wanted`` for them."""
        self._keys, self._wanted, self._resolve = keys, wanted, resolve
        self._asked = {} if asked is None else asked
        self._names: dict[str, list[str]] = {}
        self._turns: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def of(self, queue: str) -> list[str]:
        names = self._names.get(queue)
        if names is None:
            wanted = self._asked.get(queue, self._wanted)
            stored = self._resolve(self._keys.shards(queue), wanted)
            try:
                n = min(MAX_SHARDS, max(1, int(stored))) if stored else wanted
            except ValueError:  # not ours: one shard
                n = 1
            with self._lock:
                names = self._names[queue] = shard_names(self._keys, queue, n)
                self._turns[queue] = itertools.count()
        return names

    def _turn(self, queue: str) -> int:
        with self._lock:
            return next(self._turns[queue])

    def spread(self, jobs: Sequence[Job]) -> list[Job]:
        """``jobs``, each on the next shard of its queue in turn."""
        out = []
        for job in jobs:
            names = self.of(job.queue)
            if len(names) > 1:
                job = dataclasses.replace(job, queue=names[self._turn(job.queue) % len(names)])
            out.append(job)
        return out

    def claim_order(self, queues: Sequence[str]) -> list[str]:
        """Every shard of ``queues``, in order, each queue's from the next shard in turn."""
        out = []
        for queue in queues:
            names = self.of(queue)
            start = self._turn(queue) % len(names) if len(names) > 1 else 0
            out += names[start:] + names[:start]
        return out
