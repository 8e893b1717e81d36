"""The Redis adapter's optional Lua fast path for claiming and completing.

What it buys: a claim pass and a completion are each one command, whatever the batch
size, instead of one to two commands per task (``claim_pass``, ``complete_batch`` in
``redis_wire``): fewer commands for redis-py to pack and parse on the worker, and for Redis
to dispatch. Measured on 2 cores (``python -m bench --reps 3``, whose
``remoteexec-redis-noscript`` row runs the same adapter as a user denied ``@scripting``):
B 15,698 against 12,188 calls/s, C 17,491 against 16,802 (other runs: B 16,244 against
11,778, C 15,948 against 13,636); a worker's CPU time per task in B about halves (about 50
to 25 µs here). For one or two results a ``MULTI`` is cheaper
than a script call, so ``RedisBackend`` completes those without it.

The scripts keep the script-free layout exactly (a claim is the list ``{q}:c:<token>``
holding the task, its lease the token's score in ``{q}:l``), so workers with and without
scripting share one farm, and everything else (``renew``, ``release``, requeuing expired
leases, ``lost``, ``stats``) is the same code either way. They touch claim and reply lists
they build from their arguments, so in Redis Cluster they are, like ``complete``'s ``MULTI``,
single-node only.

``Scripts`` loads them once per connection set. A server that refuses ``SCRIPT LOAD``
(an ACL denying ``@scripting``, or scripting disabled) turns the fast path off for this
adapter; ``NOSCRIPT`` (Redis restarted and forgot them) loads them again and resends, which
is safe because a refused ``EVALSHA`` ran nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoPermissionError, NoScriptError

from .base import Done
from .redis_wire import SKIPLIST_KEEPER, Keys, Link, pack_reply, run

log = logging.getLogger("remoteexec.redis")

#: KEYS: leases, waiting, bells. ARGV: now, lease deadline, claim-list prefix, tokens.
#: Moves up to one task per token from waiting into its claim list and leases it.
#: Returns: expired lease tokens (up to 100), the next lease due ([token, score] or {}),
#: the moved task elements (one per token, in order, as many as there were tasks), and
#: how many tasks are still waiting.
CLAIM = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
redis.call('LTRIM', KEYS[3], 0, 15)
redis.call('ZADD', KEYS[1], 'NX', '+inf', 'SKIPLIST_KEEPER')
local moved = {}
for i = 4, #ARGV do
  local elem = redis.call('RPOP', KEYS[2])
  if not elem then break end
  redis.call('RPUSH', ARGV[3] .. ARGV[i], elem)
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  moved[#moved + 1] = elem
end
local due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {expired, due, moved, redis.call('LLEN', KEYS[2])}
""".replace("SKIPLIST_KEEPER", SKIPLIST_KEEPER)

#: KEYS: leases. ARGV: reply TTL in ms, claim-list prefix, then per task: token, reply
#: list key ("" for none), reply element. A task whose claim list is gone (its lease was
#: taken over, or it is twice in the batch) changes nothing. Returns 1 or 0 per task.
COMPLETE = """
local out, boxes = {}, {}
for i = 3, #ARGV, 3 do
  local held = redis.call('DEL', ARGV[2] .. ARGV[i])
  redis.call('ZREM', KEYS[1], ARGV[i])
  if held == 1 and ARGV[i + 1] ~= '' then
    redis.call('RPUSH', ARGV[i + 1], ARGV[i + 2])
    boxes[ARGV[i + 1]] = true
  end
  out[#out + 1] = held
end
for box in pairs(boxes) do redis.call('PEXPIRE', box, ARGV[1]) end
return out
"""


class Scripts:
    """The two scripts' SHA1s on one server, loaded on first use (``off`` if refused)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shas: dict[str, bytes] | None = None
        self.off = False

    def shas(self, link: Link) -> dict[str, bytes] | None:
        """The loaded scripts by name, or None when the server refuses scripting."""
        if self.off:
            return None
        if self._shas is None:
            with self._lock:
                if self._shas is None and not self.off:
                    self._load(link)
        return self._shas

    def _load(self, link: Link) -> None:
        try:
            loaded = run(link, [("SCRIPT", "LOAD", CLAIM), ("SCRIPT", "LOAD", COMPLETE)])
        except redis.ResponseError as exc:  # NOPERM, or scripting disabled
            log.info("Lua scripting refused (%s): using the script-free commands", exc)
            self.off = True
            return
        self._shas = {"claim": loaded[0], "complete": loaded[1]}

    def run(self, link: Link, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Run ``(script name, keys and args)`` calls in one round trip; their replies.

        Raises:
            redis.ResponseError: a script failed, or scripting was refused meanwhile (then
                ``off`` is set, nothing ran, and the caller takes the script-free path).
        """
        for _ in range(2):
            shas = self.shas(link)
            if shas is None:
                raise NoPermissionError("Lua scripting is off for this adapter")
            try:
                return run(link, [("EVALSHA", shas[name], *rest) for name, rest in calls])
            except NoScriptError:  # Redis restarted: none of them ran
                with self._lock:
                    self._shas = None
            except NoPermissionError:
                self.off = True
                raise
        raise redis.ResponseError("Lua scripts could not be loaded")


def claim_args(
    keys: Keys, queue: str, tokens: list[str], *, now: float, lease: float
) -> tuple[Any, ...]:
    """``CLAIM``'s keys and arguments for one pass on ``queue``."""
    return (
        3,
        keys.leases(queue),
        keys.waiting(queue),
        keys.bells(queue),
        repr(now),
        repr(now + lease),
        keys.claim(queue, ""),
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
