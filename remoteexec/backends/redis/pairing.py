"""``complete_and_claim`` in one round trip: a worker's completion, then its next claim pass.

The completion's commands go right before the pass on one queue (``Claimer.after``), so
its results are delivered before the pass waits: ``COMPLETE`` script calls or a ``MULTI``
(``commands.py``); on a cluster, the leases' ends are written first
(``topology.complete_routed``), then the replies and the pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from ..base import Claim, Done
from .claiming import Claimer
from .commands import complete_batch, complete_calls, completed, scripted
from .keys import Keys
from .lua import Scripts
from .topology import complete_routed
from .wire import Link


def routed_then_claimed(
    keys: Keys,
    link: Link,
    scripts: Scripts,
    claimer: Claimer,
    done: Sequence[Done],
    queue: str,
    *,
    ttl: int,
    limit: int,
    lease: float,
    wait: float,
) -> tuple[list[bool] | None, list[Claim]]:
    """On a cluster: the leases' ends, then the replies and the pass in one round trip."""
    held, pushes = complete_routed(keys, link, scripts, done, ttl, push=False)
    claims, out = claimer.after(pushes, queue, limit=limit, lease=lease, wait=wait)
    for answer in out:
        if isinstance(answer, redis.ResponseError):
            raise answer
    return held, claims


def completed_then_claimed(
    keys: Keys,
    link: Link,
    scripts: Scripts,
    claimer: Claimer,
    done: Sequence[Done],
    queue: str,
    *,
    ttl: int,
    limit: int,
    lease: float,
    wait: float,
) -> tuple[list[bool] | None, list[Claim]]:
    """The completion (``COMPLETE`` calls, else a ``MULTI``), then the pass; which items of
    ``done`` were accepted, or None where a script was refused (NOSCRIPT or NOPERM: nothing
    of the completion ran), and the claims."""
    shas = scripts.shas(link) if scripted(done) else None
    marks: list[int] = []
    if shas is None:
        cmds, marks = complete_batch(keys, done, ttl=ttl)
        before = [("MULTI",), *cmds, ("EXEC",)]
    else:
        calls = complete_calls(keys, done, ttl=ttl)
        before = [("EVALSHA", shas[name], *rest) for name, rest in calls]
    claims, out = claimer.after(before, queue, limit=limit, lease=lease, wait=wait)
    if shas is None:
        applied = out[-1]
        if not isinstance(applied, list):  # EXECABORT: nothing ran
            raise redis.ResponseError(f"transaction aborted: {applied}")
        return [i >= 0 and applied[i] > 0 for i in marks], claims
    if any(isinstance(reply, redis.ResponseError) for reply in out):
        return None, claims
    return completed(done, out), claims
