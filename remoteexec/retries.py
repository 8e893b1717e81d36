"""How a worker retries a call whose task raised an exception the call's policy lists.

A call made with ``retry_on`` carries its ``Retry`` (``retry_policy.py``). When its task
raises, the runner marks the failure if the exception is an instance of a listed class
(``Failure.retryable``). ``retried`` then ends the attempt with ``Done.again`` instead of a
reply: the backend acknowledges the claim and, in the same step, enqueues the call again
with one more failed try kept in it, not to be claimed before ``now + Retry.delay()``.
Any worker may take the retry.

A call is not retried when its tries are used up, when the retry could not start before
the call's deadline, or when the call with its tries kept no longer fits a message. Its
last failure then goes to the caller with the earlier ones (``Failure.earlier``; the
caller's ``RemoteError.attempts``).

The retry is encoded from the call as the worker claimed it, so references to arguments
stored out of band (``blobs.py``) stay as they are, and their blobs are kept for the next
try rather than deleted as a completed call's are.
"""

from __future__ import annotations

import logging
import time

from .backends import Claim, Done, Job
from .errors import RemoteExecError
from .leases import Held
from .message import Call, Codec, Failure, Reply
from .outbox import Outbox

log = logging.getLogger("remoteexec.worker")


def retried(codec: Codec, claim: Claim, call: Call, failure: Failure, held: Held) -> Done | None:
    """The ``Done`` that puts ``call`` back for another try, or None: its ``failure`` is
    final and then carries the earlier tries' failures."""
    retry = call.retry
    if retry is None:
        return None
    if not failure.retryable or len(retry.tries) >= retry.retries:
        failure.earlier = retry.tries
        return None
    delay = retry.delay()
    not_before = time.time() + delay
    if call.deadline is not None and not_before >= call.deadline:
        log.info("not retrying %s %s: its caller stops waiting first", held.label, claim.id)
        failure.earlier = retry.tries
        return None
    try:
        again = codec.decode_call(claim.body)  # as claimed: blob references unresolved
        again.retry = retry.after(failure.type_name, failure.message, failure.traceback)
        body = codec.encode_call(again)
    except RemoteExecError as exc:  # the call with one more traceback is too large
        log.warning("not retrying %s %s: %s", held.label, claim.id, exc)
        failure.earlier = retry.tries
        return None
    log.info(
        "retrying %s %s in %.2f s (retry %d of %d): %s",
        held.label,
        claim.id,
        delay,
        len(retry.tries) + 1,
        retry.retries,
        failure.type_name,
    )
    held.blobs = []  # the next try reads them
    return Done(claim, None, again=Job(claim.id, claim.queue, claim.reply_to, body, not_before))


def failed(outbox: Outbox, claim: Claim, call: Call, reply: Reply, held: Held) -> Done | None:
    """What ends the failure ``reply`` of a call with a retry policy: another try, or the
    failure answered (or, for a call nobody waits for, a dead letter)."""
    assert reply.failure is not None
    again = retried(outbox.codec, claim, call, reply.failure, held)
    if again is not None:
        return again
    keep = call.keep_result
    if not call.reply_to and not keep:
        return outbox.unanswered(claim, held.label, reply, call.deadline)
    try:
        body = outbox.codec.encode_reply(reply, key=call.key)  # a failure: str fields only
    except RemoteExecError as exc:  # the tracebacks kept exceed max_message_size
        text = f"the failure of {held.label}: {exc}"
        return outbox.error(claim, exc, text, call.key, keep)
    return Done(claim, body, keep)
