"""The backend contract: the few primitives a broker must offer, batch-shaped.

A backend moves opaque bytes. It never decodes a task or a reply: serialization, signing,
deadlines and attempt limits live above it, in ``message.py``, ``client.py`` and
``worker.py``. What a backend owns is delivery:

* **Queues.** ``enqueue`` appends jobs to named queues; ``claim`` takes up to ``limit`` of
  them, trying the queues in the order given, oldest first within a queue. A task whose
  lease expired, or that was released, keeps its place before newer work.
* **Deferred tasks.** A job whose ``not_before`` is ahead is stored as such, in the
  broker's own terms (no scheduler process moves it), and no claim takes it before then;
  once due, a claim takes it like waiting work, the first due first. A claim that waits
  wakes for the next one to come due. ``stats`` counts deferred tasks as waiting, and
  ``cancel``, ``withdraw``, ``purge`` and ``lost`` see them.
* **Ids.** ``Job.id`` is unique; the client never sends one twice. Enqueueing an id the
  backend holds (waiting or claimed) raises nothing and leaves the held task as it is: a
  claimed task stays claimed under its token and its reply is delivered. Memory, SQLite
  and MySQL drop the repeat; Redis keeps no index of ids (a lookup per task would cost
  its hot path a round trip or a script), so a repeat is queued and runs once more.
* **Leases.** A claim holds a task for ``lease`` seconds under a fresh ``token``. ``renew``
  extends it. A lease that runs out makes the task claimable again, by any worker, with
  ``attempt`` raised by one: that is how a dead, frozen or cut-off worker's task runs
  elsewhere. Expired leases are picked up by ``claim`` itself, so no separate reaper is
  needed; the worker turns ``attempt > max_attempts`` into a ``WorkerLost`` reply.
* **Completion.** ``complete`` acknowledges a claim and stores its reply for the caller in
  one step, and only while the token still holds the lease: a worker whose lease was taken
  over cannot deliver a second result. ``Done.again`` puts the task back instead, in the
  same step: same id, its new body, claimable from its ``not_before``; the next claim of
  it has the same ``attempt`` as the one completed (as after ``release``).
* **Kept results.** A ``Done`` with ``keep`` above 0 also stores its reply under the
  task's id for ``keep`` seconds, in the same step as the completion (and only if it is
  accepted); a reply whose claim has no ``reply_to`` is only kept. The first reply kept
  under an id stays (a task run twice keeps its first accepted outcome). ``results``
  reads kept replies, never an expired one; ``states`` tells the ids waiting from those
  running. Expired results go with ``sweep`` (SQL) or by themselves (Redis, memory's
  sweep). With ``keep`` at 0 nothing of this costs a statement or a command.
* **Replies.** Every client process has one reply address (``reply_to``); ``replies``
  returns what has arrived there, waiting up to ``wait`` seconds, and removes it. Replies
  nobody collects expire after ``result_ttl`` seconds.
* **Starts.** ``note_starts`` and ``note_completed`` keep a small record of the tasks
  started, with an expiry, for workers that verify signed calls.
* **Watching.** Workers ``heartbeat`` a ``WorkerInfo``; ``stats`` reports queue depths,
  running tasks, live workers and dead letters.
* **Dead letters.** ``bury`` keeps a ``DeadLetter`` (the newest ``MAX_DEAD_LETTERS``),
  with the task to run again where one is given and its body is at most
  ``config.MAX_DEAD_BODY`` bytes (the letter is then ``retryable``). ``retry_dead``
  enqueues such tasks again, forgetting their start records, and deletes their letters;
  ``drop_dead`` deletes letters.
* **Blobs.** ``blob_store`` returns the backend's own store for payloads that travel out
  of band (``blobstores``); its expired blobs go with ``sweep`` or by themselves.
* **Pairs.** ``send_and_wait`` (enqueue, then wait for replies: a blocking call) and
  ``complete_and_claim`` (a worker between batches) have defaults built on the above; a
  backend that can do either in one round trip overrides it (Redis does both).

Every method that takes a list does its work in as few round trips as the broker allows
(one, where it can). Every driver error is raised as ``BackendUnavailable``; a backend
retries transient contention (SQLite's "database is locked", MySQL deadlocks) itself.
A backend object is safe to share between threads, and re-creates its connections in a
child process after a fork.

``tests/test_contract.py`` checks all of the above in every mode a user can run. What
differs between backends, and why:

* **A reply read whose answer is lost.** MySQL deletes only replies already delivered,
  on the next read, so a read cut off on the way back is read again. Redis pops replies
  (``BLMPOP``: one round trip per read), so a cut-off read loses them and ``lost``
  reports those ids; the client then fails the call. SQLite and memory read in-process:
  no answer travels a wire.
* **Released tasks on MySQL with ``claim=skip_locked``.** A claimer looks above the
  highest row it took last first (scanning from a queue's start steps over every row
  InnoDB has not purged yet), so newer work can go before a released task for up to
  ``mysql._EXPIRED_EVERY`` seconds, until the full look that comes with each look for
  expired leases.
* **What ``lost`` can see.** Every backend looks the ids up where tasks and replies
  live; Redis also tells a server that came back empty by an epoch key, for the ids its
  own object enqueued.
* **How ``withdraw`` finds a task.** Memory, SQLite and MySQL look the ids up by id;
  Redis reads every queue's waiting list and leases set (as ``states`` does).
* **Where ``states`` looks.** Memory, SQLite and MySQL look the ids up by id; Redis keeps
  no index of ids, so it reads the waiting lists and the claim lists (its cost grows with
  the backlog, as ``lost``'s does).
* **How long a silent worker's record stays.** ``stats`` omits a worker silent for
  ``worker_ttl`` everywhere; ``sweep`` deletes the record after ``worker_ttl`` (SQLite),
  ten of them (Redis), ``max(60 s, 4 worker_ttl)`` by the server's clock (MySQL), or
  never (memory, which lives as long as its process).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..blobstores import BlobStore
from ..config import MAX_DEAD_BODY
from ..errors import BackendUnavailable, ConfigurationError

#: The dead letters a backend keeps (the newest); ``bury`` drops the oldest beyond it.
MAX_DEAD_LETTERS = 1000
#: What ``Backend.states`` says of a task no worker holds, and of one under a live lease.
WAITING, RUNNING = "waiting", "running"

# Job, Claim and Done are made once per task on the hot path: read-only by convention, not
# frozen (a frozen dataclass's __init__ sets each field through object.__setattr__, six
# times slower).


@dataclass(slots=True)
class Job:
    """A task to enqueue. ``id`` is made by the client and unique.

    ``not_before`` is the epoch second before which no worker may claim it (0: at once).
    """

    id: str
    queue: str
    reply_to: str
    body: bytes
    not_before: float = 0.0


@dataclass(slots=True)
class Claim:
    """A task a worker holds under a lease.

    ``attempt`` is 1 on the first delivery and is raised by one each time a lease expires
    (never by ``release``). ``token`` identifies this lease; it is opaque.
    """

    id: str
    queue: str
    reply_to: str
    body: bytes
    attempt: int
    token: str


@dataclass(slots=True)
class Done:
    """The outcome of a claim: ``reply`` goes to ``claim.reply_to`` (``None``: no reply).

    ``keep`` is how many seconds the reply is also kept under the task's id, for
    ``Backend.results`` (0: not kept). ``again`` puts the task back instead of finishing
    it (a retry): a job with the claim's id, queue and reply address and a new body and
    ``not_before``, enqueued in the same step as the claim is acknowledged; ``reply`` is
    then None.
    """

    claim: Claim
    reply: bytes | None
    keep: float = 0.0
    again: Job | None = None


@dataclass(slots=True)
class WorkerInfo:
    """What a worker reports about itself in each heartbeat.

    ``failed`` counts the calls that ended in a failure reply; ``durations`` maps each task
    type (``Class.method``) to its calls' duration histogram (``figures.py``).
    """

    id: str
    host: str
    pid: int
    queues: list[str]
    started: float
    last_seen: float = field(default_factory=time.time)
    done: int = 0
    running: int = 0
    failed: int = 0
    durations: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that was given up on (e.g. it killed its worker on every attempt).

    ``traceback`` is the last failure's remote traceback, where there was one.
    ``retryable`` says that the backend keeps the task, for ``Backend.retry_dead``; a
    backend sets it when it reads the letter back (``bury`` ignores it). ``deadline`` is
    the call's (epoch seconds; 0: none, or unknown): a worker drops a call it claims
    after its deadline, retried or not.
    """

    id: str
    queue: str
    name: str
    reason: str
    at: float
    traceback: str = ""
    retryable: bool = False
    deadline: float = 0.0


@dataclass(slots=True)
class Stats:
    """A snapshot for ``remoteexec status`` and ``watch``.

    ``queues`` maps each known queue to the tasks waiting in it (not claimed; deferred
    ones included);
    ``running`` counts tasks under a live lease; ``workers`` lists workers whose last
    heartbeat is recent; ``dead`` lists the newest dead letters. ``parts`` breaks the
    waiting tasks down where a broker spreads them (a Redis Cluster: ``shard <name>`` and
    ``node <host:port>``); empty elsewhere. ``oldest`` maps each queue with tasks waiting
    to the epoch second its oldest waiting task was enqueued; on Redis, whose lists hold no
    time, the second this backend object's ``stats`` first saw that task at the head of its
    queue (a lower bound of its wait).
    """

    queues: dict[str, int]
    running: int
    workers: list[WorkerInfo]
    dead: list[DeadLetter] = field(default_factory=list)
    parts: dict[str, int] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)


def buried_task(task: Job | None) -> Job | None:
    """``task``, if a dead letter keeps it: its body is at most ``MAX_DEAD_BODY`` bytes."""
    return task if task is not None and len(task.body) <= MAX_DEAD_BODY else None


class Backend(ABC):
    """The contract every broker adapter implements. See the module docstring."""

    #: Seconds a worker's heartbeat stays valid; ``stats`` omits workers older than this.
    worker_ttl: float = 15.0

    def __init__(self, *, result_ttl: float = 3600.0) -> None:
        self.result_ttl = result_ttl

    @abstractmethod
    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Append ``jobs`` to their queues, durably before returning."""

    @abstractmethod
    def claim(self, queues: Sequence[str], *, limit: int, lease: float, wait: float) -> list[Claim]:
        """Take up to ``limit`` tasks, each under a new lease of ``lease`` seconds.

        Waiting tasks and tasks whose lease has expired are both claimable; the queues are
        tried in the order given. When none is available, wait up to ``wait`` seconds for
        one (0: do not wait) and return ``[]`` if none comes.
        """

    def complete_and_claim(
        self,
        done: Sequence[Done],
        queues: Sequence[str],
        *,
        limit: int,
        lease: float,
        wait: float,
    ) -> tuple[list[bool], list[Claim]]:
        """``complete(done)``, then ``claim(...)``: what a worker does between batches, in
        one round trip where the backend can. Returns ``complete``'s answer and the claims.

        Raises:
            BackendUnavailable: as ``complete`` (whether ``done`` was applied is then
                unknown); a claim that fails after the completion claims nothing instead.
        """
        accepted = self.complete(done)
        try:
            claims = self.claim(queues, limit=limit, lease=lease, wait=wait)
        except BackendUnavailable:
            if not done:
                raise
            claims = []  # the results are in; the next claim tries again
        return accepted, claims

    @abstractmethod
    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        """Extend each lease to ``lease`` seconds from now; False where it was lost."""

    @abstractmethod
    def complete(self, done: Sequence[Done]) -> list[bool]:
        """Acknowledge each claim and deliver its reply, atomically per item.

        An item whose lease is no longer held by its token (it expired and another worker
        took the task, or it was completed already) changes nothing and yields False.
        """

    @abstractmethod
    def release(self, claims: Sequence[Claim]) -> None:
        """Hand back claims that were never started, without counting an attempt."""

    @abstractmethod
    def cancel(self, job: Job) -> bool:
        """Withdraw a task no worker has claimed yet; True if it was withdrawn."""

    @abstractmethod
    def replies(self, reply_to: str, *, wait: float) -> list[bytes]:
        """Remove and return the replies waiting for ``reply_to``, oldest first.

        When none is waiting, wait up to ``wait`` seconds for one; ``[]`` if none comes.
        """

    @abstractmethod
    def results(self, ids: Sequence[str]) -> dict[str, bytes]:
        """The replies kept (``Done.keep``) under ``ids`` and not expired, by id."""

    @abstractmethod
    def states(self, ids: Sequence[str]) -> dict[str, str]:
        """For each of ``ids`` the backend holds as a task: ``WAITING`` (not claimed, or its
        lease expired) or ``RUNNING`` (under a live lease); ids it does not hold are absent.
        """

    def send_and_wait(self, jobs: Sequence[Job], reply_to: str, *, wait: float) -> list[bytes]:
        """``enqueue(jobs)``, then ``replies(reply_to, wait=wait)``: what a blocking call
        does, in one round trip where the backend can.

        Raises:
            BackendUnavailable: as ``enqueue`` (whether the jobs were enqueued is then
                unknown, as when ``enqueue`` itself fails on the way back).
        """
        self.enqueue(jobs)
        try:
            return self.replies(reply_to, wait=wait)
        except BackendUnavailable:
            return []  # sent: the replies are read later

    @abstractmethod
    def heartbeat(self, info: WorkerInfo) -> None:
        """Record that a worker is alive, with its counters."""

    @abstractmethod
    def forget_worker(self, worker: str) -> None:
        """Remove a worker's record (on a clean exit)."""

    @abstractmethod
    def bury(self, letter: DeadLetter, task: Job | None = None) -> None:
        """Keep a dead letter for ``status`` (the newest ``MAX_DEAD_LETTERS``), with the
        reply address and body of ``task``, what ``retry_dead`` enqueues again under the
        letter's id and queue, if ``buried_task(task)``."""

    @abstractmethod
    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        """Count one more start of each ``(task id, keep_until)``; for each, return the
        starts counted before this one and whether the task was marked completed.

        The record of an id is kept at least until ``keep_until`` (epoch seconds; the
        latest one given wins). Workers with secrets use it to refuse replays and to count
        attempts themselves (see ``replay.py``); nothing else calls it.
        """

    @abstractmethod
    def note_completed(self, ids: Sequence[str]) -> None:
        """Mark the started tasks ``ids`` completed (ids with no record are skipped)."""

    @abstractmethod
    def stats(self) -> Stats:
        """Queue depths, running tasks, live workers and dead letters."""

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters (of one queue, or all), newest first, at most ``limit``."""
        dead = [d for d in self.stats().dead if queue is None or d.queue == queue]
        return dead[: max(0, limit)]

    @abstractmethod
    def drop_dead(self, ids: Sequence[str]) -> int:
        """Delete the dead letters ``ids`` (unknown ids are skipped); return how many."""

    @abstractmethod
    def retry_dead(self, ids: Sequence[str]) -> int:
        """Enqueue the task of each dead letter ``ids`` again and delete the letter, in one
        step per letter where the broker can; return how many.

        The task gets its id, queue, reply address and body back, no delay, and a fresh
        attempt count: its start record (``note_starts``) is deleted too. Unknown ids and
        letters that keep no task are skipped.
        """

    @abstractmethod
    def purge(self, queue: str | None = None) -> int:
        """Delete waiting tasks (of one queue, or all); return how many.

        Each deleted id leaves a tombstone for ``result_ttl`` seconds, which ``purged``
        reports, so that the callers of purged tasks learn why their call ended.
        """

    @abstractmethod
    def withdraw(self, ids: Sequence[str]) -> list[str]:
        """Delete the tasks ``ids`` that no worker holds (waiting or deferred); return the
        ids deleted, in the order given. A claimed task stays, even under an expired
        lease; unknown ids are skipped. Each deleted id leaves ``purge``'s tombstone, so
        its caller's call ends in ``CallPurged``.

        An operator's action (the dashboard's "cancel a call"), not a hot-path call: Redis
        keeps no index of ids, so it reads every queue's waiting list and deferred tasks
        (``LRANGE``) and removes each element found (``LREM``).
        """

    @abstractmethod
    def lost(self, ids: Sequence[str], reply_to: str) -> set[str]:
        """The ids among ``ids`` of which the backend has no trace at all.

        A task that is neither waiting, claimed, nor answered to ``reply_to`` was purged,
        or lost by the broker (a restart without persistence, ``FLUSHDB``, a row deleted
        by hand, a popped reply whose answer never arrived). A task that moves between
        those states while this looks is found: completing a task stores its reply in the
        same step, and the reply is looked for after the task. A reply that arrived before
        this looked and that the client has not read yet is not reported when the backend
        can see it; the client reads its replies again before it fails a call anyway.
        Clients ask about calls pending for a while (``client.LIVENESS_AFTER``), in one
        batch, and after recovering from an outage.
        """

    def health(self) -> dict[str, float | str]:
        """A few named figures of the broker's own health, for the dashboard: Redis's
        memory, its limit, eviction policy and evicted keys; MySQL's and SQLite's table
        sizes. Not a hot-path call: each may read the whole broker's bookkeeping."""
        return {}

    def purged(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that ``purge`` deleted in the last ``result_ttl`` seconds."""
        return set()

    def shard(self, queue: str, n: int) -> None:  # noqa: B027 - optional hook
        """Spread ``queue`` over ``n`` shards where the broker spreads queues (a Redis
        Cluster; the first count set for a queue stays); nothing elsewhere."""

    def blob_store(self) -> BlobStore:
        """The backend's own store for out-of-band payloads (one per call is fine).

        Raises:
            ConfigurationError: the backend has none (then set ``blob_url``).
        """
        raise ConfigurationError(f"{type(self).__name__} has no blob store: set blob_url")

    def sweep(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Housekeeping a worker runs now and then (e.g. deleting expired replies)."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release connections. The object must not be used afterwards."""
