"""Deferred tasks on Redis: a lease held by no one until the task's ``not_before``.

A deferred task waits in a claim list of its own, ``{q}:c:~:<id>`` (``~:<id>:<token>``
for one put back by ``Done.again`` from the claim ``<token>``), whose token is scored in
the queue's leases set ``{q}:l`` at its ``not_before``. So the sorted set that times leases
times deferred tasks too, in the queue's slot, and nothing else moves them: a claim pass
that finds the token due requeues the task as it requeues an expired lease (at the head of
its queue, the first due first), and a claim waits no later than the next score of the set.

The element's attempt is one below the one its next claim gets: requeuing raises it. A
put-back token names the claim it came from, so a put-back whose claim was no longer held
(its element never moved; the token is scored all the same) leaves a token no other task
uses, which a claim pass drops once it is due.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..base import Claim, Job
from .elements import pack_task
from .keys import Keys

#: The first bytes of a deferred task's token; no claim's token starts so.
PREFIX = "~:"


def is_deferred(token: bytes) -> bool:
    """Whether a token read from a leases set is a deferred task's."""
    return token.startswith(PREFIX.encode())


def enqueue_commands(keys: Keys, queue: str, jobs: Sequence[Job]) -> list[tuple[Any, ...]]:
    """Store ``jobs`` of ``queue`` deferred: the token scored first, then the task, so a
    cut-off round trip leaves at most a token with no task."""
    leases = keys.leases(queue)
    scores = [x for j in jobs for x in (j.not_before, PREFIX + j.id)]
    commands: list[tuple[Any, ...]] = [("ZADD", leases, *scores)]
    for j in jobs:
        task = pack_task(j.id, j.reply_to, 0, j.body)
        commands.append(("LPUSH", keys.claim(queue, PREFIX + j.id), task))
    return commands


def cancel_commands(keys: Keys, queue: str, task_id: str) -> list[tuple[Any, ...]]:
    """Withdraw a deferred task as enqueued; the first reply is 1 if it was there."""
    token = PREFIX + task_id
    return [("DEL", keys.claim(queue, token)), ("ZREM", keys.leases(queue), token)]


def put_back(keys: Keys, claim: Claim, again: Job, now: float) -> list[tuple[Any, ...]]:
    """``Done.again`` for a claim: commands for its ``MULTI``, each conditional on the
    claim list (the first reply is positive if it was held). The claim list itself is
    deleted after them, with the other completions'."""
    held, queue = keys.claim(claim.queue, claim.token), claim.queue
    if again.not_before <= now:  # at once: to the tail of the queue, attempt unchanged
        task = pack_task(claim.id, claim.reply_to, claim.attempt, again.body)
        return [("RPUSHX", held, task), ("LMOVE", held, keys.waiting(queue), "RIGHT", "LEFT")]
    token = f"{PREFIX}{claim.id}:{claim.token}"
    task = pack_task(claim.id, claim.reply_to, claim.attempt - 1, again.body)
    return [
        ("RPUSHX", held, task),
        ("LMOVE", held, keys.claim(queue, token), "RIGHT", "LEFT"),
        ("ZADD", keys.leases(queue), again.not_before, token),
    ]
