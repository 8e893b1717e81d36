"""The commands of each step the Redis adapter takes, built (or sent) from the keys alone.

``pushes`` are an enqueue's; ``claim_pass`` and ``complete_batch`` the script-free claim
and completion (batches that keep results under task ids, ``keep_commands``, or put tasks
back go this way); ``claim_args`` and ``complete_calls`` the same steps as calls of the
``CLAIM`` and ``COMPLETE`` scripts (``scripts/``), on the same keys. ``requeue``,
``hand_back`` and ``ring`` are shared by both. Why each is safe is in the package's
docstring; the state they depend on (tokens, epochs, what was sent) stays in the adapter.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.client import Pipeline

from ..base import Claim, Done, Job
from .deferred import enqueue_commands, is_deferred, put_back
from .elements import BadElement, dead_element, next_attempt, pack_reply, pack_task
from .keys import BELLS, SKIPLIST_KEEPER, Keys
from .shards import base
from .wire import raw

log = logging.getLogger("remoteexec.redis")


def ring_commands(keys: Keys, queue: str, n: int) -> list[tuple[Any, ...]]:
    """Ring the doorbells; claims trim them, and they expire when the rings stop."""
    bells = keys.bells(queue)
    # Waiters look again every second anyway: a doorbell outlives its ring by 2 s.
    return [("LPUSH", bells, *[b""] * min(n, BELLS)), ("PEXPIRE", bells, 2000)]


def pushes(keys: Keys, by_queue: dict[str, list[Job]]) -> list[tuple[Any, ...]]:
    """The commands that store each queue's jobs: waiting, or deferred (``deferred``)."""
    now, commands = time.time(), []
    for queue, group in by_queue.items():
        tasks = [pack_task(j.id, j.reply_to, 1, j.body) for j in group if j.not_before <= now]
        if len(tasks) < len(group):
            later = [j for j in group if j.not_before > now]
            commands += enqueue_commands(keys, queue, later)
        if tasks:
            commands.append(("LPUSH", keys.waiting(queue), *tasks))
            commands += ring_commands(keys, base(queue), len(tasks))
    return commands


def ring(p: Pipeline, keys: Keys, queue: str, n: int) -> None:
    """``ring_commands`` on a pipeline."""
    for command in ring_commands(keys, queue, n):
        p.execute_command(*command)  # type: ignore[no-untyped-call]


def hand_back(p: Pipeline, keys: Keys, claims: Sequence[Claim]) -> None:
    """Move each claimed task back to the head of its queue and drop its lease."""
    for c in reversed(claims):  # the first claimed ends up first in line again
        key = keys.claim(c.queue, c.token)
        p.lmove(key, keys.waiting(c.queue), "LEFT", "RIGHT")
        p.delete(key)
        p.zrem(keys.leases(c.queue), c.token)
        ring(p, keys, c.queue, 1)


def requeue(
    client: redis.Redis,
    keys: Keys,
    queue: str,
    tokens: Sequence[bytes],
    claims: Sequence[Claim] = (),
) -> None:
    """Put the tasks of expired leases and due deferred tasks (``deferred``) back at the
    head of their queue, attempt + 1, the first of ``tokens`` first in line.

    Each step is conditional on the claim list still existing, so a holder completing
    or releasing meanwhile wins, and a second reaper changes nothing. ``claims`` are
    handed back first, so they end up behind the requeued tasks. ``tokens`` are the
    leases set's members as read (bytes): a malformed element found under one goes to
    the dead letters instead.
    """
    claimed = [keys.claim_raw(queue, t) for t in tokens]
    with client.pipeline(transaction=False) as p:
        for key in claimed:
            p.lindex(key, 0)
        elems = p.execute()
    # Dead letters go in after, apart: their list is in a slot of its own on a cluster.
    with client.pipeline(transaction=True) as p, client.pipeline(transaction=False) as late:
        hand_back(p, keys, claims)
        for token, key, elem in reversed(list(zip(tokens, claimed, elems, strict=True))):
            if elem is None:
                continue  # completed, released, or a token that never got a task
            try:
                attempt, again = next_attempt(elem)
            except BadElement as exc:
                dead_element(late, keys, queue, elem, str(exc))
                p.delete(key)
                continue
            if not is_deferred(token):
                log.warning("lease expired on attempt %d of a task in %r: requeued", attempt, queue)
            raw(p)("RPUSHX", key, again)
            raw(p)("LMOVE", key, keys.waiting(queue), "RIGHT", "RIGHT")
            p.delete(key)
        p.zrem(keys.leases(queue), *tokens)
        ring(p, keys, queue, len(tokens))
        p.execute()
        late.execute()


def claim_pass(
    keys: Keys,
    queue: str,
    tokens: list[str],
    *,
    stale: list[str],
    now: float,
    lease: float,
    block: float,
) -> list[tuple[Any, ...]]:
    """One claim pass on ``queue``: one move per token, the first may wait ``block`` s.

    The replies are: the expired lease tokens, then (``stale`` dropped,) the next lease
    due, then one moved task element (or ``None``) per token, in order.
    """
    leases, waiting = keys.leases(queue), keys.waiting(queue)
    claimed = [keys.claim(queue, t) for t in tokens]
    # No MULTI needed: each move is atomic, and its token is leased before it runs.
    first: tuple[Any, ...] = ("LMOVE", waiting, claimed[0], "RIGHT", "LEFT")
    if block:
        first = ("BLMOVE", *first[1:], round(block, 3))
    return [
        ("ZRANGEBYSCORE", leases, "-inf", now, "LIMIT", 0, max(len(tokens), 100)),
        ("LTRIM", keys.bells(queue), 0, BELLS - 1),
        *([("ZREM", leases, *stale)] if stale else []),
        ("ZADD", leases, "NX", "+inf", SKIPLIST_KEEPER),  # written to the AOF once
        ("ZADD", leases, *itertools.chain(*((now + block + lease, t) for t in tokens))),
        ("ZRANGE", leases, 0, 0, "WITHSCORES"),  # the next lease due
        first,
        *[("LMOVE", waiting, key, "RIGHT", "LEFT") for key in claimed[1:]],
    ]


def complete_batch(
    keys: Keys, done: Sequence[Done], *, ttl: int
) -> tuple[list[tuple[Any, ...]], list[int]]:
    """The ``MULTI`` body that ends ``done``'s leases, replies pushed with a ``ttl`` ms,
    tasks put back (``Done.again``: ``deferred.put_back``).

    Returns:
        The commands, and per item the index of the reply that is positive if its lease
        was still held (-1 for a claim already in the batch: only the first counts).
    """
    boxes, marks = set(), []
    ended: dict[str, tuple[list[str], list[str]]] = {}  # queue -> (tokens, claim lists)
    seen: set[str] = set()
    cmds: list[tuple[Any, ...]] = []
    for d in done:
        c, key = d.claim, keys.claim(d.claim.queue, d.claim.token)
        if key in seen:  # the same claim twice in one batch: only the first counts
            marks.append(-1)
            continue
        seen.add(key)
        marks.append(len(cmds))
        reply = d.reply if d.again is None and (c.reply_to or d.keep) else None
        if d.again is not None:
            cmds += put_back(keys, c, d.again, time.time())
        elif reply is None:  # sent, not kept: no reply
            cmds.append(("DEL", key))
        elif c.reply_to:  # pushed into the claim list, so only if still held
            box = keys.replies(c.reply_to)
            boxes.add(box)
            cmds.append(("RPUSHX", key, pack_reply(c.id, reply)))
            cmds.append(("LMOVE", key, box, "RIGHT", "RIGHT"))
        if reply is not None and d.keep:
            cmds += keep_commands(key, keys.kept(c.id), reply, d.keep)
        tokens, claimed = ended.setdefault(c.queue, ([], []))
        tokens.append(c.token)
        claimed.append(key)
    for queue, (tokens, claimed) in ended.items():  # one ZREM and one DEL per queue
        cmds += [("ZREM", keys.leases(queue), *tokens), ("DEL", *claimed)]
    cmds += [("PEXPIRE", box, ttl) for box in boxes]
    return cmds, marks


def scripted(done: Sequence[Done]) -> bool:
    """Whether ``done`` is completed by the ``COMPLETE`` script where scripts are allowed:
    three results or more (for fewer the script's fixed cost outweighs what it saves), none
    kept under its id and none put back (the script does neither: such a batch goes by
    ``complete_batch``)."""
    return len(done) >= 3 and not any(d.keep or d.again is not None for d in done)


def keep_commands(claimed: str, kept: str, reply: bytes, keep: float) -> list[tuple[Any, ...]]:
    """Keep ``reply`` in the list ``kept`` for ``keep`` seconds, moved there through the
    claim list ``claimed`` so that it happens only while the lease is held (a ``MULTI``
    cannot make a ``SET`` conditional). The first element of ``kept`` is the one read."""
    return [
        ("RPUSHX", claimed, reply),
        ("LMOVE", claimed, kept, "RIGHT", "RIGHT"),
        ("PEXPIRE", kept, max(1, int(keep * 1000))),
    ]


def claim_args(
    keys: Keys, queue: str, tokens: list[str], *, now: float, lease: float
) -> tuple[Any, ...]:
    """``CLAIM``'s keys and arguments for one pass on ``queue`` (see ``claim.lua``)."""
    return (
        3,
        keys.leases(queue),
        keys.waiting(queue),
        keys.bells(queue),
        repr(now),
        repr(now + lease),
        keys.claim(queue, ""),
        SKIPLIST_KEEPER,
        BELLS - 1,
        *tokens,
    )


def complete_calls(
    keys: Keys, done: Sequence[Done], *, ttl: int
) -> list[tuple[str, tuple[Any, ...]]]:
    """One ``COMPLETE`` call per queue in ``done``, items in order within each queue."""
    by_queue: dict[str, list[Any]] = {}
    for d in done:
        c = d.claim
        items = by_queue.setdefault(c.queue, [])
        if d.reply is None:
            items += [c.token, b"", b""]
        else:
            items += [c.token, keys.replies(c.reply_to), pack_reply(c.id, d.reply)]
    return [
        ("complete", (1, keys.leases(q), ttl, keys.claim(q, ""), *items))
        for q, items in by_queue.items()
    ]


def completed(done: Sequence[Done], out: list[Any]) -> list[bool]:
    """Per item of ``done``, in order: the ``COMPLETE`` replies of ``complete_calls``."""
    queues = dict.fromkeys(d.claim.queue for d in done)  # the order of complete_calls
    by_queue = {q: iter(held) for q, held in zip(queues, out, strict=True)}
    return [next(by_queue[d.claim.queue]) == 1 for d in done]
