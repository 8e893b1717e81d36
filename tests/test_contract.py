"""The backend contract (backends/base.py), run against every adapter."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from remoteexec.backends import Backend, DeadLetter, Done, Job, WorkerInfo


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


def test_a_waiting_claim_wakes_for_new_work(backend: Backend) -> None:
    j = job()
    timer = threading.Timer(0.3, backend.enqueue, args=([j],))
    timer.start()
    claims = backend.claim(["default"], limit=1, lease=30, wait=5)
    timer.join()
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
    timer = threading.Timer(0.3, backend.complete, args=([Done(c, b"late")],))
    timer.start()
    assert backend.replies("R", wait=5) == [b"late"]
    timer.join()


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
    timer = threading.Timer(0.3, backend.complete, args=([Done(c, b"second")],))
    timer.start()
    assert backend.send_and_wait([], "R", wait=5) == [b"second"]
    timer.join()


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
    backend.heartbeat(WorkerInfo("w1", "host", 123, ["a", "b"], now, now, done=7, running=1))
    backend.bury(DeadLetter("t1", "a", "Poison.execute", "worker lost 3 times", now))
    stats = backend.stats()
    assert stats.queues.get("a") == 2 and stats.queues.get("b", 0) == 0
    assert stats.running == 1
    [w] = stats.workers
    assert (w.id, w.host, w.pid, w.done, w.running) == ("w1", "host", 123, 7, 1)
    assert [(d.id, d.name, d.reason) for d in stats.dead] == [
        ("t1", "Poison.execute", "worker lost 3 times")
    ]
    backend.forget_worker("w1")
    assert backend.stats().workers == []


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


def test_lost_reports_no_task_that_the_backend_still_holds(backend: Backend) -> None:
    waiting, claimed, answered = job(), job(), job()
    backend.enqueue([claimed])
    [c] = claim_all(backend, ["default"], 1)
    backend.enqueue([answered])
    [a] = claim_all(backend, ["default"], 1)
    backend.complete([Done(a, b"r")])
    backend.enqueue([waiting])
    assert (c.id, a.id) == (claimed.id, answered.id)
    assert backend.lost([waiting.id, claimed.id, answered.id], answered.reply_to) == set()
