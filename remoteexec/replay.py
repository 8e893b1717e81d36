"""What a worker with secrets checks before it runs a signed call, and what it records.

A signature proves who made a call, not where the broker put it or how often it hands it
out. So, only when secrets are set, a worker runs a verified call only if:

1. it is bound to its claim: the backend's id, queue and reply address equal the signed
   ones. A call moved to another queue, or given another reply address or id, is refused,
   so no result goes to an address the signer did not choose and no reply is bound to an
   id the signer did not make.
2. it has not expired: a call without a deadline is refused once it is older than
   ``max_age`` (``Settings.max_age``, a day by default); one past its deadline is dropped
   as without secrets.
3. the workers' own count allows it: each start is counted in the backend's start record
   (``Backend.note_starts``), never read from the broker's ``attempt``. A call marked
   completed there is a replay and is refused; one started ``max_attempts`` times already
   gets ``WorkerLost``. A result that the backend accepted marks its call completed. A
   retried call (``retries.py``) is started once more per retry: the retries it carries
   are subtracted from its starts, so only lost attempts (over all its tries) count
   against ``max_attempts``, and a retry marks nothing completed.

A refused call is not run and gets no reply: it is logged, buried as a dead letter and
acknowledged. A call's record is kept until it expires (its deadline, or ``max_age`` after
its creation), so a replay is refused for as long as the call could run.

What this cannot do: someone who can write to the broker can delete the start record; a
replay of a completed call then runs again, until the call expires (``max_age`` bounds
it). A call runs again, up to ``max_attempts`` starts in all, if it is replayed while it
runs or before its result is accepted (a worker that dies in between leaves no mark).
Without secrets nothing here runs, and the worker trusts the broker's ``attempt``.
"""

from __future__ import annotations

import logging
import time

from .backends import Backend, Claim, DeadLetter
from .message import Call

log = logging.getLogger("remoteexec.worker")

#: ``ReplayGuard.admit``'s verdicts besides None (run it).
REFUSED, LOST = "refused", "lost"


class ReplayGuard:
    """Binds signed calls to their claims and counts their starts (see the module).

    Args:
        backend: where the start record and the dead letters are kept.
        max_age: seconds a call without a deadline may wait to run after its creation.
    """

    def __init__(self, backend: Backend, *, max_age: float) -> None:
        self.backend = backend
        self.max_age = max_age

    def admit(self, claim: Claim, call: Call, label: str) -> str | None:
        """None if ``call`` may run (its start is then counted), else ``REFUSED`` (not run,
        no reply: logged and buried here) or ``LOST`` (started ``max_attempts`` times).

        A call past its deadline is neither counted nor refused: the worker drops it.

        Raises:
            BackendUnavailable: the start record cannot be read (the claim is handed back).
        """
        now = time.time()
        reason = _unbound(claim, call)
        if reason is None and call.deadline is None and now > call.created + self.max_age:
            reason = f"it is older than max_age ({self.max_age:g} s) and has no deadline"
        if reason is None:
            if call.deadline is not None and now > call.deadline:
                return None
            keep_until = call.created + self.max_age if call.deadline is None else call.deadline
            ((starts, completed),) = self.backend.note_starts([(call.id, keep_until)])
            if not completed:
                tries = 0 if call.retry is None else len(call.retry.tries)
                return LOST if starts - tries >= call.max_attempts else None
            reason = "it was completed before (a replay)"
        self.refuse(claim, label, reason)
        return REFUSED

    def refuse(self, claim: Claim, label: str, reason: str) -> None:
        """Log and bury ``claim``, which must not run."""
        log.warning(
            "refused task %.100s on queue %.100s (%s): %s", claim.id, claim.queue, label, reason
        )
        letter = DeadLetter(claim.id, claim.queue, label, f"refused: {reason}", time.time())
        try:
            self.backend.bury(letter)
        except Exception as exc:  # the refusal stands; only its record is missing
            log.warning("burying refused task %.100s failed: %s", claim.id, exc)

    def completed(self, ids: list[str]) -> None:
        """Mark ``ids`` completed, so a replay of them is refused."""
        if ids:
            try:
                self.backend.note_completed(ids)
            except Exception as exc:
                log.warning("recording %d completed task(s) failed: %s", len(ids), exc)


def _unbound(claim: Claim, call: Call) -> str | None:
    """Why the signed call does not belong to the claim that holds it, or None."""
    for what, signed, claimed in (
        ("id", call.id, claim.id),
        ("queue", call.queue, claim.queue),
        ("reply address", call.reply_to, claim.reply_to),
    ):
        if signed != claimed:
            return f"its signed {what} {signed[:100]!r} differs from the backend's"
    return None
