"""``memory://``: a broker inside one process, for tests and for workers run as threads.

The reference implementation of the contract in ``base.py``: plain dicts under one lock,
a condition variable for waiting. ``memory://name`` names a broker; every backend opened
with the same URL in one process shares it.

A deferred task (``Job.not_before`` ahead) waits in its queue held by no one: token ``""``
until ``lease_until`` = its ``not_before``. A claim first moves the due ones to the end of
their queue, in due order, as plain waiting tasks.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from ..blobstores.memory import DictBlobStore
from .base import (
    MAX_DEAD_LETTERS,
    RUNNING,
    WAITING,
    Backend,
    Claim,
    DeadLetter,
    Done,
    Job,
    Stats,
    WorkerInfo,
    buried_task,
)


@dataclass(slots=True)
class _Entry:
    job: Job
    attempt: int = 0
    token: str | None = None  # None: waiting; "": deferred until lease_until; else leased
    lease_until: float = 0.0
    enqueued: float = field(default_factory=time.time)


def _entry(job: Job, attempt: int, now: float) -> _Entry:
    """A waiting entry, or a deferred one when ``job.not_before`` is ahead of ``now``."""
    if job.not_before > now:
        return _Entry(job, attempt, "", job.not_before)
    return _Entry(job, attempt)


_EMPTY: OrderedDict[str, _Entry] = OrderedDict()  # never written to


@dataclass(slots=True)
class _Reply:
    id: str
    body: bytes
    at: float


class _Broker:
    """The shared state of one ``memory://`` URL."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queues: dict[str, OrderedDict[str, _Entry]] = {}
        self.replies: dict[str, deque[_Reply]] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self.dead: deque[DeadLetter] = deque(maxlen=MAX_DEAD_LETTERS)
        self.dead_tasks: dict[str, Job] = {}  # the tasks of retryable dead letters, by id
        self.purged: dict[str, float] = {}  # tombstones: id -> when purge deleted it
        self.starts: dict[str, list[float]] = {}  # id -> [starts, completed, keep_until]
        self.blobs: dict[str, tuple[bytes, float]] = {}  # id -> (blob, expiry)
        self.kept: dict[str, tuple[bytes, float]] = {}  # task id -> (reply, expiry)
        self.blobs_lock = threading.Lock()
        self.deferred = 0  # entries with token "": a claim looks for due ones only if any


_BROKERS: dict[str, _Broker] = {}
_BROKERS_LOCK = threading.Lock()


class MemoryBackend(Backend):
    """An in-process broker. See ``base.Backend`` for the contract."""

    def __init__(self, name: str = "", *, result_ttl: float = 3600.0) -> None:
        super().__init__(result_ttl=result_ttl)
        with _BROKERS_LOCK:
            self._b = _BROKERS.setdefault(name, _Broker())

    @classmethod
    def from_url(cls, url: str, *, result_ttl: float = 3600.0) -> MemoryBackend:
        parts = urlsplit(url)
        return cls(parts.netloc + parts.path, result_ttl=result_ttl)

    def enqueue(self, jobs: Sequence[Job]) -> None:
        with self._b.cond:
            self._add(jobs)

    def _add(self, jobs: Sequence[Job]) -> None:
        now = time.time()
        queues = self._b.queues
        for job in jobs:
            if not any(job.id in q for q in queues.values()):  # a repeat is dropped
                entry = _Entry(job) if not job.not_before else _entry(job, 0, now)
                queues.setdefault(job.queue, OrderedDict())[job.id] = entry
                self._b.deferred += entry.token == ""
        self._b.cond.notify_all()

    def claim(self, queues: Sequence[str], *, limit: int, lease: float, wait: float) -> list[Claim]:
        deadline = time.monotonic() + wait
        with self._b.cond:
            while True:
                claims = self._take(queues, limit, lease)
                remaining = deadline - time.monotonic()
                if claims or remaining <= 0:
                    return claims
                # Wake for new work, or in time to see the next lease expire.
                self._b.cond.wait(min(remaining, 0.05))

    def _take(self, queues: Sequence[str], limit: int, lease: float) -> list[Claim]:
        now = time.time()
        claims: list[Claim] = []
        if self._b.deferred:
            self._promote(queues, now)
        for name in queues:
            for entry in self._b.queues.get(name, _EMPTY).values():
                if len(claims) >= limit:
                    return claims
                if entry.token is not None and entry.lease_until > now:
                    continue
                entry.attempt += 1
                entry.token = uuid.uuid4().hex
                entry.lease_until = now + lease
                job = entry.job
                claims.append(
                    Claim(job.id, job.queue, job.reply_to, job.body, entry.attempt, entry.token)
                )
        return claims

    def _promote(self, queues: Sequence[str], now: float) -> None:
        """Move the due deferred tasks of ``queues`` to the end of their queue, due first."""
        for name in queues:
            q = self._b.queues.get(name, _EMPTY)
            due = [e for e in q.values() if e.token == "" and e.lease_until <= now]
            for entry in sorted(due, key=lambda e: e.lease_until):
                entry.token = None
                q.move_to_end(entry.job.id)
            self._b.deferred -= len(due)

    def _held(self, claim: Claim) -> _Entry | None:
        entry = self._b.queues.get(claim.queue, _EMPTY).get(claim.id)
        if entry is None or entry.token != claim.token or entry.lease_until <= time.time():
            return None
        return entry

    def renew(self, claims: Sequence[Claim], *, lease: float) -> list[bool]:
        held = []
        with self._b.cond:
            for claim in claims:
                entry = self._held(claim)
                if entry is not None:
                    entry.lease_until = time.time() + lease
                held.append(entry is not None)
        return held

    def complete(self, done: Sequence[Done]) -> list[bool]:
        accepted = []
        now = time.time()
        with self._b.cond:
            for item in done:
                entry = self._held(item.claim)
                if entry is not None:
                    del self._b.queues[item.claim.queue][item.claim.id]
                    if item.again is not None:  # put back, the attempt not counted
                        again = _entry(item.again, entry.attempt - 1, now)
                        self._b.queues[item.claim.queue][item.claim.id] = again
                        self._b.deferred += again.token == ""
                    elif item.keep and item.reply is not None:
                        self._keep(item.claim.id, item.reply, now + item.keep)
                    if item.again is None and item.reply is not None and item.claim.reply_to:
                        box = self._b.replies.setdefault(item.claim.reply_to, deque())
                        box.append(_Reply(item.claim.id, item.reply, now))
                accepted.append(entry is not None)
            self._b.cond.notify_all()
        return accepted

    def _keep(self, task_id: str, reply: bytes, until: float) -> None:
        """Keep ``reply`` under ``task_id`` until ``until``; a reply kept before stays."""
        kept = self._b.kept.get(task_id)
        if kept is None or kept[1] <= time.time():
            self._b.kept[task_id] = (reply, until)

    def results(self, ids: Sequence[str]) -> dict[str, bytes]:
        now = time.time()
        with self._b.cond:
            found = {i: self._b.kept.get(i) for i in ids}
        return {i: k[0] for i, k in found.items() if k is not None and k[1] > now}

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        now, out = time.time(), {}
        with self._b.cond:
            for q in self._b.queues.values():
                for i in ids:
                    entry = q.get(i)
                    if entry is not None:
                        live = entry.token is not None and entry.lease_until > now
                        out[i] = RUNNING if live else WAITING
        return out

    def release(self, claims: Sequence[Claim]) -> None:
        with self._b.cond:
            for claim in claims:
                entry = self._held(claim)
                if entry is not None:
                    entry.token = None
                    entry.attempt -= 1
            self._b.cond.notify_all()

    def cancel(self, job: Job) -> bool:
        with self._b.cond:
            queue = self._b.queues.get(job.queue, _EMPTY)
            entry = queue.get(job.id)
            if entry is None or entry.attempt > 0:
                return False
            del queue[job.id]
            self._b.deferred -= entry.token == ""
            return True

    def replies(self, reply_to: str, *, wait: float) -> list[bytes]:
        deadline = time.monotonic() + wait
        with self._b.cond:
            while True:
                box = self._b.replies.pop(reply_to, None)
                remaining = deadline - time.monotonic()
                if box or remaining <= 0:
                    return [r.body for r in box or ()]
                self._b.cond.wait(remaining)

    def heartbeat(self, info: WorkerInfo) -> None:
        with self._b.cond:
            durations = {label: list(row) for label, row in info.durations.items()}
            self._b.workers[info.id] = replace(info, queues=list(info.queues), durations=durations)

    def forget_worker(self, worker: str) -> None:
        with self._b.cond:
            self._b.workers.pop(worker, None)

    def bury(self, letter: DeadLetter, task: Job | None = None) -> None:
        task = buried_task(task)
        with self._b.cond:
            dead = self._b.dead
            if len(dead) == dead.maxlen and dead[-1].retryable:  # the oldest goes
                self._b.dead_tasks.pop(dead[-1].id, None)
            dead.appendleft(replace(letter, retryable=task is not None))
            if task is not None:
                self._b.dead_tasks[letter.id] = Job(
                    letter.id, letter.queue, task.reply_to, task.body
                )

    def drop_dead(self, ids: Sequence[str]) -> int:
        with self._b.cond:
            return self._unbury(set(ids))

    def _unbury(self, gone: set[str]) -> int:
        remaining = [d for d in self._b.dead if d.id not in gone]
        dropped = len(self._b.dead) - len(remaining)
        self._b.dead.clear()
        self._b.dead.extend(remaining)
        for task_id in gone:
            self._b.dead_tasks.pop(task_id, None)
        return dropped

    def retry_dead(self, ids: Sequence[str]) -> int:
        with self._b.cond:
            tasks = [t for t in map(self._b.dead_tasks.get, set(ids)) if t is not None]
            self._unbury({t.id for t in tasks})
            for task in tasks:
                self._b.starts.pop(task.id, None)
            self._add(tasks)
        return len(tasks)

    def note_starts(self, starts: Sequence[tuple[str, float]]) -> list[tuple[int, bool]]:
        now, out = time.time(), []
        with self._b.cond:
            record = self._b.starts
            for task_id in [k for k, r in record.items() if r[2] < now]:
                del record[task_id]
            for task_id, keep_until in starts:
                r = record.setdefault(task_id, [0, 0, keep_until])
                out.append((int(r[0]), bool(r[1])))
                r[0], r[2] = r[0] + 1, max(r[2], keep_until)
        return out

    def note_completed(self, ids: Sequence[str]) -> None:
        with self._b.cond:
            for task_id in ids:
                if task_id in self._b.starts:
                    self._b.starts[task_id][1] = 1

    def stats(self) -> Stats:
        now = time.time()
        with self._b.cond:
            depth = {
                name: sum(1 for e in q.values() if not e.token or e.lease_until <= now)
                for name, q in self._b.queues.items()
            }
            running = sum(
                1
                for q in self._b.queues.values()
                for e in q.values()
                if e.token and e.lease_until > now
            )
            workers = [
                replace(w) for w in self._b.workers.values() if now - w.last_seen < self.worker_ttl
            ]
            oldest = {
                name: min(e.enqueued for e in q.values() if e.token is None)
                for name, q in self._b.queues.items()
                if any(e.token is None for e in q.values())
            }
            return Stats(depth, running, workers, list(self._b.dead), oldest=oldest)

    def health(self) -> dict[str, float | str]:
        """Tasks and replies held, in this process's memory."""
        with self._b.cond:
            tasks = sum(len(q) for q in self._b.queues.values())
            replies = sum(len(box) for box in self._b.replies.values())
        return {"tasks": tasks, "replies": replies}

    def purge(self, queue: str | None = None) -> int:
        now = time.time()
        removed = 0
        with self._b.cond:
            for name, q in self._b.queues.items():
                if queue is not None and name != queue:
                    continue
                for task_id in [k for k, e in q.items() if not e.token or e.lease_until <= now]:
                    self._b.deferred -= q.pop(task_id).token == ""
                    self._b.purged[task_id] = now
                    removed += 1
        return removed

    def withdraw(self, ids: Sequence[str]) -> list[str]:
        now = time.time()
        withdrawn = []
        with self._b.cond:
            for task_id in dict.fromkeys(ids):
                for q in self._b.queues.values():
                    entry = q.get(task_id)
                    if entry is not None and not entry.token:  # waiting or deferred
                        self._b.deferred -= q.pop(task_id).token == ""
                        self._b.purged[task_id] = now
                        withdrawn.append(task_id)
        return withdrawn

    def lost(self, ids: Sequence[str], reply_to: str) -> set[str]:
        with self._b.cond:
            held = {i for q in self._b.queues.values() for i in ids if i in q}
            held.update(r.id for r in self._b.replies.get(reply_to, ()))
        return set(ids) - held

    def purged(self, ids: Sequence[str]) -> set[str]:
        cutoff = time.time() - self.result_ttl
        with self._b.cond:
            return {i for i in ids if self._b.purged.get(i, 0.0) > cutoff}

    def blob_store(self) -> DictBlobStore:
        return DictBlobStore(self._b.blobs, self._b.blobs_lock)

    def sweep(self) -> None:
        self.blob_store().sweep()
        cutoff = time.time() - self.result_ttl
        with self._b.cond:
            for reply_to in list(self._b.replies):
                box = self._b.replies[reply_to]
                while box and box[0].at < cutoff:
                    box.popleft()
                if not box:
                    del self._b.replies[reply_to]
            for task_id in [i for i, at in self._b.purged.items() if at < cutoff]:
                del self._b.purged[task_id]
            now = time.time()
            for task_id in [i for i, (_, until) in self._b.kept.items() if until <= now]:
                del self._b.kept[task_id]
