"""OpenTelemetry tracing: one trace from the caller's span to the task on the worker.

With ``opentelemetry-api`` installed (the ``remoteexec[otel]`` extra), a call made while a
span is recording carries that span's context (what the global propagator writes, W3C
``traceparent`` by default) inside the signed call, and the worker runs the task in a
``CONSUMER`` span that is its child, named for the task (``Greeter.hello``) and carrying
the messaging attributes below. A task that raises ends its span with an error status and
an ``exception`` event holding the remote type, message and traceback.

Nothing else changes: without the package, or without a recording span in the caller, a
call carries no context and the worker makes no span (so an untraced farm pays one
attribute check per call). A context read from the broker is untrusted: one that is not
a small mapping of short strings is dropped, never an error that stops the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the extra is not installed: calls carry no context
    propagate = trace = None  # type: ignore[assignment]

__all__ = ["carried", "current_context", "ended", "task_span"]

#: The most entries, and the longest key and value, a carried context may have.
MAX_ENTRIES, MAX_KEY, MAX_VALUE = 8, 64, 512


def current_context() -> dict[str, str] | None:
    """The caller's trace context to send with a call, or None: no recording span."""
    if trace is None or not trace.get_current_span().is_recording():
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def carried(value: Any) -> dict[str, str] | None:
    """``value`` as read from a call, if it is a context worth extracting; else None."""
    if type(value) is not dict or not 0 < len(value) <= MAX_ENTRIES:
        return None
    for key, item in value.items():
        if not (type(key) is str and type(item) is str):
            return None
        if len(key) > MAX_KEY or len(item) > MAX_VALUE:
            return None
    return value


@contextlib.contextmanager
def task_span(
    context: dict[str, str], label: str, *, queue: str, task_id: str, attempt: int
) -> Iterator[Any]:
    """A ``CONSUMER`` span for running a task, child of the caller's ``context``; the
    caller hands the outcome to ``ended`` before leaving the block."""
    if trace is None:  # no OpenTelemetry on this side
        yield None
        return
    tracer = trace.get_tracer("remoteexec")
    attributes: dict[str, Any] = {
        "messaging.system": "remoteexec",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": task_id,
        "remoteexec.attempt": attempt,
    }
    with tracer.start_as_current_span(
        label,
        context=propagate.extract(context),
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def ended(span: Any, failure: Any) -> None:
    """Record a task's outcome on ``span`` (from ``task_span``): ``failure`` is its reply's
    (``message.Failure``: ``type_name``, ``message``, ``traceback``), None if it succeeded."""
    if span is None or trace is None:
        return
    if failure is None:
        span.set_attribute("remoteexec.outcome", "succeeded")
        return
    span.set_attribute("remoteexec.outcome", "failed")
    span.add_event(
        "exception",
        {
            "exception.type": failure.type_name,
            "exception.message": failure.message,
            "exception.stacktrace": failure.traceback,
        },
    )
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{failure.type_name}: {failure.message}"))
