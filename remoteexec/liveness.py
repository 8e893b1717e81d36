"""Liveness: every call ends, even one whose task the broker no longer has.

A call ends with its reply, with its timeout (``CallTimeout``), or, when its task has
vanished from the broker, with a typed error. The client's reply reader (``replies.py``:
its listener thread, or a thread blocked in ``Client.call``) runs ``Liveness.check`` after
each read:

* every ``LIVENESS_EVERY`` seconds, it asks the backend about the calls pending for more
  than ``LIVENESS_AFTER`` seconds, in one batch (``Backend.lost``); after a broker outage,
  about every pending call at once;
* a call whose task is neither waiting, running nor answered ends with ``CallPurged`` if
  ``remoteexec purge`` deleted it (``Backend.purged``: purge leaves a tombstone for
  ``result_ttl``), with ``BackendUnavailable`` if it vanished during an outage, and with
  ``CallLost`` otherwise (a flushed or emptied broker, a task deleted by hand) once two
  checks in a row have found no trace of it;
* before any call is failed, the replies are read once more: a task that is gone because
  it was answered ends its call with its result (a completion stores the reply in the
  same step as it removes the task).

So a purged call ends at most about ``LIVENESS_AFTER + LIVENESS_EVERY`` seconds (4 s) plus
one read and the check's round trips after its task vanished (5 s on a healthy broker), a
lost one a check later (7 s). A call
waiting for a worker or running, however long, is never failed by this; only its own
timeout ends it. Calls answered within ``LIVENESS_AFTER`` cost no check at all.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from .backends import Backend
from .errors import BackendUnavailable, CallLost, CallPurged, RemoteExecError
from .future import Pending

log = logging.getLogger("remoteexec.client")

#: Seconds a call may be pending before the broker is asked whether it still has its task.
LIVENESS_AFTER = 2.0
#: Seconds between two checks (each one batch, for every call pending that long).
LIVENESS_EVERY = 2.0


class Liveness:
    """When to ask the backend about a client's pending calls, and what to fail them with."""

    def __init__(self, backend: Backend, reply_to: str) -> None:
        self._backend = backend
        self._reply_to = reply_to
        self._next = 0.0  # time.time() of the next check
        self._suspects: set[str] = set()  # ids the last check found no trace of

    def due(self) -> bool:
        return time.time() >= self._next

    def check(
        self, futures: Iterable[Pending], *, after_outage: bool = False
    ) -> tuple[list[bytes], dict[str, RemoteExecError]]:
        """Ask about the calls of ``futures`` pending long enough (all, ``after_outage``).

        Returns the replies read before deciding (to resolve first), and the error for
        each call whose task vanished. A backend error skips this check; the next one
        asks again.
        """
        now = time.time()
        age = 0.0 if after_outage else LIVENESS_AFTER
        futures = list(futures)
        queues = {f.task_id: f.job.queue for f in futures if now - f.submitted > age}
        if not queues:
            # None is old enough: no need to look before the oldest one is.
            oldest = min((f.submitted for f in futures), default=math.inf)
            self._next = min(oldest + LIVENESS_AFTER, now + LIVENESS_EVERY)
            return [], {}
        self._next = now + LIVENESS_EVERY
        try:
            lost = self._backend.lost(list(queues), self._reply_to)
            # Without a tombstone or an outage, a call fails only when two checks in a row
            # find no trace of it: a task caught between two places is never taken for lost.
            suspects, self._suspects = self._suspects, set(lost)
            if not lost:
                return [], {}
            purged = self._backend.purged(sorted(lost))
            bodies = self._backend.replies(self._reply_to, wait=0)
        except Exception as exc:
            log.warning("could not check whether the broker still has the pending calls: %s", exc)
            return [], {}
        errors: dict[str, RemoteExecError] = {}
        for task_id in lost:
            where = f"task {task_id} (queue {queues.get(task_id)!r})"
            if task_id in purged:
                errors[task_id] = CallPurged(f"{where} was purged before it ran")
            elif after_outage:
                errors[task_id] = BackendUnavailable(
                    f"the broker lost {where} while it was unavailable"
                )
            elif task_id in suspects:
                errors[task_id] = CallLost(
                    f"the broker has no trace of {where}: neither waiting, running nor answered"
                )
        self._suspects -= errors.keys()
        return bodies, errors
