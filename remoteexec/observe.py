"""What a worker reports about each task: a failure always, the rest only when asked.

A task that fails is logged once, at WARNING, with its task name, id, queue, attempt,
duration and traceback, whatever else is on. Per-task ``received`` and ``succeeded`` lines
(``--log-tasks``, or ``--log-level DEBUG``) and Prometheus metrics (``--metrics-port``) go
through a ``TaskObserver``, which the worker holds only when one of them is asked for: with
neither, a task costs the worker a few ``is None`` checks, and nothing is formatted.

A task's duration counts from when its worker began with the claim (decoding and checks
included) to the end of the run; its queue wait from the call's creation on the client to
that start (clocks of two machines: never below zero).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .backends import Claim, Done
from .leases import Held
from .message import Call, Reply

if TYPE_CHECKING:
    from .metrics import TaskMetrics

log = logging.getLogger("remoteexec.worker")

_MAX_TRACEBACK = 20_000  # characters of a task's traceback in its log line (the last ones)


class TaskObserver:
    """Per-task log lines at ``level`` (None: none) and ``metrics`` (None: none)."""

    def __init__(self, *, level: int | None, metrics: TaskMetrics | None) -> None:
        self.level = level
        self.metrics = metrics

    def received(self, held: Held, call: Call) -> None:
        """``call`` (of ``held``'s claim) is about to run."""
        claim = held.claim
        wait = max(time.time() - call.created, 0.0) if call.created else 0.0
        if self.level is not None:
            log.log(
                self.level,
                "received %s %s (queue %s, attempt %d, waited %.1f ms)",
                held.label, claim.id, claim.queue, claim.attempt, wait * 1000,
                extra=_fields(held, wait=round(wait, 6)),
            )  # fmt: skip
        if self.metrics is not None:
            self.metrics.started(held.label, claim.queue, claim.attempt, wait)

    def ended(self, held: Held, reply: Reply, seconds: float) -> None:
        """``held``'s task ran for ``seconds`` and gave ``reply``."""
        if self.level is not None and reply.failure is None:
            log.log(
                self.level,
                "succeeded %s %s in %.1f ms",
                held.label, held.claim.id, seconds * 1000,
                extra=_fields(held, duration=round(seconds, 6)),
            )  # fmt: skip
        if self.metrics is not None:
            self.metrics.ended(held.label, held.claim.queue, reply.failure is None, seconds)

    def lost(self, queue: str, label: str) -> None:
        """A task given up on, or buried as a dead letter, unrun."""
        if self.metrics is not None:
            self.metrics.lost(label, queue)

    def settled(self, finished: Sequence[Done], accepted: Sequence[bool]) -> None:
        """Results sent; those not ``accepted`` lost their lease before they arrived."""
        if self.metrics is not None:
            for done, ok in zip(finished, accepted, strict=False):
                if not ok:
                    self.metrics.lease_lost(done.claim.queue)


def observer_for(*, log_tasks: bool, metrics: bool) -> TaskObserver | None:
    """The observer a worker needs for per-task lines (``log_tasks``, or DEBUG logging)
    and ``metrics``; None when neither is asked for."""
    level: int | None = logging.INFO if log_tasks else logging.DEBUG
    if not (log_tasks or log.isEnabledFor(logging.DEBUG)):
        level = None
    if level is None and not metrics:
        return None
    task_metrics = None
    if metrics:
        from .metrics import TaskMetrics

        task_metrics = TaskMetrics()
    return TaskObserver(level=level, metrics=task_metrics)


def task_ended(observer: TaskObserver | None, held: Held, reply: Reply) -> None:
    """Log ``reply``'s failure at WARNING; tell ``observer`` the task ended."""
    if held.abandoned:  # its helper process died: logged, and it will run again
        return
    seconds = time.monotonic() - (held.started or time.monotonic())
    failure = reply.failure
    if failure is not None:
        claim = held.claim
        log.warning(
            "task %s %s failed after %.1f ms (queue %s, attempt %d): %s: %.1000s",
            held.label, claim.id, seconds * 1000, claim.queue, claim.attempt,
            failure.type_name, failure.message,
            extra=_fields(
                held, duration=round(seconds, 6), error=failure.type_name,
                traceback=failure.traceback[-_MAX_TRACEBACK:],
            ),
        )  # fmt: skip
    if observer is not None:
        observer.ended(held, reply, seconds)


def task_lost(observer: TaskObserver | None, claim: Claim, label: str) -> None:
    """``claim`` (task ``label``, or ``?``) was given up on or buried unrun."""
    if observer is not None:
        observer.lost(claim.queue, label)


def results_settled(
    observer: TaskObserver | None, finished: Sequence[Done], accepted: Sequence[bool]
) -> None:
    """Results were sent: ``accepted`` says which arrived while their lease held."""
    if observer is not None:
        observer.settled(finished, accepted)


def _fields(held: Held, **more: object) -> dict[str, object]:
    claim = held.claim
    return {
        "task": held.label,
        "task_id": claim.id,
        "queue": claim.queue,
        "attempt": claim.attempt,
        **more,
    }
