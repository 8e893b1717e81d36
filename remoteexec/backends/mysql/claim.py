"""Claims: which waiting or expired tasks a worker takes, and how.

Claims run in one of two modes, picked from the server's version unless the URL says
(``?claim=skip_locked`` or ``?claim=optimistic``):

* ``skip_locked`` (MySQL 8.0.1+, MariaDB 10.6+), one round trip: one ``UPDATE`` takes up
  to ``limit`` claimable rows under a new token and an exact lease end, which a ``SELECT``
  then reads back through an index. Across several queues, or when expired leases are
  looked for, the ``UPDATE`` joins a derived table that locks the rows ``FOR UPDATE SKIP
  LOCKED`` (queues in order, oldest first), so concurrent claimers skip each other's rows.
  On one queue's waiting rows it is a plain ``UPDATE ... ORDER BY seq LIMIT n``: under
  READ COMMITTED a row another claim has taken no longer matches once that claim's
  statement commits (semi-consistent reads), so claimers wait for each other at most that
  long. It costs less than the join. It first looks above the highest ``seq`` the last
  claim took, so as not to step over those rows (``claim_locked``).
* ``optimistic`` (older servers): candidates are read without locks; each is taken by
  ``UPDATE ... WHERE seq = ? AND lock_version = ?``, and counts only if that changed the
  row. Losing a race costs a claim, never a duplicate.

A claim's ``UPDATE`` also bumps ``attempt`` and ``lock_version``; the lease end comes from
the server's clock. A deferred task is a row leased to no one (``token = ''``) until its
``not_before``: a claim takes it once due as it takes an expired lease, the first due
first. A claim waits for either; one that finds nothing looks for them on its next try
(a SKIP LOCKED claim otherwise looks every ``_EXPIRED_EVERY`` seconds). ``Claims``
holds what a backend remembers between claims: the floor, which claims found nothing,
when expired leases are next looked for.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from ..base import Claim
from .connection import Connections, Cursor, Part, execute, script
from .statements import (
    ANY_EXPIRED,
    ANY_WAITING,
    CLAIMED,
    EXPIRED,
    EXPIRED_WHERE,
    RANKED,
    SKIP_LOCKED,
    TAKE,
    TAKEN,
    TAKEN_ROWS,
    TASKS,
    UNCHANGED,
    UNTIL,
    WAITING,
    WAITING_WHERE,
    marks,
)
from .wait import Waiter, in_server

#: What a claim waits for in the server (``wait.in_server``): (ready, hold, idle).
Waiting = tuple[Part, float, float]

_PROBE_AFTER = 0.02  # idle seconds after which a polled claim is preceded by a cheap read
_EXPIRED_EVERY = 0.25  # seconds between SKIP LOCKED claims' looks for expired leases


class Claims:
    """A backend's claims, in ``mode`` (``"skip_locked"`` or ``"optimistic"``, set once
    connected), through ``db``, waiting with ``waiter``."""

    def __init__(self, db: Connections, waiter: Waiter) -> None:
        self.mode: str | None = None
        self._db = db
        self._waiter = waiter
        self._found_none: set[Any] = set()  # claim keys whose last claim found nothing
        self._expiry_due: dict[tuple[str, ...], float] = {}  # next look for expired leases
        self._floor: dict[Any, int] = {}  # per claim key: the highest seq the last claim took

    def claim(self, queues: Sequence[str], limit: int, lease: float, wait: float) -> list[Claim]:
        """``Backend.claim``: waiting in the server, or polling (preceded by a cheap read
        once idle for a while: slower polls cost the server less, a busier worker claims
        at once, to answer sooner)."""
        if not queues or limit <= 0:
            return []
        queues = list(queues)
        key = ("claim", *queues)

        def take(cur: Cursor, hold: float) -> list[Claim]:  # the mode is known once connected
            expired = self.mode == "optimistic" or self._expired_due(queues)
            ready = claimable(queues, True)  # an expired lease or due deferred task wakes it
            idle = self._waiter.idle(key)
            waiting: Waiting | None = None
            if self._waiter.in_server:
                waiting = (ready, hold, idle)
            elif idle > _PROBE_AFTER and key in self._found_none:
                [(_, [(found,)])] = execute(cur, f"SELECT {ready[0]}", ready[1])
                if not found:
                    return []
            if self.mode == "skip_locked":
                floor = self._floor.get(key, 0)
                claims, top = claim_locked(cur, queues, limit, lease, expired, waiting, floor)
                if claims:
                    self._floor[key] = top
            else:
                claims = claim_optimistic(cur, queues, limit, lease, waiting)
            if claims:
                self._found_none.discard(key)
            else:
                self._found_none.add(key)
                if not expired:  # what woke it may be an expired lease: the next one looks
                    self._expiry_due.pop(tuple(queues), None)
            return claims

        return self._waiter.wait(key, lambda hold: self._db.run(lambda c: take(c, hold)), wait)

    def _expired_due(self, queues: list[str]) -> bool:
        """Whether this SKIP LOCKED claim looks for expired leases (every ``_EXPIRED_EVERY``
        seconds per set of queues: on one queue, the claims between need no UNION, which
        costs more server time)."""
        now, due = time.monotonic(), tuple(queues)
        if now < self._expiry_due.get(due, 0.0):
            return False
        self._expiry_due[due] = now + _EXPIRED_EVERY
        return True


def claimable(queues: list[str], expired: bool) -> Part:
    """The condition that a claim would find something (with ``expired``: an expired
    lease or a due deferred task too): indexed reads, a fraction of a claim's cost. It is
    what a claim waits for in the server, and what an idle worker's polled claim reads
    first."""
    qs = marks(len(queues))
    if not expired:
        return ANY_WAITING.format(qs), tuple(queues)
    return f"{ANY_WAITING.format(qs)} OR {ANY_EXPIRED.format(qs)}", (*queues, *queues)


def claim_locked(
    cur: Cursor,
    queues: list[str],
    limit: int,
    lease: float,
    expired: bool,
    waiting: Waiting | None,
    floor: int = 0,
) -> tuple[list[Claim], int]:
    """SKIP LOCKED, one round trip: one UPDATE (atomic on its own: sessions autocommit)
    takes the rows (one queue's waiting rows directly, else those a derived table locked),
    stamping them with a new token and an exact ``@until``; a SELECT reads them back.
    With ``waiting`` (ready, hold, idle), all that runs after a wait in the server
    (``wait.in_server``). Returns the claims and the highest ``seq`` taken (0: none).

    ``floor``, the highest ``seq`` the last claim took: one queue's rows are looked for
    above it first, then (if that took none: ``ROW_COUNT() = 0``) among all. InnoDB
    leaves the index entries of claimed and deleted rows in place, marked deleted, until
    its purge removes them, and purge falls behind under a stream of calls: a claim's
    locking scan from the queue's start would then step over every one of them.
    A row below the floor (one that took its ``seq`` earlier and committed later, or a
    released one) is taken once nothing is above it, or by the full look that comes with
    every look for expired leases.
    """
    token = secrets.token_hex(16)
    qs = marks(len(queues))
    rank = RANKED.format(qs)
    branches = [f"({rank}{EXPIRED_WHERE.format(qs)}{SKIP_LOCKED})"] if expired else []
    args: list[Any] = [*queues, *queues, limit] if expired else []
    for queue in queues:
        branches.append(f"({rank}{WAITING_WHERE}{SKIP_LOCKED})")
        args += [*queues, queue, limit]
    if len(branches) == 1:  # one queue's waiting tasks, in order: a plain UPDATE
        plain, waiting_args = f"UPDATE {TASKS} t {TAKEN} WHERE ", (token, queues[0], limit)
        if floor > 0:  # above the floor first; the rest only if that took nothing
            updates: list[Part] = [
                (f"{plain}seq > %s AND {WAITING_WHERE}", (token, floor, queues[0], limit)),
                (f"{plain}ROW_COUNT() = 0 AND {WAITING_WHERE}", waiting_args),
            ]
        else:
            updates = [(plain + WAITING_WHERE, waiting_args)]
    else:
        picked = f"SELECT seq FROM ({' UNION ALL '.join(branches)}) c ORDER BY r, seq LIMIT %s"
        update = f"UPDATE {TASKS} t JOIN ({picked}) p ON t.seq = p.seq {TAKEN}"
        updates = [(update, (*args, limit, token))]
    parts: list[Part] = [(UNTIL, (lease,)), *updates, (CLAIMED, (token,))]
    if waiting is not None:
        rows = execute(cur, *in_server(waiting[0], parts, *waiting[1:]))[0][1]
    else:
        sql = "; ".join(sql for sql, _ in parts)
        rows = execute(cur, sql, tuple(a for _, part in parts for a in part))[-1][1]
    order = {queue: i for i, queue in enumerate(queues)}
    claims = [
        Claim(r[1], r[2], r[3], bytes(r[4]), int(r[5]), token)
        for r in sorted(rows, key=lambda r: (order.get(r[2], 0), r[0]))
    ]
    return claims, max((int(r[0]) for r in rows), default=0)


def claim_optimistic(
    cur: Cursor, queues: list[str], limit: int, lease: float, waiting: Waiting | None
) -> list[Claim]:
    """Optimistic: read candidates (after ``waiting`` in the server, if given), then take
    each if its lock_version is unchanged, and read back the rows this claim's token now
    holds (a second round trip)."""
    reads: list[Part] = [(EXPIRED.format(marks(len(queues))), (*queues, limit))]
    reads += [(WAITING, (queue, limit)) for queue in queues]
    if waiting is not None:
        found = execute(cur, *in_server(waiting[0], reads, *waiting[1:]))[: len(reads)]
    else:
        found = script(cur, reads, txn=False, max_packet=1 << 62)  # small: one round trip
    picks = pick_oldest(queues, [rows for _, rows in found], limit)
    if not picks:
        return []
    token = secrets.token_hex(16)
    # One transaction, rows in seq order: a deadlock undoes every take, so the retry that
    # follows leaves no row held by a token nobody knows (until its lease ran out).
    parts: list[Part] = [(TAKE + UNCHANGED, (token, lease, s, v)) for s, v in sorted(picks)]
    seqs = [seq for seq, _ in picks]
    parts.append((TAKEN_ROWS.format(marks(len(seqs))), (*seqs, token)))
    result = script(cur, parts, txn=True, max_packet=1 << 62)  # no bodies: one round trip
    rows = {row[0]: row for row in result[-2][1]}  # the SELECT, before the COMMIT
    return [
        Claim(r[1], r[2], r[3], bytes(r[4]), int(r[5]), token)
        for r in (rows.get(seq) for seq in seqs)
        if r is not None
    ]


def pick_oldest(
    queues: Sequence[str], found: list[Sequence[tuple[Any, ...]]], limit: int
) -> list[tuple[int, int]]:
    """Up to ``limit`` (seq, lock_version) from ``found`` (expired rows, then each queue's
    waiting rows): queues in order, oldest first in each."""
    rank = {queue: i for i, queue in enumerate(queues)}
    rows = [*found[0], *(row for waiting in found[1:] for row in waiting)]
    ordered = sorted(rows, key=lambda r: (rank[r[2]], r[0]))
    return [(seq, version) for seq, version, _ in ordered[:limit]]
