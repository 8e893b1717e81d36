"""Signing with a secret: what a worker refuses, what it runs once, and key rotation.

Every test runs on SQLite, Redis and MySQL with a real ``Worker`` in a thread. Calls are
made by hand (``Codec`` + ``Backend.enqueue``) so that a test can play the attacker who
can write to the broker but holds no key: move a signed call to another queue, give it
another reply address or id, raise its attempt, change a signed field, replay it.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest

from remoteexec import Client, Worker, remote, using
from remoteexec.backends import Backend, Done, Job, open_backend
from remoteexec.backends.redis.elements import pack_task, unpack_task
from remoteexec.errors import SerializationError, SignatureError
from remoteexec.message import Call, Codec, Reply
from tests.conftest import fresh_url

SECRET = "a-secret-for-tests"
RUNS: list[str] = []  # the tags SignedProbe.record ran with, in order


@remote
class SignedProbe:
    def record(self, tag: str) -> str:
        RUNS.append(tag)
        return tag


@pytest.fixture(params=["sqlite", "redis", "mysql"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> str:
    RUNS.clear()
    return fresh_url(kind, request, tmp_path)


@contextmanager
def serving(
    url: str, *, queues: tuple[str, ...] = ("default",), **options: Any
) -> Iterator[Worker]:
    worker = Worker(url, queues=list(queues), threads=1, lease=5, **options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive()


class Sender:
    """A client made by hand: signs calls, enqueues jobs, reads its reply address."""

    def __init__(self, url: str, secrets: list[str] | None = None) -> None:
        self.backend: Backend = open_backend(url)
        self.codec = Codec(secrets=secrets or [SECRET])
        self.reply_to = f"rt-{uuid.uuid4().hex}"
        self.replies: dict[str, Reply] = {}

    def job(
        self,
        tag: str,
        *,
        queue: str = "default",
        deadline: float | None = None,
        created: float | None = None,
        limit: Any = None,
        max_attempts: int = 3,
    ) -> Job:
        task_id = uuid.uuid4().hex
        made = time.time() if created is None else created
        call = Call(task_id, "SignedProbe", "record", (tag,), {}, deadline, max_attempts, None)
        call.time_limit, call.queue, call.reply_to, call.created = limit, queue, self.reply_to, made
        return Job(task_id, queue, self.reply_to, self.codec.encode_call(call))

    def send(self, *jobs: Job) -> None:
        self.backend.enqueue(list(jobs))

    def read(self, reply_to: str | None = None, wait: float = 0.0) -> list[bytes]:
        return self.backend.replies(reply_to or self.reply_to, wait=wait)

    def result(self, task_id: str, timeout: float = 60.0) -> Reply:
        deadline = time.monotonic() + timeout
        while task_id not in self.replies:
            assert time.monotonic() < deadline, f"no reply for {task_id}"
            for body in self.read(wait=0.5):
                reply = self.codec.decode_reply(body)
                self.replies[reply.id] = reply
        return self.replies[task_id]

    def probe(self) -> None:
        """A good call through the same worker: it runs after everything sent before."""
        job = self.job("probe")
        self.send(job)
        reply = self.result(job.id)
        assert reply.failure is None and reply.value == "probe"

    def dead(self, task_id: str, timeout: float = 20.0) -> str:
        """The reason of ``task_id``'s dead letter, once there is one."""
        deadline = time.monotonic() + timeout
        while True:
            for letter in self.backend.stats().dead:
                if letter.id == task_id:
                    return letter.reason
            assert time.monotonic() < deadline, f"{task_id} was never buried"
            time.sleep(0.05)

    def close(self) -> None:
        self.backend.close()


@pytest.fixture
def sender(url: str) -> Iterator[Sender]:
    sender = Sender(url)
    yield sender
    sender.close()


def with_payload(job: Job, index: int, value: Any) -> Job:
    """``job`` with field ``index`` of its signed payload changed, the signature kept."""
    version, kind, payload, signature = msgpack.unpackb(job.body)
    fields = msgpack.unpackb(payload)
    fields[index] = value
    body = msgpack.packb([version, kind, msgpack.packb(fields), signature])
    return Job(job.id, job.queue, job.reply_to, body)


def assert_refused(sender: Sender, job: Job, *, reply_to: str | None = None) -> str:
    """``job`` did not run, is buried, and got no reply (at either address)."""
    reason = sender.dead(job.id)
    sender.probe()  # the refused claim's acknowledgement went out before the probe ran
    assert RUNS == ["probe"]
    assert job.id not in sender.replies
    assert all(reply.id != job.id for reply in sender.replies.values())
    if reply_to is not None:
        assert sender.read(reply_to) == []
    return reason


# --- the signed fields ----------------------------------------------------------------


def test_a_call_moved_to_another_queue_is_refused(url: str, sender: Sender) -> None:
    good = sender.job("moved")
    moved = Job(good.id, "other", good.reply_to, good.body)
    with serving(url, queues=("default", "other"), secret=SECRET):
        sender.send(moved)
        reason = assert_refused(sender, moved)
    assert "queue" in reason


def test_a_call_given_another_reply_address_is_refused(url: str, sender: Sender) -> None:
    good = sender.job("diverted")
    elsewhere = f"thief-{uuid.uuid4().hex}"
    diverted = Job(good.id, good.queue, elsewhere, good.body)
    with serving(url, secret=SECRET):
        sender.send(diverted)
        reason = assert_refused(sender, diverted, reply_to=elsewhere)
    assert "reply address" in reason


def test_a_call_given_another_id_is_refused(url: str, sender: Sender) -> None:
    good = sender.job("renamed")
    renamed = Job(f"evil-{uuid.uuid4().hex}", good.queue, good.reply_to, good.body)
    with serving(url, secret=SECRET):
        sender.send(renamed)
        reason = assert_refused(sender, renamed)
    assert "id" in reason


@pytest.mark.parametrize(
    ("index", "value"),
    [(3, ["other args"]), (5, 1.0), (7, 0.5), (10, 1.0)],
    ids=["args", "deadline", "time_limit", "created"],
)
def test_a_changed_signed_field_is_refused(
    url: str, sender: Sender, index: int, value: Any
) -> None:
    forged = with_payload(sender.job("forged"), index, value)
    with serving(url, secret=SECRET):
        sender.send(forged)
        reason = assert_refused(sender, forged)
    assert "signature" in reason


def raise_attempt(kind: str, url: str, request: pytest.FixtureRequest, job: Job) -> None:
    """Write attempt 9 into the broker's copy of ``job`` (waiting, unclaimed)."""
    if kind == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            assert conn.execute("UPDATE tasks SET attempt = 9 WHERE id = ?", (job.id,)).rowcount
        conn.close()
    elif kind == "redis":
        r = request.getfixturevalue("redis_server").client()
        key = "remoteexec:{default}:w"
        (elem,) = r.lrange(key, 0, -1)
        claim = unpack_task(elem, "default", "")
        r.lset(key, 0, pack_task(claim.id, claim.reply_to, 9, claim.body))
    else:
        conn = request.getfixturevalue("mariadb_server").connect()
        db = url.rsplit("/", 1)[1]
        try:
            with conn.cursor() as cur:
                sql = f"UPDATE {db}.remoteexec_tasks SET attempt = 9 WHERE id = %s"
                assert cur.execute(sql, (job.id,))
            conn.commit()
        finally:
            conn.close()


def test_an_attempt_raised_in_the_broker_changes_nothing(
    kind: str, url: str, sender: Sender, request: pytest.FixtureRequest
) -> None:
    job = sender.job("attempted")
    sender.send(job)
    raise_attempt(kind, url, request, job)
    with serving(url, secret=SECRET):
        reply = sender.result(job.id)
    assert reply.failure is None and reply.value == "attempted"
    assert RUNS == ["attempted"]


def test_the_workers_own_start_count_gives_worker_lost(url: str, sender: Sender) -> None:
    job = sender.job("tired", max_attempts=2)
    keep = time.time() + 600
    sender.backend.note_starts([(job.id, keep)])
    sender.backend.note_starts([(job.id, keep)])  # started twice, by the workers' record
    sender.send(job)
    with serving(url, secret=SECRET):
        reply = sender.result(job.id)
    assert reply.failure is not None and reply.failure.kind == "worker_lost"
    assert RUNS == []


# --- replays ----------------------------------------------------------------------------


def test_a_replay_of_a_completed_call_does_not_run(url: str, sender: Sender) -> None:
    job = sender.job("once")
    with serving(url, secret=SECRET):
        sender.send(job)
        assert sender.result(job.id).value == "once"
        del sender.replies[job.id]
        sender.send(job)  # the same signed bytes again, as someone who saw them would
        reason = sender.dead(job.id)
        sender.probe()
    assert "replay" in reason
    assert RUNS == ["once", "probe"]
    assert job.id not in sender.replies


def test_a_call_without_deadline_older_than_max_age_does_not_run(url: str, sender: Sender) -> None:
    stale = sender.job("stale", created=time.time() - 120)
    fresh_with_deadline = sender.job("kept", created=time.time() - 120, deadline=time.time() + 60)
    with serving(url, secret=SECRET, max_age=60):
        sender.send(stale, fresh_with_deadline)
        reason = sender.dead(stale.id)
        assert sender.result(fresh_with_deadline.id).value == "kept"
    assert "max_age" in reason
    assert RUNS == ["kept"]
    assert stale.id not in sender.replies


# --- rotation ---------------------------------------------------------------------------

OLD, NEW = "the-old-key", "the-new-key"


@pytest.mark.parametrize(
    ("worker_keys", "client_keys"),
    [([NEW, OLD], [OLD]), ([OLD, NEW], [NEW]), ([NEW, OLD], [OLD, NEW]), ([OLD, NEW], [NEW, OLD])],
    ids=[
        "worker-ahead",
        "client-ahead",
        "both-rotating-worker-first",
        "both-rotating-client-first",
    ],
)
def test_rotation_works_in_both_directions(
    url: str, worker_keys: list[str], client_keys: list[str]
) -> None:
    with (
        serving(url, secrets=worker_keys),
        Client(url, secrets=client_keys, timeout=60) as client,
        using(client),
    ):
        assert SignedProbe.record("rotated") == "rotated"
        assert SignedProbe.record("again") == "again"
    assert RUNS == ["rotated", "again"]


# --- numbers on the wire ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time_limit", -(10**400)),
        ("time_limit", math.nan),
        ("time_limit", math.inf),
        ("time_limit", 1e300),
        ("time_limit", 0),
        ("time_limit", -1.0),
        ("deadline", math.nan),
        ("deadline", math.inf),
        ("deadline", 10**30),
        ("created", -math.inf),
        ("created", math.nan),
        ("max_attempts", 0),
        ("max_attempts", 10**9),
    ],
)
def test_a_number_out_of_range_is_a_serialization_error(field: str, value: Any) -> None:
    codec = Codec(secrets=[SECRET])
    call = Call("id", "SignedProbe", "record", ("x",), {}, None, 3, None, "q", "r", time.time())
    setattr(call, field, value)
    body = codec.encode_call(call)
    with pytest.raises(SerializationError, match=r"out of range|not a number"):
        codec.decode_call(body)


def test_numbers_in_range_are_kept() -> None:
    codec = Codec(secrets=[SECRET])
    call = Call("id", "T", "m", (), {}, 1.7e9, 1000, 365 * 86400, "q", "r", 1.7e9)
    got = codec.decode_call(codec.encode_call(call))
    assert got == call and type(got.time_limit) is float


def test_bad_time_limits_are_refused_and_the_worker_stays_up(url: str, sender: Sender) -> None:
    bad = [sender.job(f"bad{i}", limit=v) for i, v in enumerate(BAD_LIMITS)]
    with serving(url, secret=SECRET) as worker:
        sender.send(*bad)
        for job in bad:
            assert "out of range" in sender.dead(job.id)
        sender.probe()
        assert worker.info.id
    assert RUNS == ["probe"]
    assert not {job.id for job in bad} & set(sender.replies)


BAD_LIMITS = [-(10**400), math.nan, math.inf, 1e300]


# --- the start record ---------------------------------------------------------------------


def test_the_start_record_counts_starts_and_completion(url: str) -> None:
    backend = open_backend(url)
    try:
        keep = time.time() + 600
        assert backend.note_starts([("a", keep), ("b", keep)]) == [(0, False), (0, False)]
        assert backend.note_starts([("a", keep)]) == [(1, False)]
        backend.note_completed(["a", "never-started"])
        assert backend.note_starts([("a", keep), ("b", keep)]) == [(2, True), (1, False)]
    finally:
        backend.close()


# --- replies ------------------------------------------------------------------------------


def test_a_result_kept_under_an_id_is_verified_by_whoever_reads_it(url: str) -> None:
    with (
        serving(url, secrets=[SECRET]),
        Client(url, secret=SECRET) as client,
        using(client),
    ):
        sent = SignedProbe.record.options(keep_result=60).send("kept and signed")
        assert client.result(sent, timeout=30) == "kept and signed"
    with Client(url, secret="not-the-key") as stranger, pytest.raises(SignatureError):
        stranger.result(sent)
    with Client(url, secret=SECRET) as reader:
        assert reader.status(sent) == "done"


def test_a_forged_reply_does_not_end_a_pending_call(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply whose signature fails names its call by an unverified id: the call keeps
    waiting for the genuine reply instead of failing."""
    with Client(url, secret=SECRET) as client, using(client):
        future = SignedProbe.record.submit("genuine")
        forger = open_backend(url)
        try:
            decoy = Job(uuid.uuid4().hex, "decoy", client.reply_to, b"decoy")
            forger.enqueue([decoy])
            (claim,) = forger.claim(["decoy"], limit=1, lease=30, wait=5)
            forged = Codec(secrets=["not-the-key"]).encode_reply(
                Reply(future.task_id, "forged", None)
            )
            assert forger.complete([Done(claim, forged)]) == [True]
            deadline = time.monotonic() + 20
            while "rejected a reply" not in caplog.text:  # the client has read it
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert not future.done()
        finally:
            forger.close()
        with serving(url, secret=SECRET):
            assert future.result(timeout=30) == "genuine"
