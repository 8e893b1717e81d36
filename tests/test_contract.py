"""The backend contract (backends/base.py), run in every mode a user can run.

The modes (``conftest.EVERY_MODE``): memory, SQLite, Redis with its Lua scripts and as a
user whose ACL denies ``@scripting``, and MySQL's two claim modes (``skip_locked``,
``optimistic``) each waiting in the server and polling from the client.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path

import pytest

from remoteexec.backends import Backend, DeadLetter, Done, Job, WorkerInfo
from remoteexec.backends.mysql import claim as mysql_claim
from remoteexec.config import MAX_DEAD_BODY
from tests.conftest import EVERY_MODE, fresh_url

#: Seconds a waiting call may take to return once what it waits for has arrived: far
#: below the waits given (a backend that sleeps out its whole wait fails), with slack
#: for a loaded machine (Redis waiters also look again every second by themselves).
WAKE_BOUND = 3.0
#: Dead letters a backend keeps (the newest).
DEAD_LETTERS_KEPT = 1000


@pytest.fixture(params=EVERY_MODE)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty broker's URL, once per mode (overrides conftest's, one per backend)."""
    return fresh_url(str(request.param), request, tmp_path)


def _mode(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["backend_url"])


def job(queue: str = "default", reply_to: str = "client-1", body: bytes = b"x") -> Job:
    return Job(uuid.uuid4().hex, queue, reply_to, body)


def claim_all(backend: Backend, queues: list[str], n: int, lease: float = 30.0) -> list:
    got: list = []
    for _ in range(20):
        got += backend.claim(queues, limit=n - len(got), lease=lease, wait=0.2)
        if len(got) >= n:
            break
    return got


def test_claims_oldest_first_within_queue_and_queues_in_given_order(backend: Backend) -> None:
    low = [job("low") for _ in range(3)]
    high = [job("high") for _ in range(3)]
    backend.enqueue(low)
    backend.enqueue(high)
    claims = claim_all(backend, ["high", "low"], 6)
    assert [c.id for c in claims] == [j.id for j in high + low]
    assert {c.queue for c in claims[:3]} == {"high"}
    assert all(c.attempt == 1 for c in claims)


def test_claim_respects_limit_and_leaves_the_rest(backend: Backend) -> None:
    backend.enqueue([job() for _ in range(5)])
    first = backend.claim(["default"], limit=2, lease=30, wait=1)
    assert len(first) == 2
    rest = claim_all(backend, ["default"], 3)
    assert len(rest) == 3
    assert not {c.id for c in first} & {c.id for c in rest}


def test_claim_on_empty_queue_returns_nothing_after_waiting(backend: Backend) -> None:
    started = time.monotonic()
    assert backend.claim(["default"], limit=5, lease=30, wait=0.3) == []
    assert 0.2 <= time.monotonic() - started < 3


class _Later:
    """Runs ``action`` in a thread after ``delay`` seconds and notes when it started."""

    def __init__(self, delay: float, action: Callable[[], object]) -> None:
        self.started_at: float | None = None

        def run() -> None:
            self.started_at = time.monotonic()
            action()

        self._timer = threading.Timer(delay, run)
        self._timer.start()

    def woke_within(self, bound: float) -> bool:
        """Whether the caller returned within ``bound`` s of the action (call on return)."""
        returned = time.monotonic()
        self._timer.join()
        assert self.started_at is not None
        return returned - self.started_at < bound


def test_the_mode_runs_as_named(backend: Backend, request: pytest.FixtureRequest) -> None:
    mode = _mode(request)
    backend.enqueue([job() for _ in range(3)])
    claims = claim_all(backend, ["default"], 1)
    claims += claim_all(backend, ["default"], 2)  # with work waiting: a scripted pass
    assert backend.complete([Done(c, None) for c in claims]) == [True] * 3
    if mode.startswith("redis"):
        assert backend._scripts.off is (mode == "redis_noscript")  # type: ignore[attr-defined]
    if mode.startswith("mysql"):
        named = mode.removeprefix("mysql_").rsplit("_", 1)  # e.g. ["skip_locked", "client"]
        assert [backend.claim_mode, backend.wait_mode] == named  # type: ignore[attr-defined]


def test_a_waiting_claim_wakes_for_new_work(backend: Backend) -> None:
    j = job()
    later = _Later(0.3, lambda: backend.enqueue([j]))
    claims = backend.claim(["default"], limit=1, lease=30, wait=15)
    assert later.woke_within(WAKE_BOUND)
    assert [c.id for c in claims] == [j.id]


def test_a_claim_on_several_queues_wakes_for_any_of_them(
    make_backend: Callable[..., Backend],
) -> None:
    worker, producer = make_backend(), make_backend()
    j = job("second")
    later = _Later(0.3, lambda: producer.enqueue([j]))
    claims = worker.claim(["first", "second"], limit=3, lease=30, wait=15)
    assert later.woke_within(WAKE_BOUND)
    assert [c.id for c in claims] == [j.id]


def test_complete_delivers_the_reply_to_its_address_once(backend: Backend) -> None:
    a, b = job(reply_to="A"), job(reply_to="B")
    backend.enqueue([a, b])
    claims = claim_all(backend, ["default"], 2)
    assert backend.complete([Done(c, b"reply-" + c.reply_to.encode()) for c in claims]) == [
        True,
        True,
    ]
    assert backend.replies("A", wait=1) == [b"reply-A"]
    assert backend.replies("B", wait=1) == [b"reply-B"]
    assert backend.replies("A", wait=0.1) == []


def test_complete_without_reply_only_acknowledges(backend: Backend) -> None:
    backend.enqueue([job()])
    [c] = claim_all(backend, ["default"], 1)
    assert backend.complete([Done(c, None)]) == [True]
    assert backend.replies(c.reply_to, wait=0.1) == []
    assert backend.claim(["default"], limit=1, lease=30, wait=0.1) == []


def test_an_expired_lease_makes_the_task_claimable_with_attempt_raised(backend: Backend) -> None:
    j = job()
    backend.enqueue([j])
    [first] = claim_all(backend, ["default"], 1, lease=0.5)
    time.sleep(0.8)
    [second] = claim_all(backend, ["default"], 1, lease=30)
    assert second.id == j.id and second.attempt == 2 and second.token != first.token
    # The first worker lost its lease: it can neither renew nor deliver.
    assert backend.renew([first], lease=30) == [False]
    assert backend.complete([Done(first, b"late")]) == [False]
    assert backend.complete([Done(second, b"on time")]) == [True]
    assert backend.replies(j.reply_to, wait=1) == [b"on time"]
    assert backend.replies(j.reply_to, wait=0.1) == []


def test_renew_keeps_the_lease(backend: Backend) -> None:
    backend.enqueue([job()])
    [c] = claim_all(backend, ["default"], 1, lease=2)
    for _ in range(3):
        time.sleep(1.0)  # past half the lease each time: only the renewals keep it
        assert backend.renew([c], lease=2) == [True]
    assert backend.claim(["default"], limit=1, lease=30, wait=0.1) == []
    assert backend.complete([Done(c, b"ok")]) == [True]


def test_complete_twice_is_refused(backend: Backend) -> None:
    backend.enqueue([job()])
    [c] = claim_all(backend, ["default"], 1)
    assert backend.complete([Done(c, b"1")]) == [True]
    assert backend.complete([Done(c, b"2")]) == [False]
    assert backend.replies(c.reply_to, wait=1) == [b"1"]


def test_release_hands_back_without_counting_an_attempt(backend: Backend) -> None:
    j = job()
    backend.enqueue([j])
    [c] = claim_all(backend, ["default"], 1)
    backend.release([c])
    [again] = claim_all(backend, ["default"], 1)
    assert again.id == j.id and again.attempt == 1
    assert backend.complete([Done(c, b"stale")]) == [False]


def test_cancel_withdraws_only_unclaimed_tasks(backend: Backend) -> None:
    waiting, taken = job(), job()
    backend.enqueue([taken])
    claim_all(backend, ["default"], 1)
    backend.enqueue([waiting])
    assert backend.cancel(waiting) is True
    assert backend.cancel(taken) is False
    assert backend.claim(["default"], limit=5, lease=30, wait=0.1) == []


def test_replies_wait_and_wake_when_a_reply_arrives(backend: Backend) -> None:
    backend.enqueue([job(reply_to="R")])
    [c] = claim_all(backend, ["default"], 1)
    assert backend.replies("R", wait=0.2) == []
    later = _Later(0.3, lambda: backend.complete([Done(c, b"late")]))
    got = backend.replies("R", wait=15)
    assert later.woke_within(WAKE_BOUND)
    assert got == [b"late"]


def test_send_and_wait_enqueues_then_reads_what_arrives_within_the_wait(
    backend: Backend,
) -> None:
    first, second = job(reply_to="R"), job(reply_to="R")
    assert backend.send_and_wait([first], "R", wait=0.1) == []  # enqueued, no reply yet
    [c] = claim_all(backend, ["default"], 1)
    assert c.id == first.id
    backend.complete([Done(c, b"first")])
    assert backend.send_and_wait([second], "R", wait=1) == [b"first"]
    [c] = claim_all(backend, ["default"], 1)
    assert c.id == second.id
    later = _Later(0.3, lambda: backend.complete([Done(c, b"second")]))
    got = backend.send_and_wait([], "R", wait=15)
    assert later.woke_within(WAKE_BOUND)
    assert got == [b"second"]


def test_complete_and_claim_completes_then_claims(backend: Backend) -> None:
    jobs = [job(reply_to="R") for _ in range(3)]
    backend.enqueue(jobs)
    [c] = claim_all(backend, ["default"], 1)
    accepted, claims = backend.complete_and_claim(
        [Done(c, b"one")], ["default"], limit=5, lease=30, wait=1
    )
    assert accepted == [True]
    assert [x.id for x in claims] == [j.id for j in jobs[1:]]
    assert backend.replies("R", wait=1) == [b"one"]
    accepted, claims = backend.complete_and_claim(
        [Done(c, b"again")], ["default"], limit=5, lease=30, wait=0
    )
    assert accepted == [False] and claims == []


def test_a_kept_reply_is_stored_under_its_id_as_well_as_delivered(backend: Backend) -> None:
    kept, plain = job(reply_to="K"), job(reply_to="K")
    backend.enqueue([kept, plain])
    a, b = claim_all(backend, ["default"], 2)
    assert backend.complete([Done(a, b"kept", keep=60), Done(b, b"plain")]) == [True, True]
    assert sorted(backend.replies("K", wait=1)) == [b"kept", b"plain"]
    assert backend.results([kept.id, plain.id, "unknown"]) == {kept.id: b"kept"}
    assert backend.results([kept.id]) == {kept.id: b"kept"}  # reading takes nothing away


def test_a_kept_reply_with_no_reply_address_is_only_kept(backend: Backend) -> None:
    backend.enqueue([job(reply_to="")])
    [c] = claim_all(backend, ["default"], 1)
    assert backend.complete([Done(c, b"for later", keep=60)]) == [True]
    assert backend.results([c.id]) == {c.id: b"for later"}
    assert backend.lost([c.id], "") == {c.id}  # no task and no reply: only the kept result


def test_kept_replies_in_batches_are_kept_only_where_the_lease_was_held(
    backend: Backend,
) -> None:
    backend.enqueue([job(reply_to="r" if i % 2 else "") for i in range(4)])
    claims = claim_all(backend, ["default"], 4)
    backend.release(claims[3:])
    [again] = claim_all(backend, ["default"], 1)
    batch = [Done(c, c.id.encode(), keep=60) for c in claims]
    batch.append(Done(claims[0], b"twice", keep=60))
    assert backend.complete(batch) == [True, True, True, False, False]
    kept = {c.id: c.id.encode() for c in claims[:3]}
    assert backend.results([c.id for c in claims]) == kept
    assert sorted(backend.replies("r", wait=1)) == sorted(c.id.encode() for c in claims[1:2])
    accepted, _ = backend.complete_and_claim(
        [Done(again, b"mine", keep=60)], ["default"], limit=1, lease=30, wait=0
    )
    assert accepted == [True]
    assert backend.results([again.id]) == {again.id: b"mine"}


def test_the_first_kept_reply_of_an_id_stays(backend: Backend) -> None:
    first = job(reply_to="")
    backend.enqueue([first])
    [c] = claim_all(backend, ["default"], 1)
    assert backend.complete([Done(c, b"first", keep=60)]) == [True]
    backend.enqueue([first])  # the same task run once more (at-least-once delivery)
    [c2] = claim_all(backend, ["default"], 1)
    assert backend.complete([Done(c2, b"second", keep=60)]) == [True]
    assert backend.results([first.id]) == {first.id: b"first"}


def test_kept_replies_expire_and_sweep_deletes_them(backend: Backend) -> None:
    backend.enqueue([job(reply_to="") for _ in range(3)])
    claims = claim_all(backend, ["default"], 3)
    backend.complete([Done(c, b"short", keep=1) for c in claims[:2]])
    backend.complete([Done(claims[2], b"long", keep=60)])
    ids = [c.id for c in claims]
    assert set(backend.results(ids)) == set(ids)
    time.sleep(1.6)
    assert backend.results(ids) == {ids[2]: b"long"}  # never one past its expiry
    backend.sweep()
    assert backend.results(ids) == {ids[2]: b"long"}


def test_states_tell_waiting_from_running_and_omit_the_rest(backend: Backend) -> None:
    running, waiting, done = job(), job(), job()
    backend.enqueue([running, done])
    claimed = claim_all(backend, ["default"], 2)
    backend.enqueue([waiting])
    backend.complete([Done(c, None) for c in claimed if c.id == done.id])
    ids = [running.id, waiting.id, done.id, "unknown"]
    assert backend.states(ids) == {running.id: "running", waiting.id: "waiting"}
    assert backend.states([]) == {} and backend.results([]) == {}


def test_bodies_are_opaque_bytes_and_may_be_large(backend: Backend) -> None:
    body = bytes(range(256)) * 4096 + b"\x00"  # 1 MiB and a NUL
    j = job(body=body)
    backend.enqueue([j])
    [c] = claim_all(backend, ["default"], 1)
    assert c.body == body
    backend.complete([Done(c, body[::-1])])
    assert backend.replies(j.reply_to, wait=1) == [body[::-1]]


def test_batches_of_many_tasks_round_trip(backend: Backend) -> None:
    jobs = [job(body=str(i).encode()) for i in range(500)]
    backend.enqueue(jobs)
    claims = claim_all(backend, ["default"], 500)
    assert sorted(c.id for c in claims) == sorted(j.id for j in jobs)
    assert all(backend.complete([Done(c, c.body) for c in claims]))
    got: list[bytes] = []
    for _ in range(20):
        got += backend.replies("client-1", wait=0.2)
        if len(got) == 500:
            break
    assert sorted(got) == sorted(j.body for j in jobs)


def test_concurrent_claimers_never_share_a_task(make_backend: Callable[..., Backend]) -> None:
    producer = make_backend()
    jobs = [job() for _ in range(300)]
    producer.enqueue(jobs)
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        backend = make_backend()
        while True:
            claims = backend.claim(["default"], limit=7, lease=30, wait=0.3)
            if not claims:
                return
            assert all(backend.complete([Done(c, None) for c in claims]))
            with lock:
                seen.extend(c.id for c in claims)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen) == sorted(j.id for j in jobs)


def test_stats_report_depth_running_workers_and_dead_letters(backend: Backend) -> None:
    backend.enqueue([job("a"), job("a"), job("b")])
    claim_all(backend, ["b"], 1)
    now = time.time()
    durations = {"Pi.execute": [0, 3, 1], "Fail.execute": [2]}
    backend.heartbeat(
        WorkerInfo("w1", "host", 123, ["a", "b"], now, now, 7, 1, failed=2, durations=durations)
    )
    backend.bury(DeadLetter("t1", "a", "Poison.execute", "worker lost 3 times", now))
    stats = backend.stats()
    assert stats.queues.get("a") == 2 and stats.queues.get("b", 0) == 0
    assert stats.running == 1
    [w] = stats.workers
    assert (w.id, w.host, w.pid, w.done, w.running, w.failed) == ("w1", "host", 123, 7, 1, 2)
    assert w.durations == durations
    assert [(d.id, d.name, d.reason) for d in stats.dead] == [
        ("t1", "Poison.execute", "worker lost 3 times")
    ]
    backend.forget_worker("w1")
    assert backend.stats().workers == []


def test_stats_report_when_the_oldest_waiting_task_of_each_queue_was_enqueued(
    backend: Backend,
) -> None:
    before = time.time()
    backend.enqueue([job("a"), job("a"), job("b")])
    first = backend.stats()  # Redis's lists hold no time: it counts from the first look
    seen = time.time()
    time.sleep(0.3)
    stats = backend.stats()
    queues = {q: at for q, at in stats.oldest.items() if not q.startswith("shard ")}
    assert set(queues) == {"a", "b"} and first.oldest == stats.oldest  # a cluster: and shards
    assert all(before - 1 <= at <= seen for at in stats.oldest.values()), (before, stats)
    claim_all(backend, ["b"], 1)
    assert {q for q in backend.stats().oldest if not q.startswith("shard ")} == {"a"}


def test_health_names_a_few_figures_of_the_broker(backend: Backend) -> None:
    backend.enqueue([job("a")])
    health = backend.health()
    assert health and all(type(v) in (int, float, str) for v in health.values()), health
    kind = type(backend).__name__
    if kind.startswith("Redis"):
        assert {"used_memory", "maxmemory", "maxmemory_policy", "evicted_keys"} <= set(health)
    elif kind.startswith(("SQLite", "MySQL")):
        assert any(name.startswith(("tasks", "remoteexec_tasks")) for name in health), health


def test_purge_deletes_waiting_tasks(backend: Backend) -> None:
    backend.enqueue([job("a"), job("a"), job("b")])
    assert backend.purge("a") == 2
    assert backend.purge() == 1
    assert backend.claim(["a", "b"], limit=5, lease=30, wait=0.1) == []


def test_uncollected_replies_expire_after_result_ttl(make_backend: Callable[..., Backend]) -> None:
    backend = make_backend(result_ttl=1)
    backend.enqueue([job(reply_to="gone")])
    [c] = claim_all(backend, ["default"], 1)
    backend.complete([Done(c, b"nobody reads this")])
    time.sleep(2.2)
    backend.sweep()
    assert backend.replies("gone", wait=0.1) == []


def test_lost_reports_a_deleted_task_and_none_the_backend_holds(backend: Backend) -> None:
    waiting, claimed, answered, deleted = job(), job(), job(), job("doomed")
    backend.enqueue([claimed])
    [c] = claim_all(backend, ["default"], 1)
    backend.enqueue([answered])
    [a] = claim_all(backend, ["default"], 1)
    assert backend.complete([Done(a, b"r")]) == [True]  # its reply is not read yet
    backend.enqueue([waiting, deleted])
    assert (c.id, a.id) == (claimed.id, answered.id)
    ids = [waiting.id, claimed.id, answered.id, deleted.id]
    assert backend.lost(ids, answered.reply_to) == set()
    assert backend.purge("doomed") == 1
    assert backend.lost(ids, answered.reply_to) == {deleted.id}
    assert backend.purged([deleted.id, waiting.id]) == {deleted.id}


def test_release_restores_the_order_and_the_attempt(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    jobs = [job() for _ in range(3)]
    backend.enqueue(jobs)
    claims = claim_all(backend, ["default"], 3)
    backend.enqueue([job()])  # newer work does not overtake released tasks...
    backend.release(claims)
    if _mode(request).startswith("mysql_skip_locked"):  # ...there, after the next full look
        time.sleep(mysql_claim._EXPIRED_EVERY + 0.05)
    again = claim_all(backend, ["default"], 3)
    assert [(c.id, c.attempt) for c in again] == [(j.id, 1) for j in jobs]
    assert backend.cancel(jobs[0]) is False  # claimed again
    backend.release(again[:1])
    assert backend.cancel(jobs[0]) is True  # released: waiting, so it can be withdrawn


def test_an_expired_lease_goes_back_to_the_head_of_its_queue(backend: Backend) -> None:
    old, new = job(), job()
    backend.enqueue([old])
    [first] = claim_all(backend, ["default"], 1, lease=0.3)
    backend.enqueue([new])
    time.sleep(0.6)  # past the lease: the claim below must see it expired
    claims = claim_all(backend, ["default"], 2)
    assert [(c.id, c.attempt) for c in claims] == [(old.id, 2), (new.id, 1)]
    assert first.token != claims[0].token
    assert backend.cancel(old) is False


def deferred(delay: float, queue: str = "default", body: bytes = b"x") -> Job:
    """A job no worker may claim for ``delay`` seconds from now."""
    return Job(uuid.uuid4().hex, queue, "client-1", body, time.time() + delay)


def test_a_deferred_task_is_claimed_only_from_its_not_before(backend: Backend) -> None:
    later, now = deferred(0.8), job()
    backend.enqueue([later, now])
    assert [c.id for c in claim_all(backend, ["default"], 1)] == [now.id]
    assert backend.claim(["default"], limit=5, lease=30, wait=0.1) == []
    time.sleep(max(0.0, later.not_before - time.time()))
    [c] = claim_all(backend, ["default"], 1)
    assert time.time() >= later.not_before
    assert (c.id, c.body, c.attempt) == (later.id, later.body, 1)


def test_due_deferred_tasks_are_claimed_in_due_order(backend: Backend) -> None:
    jobs = [deferred(0.6), deferred(0.2), deferred(0.4)]
    backend.enqueue(jobs)
    time.sleep(0.8)
    got = [c.id for _ in jobs for c in claim_all(backend, ["default"], 1)]
    assert got == [jobs[1].id, jobs[2].id, jobs[0].id]


def test_a_waiting_claim_wakes_for_a_deferred_task(backend: Backend) -> None:
    j = deferred(0.5)
    backend.enqueue([j])
    claims = backend.claim(["default"], limit=1, lease=30, wait=15)
    assert j.not_before <= time.time() < j.not_before + WAKE_BOUND
    assert [c.id for c in claims] == [j.id]


def test_an_expired_lease_of_a_deferred_task_does_not_defer_it_again(backend: Backend) -> None:
    j = deferred(0.2)
    backend.enqueue([j])
    [first] = backend.claim(["default"], limit=1, lease=0.3, wait=15)
    time.sleep(0.6)  # past the lease: claimable at once, as any expired lease
    [again] = backend.claim(["default"], limit=1, lease=30, wait=0)
    assert (again.id, again.attempt) == (j.id, 2) and again.token != first.token


def test_done_again_puts_the_task_back_deferred(backend: Backend) -> None:
    j = job(reply_to="R")
    backend.enqueue([j])
    [c] = claim_all(backend, ["default"], 1)
    back = Job(j.id, j.queue, j.reply_to, b"second", time.time() + 0.6)
    assert backend.complete([Done(c, None, again=back)]) == [True]
    assert backend.claim(["default"], limit=5, lease=30, wait=0.1) == []
    stats = backend.stats()
    assert (stats.queues.get("default"), stats.running) == (1, 0)  # deferred: waiting
    assert backend.lost([j.id], "R") == set()
    [again] = backend.claim(["default"], limit=1, lease=30, wait=15)
    assert time.time() >= back.not_before
    assert (again.id, again.body, again.attempt) == (j.id, b"second", c.attempt)
    assert again.token != c.token
    stale = Job(j.id, j.queue, j.reply_to, b"stale", 0.0)
    assert backend.complete([Done(c, None, again=stale)]) == [False]  # changes nothing
    assert backend.complete([Done(again, b"done")]) == [True]
    assert backend.replies("R", wait=1) == [b"done"]
    assert backend.claim(["default"], limit=5, lease=30, wait=0.1) == []


def test_complete_and_claim_puts_back_and_claims_in_one_step(backend: Backend) -> None:
    j = job()
    backend.enqueue([j])
    [c] = claim_all(backend, ["default"], 1)
    back = Job(j.id, j.queue, j.reply_to, b"second")
    accepted, claims = backend.complete_and_claim(
        [Done(c, None, again=back)], ["default"], limit=5, lease=30, wait=5
    )
    assert accepted == [True]
    claims = claims or claim_all(backend, ["default"], 1)
    assert [(x.id, x.body, x.attempt) for x in claims] == [(j.id, b"second", 1)]


def test_purge_cancel_and_lost_see_deferred_tasks(backend: Backend) -> None:
    kept, cancelled, purged = deferred(60), deferred(60), deferred(60, "other")
    backend.enqueue([kept, cancelled, purged])
    ids = [kept.id, cancelled.id, purged.id]
    assert backend.lost(ids, "client-1") == set()
    stats = backend.stats()
    assert (stats.queues.get("default"), stats.queues.get("other"), stats.running) == (2, 1, 0)
    assert backend.cancel(cancelled) is True
    assert backend.purge("other") == 1
    assert backend.lost(ids, "client-1") == {cancelled.id, purged.id}
    assert backend.purged(ids) == {purged.id}
    assert backend.purge() == 1
    assert backend.lost(ids, "client-1") == set(ids)


def test_a_batch_completes_each_item_on_its_own_token(backend: Backend) -> None:
    backend.enqueue([job(reply_to="r") for _ in range(3)])
    claims = claim_all(backend, ["default"], 3)
    backend.release(claims[1:2])
    [again] = claim_all(backend, ["default"], 1)
    assert again.id == claims[1].id and again.token != claims[1].token
    batch = [Done(c, c.id.encode()) for c in claims] + [Done(claims[0], b"duplicate")]
    assert backend.complete(batch) == [True, False, True, False]
    got = backend.replies("r", wait=1)
    assert sorted(got) == sorted([claims[0].id.encode(), claims[2].id.encode()])
    assert backend.complete([Done(again, b"mine")]) == [True]
    assert backend.replies("r", wait=1) == [b"mine"]


def test_enqueueing_an_id_again_leaves_the_held_task_as_it_is(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    claimed, waiting, fresh = job(reply_to="R"), job(reply_to="R"), job(reply_to="R")
    backend.enqueue([claimed])
    [c] = claim_all(backend, ["default"], 1)
    backend.enqueue([waiting])
    backend.enqueue([claimed, waiting, fresh, fresh])  # raises nothing
    assert backend.renew([c], lease=30) == [True]
    assert backend.complete([Done(c, b"once")]) == [True]
    assert backend.replies("R", wait=1) == [b"once"]
    rest: list = []
    while more := backend.claim(["default"], limit=5, lease=30, wait=0.5):
        rest += more
    if _mode(request).startswith("redis"):  # keeps no index of ids: a repeat is queued
        repeated = [claimed.id, waiting.id, waiting.id, fresh.id, fresh.id]
        assert sorted(x.id for x in rest) == sorted(repeated)
    else:  # a repeat is dropped
        assert [(x.id, x.attempt) for x in rest] == [(waiting.id, 1), (fresh.id, 1)]


def test_workers_silent_for_worker_ttl_leave_stats_and_sweep_keeps_live_ones(
    backend: Backend,
) -> None:
    backend.worker_ttl = 1.0
    backend.heartbeat(WorkerInfo("old", "h", 1, ["a"], time.time()))
    assert [w.id for w in backend.stats().workers] == ["old"]
    deadline = time.monotonic() + 10
    while backend.stats().workers:  # until "old" is silent for worker_ttl
        assert time.monotonic() < deadline, "a silent worker stays in stats"
        time.sleep(0.1)
    backend.heartbeat(WorkerInfo("new", "h", 2, ["a", "b"], time.time()))
    backend.sweep()
    assert [(w.id, w.queues) for w in backend.stats().workers] == [("new", ["a", "b"])]


def test_dead_letters_keep_only_the_newest(backend: Backend) -> None:
    for i in range(DEAD_LETTERS_KEPT + 5):
        task = Job(f"t{i}", "q", "client-1", b"body")
        backend.bury(DeadLetter(f"t{i}", "q", "Task.execute", "lost", float(i)), task)
    dead = backend.stats().dead
    assert len(dead) == DEAD_LETTERS_KEPT
    assert dead[0].id == f"t{DEAD_LETTERS_KEPT + 4}" and dead[-1].id == "t5"
    assert backend.retry_dead(["t0", "t4"]) == 0  # their tasks went with them
    assert backend.retry_dead(["t5"]) == 1


def test_a_dead_letter_keeps_its_task_and_traceback(backend: Backend) -> None:
    now = time.time()
    trace = "Traceback (most recent call last):\n  ...\nValueError: poison\n"
    due = round(now + 60.5, 3)
    backend.bury(DeadLetter("p1", "q", "Poison.execute", "failed", now, trace, False, due), job())
    backend.bury(DeadLetter("p2", "q", "Poison.execute", "lost", now + 1))
    listed = backend.dead_letters()
    assert [(d.id, d.traceback, d.retryable, d.deadline) for d in listed] == [
        ("p2", "", False, 0.0),
        ("p1", trace, True, due),
    ]
    assert [(d.id, d.retryable) for d in backend.stats().dead] == [("p2", False), ("p1", True)]


def test_retry_dead_enqueues_the_task_afresh_and_deletes_its_letter(backend: Backend) -> None:
    task = Job("r1", "q", "client-7", b"\x00the body\xff")
    backend.note_starts([("r1", time.time() + 60)])
    backend.note_starts([("r1", time.time() + 60)])
    backend.note_completed(["r1"])
    backend.bury(DeadLetter("r1", "q", "Poison.execute", "failed", time.time(), "tb"), task)
    backend.bury(DeadLetter("r2", "q", "Poison.execute", "lost", time.time()))
    assert backend.retry_dead(["r1", "r2", "unknown", "r1"]) == 1
    assert [d.id for d in backend.dead_letters()] == ["r2"]
    [claim] = claim_all(backend, ["q"], 1)
    assert (claim.id, claim.queue, claim.reply_to, claim.body) == astuple(task)[:4]
    assert claim.attempt == 1
    assert backend.note_starts([("r1", time.time() + 60)]) == [(0, False)]  # record reset
    assert backend.retry_dead(["r1"]) == 0 and backend.retry_dead([]) == 0


def test_a_dead_letter_keeps_no_task_over_the_bound(backend: Backend) -> None:
    big, limit = job(body=b"x" * (MAX_DEAD_BODY + 1)), job(body=b"y" * MAX_DEAD_BODY)
    backend.bury(DeadLetter(big.id, "default", "Big.execute", "lost", time.time()), big)
    backend.bury(DeadLetter(limit.id, "default", "Big.execute", "lost", time.time()), limit)
    assert [d.retryable for d in backend.dead_letters()] == [True, False]
    assert backend.retry_dead([big.id]) == 0
    assert backend.retry_dead([limit.id]) == 1
    [claim] = claim_all(backend, ["default"], 1)
    assert claim.body == limit.body


def test_several_blobs_are_deleted_in_one_call(backend: Backend) -> None:
    # On a Redis Cluster each blob is a key in a slot of its own.
    store = backend.blob_store()
    ids = [uuid.uuid4().hex for _ in range(6)]
    for blob_id in ids:
        store.write(blob_id, [b"0123456789"], 60)
    assert [store.read(i, 10) for i in ids] == [b"0123456789"] * 6
    store.delete(ids)
    assert [store.read(i, 10) for i in ids] == [None] * 6


def test_dead_letters_are_listed_newest_first_by_queue_and_limit(backend: Backend) -> None:
    for i in range(5):
        backend.bury(DeadLetter(f"d{i}", "ab"[i % 2], "Task.execute", "lost", float(i)))
    assert [d.id for d in backend.dead_letters()] == ["d4", "d3", "d2", "d1", "d0"]
    assert [d.id for d in backend.dead_letters("b")] == ["d3", "d1"]
    assert [d.id for d in backend.dead_letters(limit=2)] == ["d4", "d3"]


def test_dropped_dead_letters_are_gone_and_unknown_ids_skipped(backend: Backend) -> None:
    for i in range(3):
        backend.bury(DeadLetter(f"x{i}", "q", "Task.execute", "lost", float(i)))
    assert backend.drop_dead(["x0", "x2", "nope"]) == 2
    assert [d.id for d in backend.dead_letters()] == ["x1"]
    assert backend.drop_dead([]) == 0


def test_withdraw_deletes_waiting_and_deferred_tasks_and_leaves_claimed_ones(
    backend: Backend,
) -> None:
    taken, put_back = job(), job()
    backend.enqueue([taken, put_back])
    claims = {c.id: c for c in claim_all(backend, ["default"], 2)}
    back = Job(put_back.id, "default", put_back.reply_to, b"later", time.time() + 60)
    assert backend.complete([Done(claims[put_back.id], None, again=back)]) == [True]
    waiting, later, other, kept = job(), deferred(60), job("other"), job()
    backend.enqueue([waiting, later, other, kept])
    ids = [waiting.id, later.id, put_back.id, other.id, taken.id, "unknown"]
    assert backend.withdraw(ids) == [waiting.id, later.id, put_back.id, other.id]
    assert backend.withdraw([]) == []
    assert backend.purged([*ids, kept.id]) == {waiting.id, later.id, put_back.id, other.id}
    assert backend.lost(ids, "client-1") == {waiting.id, later.id, put_back.id, other.id, "unknown"}
    assert backend.states([taken.id, kept.id]) == {taken.id: "running", kept.id: "waiting"}
    assert [c.id for c in claim_all(backend, ["default", "other"], 1)] == [kept.id]
    assert backend.claim(["default", "other"], limit=5, lease=30, wait=0.1) == []
    assert backend.withdraw([taken.id]) == []
