"""How finished tasks leave a worker: replies, failures, dead letters, settled claims.

A serving thread hands each finished task to the worker's ``Outbox`` as a ``Done`` (the
claim and its encoded reply). ``complete`` sends a batch of them in one round trip, retrying
a broker that is away for a while; a result the broker refuses as too large is answered
with that error instead. ``settle`` then lets go of the claims the broker accepted, deletes
the blobs of their arguments and, with secrets, refuses replays of them from then on.

The failure replies a worker makes itself live here too: a call that cannot be decoded
(``undecodable``), one that lost its worker too often (``lost``) and any other refusal
(``failure``). The first two also leave a dead letter, and so does a call sent with no
reply address that failed (``unanswered``), with its traceback. Each of these letters
keeps the task, so that ``Backend.retry_dead`` can enqueue it again, and is buried when
its claim is settled, after the start record of a signed call is marked completed: a
retry that follows the letter at once finds that record gone, not marked again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from .backends import Backend, Claim, DeadLetter, Done, Job
from .blobs import Payloads
from .errors import BackendUnavailable, PayloadTooLarge, RemoteExecError, error_kind
from .leases import Leases, quietly
from .message import Codec, Failure, Reply
from .observe import TaskObserver, results_settled, task_lost
from .replay import ReplayGuard

log = logging.getLogger("remoteexec.worker")

#: The longest traceback a dead letter keeps, in characters (the end is kept).
MAX_DEAD_TRACEBACK = 8 * 1024


class Outbox:
    """Sends a worker's replies and settles its claims (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        codec: Codec,
        leases: Leases,
        payloads: Payloads,
        guard: ReplayGuard | None,
    ) -> None:
        self.backend = backend
        self.codec = codec
        self.leases = leases
        self.payloads = payloads
        self.guard = guard
        self.observer: TaskObserver | None = None  # per-task log lines, metrics (observe.py)
        # Dead letters until their claims are settled, by claim (a token may hold a batch).
        self._graves: dict[tuple[str, str], tuple[DeadLetter, Job]] = {}

    def failure(self, claim: Claim, kind: str, type_name: str, message: str, key: int = 0) -> Done:
        """A failure reply, signed with secret number ``key`` (the one that verified the call);
        none for a call sent with no reply address (``send``)."""
        if not claim.reply_to:
            return Done(claim, None)
        reply = Reply(claim.id, None, Failure(kind, type_name, message, ""))
        return Done(claim, self.codec.encode_reply(reply, key=key))

    def error(self, claim: Claim, exc: RemoteExecError, message: str, key: int = 0) -> Done:
        """The failure reply of ``exc``, with ``message`` for its text."""
        return self.failure(claim, error_kind(exc), type(exc).__name__, message, key)

    def unanswered(
        self, claim: Claim, label: str, reply: Reply, deadline: float | None = None
    ) -> Done:
        """A call sent with no reply address ends with no reply; a failure is logged and
        buried, with its traceback (``deadline``: the call's)."""
        failure = reply.failure
        if failure is not None:
            kind, text = failure.type_name, failure.message
            log.warning("sent call %s %s failed: %s: %s", label, claim.id, kind, text)
            reason = f"failed: {kind}: {text}"[:1000]
            trace = failure.traceback[-MAX_DEAD_TRACEBACK:]
            letter = DeadLetter(claim.id, claim.queue, label, reason, time.time(), trace)
            self.bury(replace(letter, deadline=deadline or 0.0), claim)
        return Done(claim, None)

    def bury(self, letter: DeadLetter, claim: Claim) -> None:
        """Keep ``letter`` with the task of ``claim``, to be retried, once the broker
        accepts the claim's completion (``settle``)."""
        task = Job(claim.id, claim.queue, claim.reply_to, claim.body)
        self._graves[claim.token, claim.id] = (letter, task)

    def undecodable(self, claim: Claim, exc: Exception) -> Done:
        """A claim whose body is no call to run ends as a dead letter, acknowledged. With
        secrets its id and reply address are unverified, so nothing is sent there; without,
        the caller gets the typed error."""
        log.warning("rejected task %s from queue %s: %s", claim.id, claim.queue, exc)
        reason = f"{type(exc).__name__}: {exc}"[:1000]
        self.bury(DeadLetter(claim.id, claim.queue, "?", reason, time.time()), claim)
        task_lost(self.observer, claim, "?")
        if self.codec.signing:
            return Done(claim, None)
        if not isinstance(exc, RemoteExecError):
            return self.failure(claim, "serialization", "SerializationError", reason)
        return self.failure(claim, error_kind(exc), type(exc).__name__, str(exc))

    def lost(
        self,
        claim: Claim,
        label: str,
        max_attempts: int,
        key: int = 0,
        deadline: float | None = None,
    ) -> Done:
        """The failure of a task that lost its worker on every attempt; a dead letter too
        (``deadline``: the call's)."""
        reason = (
            f"{label} lost its worker on {claim.attempt - 1} attempt(s) "
            f"(max_attempts={max_attempts})"
        )
        log.error("giving up on task %s: %s", claim.id, reason)
        letter = DeadLetter(claim.id, claim.queue, label, reason, time.time())
        self.bury(replace(letter, deadline=deadline or 0.0), claim)
        task_lost(self.observer, claim, label)
        return self.failure(claim, "worker_lost", "WorkerLost", reason, key)

    def complete(self, finished: list[Done]) -> None:
        """Send results; one the broker refuses as too large is answered with that error."""
        try:
            accepted = self.send(finished)
        except PayloadTooLarge as exc:  # the broker takes less than max_message_size
            if len(finished) > 1:
                for done in finished:
                    self.complete([done])
                return
            claim = finished[0].claim
            log.warning("the result of task %s is too large for the broker: %s", claim.id, exc)
            try:
                key = self.leases.held(claim).key
            except KeyError:
                key = 0
            reason = f"the result is too large for the broker: {exc}"
            finished = [self.failure(claim, "too_large", "PayloadTooLarge", reason, key)]
            accepted = self.send(finished)
        self.settle(finished, accepted)

    def send(self, finished: list[Done]) -> list[bool]:
        """Which of ``finished`` the broker accepted; a broker away for long: none."""
        for attempt in range(20):
            try:
                return self.backend.complete(finished)
            except BackendUnavailable as exc:
                log.warning("sending %d result(s) failed, retrying: %s", len(finished), exc)
                time.sleep(min(0.1 * 2**attempt, 3.0))
        log.error("gave up sending %d result(s): their leases will expire", len(finished))
        return [False] * len(finished)

    def settle(self, finished: list[Done], accepted: list[bool]) -> None:
        """Let go of the claims of sent results; refuse replays of those accepted."""
        self.payloads.delete(self.leases.settle(finished, accepted))  # arguments' blobs
        results_settled(self.observer, finished, accepted)
        if self.guard is not None:  # a replay of these is refused from now on
            pairs = zip(finished, accepted, strict=False)
            self.guard.completed(
                [d.claim.id for d, ok in pairs if ok and (d.reply or not d.claim.reply_to)]
            )
        if self._graves:
            for done, ok in zip(finished, accepted, strict=False):
                grave = self._graves.pop((done.claim.token, done.claim.id), None)
                if grave is not None and ok:  # else another worker holds the task
                    quietly(self.backend.bury, *grave)
