"""OpenTelemetry: the worker's span continues the caller's trace (remoteexec/tracing.py).

The worker runs in this process (a ``Worker`` on a thread, against a real broker), so its
spans reach the same in-memory exporter as the caller's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from remoteexec import Client, RemoteError, SignatureError, remote, using
from remoteexec.message import Call, Codec
from remoteexec.worker import Worker
from tests.conftest import fresh_url

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)
tracer = trace.get_tracer("tests")


@remote(name="TracedTask")
class TracedTask:
    def double(self, n: int) -> int:
        return 2 * n

    def fail(self, text: str) -> None:
        raise ValueError(text)

    def nested(self, n: int) -> int:
        return TracedTask.double(n) + 1


@pytest.fixture(params=["sqlite", "redis", "mysql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_url(str(request.param), request, tmp_path)


@pytest.fixture
def served(url: str) -> Iterator[Client]:
    worker = Worker(url, threads=2, lease=5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    EXPORTER.clear()
    try:
        with Client(url, timeout=30) as client, using(client):
            yield client
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


def _spans(name: str) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


def test_the_worker_span_is_a_child_of_the_callers_span(served: Client) -> None:
    with tracer.start_as_current_span("caller") as caller:
        assert TracedTask.double(21) == 42
    (span,) = _spans("TracedTask.double")
    context = caller.get_span_context()
    assert span.context.trace_id == context.trace_id
    assert span.parent is not None and span.parent.span_id == context.span_id
    assert span.kind == trace.SpanKind.CONSUMER
    attributes = dict(span.attributes or {})
    assert attributes["messaging.system"] == "remoteexec"
    assert attributes["messaging.destination.name"] == "default"
    assert attributes["remoteexec.attempt"] == 1
    assert attributes["remoteexec.outcome"] == "succeeded"
    assert isinstance(attributes["messaging.message.id"], str)


def test_a_failing_task_records_the_exception_on_its_span(served: Client) -> None:
    with tracer.start_as_current_span("caller"), pytest.raises(RemoteError):
        TracedTask.fail("boom")
    (span,) = _spans("TracedTask.fail")
    assert span.status.status_code == trace.StatusCode.ERROR
    (event,) = [e for e in span.events if e.name == "exception"]
    attributes = dict(event.attributes or {})
    assert attributes["exception.type"] == "ValueError"
    assert attributes["exception.message"] == "boom"
    assert "Traceback" in str(attributes["exception.stacktrace"])
    assert dict(span.attributes or {})["remoteexec.outcome"] == "failed"


def test_a_call_from_inside_a_task_continues_the_same_trace(served: Client) -> None:
    with tracer.start_as_current_span("caller") as caller:
        assert TracedTask.nested(4) == 9
    (outer,) = _spans("TracedTask.nested")
    (inner,) = _spans("TracedTask.double")
    trace_id = caller.get_span_context().trace_id
    assert outer.context.trace_id == inner.context.trace_id == trace_id
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id


def test_a_call_made_outside_any_span_makes_no_worker_span(served: Client) -> None:
    assert TracedTask.double(1) == 2
    assert _spans("TracedTask.double") == []


def _traced_call(trace_field: Any) -> Call:
    call = Call("id1", "TracedTask", "double", (1,), {}, None, 3, None, "default", "r", 1.0)
    call.trace = trace_field
    return call


def _resealed(codec: Codec, body: bytes, change: Any) -> bytes:
    """``body`` with its payload's fields changed by ``change``, the signature kept."""
    version, kind, payload, signature = msgpack.unpackb(body)
    fields = msgpack.unpackb(payload, strict_map_key=False)
    change(fields)
    return bytes(msgpack.packb([version, kind, msgpack.packb(fields), signature]))


def test_a_changed_trace_context_in_a_signed_call_is_refused() -> None:
    codec = Codec(secrets=["k1"])
    body = codec.encode_call(
        _traced_call({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    )
    assert codec.decode_call(body).trace is not None

    def other_parent(fields: list[Any]) -> None:
        fields[-1]["trace"]["traceparent"] = "00-" + "3" * 32 + "-" + "4" * 16 + "-01"

    with pytest.raises(SignatureError):
        codec.decode_call(_resealed(codec, body, other_parent))
    with pytest.raises(SignatureError):  # nor can one be added to a call sent without
        codec.decode_call(
            _resealed(codec, codec.encode_call(_traced_call(None)), lambda f: f.append({}))
        )


@pytest.mark.parametrize(
    "bad",
    [
        "00-abc",
        ["traceparent"],
        {"traceparent": 7},
        {7: "x"},
        {"traceparent": "x" * 5000},
        {f"k{i}": "v" for i in range(50)},
        {},
    ],
)
def test_a_malformed_trace_context_is_dropped_and_the_call_still_runs(bad: Any) -> None:
    codec = Codec()
    body = codec.encode_call(_traced_call(bad))
    call = codec.decode_call(body)
    assert call.trace is None and call.args == (1,)
