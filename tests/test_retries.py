"""Retries with backoff (``retry_on``): the policy, its wire form, and real workers retrying
calls on every backend that processes can share."""

from __future__ import annotations

import itertools
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remoteexec import Client, ConfigurationError, RemoteError, WorkerLost, using
from remoteexec.errors import SerializationError, remote_error
from remoteexec.message import Call, Codec, Failure, Reply
from remoteexec.retry_policy import MAX_TRACEBACK, Retry, merged
from tests.farm import Farm, ledger, tasks

SECRET = "a-secret-for-retries"
SLACK = 1.5  # seconds a retry may start after its not_before (claim waits, a busy machine)


# --- the policy ----------------------------------------------------------------------------


def test_options_are_checked_and_default_to_no_retries() -> None:
    assert merged(None) is None
    policy = merged(None, retry_on=(ConnectionError, TimeoutError))
    assert policy == Retry(("builtins.ConnectionError", "builtins.TimeoutError"), 3, 0.5, 30.0)
    assert merged(policy, retries=0) is None
    assert merged(policy, backoff=(1, 2)) == Retry(policy.on, 3, 1.0, 2.0)
    for bad in (
        {"retry_on": (ValueError,), "retries": -1},
        {"retry_on": (ValueError,), "retries": 101},
        {"retry_on": (ValueError,), "retries": 1.5},
        {"retry_on": ("ValueError",)},
        {"retry_on": (int,)},
        {"retry_on": (ValueError,), "backoff": (0, 1)},
        {"retry_on": (ValueError,), "backoff": (2, 1)},
        {"retry_on": (ValueError,), "backoff": (1, float("inf"))},
        {"retry_on": (ValueError,), "backoff": (float("nan"), 1)},
        {"retry_on": (ValueError,), "backoff": 1},
        {"retries": 2},  # without retry_on
    ):
        with pytest.raises(ConfigurationError):
            merged(None, **bad)
    with pytest.raises(ConfigurationError):
        tasks.Unretried.execute.options(retries=2)


def test_a_subclass_of_a_listed_class_matches_by_name() -> None:
    policy = merged(None, retry_on=(ConnectionError,))
    assert policy is not None
    assert policy.matches(ConnectionResetError()) and policy.matches(ConnectionError())
    assert not policy.matches(ValueError()) and not policy.matches(OSError())


def test_the_delay_doubles_from_base_up_to_cap_within_its_jitter() -> None:
    policy = Retry(("builtins.ValueError",), 10, 0.5, 3.0)
    for tries, nominal in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        delays = [policy.delay() for _ in range(200)]
        assert all(0.75 * nominal <= d <= 1.25 * nominal for d in delays), (tries, nominal)
        assert max(delays) - min(delays) > 0.25 * nominal  # jittered, not fixed
        policy = policy.after("ValueError", "bad", "Traceback ...")


def test_the_policy_and_the_tries_travel_in_the_signed_call() -> None:
    codec = Codec(secrets=["k"])
    policy = merged(None, retry_on=(ConnectionError,), retries=2, backoff=(0.1, 1))
    assert policy is not None
    policy = policy.after("ConnectionError", "down", "x" * (MAX_TRACEBACK + 50))
    call = Call("id1", "T", "m", (1,), {}, None, 3, None, "q", "r", time.time())
    call.retry = policy
    got = codec.decode_call(codec.encode_call(call))
    assert got.retry == policy and len(policy.tries[0][2]) == MAX_TRACEBACK
    reply = Reply("id1", None, Failure("remote", "ValueError", "no", "tb", policy.tries))
    assert codec.decode_reply(codec.encode_reply(reply)) == reply


@pytest.mark.parametrize(
    "wire",
    [
        "nope",
        [["builtins.ValueError"], 2, 0.1, 1.0],  # a field missing
        [[], 2, 0.1, 1.0, []],  # nothing listed
        [["builtins.ValueError"], 0, 0.1, 1.0, []],
        [["builtins.ValueError"], 2, 0.0, 1.0, []],
        [["builtins.ValueError"], 2, 2.0, 1.0, []],
        [[7], 2, 0.1, 1.0, []],
        [["builtins.ValueError"], 2, 0.1, 1.0, [["a", "b", "c"]] * 3],  # tries > retries
        [["builtins.ValueError"], 2, 0.1, 1.0, [["a", "b"]]],
        [["builtins.ValueError"], 2, 0.1, 1.0, [["a", "b", "c" * (MAX_TRACEBACK + 1)]]],
    ],
)
def test_a_malformed_policy_is_refused(wire: object) -> None:
    codec = Codec()
    call = Call("id1", "T", "m", (), {}, None, 3, None, "q", "r", 1.0)
    body = codec.encode_call(call)
    fields = codec._open(1, body)[0]  # re-sealed with the bad policy in the optional map
    forged = codec._seal(1, [*fields, {"retry": wire}])
    with pytest.raises(SerializationError):
        codec.decode_call(forged)


def test_the_error_carries_every_attempts_traceback() -> None:
    tries = (("ConnectionError", "one", "tb one\n"), ("ConnectionError", "two", "tb two\n"))
    error = remote_error("ValueError", "three", "tb three\n", tries)
    assert isinstance(error, ValueError) and error.attempts == tries
    assert "attempt 3" in str(error) and "ConnectionError: two" in str(error)
    text = error.remote_traceback
    assert text.index("tb one") < text.index("tb two") < text.index("tb three")
    assert "attempt 1 of 3" in text and "attempt 3 of 3" in text
    again = pickle.loads(pickle.dumps(error))
    assert again.attempts == tries and again.remote_traceback == text
    assert remote_error("ValueError", "x", "tb").attempts == ()


# --- real workers --------------------------------------------------------------------------


@pytest.fixture
def client(farm_url: str) -> Iterator[Client]:
    with Client(farm_url) as client, using(client):
        yield client


def starts(book: Path) -> list[float]:
    return [float(line[2]) for line in ledger(book)]


def gaps(book: Path) -> list[float]:
    times = starts(book)
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.timeout(120)
def test_retried_until_it_succeeds_after_its_backoff(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    farm.start()
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    assert tasks.Flaky.execute(str(book), 2) == 3  # two ConnectionErrors, then the result
    first, second = gaps(book)
    # backoff=(0.5, 30): the retries wait 0.5 s and 1 s, each give or take 25 %, and
    # never start before then.
    assert 0.375 <= first <= 0.625 + SLACK, first
    assert 0.75 <= second <= 1.25 + SLACK, second
    assert 1.125 <= first + second <= 1.875 + SLACK


@pytest.mark.timeout(120)
def test_a_call_that_always_fails_raises_with_every_traceback(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    farm.start()
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    with pytest.raises(RemoteError, match="run 4 failed") as caught:
        tasks.Flaky.execute(str(book), 100, "TimeoutError")
    error = caught.value
    assert error.type_name == "TimeoutError"
    assert len(ledger(book)) == 4  # the first run and 3 retries
    assert [(t, m) for t, m, _ in error.attempts] == [
        ("TimeoutError", f"run {n} failed") for n in (1, 2, 3)
    ]
    for _, _, traceback in error.attempts:
        assert "each try's traceback names this" in traceback
    assert "each try's traceback names this" in error.remote_traceback
    assert error.remote_traceback.count("attempt ") == 4
    assert all(0.75 * d <= g for d, g in zip([0.5, 1.0, 2.0], gaps(book), strict=True))


@pytest.mark.timeout(120)
def test_an_exception_not_listed_is_not_retried(farm: Farm, client: Client, tmp_path: Path) -> None:
    farm.start()
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    with pytest.raises(ValueError, match="run 1 failed") as caught:
        tasks.Flaky.execute(str(book), 1, "ValueError")
    assert len(ledger(book)) == 1 and caught.value.attempts == ()  # type: ignore[attr-defined]
    book2 = tmp_path / "ledger2.txt"
    with pytest.raises(RemoteError, match="run 1 failed"):
        tasks.Unretried.execute(str(book2), 1)  # a listed class, but no policy: no retry
    assert len(ledger(book2)) == 1


@pytest.mark.timeout(120)
def test_per_call_options_give_and_take_retries(farm: Farm, client: Client, tmp_path: Path) -> None:
    farm.start()
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    retried = tasks.Unretried.execute.options(
        retry_on=(ConnectionError,), retries=2, backoff=(0.2, 0.3)
    )
    assert retried(str(book), 2) == 3
    first, second = gaps(book)
    assert 0.15 <= first and 0.225 <= second  # 0.2 s, then 0.3 s (the cap), +-25 %
    book2 = tmp_path / "ledger2.txt"
    with pytest.raises(RemoteError, match="run 1 failed"):
        tasks.Flaky.execute.options(retries=0)(str(book2), 1)
    assert len(ledger(book2)) == 1


@pytest.mark.timeout(120)
def test_a_sent_call_is_retried(farm: Farm, client: Client, tmp_path: Path) -> None:
    farm.start()
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    tasks.Flaky.execute.send(str(book), 2)
    deadline = time.monotonic() + 30
    while len(ledger(book)) < 3:
        assert time.monotonic() < deadline, farm.logs()
        time.sleep(0.1)
    time.sleep(1.0)
    assert len(ledger(book)) == 3  # succeeded on the third run, and ran no more


@pytest.mark.timeout(120)
def test_with_secrets_a_retry_is_no_lost_attempt_nor_a_completion(
    farm: Farm, farm_url: str, tmp_path: Path
) -> None:
    farm.start(env={"REMOTEEXEC_SECRET": SECRET})
    farm.worker_pids(1)
    book, sent = tmp_path / "ledger.txt", tmp_path / "sent.txt"
    with Client(farm_url, secret=SECRET) as client, using(client):
        # max_attempts=1: a retry counted as a start would end the call as WorkerLost.
        assert tasks.Flaky.execute.options(max_attempts=1)(str(book), 2) == 3
        # A sent call's retry (no reply) must not be marked completed, hence refused.
        tasks.Flaky.execute.options(backoff=(0.1, 0.1)).send(str(sent), 1)
        deadline = time.monotonic() + 30
        while len(ledger(sent)) < 2:
            assert time.monotonic() < deadline, farm.logs()
            time.sleep(0.1)
    assert len(ledger(book)) == 3
    assert "refused" not in farm.logs()


@pytest.mark.timeout(120)
def test_a_lost_worker_during_a_retried_call_counts_against_max_attempts(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    farm.start(lease=1.0)
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    with pytest.raises(WorkerLost, match="2 attempt"):
        tasks.FailsThenKills.execute(str(book))  # max_attempts=2, retries=3
    # One run raised (retried), then two runs killed their worker: the second lease
    # expiry ends the call, retries left or not.
    assert len(ledger(book)) == 3


@pytest.mark.timeout(120)
def test_a_retry_keeps_the_arguments_stored_out_of_band(
    farm: Farm, farm_url: str, tmp_path: Path
) -> None:
    farm.start()
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    with Client(farm_url, blob_threshold=1000) as client, using(client):
        retried = tasks.Unretried.size.options(retry_on=(ConnectionError,), backoff=(0.1, 0.1))
        assert retried(str(book), 2, b"x" * 100_000) == 100_000
    assert len(ledger(book)) == 3


@pytest.mark.timeout(120)
def test_a_time_limited_task_is_retried_from_its_helper_process(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    farm.start()
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    assert tasks.FlakyLimited.execute(str(book), 2) == 3
    with pytest.raises(RemoteError, match="run 3 failed") as caught:
        tasks.FlakyLimited.execute(str(tmp_path / "always.txt"), 100)
    assert len(caught.value.attempts) == 2


@pytest.mark.timeout(120)
def test_no_retry_is_made_that_could_not_start_before_the_timeout(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    farm.start()
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    started = time.monotonic()
    with pytest.raises(RemoteError, match="run 1 failed") as caught:
        tasks.Flaky.execute.options(timeout=3, backoff=(5, 5))(str(book), 100)
    assert time.monotonic() - started < 3 and caught.value.attempts == ()
    assert len(ledger(book)) == 1


def test_a_call_that_no_longer_fits_a_message_ends_with_its_failure() -> None:
    from remoteexec.backends import Claim
    from remoteexec.leases import Held
    from remoteexec.retries import retried

    policy = merged(None, retry_on=(ConnectionError,), retries=5, backoff=(0.1, 0.1))
    assert policy is not None
    policy = policy.after("ConnectionError", "first", "tb first")
    call = Call("id1", "T", "m", (), {}, None, 3, None, "q", "r", time.time(), retry=policy)
    body = Codec().encode_call(call)
    codec = Codec(max_message_size=len(body) + 100)  # no room for another traceback
    claim = Claim("id1", "q", "r", body, 1, "token")
    held = Held(claim, blobs=["a blob"])
    failure = Failure("remote", "ConnectionError", "second", "x" * 1000, retryable=True)
    assert retried(codec, claim, call, failure, held) is None
    assert failure.earlier == policy.tries and held.blobs == ["a blob"]  # deleted once done
    roomy = retried(Codec(), claim, call, failure, held)
    assert roomy is not None and roomy.reply is None and roomy.again is not None
    again = Codec().decode_call(roomy.again.body)
    assert again.retry is not None and [t[1] for t in again.retry.tries] == ["first", "second"]
    assert roomy.again.not_before > time.time() and held.blobs == []  # kept for the retry


@pytest.mark.timeout(120)
def test_a_call_waiting_for_its_retry_is_not_taken_for_lost(
    farm: Farm, client: Client, tmp_path: Path
) -> None:
    farm.start()
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    # The retry waits 3.75 to 6.25 s: the client asks the broker about the call (every 2 s
    # once it is 2 s old) at least twice meanwhile, which fails a call found missing twice.
    assert tasks.Flaky.execute.options(retries=1, backoff=(5, 5))(str(book), 1) == 2
    (gap,) = gaps(book)
    assert 3.75 <= gap <= 6.25 + SLACK
