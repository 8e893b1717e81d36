"""Redis-specific behaviour of ``RedisBackend`` (the shared contract is in test_contract.py).

Runs against a private ``redis-server`` started for this module, since these tests kill,
restart and freeze it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from remoteexec.backends import Claim, Done, Job, open_backend
from remoteexec.backends.redis import RedisBackend
from remoteexec.errors import BackendUnavailable, ConfigurationError

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists(),
    reason="redis-server is not installed",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests._redis_server import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis-module")) as srv:
        yield srv


@pytest.fixture
def make(server) -> Iterator[Callable[..., RedisBackend]]:
    """Open backends on an emptied server (the server is restarted if a test left it down)."""
    if server.proc is None:
        server.start()
    server.thaw()
    server.client().flushall()
    opened: list[RedisBackend] = []

    def make(query: str = "", url: str | None = None, **options) -> RedisBackend:
        backend = open_backend((url or server.url) + query, **options)
        assert isinstance(backend, RedisBackend)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        try:
            backend.close()
        except Exception:
            pass


def job(queue: str = "default", reply_to: str = "client-1", body: bytes = b"x") -> Job:
    return Job(uuid.uuid4().hex, queue, reply_to, body)


def claim_one(backend: RedisBackend, queue: str = "default", lease: float = 30) -> Claim:
    [c] = backend.claim([queue], limit=1, lease=lease, wait=2)
    return c


def test_every_key_is_under_the_prefix_with_the_queue_as_hash_tag(make, server) -> None:
    backend = make("?prefix=app7:")
    backend.enqueue([job("gpu"), job("gpu", reply_to="me")])
    claims = backend.claim(["gpu"], limit=1, lease=30, wait=1)
    backend.complete([Done(claims[0], b"r")])
    keys = sorted(k.decode() for k in server.client().keys("*"))
    assert keys and all(k.startswith("app7:") for k in keys)
    queue_keys = [k for k in keys if ":w" in k or ":l" in k or ":c:" in k or ":b" in k]
    assert {k.split("}")[0] for k in queue_keys} == {"app7:{gpu"}
    assert "app7:{client-1}:r" in keys


def test_a_reply_list_expires_after_result_ttl_and_the_keys_return_to_baseline(
    make, server
) -> None:
    backend = make(result_ttl=1)
    backend.enqueue([job(reply_to="warmup")])
    backend.complete([Done(claim_one(backend), None)])
    backend.sweep()
    baseline = set(server.client().keys("*"))

    backend.enqueue([job(reply_to="gone")])
    backend.complete([Done(claim_one(backend), b"nobody reads this")])
    box = b"remoteexec:{gone}:r"
    assert 0 < server.client().pttl(box) <= 1000
    assert set(server.client().keys("*")) > baseline
    backend.claim(["default"], limit=5, lease=30, wait=0)  # tokens with no task
    backend.sweep()
    deadline = time.monotonic() + 10
    while not set(server.client().keys("*")) <= baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(server.client().keys("*")) <= baseline  # doorbells may have expired too


def test_a_late_reply_from_a_lost_lease_is_dropped_and_keeps_the_task_traced(make) -> None:
    first, second = make(), make()
    j = job(reply_to="caller")
    first.enqueue([j])
    stale = claim_one(first, lease=0.3)
    time.sleep(0.5)
    fresh = claim_one(second)
    assert (fresh.id, fresh.attempt) == (j.id, 2)
    assert first.complete([Done(stale, b"late"), Done(stale, b"late again")]) == [False, False]
    assert first.lost([j.id], "caller") == set()  # the stale worker did not erase the live attempt
    assert second.stats().running == 1
    assert second.complete([Done(fresh, b"on time")]) == [True]
    assert first.replies("caller", wait=1) == [b"on time"]
    assert first.replies("caller", wait=0) == []


def test_unused_claim_tokens_never_count_as_running(make) -> None:
    backend = make()
    backend.enqueue([job()])
    [c] = backend.claim(["default"], limit=10, lease=30, wait=1)
    assert backend.stats().running == 1
    assert backend.claim(["default"], limit=10, lease=30, wait=0.1) == []
    assert backend.stats().running == 1
    assert backend.complete([Done(c, None)]) == [True]
    assert backend.stats().running == 0


def test_a_worker_on_several_queues_wakes_for_any_of_them(make, server) -> None:
    worker, producer, admin = make(), make(), server.client()
    j = job("second")
    enqueued_at: list[float] = []

    def enqueue_once_the_claim_waits() -> None:
        deadline = time.monotonic() + 3
        # The claim is waiting once its connection is blocked in the server (flag "b");
        # a claim that never blocks gets the work after 3 s, well inside its wait.
        while not any("b" in c["flags"] for c in admin.client_list()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        enqueued_at.append(time.monotonic())
        producer.enqueue([j])

    thread = threading.Thread(target=enqueue_once_the_claim_waits)
    thread.start()
    got = worker.claim(["first", "second"], limit=3, lease=30, wait=10)
    woke = time.monotonic()
    thread.join()
    admin.close()
    assert [c.id for c in got] == [j.id]
    assert woke - enqueued_at[0] < 2.0  # woken by the work, not at the end of the wait


def test_blocking_stays_below_a_short_socket_timeout(make) -> None:
    backend = make("?socket_timeout=1.0")  # blocking reads wait 0.25 s at a time
    assert backend.claim(["default"], limit=1, lease=30, wait=1.5) == []
    assert backend.replies("nobody", wait=1.5) == []


def test_calls_reconnect_by_themselves_after_a_restart(make, server) -> None:
    backend = make()
    j = job(reply_to="R")
    backend.enqueue([j])
    server.restart()  # appendfsync always: nothing acknowledged is lost
    c = claim_one(backend)
    assert c.id == j.id
    server.restart()
    assert backend.complete([Done(c, b"ok")]) == [True]
    assert backend.replies("R", wait=1) == [b"ok"]


def test_a_server_that_comes_back_empty_reports_the_calls_lost(make, server) -> None:
    backend = make()
    waiting, running = job(), job()
    backend.enqueue([running])
    c = claim_one(backend)
    backend.enqueue([waiting])
    assert backend.lost([waiting.id, running.id], waiting.reply_to) == set()
    server.restart(keep_data=False)
    assert backend.lost([waiting.id, running.id], waiting.reply_to) == {waiting.id, running.id}
    assert backend.complete([Done(c, b"too late")]) == [False]
    assert backend.renew([c], lease=30) == [False]


def test_an_answered_call_is_not_lost_until_its_reply_is_read(make) -> None:
    backend = make()
    j = job(reply_to="R")
    backend.enqueue([j])
    backend.complete([Done(claim_one(backend), b"answer")])
    assert backend.lost([j.id], "R") == set()
    assert backend.replies("R", wait=1) == [b"answer"]
    # Handed to the caller: the broker holds no trace of it any more. A client asks only
    # about calls still pending, so this is what ends a call whose reply it rejected.
    assert backend.lost([j.id], "R") == {j.id}


def test_a_reply_lost_on_the_wire_is_reported_lost(make) -> None:
    backend = make()
    j = job(reply_to="R")
    backend.enqueue([j])
    backend.complete([Done(claim_one(backend), b"answer")])
    # As if BLMPOP's answer had been cut off: the reply left Redis but never arrived.
    backend._cmd("DEL", backend._keys.replies("R"))
    assert backend.lost([j.id], "R") == {j.id}


def test_a_dead_server_raises_backend_unavailable_without_the_password(make, server) -> None:
    server.client().acl_setuser(
        "worker", enabled=True, passwords=["+s3cr3t-pw"], keys=["*"], commands=["+@all"]
    )
    url = f"redis://worker:s3cr3t-pw@127.0.0.1:{server.port}/0"
    backend = make(url=url)
    backend.enqueue([job()])
    server.kill()
    for call in (
        lambda: backend.enqueue([job()]),
        lambda: backend.claim(["default"], limit=1, lease=30, wait=0.5),
        lambda: backend.replies("x", wait=0.5),
        backend.stats,
    ):
        with pytest.raises(BackendUnavailable) as info:
            call()
        assert "s3cr3t" not in str(info.value)
    with pytest.raises(ConfigurationError) as bad:
        open_backend(url + "?socket_timeout=soon")
    assert "s3cr3t" not in str(bad.value)


def test_a_frozen_server_times_out_then_recovers(make, server) -> None:
    backend = make("?socket_timeout=0.5")
    server.freeze()
    try:
        with pytest.raises(BackendUnavailable):
            backend.enqueue([job()])
    finally:
        server.thaw()
    backend.enqueue([job()])
    assert claim_one(backend).attempt == 1


def test_a_worker_whose_acl_denies_scripting_can_do_everything(make, server) -> None:
    server.client().acl_setuser(
        "noscript",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        commands=["+@all", "-@scripting"],
    )
    backend = make(url=f"redis://noscript:pw@127.0.0.1:{server.port}/0")
    j = job(reply_to="R")
    backend.enqueue([j])
    c = claim_one(backend)
    assert backend.renew([c], lease=30) == [True]
    assert backend.complete([Done(c, b"ok")]) == [True]
    assert backend.stats().running == 0 and backend.lost([j.id], "R") == set()
    assert backend.replies("R", wait=1) == [b"ok"]
    assert backend.purge() == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_connections(make) -> None:
    backend = make()
    backend.enqueue([job(reply_to="parent")])  # the parent's pool holds a connection now
    parent_id = backend._cmd("CLIENT", "ID")
    pid = os.fork()
    if pid == 0:  # the child: its own connection, and the work gets done
        code = 1
        try:
            c = claim_one(backend)
            ok = backend.complete([Done(c, b"from the child")]) == [True]
            code = 0 if ok and backend._cmd("CLIENT", "ID") != parent_id else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.replies("parent", wait=1) == [b"from the child"]
    assert backend._cmd("CLIENT", "ID") == parent_id


# The Lua scripts (redis/lua.py) -----------------------------------------------------------


def _noscript_url(server, user: str = "noscript") -> str:
    server.client().acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-@scripting"]
    )
    return f"redis://{user}:pw@127.0.0.1:{server.port}/0"


def _evalsha_calls(server) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.parametrize("scripts", [True, False])
def test_a_queues_leases_are_a_skiplist_from_the_first_claim(make, server, scripts) -> None:
    """Small sorted sets are listpacks, whose every insert scans and moves the whole set:
    a member longer than a listpack's may be keeps the leases a skiplist."""
    backend = make() if scripts else make(url=_noscript_url(server))
    backend.enqueue([job() for _ in range(3)])
    assert len(backend.claim(["default"], limit=3, lease=30, wait=1)) == 3
    leases = server.client().object("encoding", backend._keys.leases("default"))
    assert leases == b"skiplist"


def test_claims_and_completions_use_the_scripts_when_allowed(make, tmp_path) -> None:
    from tests._redis_server import RedisServer

    with RedisServer(tmp_path) as own:  # a server of its own: its counts are this test's
        backend = make(url=own.url)
        jobs = [job(reply_to="R") for _ in range(5)]
        backend.enqueue(jobs)
        before = _evalsha_calls(own)
        claims = backend.claim(["default"], limit=1, lease=30, wait=1)
        claims += backend.claim(["default"], limit=10, lease=30, wait=1)
        assert [c.id for c in claims] == [j.id for j in jobs]
        assert backend.complete([Done(c, c.id.encode()) for c in claims]) == [True] * 5
        assert _evalsha_calls(own) - before == 3  # one per claim pass, one for the completion
        assert backend.replies("R", wait=1) == [j.id.encode() for j in jobs]
        assert backend.stats().running == 0
        backend.close()


def test_a_script_free_adapter_takes_over_a_scripted_claim(make, server) -> None:
    scripted, plain = make(), make(url=_noscript_url(server))
    jobs = [job(reply_to="R") for _ in range(3)]
    scripted.enqueue(jobs)
    first = scripted.claim(["default"], limit=1, lease=30, wait=1)
    held = first + scripted.claim(["default"], limit=5, lease=0.3, wait=1)
    time.sleep(0.4)  # the last two leases expire; the plain adapter requeues and claims them
    taken = plain.claim(["default"], limit=5, lease=30, wait=1)
    assert sorted((c.id, c.attempt) for c in taken) == sorted((j.id, 2) for j in jobs[1:])
    assert scripted.complete([Done(c, b"late") for c in held]) == [True, False, False]
    assert plain.complete([Done(c, b"ok") for c in taken]) == [True, True]
    assert plain.complete([Done(c, b"again") for c in taken]) == [False, False]
    assert sorted(scripted.replies("R", wait=1)) == [b"late", b"ok", b"ok"]
    assert plain._scripts.off and not scripted._scripts.off


def test_scripts_forgotten_by_the_server_are_loaded_again(make, server) -> None:
    backend = make()
    backend.enqueue([job(reply_to="R") for _ in range(4)])
    c1 = backend.claim(["default"], limit=1, lease=30, wait=1)
    c2 = backend.claim(["default"], limit=3, lease=30, wait=1)
    server.client().script_flush()  # as a restarted Redis would have
    before = _evalsha_calls(server)
    assert backend.complete([Done(c, b"ok") for c in c1 + c2]) == [True] * 4
    assert _evalsha_calls(server) - before == 2  # refused (NOSCRIPT), then sent again
    assert backend.replies("R", wait=1) == [b"ok"] * 4


def test_scripting_denied_after_start_falls_back_without_losing_a_result(make, server) -> None:
    server.client().acl_setuser(
        "later", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"]
    )
    backend = make(url=f"redis://later:pw@127.0.0.1:{server.port}/0")
    backend.enqueue([job(reply_to="R") for _ in range(3)])
    c = backend.claim(["default"], limit=1, lease=30, wait=1)
    c += backend.claim(["default"], limit=5, lease=30, wait=1)  # scripted
    server.client().acl_setuser("later", commands=["-@scripting"])
    assert backend.complete([Done(x, b"ok") for x in c]) == [True] * 3
    assert backend._scripts.off
    assert backend.replies("R", wait=1) == [b"ok"] * 3


def test_complete_and_claim_delivers_first_then_claims_in_one_round_trip(make, server) -> None:
    backend = make()
    jobs = [job(reply_to="R") for _ in range(6)]
    backend.enqueue(jobs)
    [first] = backend.claim(["default"], limit=1, lease=30, wait=1)
    accepted, claims = backend.complete_and_claim(
        [Done(first, b"1")], ["default"], limit=5, lease=30, wait=1
    )  # a MULTI completion, then a scripted pass (work was waiting)
    assert accepted == [True] and [c.id for c in claims] == [j.id for j in jobs[1:]]
    assert backend.replies("R", wait=1) == [b"1"]
    server.client().script_flush()  # the scripted completion is refused once, then sent
    started = time.monotonic()
    accepted, more = backend.complete_and_claim(
        [Done(c, b"n") for c in claims], ["default"], limit=5, lease=30, wait=0.3
    )  # nothing waiting: the pass waits 0.3 s after the results went out
    assert accepted == [True] * 5 and more == []
    assert time.monotonic() - started >= 0.25
    assert backend.replies("R", wait=1) == [b"n"] * 5
    assert backend.stats().running == 0


@pytest.mark.parametrize("results", [1, 3])
def test_complete_and_claim_is_one_round_trip_without_scripts_too(
    make, server, monkeypatch, results
) -> None:
    from remoteexec.backends.redis import wire

    backend = make(url=_noscript_url(server))
    jobs = [job(reply_to="R") for _ in range(results + 3)]
    backend.enqueue(jobs)
    held = backend.claim(["default"], limit=results, lease=30, wait=1)
    held += backend.claim(["default"], limit=results - len(held), lease=30, wait=1)
    assert backend._scripts.off and len(held) == results
    trips: list[int] = []
    checkout = wire.Link.held
    monkeypatch.setattr(wire.Link, "held", lambda link: trips.append(1) or checkout(link))
    accepted, claims = backend.complete_and_claim(
        [Done(c, b"r") for c in held], ["default"], limit=5, lease=30, wait=1
    )
    assert accepted == [True] * results and trips == [1]  # the MULTI, then the pass
    assert claims and [c.id for c in claims] == [j.id for j in jobs[results:]][: len(claims)]
    assert backend.replies("R", wait=1) == [b"r"] * results


@pytest.mark.parametrize("scripts", [True, False])
def test_a_claim_made_ahead_takes_the_results_along_in_one_round_trip(
    make, server, monkeypatch, scripts
) -> None:
    """``wait=0``, as when a worker claims while its last task runs: the completion and
    the pass go in one round trip, with work waiting and without."""
    from remoteexec.backends.redis import wire

    backend = make(url=None if scripts else _noscript_url(server))
    jobs = [job(reply_to="R") for _ in range(6)]
    backend.enqueue(jobs)
    held = backend.claim(["default"], limit=3, lease=30, wait=1)
    held += backend.claim(["default"], limit=3 - len(held), lease=30, wait=1)
    assert len(held) == 3 and backend._scripts.off != scripts
    trips: list[int] = []
    checkout = wire.Link.held
    monkeypatch.setattr(wire.Link, "held", lambda link: trips.append(1) or checkout(link))
    accepted, claims = backend.complete_and_claim(
        [Done(c, b"r") for c in held], ["default"], limit=3, lease=30, wait=0
    )
    assert accepted == [True] * 3 and trips == [1]
    assert claims and [c.id for c in claims] == [j.id for j in jobs[3:]][: len(claims)]
    rest = backend.claim(["default"], limit=3 - len(claims), lease=30, wait=0)
    trips.clear()
    accepted, more = backend.complete_and_claim(
        [Done(c, b"s") for c in [*claims, *rest]], ["default"], limit=3, lease=30, wait=0
    )  # nothing waits now: the pass finds nothing and does not wait
    assert accepted == [True] * 3 and more == [] and trips == [1]
    assert backend.replies("R", wait=1) == [b"r"] * 3 + [b"s"] * 3


def test_send_and_wait_cut_off_after_the_enqueue_reports_it_sent(make, server) -> None:
    backend = make("?socket_timeout=4")  # blocking reads wait up to 1 s
    j = job(reply_to="R")
    killer = threading.Timer(0.3, server.kill)  # while the reply wait blocks
    killer.start()
    try:
        assert backend.send_and_wait([j], "R", wait=1) == []  # sent: no error, no reply
    finally:
        killer.join()
        server.start()  # appendfsync always: the task survived
    assert claim_one(backend).id == j.id
    assert backend.lost([j.id], "R") == set()


def test_the_hot_path_runs_on_redis_py_alone_without_hiredis(make, monkeypatch) -> None:
    """hiredis is optional: commands packed and replies read by redis-py's own parser."""
    from redis._parsers import _RESP2Parser

    from remoteexec.backends.redis import wire

    monkeypatch.setattr(wire, "_pack_one", None)
    # A pure-Python parser (redis-py takes its RESP3 twin when the protocol is 3).
    from_url = wire.redis.Redis.from_url
    monkeypatch.setattr(
        wire.redis.Redis,
        "from_url",
        lambda url, **kw: from_url(url, parser_class=_RESP2Parser, **kw),
    )
    client, worker = make(), make()
    sent = job(reply_to="plain")

    def serve() -> None:
        [c] = worker.claim(["default"], limit=1, lease=30, wait=5)
        assert worker.complete([Done(c, b"answer")]) == [True]

    thread = threading.Thread(target=serve)
    thread.start()
    assert client.send_and_wait([sent], "plain", wait=5) == [b"answer"]
    thread.join()
    for backend in (client, worker):
        parser = backend._linked().held().conn._parser
        assert "Hiredis" not in type(parser).__name__, parser


def test_a_reply_taken_before_its_enqueue_returned_leaves_nothing_in_flight(make) -> None:
    # A reply listener (thread L) is already waiting on the reply list when a caller
    # (thread T) enqueues and waits on the same list in one round trip: Redis serves L
    # first, so L takes the reply while T's round trip is still open. The call's id must
    # be noted as in flight before the round trip, or it stays there for good.
    client, worker = make(), make()
    taken: list[list[bytes]] = []
    listener = threading.Thread(target=lambda: taken.append(client.replies("r1", wait=3.0)))
    listener.start()
    time.sleep(0.3)  # L blocks on the reply list first
    sent = job(reply_to="r1")
    caller = threading.Thread(target=lambda: client.send_and_wait([sent], "r1", wait=1.5))
    caller.start()
    claim = claim_one(worker)
    assert claim.id == sent.id
    assert worker.complete([Done(claim, b"the reply")]) == [True]
    listener.join(5)
    caller.join(5)
    assert taken == [[b"the reply"]]
    assert client._sent == {}  # nothing left in flight
