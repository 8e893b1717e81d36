"""How the Redis adapter claims: which pass runs when, and what the last passes taught.

A pass is one round trip (``commands.claim_pass``, or one ``CLAIM`` script call). The
script pass runs while work is waiting and scripts are allowed; a queue the last pass
left empty is waited on by the script-free pass, whose first move is a ``BLMOVE``, so an
idle worker waits inside its claim. A pass may follow commands sent just before it in the
same round trip (``after``: a worker's completion, then its next claim).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.crc import key_slot
from redis.exceptions import NoPermissionError

from ..base import Claim
from .commands import claim_args, claim_pass, requeue
from .elements import BadElement, quarantine, unpack_task
from .keys import Keys
from .lua import Scripts
from .shards import base
from .wire import Link, raw, run


class Claimer:
    """Claim passes over one set of connections, with what each queue's last pass saw:
    when its next lease is due (within 1 s), how many tasks to ask for, whether it left
    nothing waiting, and the tokens it reserved that got no task."""

    def __init__(
        self,
        keys: Keys,
        client: redis.Redis,
        link: Link,
        scripts: Scripts,
        *,
        mine: str,
        wait: float,
    ) -> None:
        self._keys, self._client, self._link, self._scripts = keys, client, link, scripts
        self._mine, self._seq, self._wait = mine, itertools.count(), wait
        self._lock = threading.Lock()
        self._stale: dict[str, list[str]] = {}  # reserved tokens that got no task, per queue
        self._due: dict[str, float] = {}  # per queue: until when no lease seen is due
        self._ask: dict[str, int] = {}  # per queue: how many tasks the next pass asks for
        self._idle: dict[str, bool] = {}  # per queue: the last pass left nothing waiting

    def _token(self) -> str:
        return f"{self._mine}{next(self._seq):x}"

    def claim(self, queues: Sequence[str], *, limit: int, lease: float, wait: float) -> list[Claim]:
        """``Backend.claim``: passes until a claim is made or ``wait`` runs out."""
        deadline = time.monotonic() + wait
        while limit > 0:
            remaining = deadline - time.monotonic()
            if len(queues) == 1 and remaining >= 0.01 and self.calm(queues[0]):
                # No lease known to be due: one pass that waits for work if none is there.
                seconds = min(remaining, self._wait, self._calm_for(queues))
                claims = self.claim_queue(queues[0], limit, lease, seconds)
            else:
                claims = []
                for queue in queues:
                    if len(claims) < limit:
                        claims += self.claim_queue(queue, limit - len(claims), lease)
                seconds = min(deadline - time.monotonic(), self._wait, self._calm_for(queues))
                if not claims and seconds >= 0.01:
                    claims = self._block(queues, limit, lease, seconds)
            if claims or deadline - time.monotonic() < 0.01:
                return claims
        return []

    def calm(self, queue: str) -> bool:
        """True while no lease (or deferred task) of ``queue`` seen by the last pass
        (<= 1 s ago) is due within 10 ms."""
        return self._calm_for([queue]) >= 0.01

    def _calm_for(self, queues: Sequence[str]) -> float:
        """Seconds until the first lease or deferred task seen on ``queues`` is due: a
        wait for work ends then, since a blocking command does not wake for it."""
        return min(self._due.get(q, 0.0) for q in queues) - time.time()

    def claim_queue(self, queue: str, n: int, lease: float, block: float = 0.0) -> list[Claim]:
        """Move up to ``n`` tasks into claim lists; the first move may wait ``block`` s."""
        for last in (False, True):  # a second pass follows requeued expired leases
            claims: list[Claim] | None = None
            expired: list[bytes] = []
            if self._scripts.shas(self._link) is not None:
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
            requeue(self._client, self._keys, queue, expired, claims)
            block, self._ask[queue] = 0.0, n
        return claims or []

    def after(
        self, before: list[tuple[Any, ...]], queue: str, *, limit: int, lease: float, wait: float
    ) -> tuple[list[Claim], list[Any]]:
        """One pass on ``queue`` sent right behind ``before``, in the same round trip.

        Returns the claims and ``before``'s replies (errors included): those commands reach
        Redis while the pass is built, and run before it waits for work (up to ``wait``;
        under 10 ms, it does not wait).
        """
        shas = self._scripts.shas(self._link)
        if shas is None or self._idle.get(queue, True):
            ask = min(limit, self._ask.get(queue, limit))
            block = 0.0
            if wait >= 0.01:
                block = max(0.01, min(wait, self._wait, self._calm_for([queue])))
            claims, expired, out = self._plain_pass(queue, ask, lease, block, before)
        else:
            claims, expired, out = self._script_pass(queue, limit, lease, before, shas["claim"])
        if expired:  # as in claim_queue: the expired tasks go first
            requeue(self._client, self._keys, queue, expired, claims)
            claims = self.claim_queue(queue, limit, lease)
        return claims, out

    def _script_pass(
        self,
        queue: str,
        n: int,
        lease: float,
        before: list[tuple[Any, ...]] | None = None,
        sha: bytes = b"",
    ) -> tuple[list[Claim], list[bytes], list[Any]]:
        """One ``CLAIM`` call: the claims, the expired lease tokens, and the replies of
        ``before`` (see ``after``; ``sha`` is then the script's). With ``before``, a
        refused script claims nothing instead of raising."""
        now, tokens = time.time(), [self._token() for _ in range(n)]

        def args() -> tuple[Any, ...]:
            return claim_args(self._keys, queue, tokens, now=now, lease=lease)

        if before is None:
            first, reply = [], self._scripts.run(self._link, [("claim", args())])[0]
        else:
            *first, reply = self._run(before, then=lambda: [("EVALSHA", sha, *args())])
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
            out = self._run(before, then=commands)
            first, out = out[: len(before)], out[len(before) :]
            for reply in out:
                if isinstance(reply, redis.ResponseError):
                    raise reply
        else:
            first, out = [], run(self._link, commands())
        expired, *out, waiting = out
        self._note_due(queue, now, out[-ask - 1])
        self._idle[queue] = waiting == 0
        moved = list(zip(tokens, out[-ask:], strict=True))
        claims = self._unpacked(queue, [(t, e) for t, e in moved if e is not None])
        self._forget(queue, [t for t, e in moved if e is None])
        full = len(claims) == ask and waiting > 0  # then ask for more next time
        self._ask[queue] = 2 * len(claims) if full else max(1, len(claims))
        return claims, expired, first

    def _run(
        self, before: list[tuple[Any, ...]], then: Callable[[], list[tuple[Any, ...]]]
    ) -> list[Any]:
        return run(self._link, before, raise_errors=False, then=then)

    def _unpacked(self, queue: str, moved: Iterable[tuple[str, bytes]]) -> list[Claim]:
        """The claims of the task elements moved under each token; malformed elements go
        to the dead letters (``elements.quarantine``), never to the caller."""
        claims, bad = [], []
        for token, elem in moved:
            try:
                claims.append(unpack_task(elem, queue, token))
            except BadElement as exc:
                bad.append((token, elem, str(exc)))
        if bad:
            quarantine(self._client, self._keys, queue, bad)
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
            return self.claim_queue(queues[0], limit, lease, seconds)
        # A sharded queue's enqueues ring its shard 0's doorbells.
        bells = list(dict.fromkeys(self._keys.bells(base(q)) for q in queues))
        if self._link.routed:  # on a cluster, one blocking command waits on one slot
            slot = key_slot(bells[0].encode())
            bells = [b for b in bells if key_slot(b.encode()) == slot]
            run(self._link, [("BLMPOP", round(seconds, 3), len(bells), *bells, "LEFT")])
        else:
            raw(self._client)("BLMPOP", round(seconds, 3), len(bells), *bells, "LEFT")
        return []

    def drop_stale(self) -> None:
        """Drop the tokens reserved by passes that got no task from the leases sets."""
        with self._lock:
            stale, self._stale = self._stale, {}
        if stale:
            with self._client.pipeline(transaction=False) as p:
                for queue, tokens in stale.items():
                    p.zrem(self._keys.leases(queue), *tokens)
                p.execute()
