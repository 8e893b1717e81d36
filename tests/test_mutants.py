"""Tests for mutants that survived the mutation check (scripts/mutation, docs/testing.md).

Each test pins a behaviour a user can see that the rest of the suite left open.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from typing import Any

import msgpack
import pytest

from remoteexec import Client, message
from remoteexec.backends import Done, Job
from remoteexec.backends.sqlite import SQLiteBackend
from remoteexec.errors import (
    ERROR_KINDS,
    ConfigurationError,
    RemoteError,
    RemoteExecError,
    SerializationError,
    SignatureError,
)
from remoteexec.message import MAX_EPOCH, MAX_SECONDS, Call, Codec, Failure, Reply
from remoteexec.worker_config import checked_queues

ID = uuid.UUID(int=14).hex


def make_call(**fields: Any) -> Call:
    call = Call(ID, "Probe", "run", (1,), {}, None, 3, None, "q", "r", time.time())
    for name, value in fields.items():
        setattr(call, name, value)
    return call


def claim(backend: Any, queue: str, limit: int) -> list:
    """Claim as a worker would, until ``limit`` tasks are held (or 10 s passed)."""
    claims: list = []
    deadline = time.monotonic() + 10
    while len(claims) < limit and time.monotonic() < deadline:
        claims += backend.claim([queue], limit=limit - len(claims), lease=30, wait=1)
    return claims


def reply_body(fields: list[Any], codec: Codec | None = None) -> bytes:
    """A reply envelope around ``fields`` as they are, well-formed or not."""
    return (codec or Codec())._seal(message._REPLY, fields)


# -- message.py: signing --


@pytest.mark.parametrize("size", [63, 64, 65, 200])
def test_signatures_are_plain_hmac_sha256_for_every_key_length(size: int) -> None:
    # a key longer than the 64-byte block is hashed first, one of 64 bytes is not (RFC 2104):
    # another HMAC implementation must read the same signature
    secret = bytes(range(1, size + 1))
    body = Codec(secrets=[secret]).encode_call(make_call())
    _, kind, payload, signature = msgpack.unpackb(body)
    prefix = b"remoteexec" + bytes((message.FORMAT_VERSION, kind))
    assert signature == hmac.new(secret, prefix + payload, hashlib.sha256).digest()


def test_a_reply_is_signed_with_the_secret_that_verified_its_call() -> None:
    # during a rotation the worker knows the new and the old secret, a client only the old
    worker, client = Codec(secrets=["new", "old"]), Codec(secrets=["old"])
    call = worker.decode_call(client.encode_call(make_call()))
    assert call.key == 1
    body = worker.encode_reply(Reply(ID, 42, None), key=call.key)
    assert client.decode_reply(body).value == 42
    with pytest.raises(SignatureError):
        client.decode_reply(worker.encode_reply(Reply(ID, 42, None), key=0))


# -- message.py: malformed replies --


@pytest.mark.parametrize(
    "fields",
    [
        [7, None, None],  # the id is not a str
        [ID, None],  # a field missing
        [ID, None, None, None],  # a field too many
        [ID, None, "boom"],  # the failure is not a list
        [ID, None, ["remote", "ValueError", "boom"]],  # a failure field missing
        [ID, None, ["remote", "ValueError", "boom", 3]],  # a failure field not a str
    ],
)
def test_a_malformed_reply_is_a_serialization_error(fields: list[Any]) -> None:
    with pytest.raises(SerializationError, match="malformed reply"):
        Codec().decode_reply(reply_body(fields))


def test_peek_id_gives_no_id_that_is_not_a_str() -> None:
    assert Codec().peek_id(reply_body([7, None, None])) is None
    assert Codec().peek_id(reply_body([ID, None, None])) == ID


# -- message.py: numbers in a call --


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("deadline", 0),
        ("deadline", int(MAX_EPOCH)),
        ("deadline", MAX_EPOCH),
        ("created", 0),
        ("created", 0.0),
        ("time_limit", 0.5),
        ("time_limit", 1),
        ("time_limit", int(MAX_SECONDS)),
        ("time_limit", MAX_SECONDS),
    ],
)
def test_numbers_at_the_edges_of_their_range_are_kept(field: str, value: float) -> None:
    codec = Codec()
    got = codec.decode_call(codec.encode_call(make_call(**{field: value})))
    assert getattr(got, field) == value and type(getattr(got, field)) is float


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("deadline", -1),
        ("deadline", -1.0),
        ("deadline", int(MAX_EPOCH) + 1),
        ("deadline", 10**400),  # too big for a float: still a SerializationError
        ("created", -0.5),
        ("time_limit", 0),
        ("time_limit", 0.0),
        ("time_limit", MAX_SECONDS + 1),
        ("time_limit", int(MAX_SECONDS) + 1),
    ],
)
def test_numbers_outside_their_range_are_refused(field: str, value: float) -> None:
    codec = Codec()
    body = codec.encode_call(make_call(**{field: value}))
    with pytest.raises(SerializationError, match="out of range"):
        codec.decode_call(body)


# -- client.py: how a reply becomes the caller's result or exception --


def answer_one_call(url: str, body_for) -> BaseException | None:
    """Submit one call, answer it as a worker would with ``body_for(task_id)``, return what
    the caller gets. The call has no timeout: an answer the client drops would hang it."""
    with Client(url, queue="mutants") as client:
        future = client.submit("Probe", "run", [1], {})
        claims = claim(client.backend, "mutants", 1)
        assert [c.id for c in claims] == [future.job.id]
        assert client.backend.complete([Done(claims[0], body_for(claims[0].id))]) == [True]
        error = future.exception(timeout=10)
        assert client.duplicate_replies == 0
        return error


def failed_with(failure: Failure) -> BaseException | None:
    url = f"memory://{uuid.uuid4().hex}"
    return answer_one_call(url, lambda id_: Codec().encode_reply(Reply(id_, None, failure)))


def test_a_task_exception_becomes_a_remote_error_of_its_type() -> None:
    error = failed_with(Failure("remote", "ValueError", "bad value", "Traceback ...\n"))
    assert isinstance(error, RemoteError) and isinstance(error, ValueError)
    assert (error.type_name, error.message) == ("ValueError", "bad value")
    assert error.remote_traceback == "Traceback ...\n"
    custom = failed_with(Failure("remote", "BillingError", "no credit", ""))
    assert type(custom) is RemoteError and str(custom) == "BillingError: no credit"


@pytest.mark.parametrize(("kind", "cls"), sorted(ERROR_KINDS.items()))
def test_a_failure_of_a_known_kind_is_its_error_class(kind: str, cls: type) -> None:
    error = failed_with(Failure(kind, "Whatever", "it went wrong", ""))
    assert type(error) is cls and str(error) == "it went wrong"


def test_a_failure_of_an_unknown_kind_is_a_remoteexec_error() -> None:
    # a newer worker may send a kind this client does not know yet
    error = failed_with(Failure("from_the_future", "X", "it went wrong", ""))
    assert type(error) is RemoteExecError and str(error) == "it went wrong"


def test_a_malformed_reply_fails_its_call_at_once(tmp_path) -> None:
    def malformed(id_: str) -> bytes:
        return reply_body([id_, None, ["remote", "ValueError", "boom"]])

    error = answer_one_call(f"sqlite:///{tmp_path / 'rx.db'}", malformed)
    assert isinstance(error, SerializationError) and "malformed reply" in str(error)


# -- backends/sqlite.py --


def test_sqlite_lost_names_only_the_ids_it_has_no_trace_of(tmp_path) -> None:
    backend = SQLiteBackend(str(tmp_path / "rx.db"))
    try:
        waiting, claimed, answered = (Job(uuid.uuid4().hex, "q", "me", b"x") for _ in range(3))
        backend.enqueue([claimed, answered])
        backend.enqueue([waiting])
        claims = claim(backend, "q", 2)
        assert {c.id for c in claims} == {claimed.id, answered.id}
        by_id = {c.id: c for c in claims}
        assert backend.complete([Done(by_id[answered.id], b"done")]) == [True]
        vanished = uuid.uuid4().hex
        ids = [waiting.id, claimed.id, answered.id, vanished]
        assert backend.lost(ids, "me") == {vanished}
        assert backend.lost(ids, "someone-else") == {answered.id, vanished}
        assert backend.lost([], "me") == set()
    finally:
        backend.close()


def test_replies_for_a_settled_call_are_counted_and_dropped() -> None:
    with Client(f"memory://{uuid.uuid4().hex}", queue="mutants") as client:
        calls = [client.submit("Probe", "run", [i], {}) for i in range(3)]
        claims = claim(client.backend, "mutants", 3)
        codec = Codec()
        # every answer carries the first call's id: the second and third are duplicates
        first = calls[0].job.id
        done = [Done(c, codec.encode_reply(Reply(first, i, None))) for i, c in enumerate(claims)]
        assert client.backend.complete(done) == [True, True, True]
        assert calls[0].result(timeout=10) == 0
        deadline = time.monotonic() + 10
        while client.duplicate_replies < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.duplicate_replies == 2
        assert not calls[1].done() and not calls[2].done()
        for call in calls[1:]:
            call.cancel()


def test_an_unreadable_reply_for_no_pending_call_leaves_the_other_calls_served() -> None:
    with Client(f"memory://{uuid.uuid4().hex}", queue="mutants") as client:
        first, second = (client.submit("Probe", "run", [i], {}) for i in range(2))
        by_id = {c.id: c for c in claim(client.backend, "mutants", 2)}
        unknown = reply_body([uuid.uuid4().hex, None, ["remote", "ValueError", "boom"]])
        assert client.backend.complete([Done(by_id[first.job.id], unknown)]) == [True]
        good = Codec().encode_reply(Reply(second.job.id, 2, None))
        assert client.backend.complete([Done(by_id[second.job.id], good)]) == [True]
        assert second.result(timeout=10) == 2
        assert not first.done()
        first.cancel()


# -- worker.py: the queues a worker serves --


@pytest.mark.parametrize("queues", [["default"], ["a", "b" * 128]])
def test_queue_names_of_1_to_128_characters_are_served(queues: list[str]) -> None:
    assert checked_queues(queues) == queues


@pytest.mark.parametrize(
    "queues",
    [
        "default",  # a str, not a list: would serve "d", "e", "f", ...
        [],
        [""],
        ["a", "b" * 129],
        ["a", 7],
    ],
)
def test_a_worker_refuses_queues_that_are_not_a_list_of_sane_names(queues: Any) -> None:
    with pytest.raises(ConfigurationError, match="queue"):
        checked_queues(queues)
