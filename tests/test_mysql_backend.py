"""MySQL/MariaDB adapter specifics, against a private MariaDB server (no mocks).

The shared contract lives in test_contract.py; this file covers what only the SQL adapter
has: its schema, both claim modes under concurrency, large LONGBLOB payloads, connection
loss and restarts, error mapping and URL options.
"""

from __future__ import annotations

import functools
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from remoteexec.backends import Done, Job, open_backend
from remoteexec.backends.mysql import MySQLBackend, schema_sql
from remoteexec.backends.mysql.connection import execute, parse_url
from remoteexec.backends.mysql.schema import SCHEMA_VERSION
from remoteexec.errors import BackendUnavailable, ConfigurationError
from tests._mariadb_server import MARIADBD, MariaDBServer

MODES = ["skip_locked", "optimistic"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    if not Path(MARIADBD).exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("mariadbd is not installed")
        pytest.skip("mariadbd is not installed")
    with MariaDBServer(tmp_path_factory.mktemp("mysql-backend")) as server:
        yield server


@pytest.fixture
def db_url(server: MariaDBServer) -> str:
    """A URL naming a new, empty database."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = server.connect(database=None)
    try:
        conn.cursor().execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return f"mysql://root@127.0.0.1:{server.port}/{name}"


@pytest.fixture
def make(db_url: str) -> Iterator[Callable[..., MySQLBackend]]:
    opened: list[MySQLBackend] = []

    def make(query: str = "", **options: float) -> MySQLBackend:
        backend = MySQLBackend.from_url(db_url + query, **options)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


def job(queue: str = "default", reply_to: str = "client", body: bytes = b"x") -> Job:
    return Job(uuid.uuid4().hex, queue, reply_to, body)


def query(server: MariaDBServer, url: str, sql: str) -> tuple[tuple[object, ...], ...]:
    conn = server.connect(database=url.rsplit("/", 1)[1].split("?")[0])
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()
    finally:
        conn.close()


# -- schema ------------------------------------------------------------------------------


def test_schema_is_created_on_first_use_with_its_version(server, db_url, make) -> None:
    assert query(server, db_url, "SHOW TABLES") == ()
    backend = make()
    backend.enqueue([job()])
    tables = {row[0] for row in query(server, db_url, "SHOW TABLES")}
    assert {"remoteexec_tasks", "remoteexec_replies", "remoteexec_workers"} <= tables
    assert {"remoteexec_dead_letters", "remoteexec_schema"} <= tables
    assert query(server, db_url, "SELECT name, version FROM remoteexec_schema") == (
        ("schema", SCHEMA_VERSION),
    )
    columns = {
        row[0]: row[1] for row in query(server, db_url, "SHOW COLUMNS FROM remoteexec_tasks")
    }
    assert columns["body"] == "longblob"


def test_init_db_is_idempotent_and_keeps_data(server, db_url, make) -> None:
    backend = make()
    backend.init_db()
    backend.enqueue([job()])
    backend.init_db()
    make().init_db()
    assert query(server, db_url, "SELECT COUNT(*) FROM remoteexec_tasks") == ((1,),)
    assert query(server, db_url, "SELECT COUNT(*) FROM remoteexec_schema") == ((1,),)


def test_schema_sql_is_plain_statements_for_init_db_print() -> None:
    statements = schema_sql()
    assert all(isinstance(s, str) and not s.rstrip().endswith(";") for s in statements)
    assert sum("CREATE TABLE IF NOT EXISTS" in s for s in statements) == 6


def test_a_newer_schema_is_refused(server, db_url, make) -> None:
    make().init_db()
    query(server, db_url, f"UPDATE remoteexec_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigurationError, match="schema version"):
        make().stats()


# -- claim modes -------------------------------------------------------------------------


def test_skip_locked_is_picked_on_mariadb_and_optimistic_on_request(make) -> None:
    auto, optimistic = make(), make("?claim=optimistic")
    auto.stats()
    optimistic.stats()
    assert auto.claim_mode == "skip_locked"  # MariaDB 10.6+
    assert optimistic.claim_mode == "optimistic"
    assert make("?claim=skip_locked").claim_mode == "skip_locked"
    with pytest.raises(ConfigurationError, match="claim"):
        make("?claim=fastest")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shared", [False, True], ids=["own-backend", "shared-backend"])
def test_concurrent_claimers_never_hold_the_same_task(make, mode: str, shared: bool) -> None:
    jobs = [job(queue=("a", "b")[i % 2]) for i in range(600)]
    make().enqueue(jobs)
    common = make(f"?claim={mode}")
    taken: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def consume() -> None:
        backend = common if shared else make(f"?claim={mode}")
        try:
            while True:
                claims = backend.claim(["a", "b"], limit=7, lease=60, wait=0.5)
                if not claims:
                    return
                with lock:
                    taken.extend((c.id, c.token) for c in claims)
                assert all(backend.complete([Done(c, None) for c in claims]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors
    ids = [task_id for task_id, _ in taken]
    assert len(ids) == len(set(ids)) == len(jobs)
    assert set(ids) == {j.id for j in jobs}


@pytest.mark.parametrize("mode", MODES)
def test_a_late_complete_after_takeover_changes_nothing(server, db_url, make, mode) -> None:
    backend = make(f"?claim={mode}")
    j = job(reply_to="late")
    backend.enqueue([j])
    [first] = backend.claim(["default"], limit=1, lease=0.3, wait=1)
    time.sleep(0.6)
    [second] = backend.claim(["default"], limit=1, lease=60, wait=1)
    assert (second.id, second.attempt) == (j.id, 2)
    assert backend.complete([Done(first, b"late")]) == [False]
    assert backend.renew([first], lease=60) == [False]
    backend.release([first])
    rows = query(server, db_url, "SELECT id, state, token, attempt FROM remoteexec_tasks")
    assert rows == ((j.id, 1, second.token, 2),)
    assert query(server, db_url, "SELECT COUNT(*) FROM remoteexec_replies") == ((0,),)
    assert backend.complete([Done(second, b"on time")]) == [True]
    assert backend.replies("late", wait=1) == [b"on time"]


def test_a_completion_whose_worker_dies_as_it_is_sent_applies_whole_or_not_at_all(
    make,
) -> None:
    # Each child sends one completion and dies before reading its answer, as a worker killed
    # then: the server finishes the statements for nobody. Each task must end either still
    # held (its lease expires and it runs again) or deleted with its reply stored, never
    # deleted without it (conditions on ROW_COUNT() lost about 1 reply in 200 this way).
    backend = make()
    jobs = [job(queue="dies") for _ in range(400)]
    backend.enqueue(jobs)
    claims = []
    while len(claims) < len(jobs):
        claims += backend.claim(["dies"], limit=100, lease=600, wait=1)
    for claim in claims:
        pid = os.fork()
        if pid == 0:
            try:
                backend._db.connection()  # connected, as a worker is
                pymysql.connections.Connection._read_query_result = lambda *_, **__: os._exit(0)
                backend.complete([Done(claim, b"reply " + claim.id.encode())])
            finally:
                os._exit(1)
        os.waitpid(pid, 0)
    ids = [j.id for j in jobs]
    assert backend.lost(ids, "client") == set()
    replies = set(backend.replies("client", wait=1))
    assert replies == {b"reply " + i.encode() for i in ids if i not in backend.states(ids)}


# -- payloads and cleanup ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_ten_mib_body_and_reply_round_trip(make, mode: str) -> None:
    backend = make(f"?claim={mode}")
    body = os.urandom(10 * 1024 * 1024)
    j = job(reply_to="big", body=body)
    backend.enqueue([j, job(reply_to="big", body=b"\x00'\\\"" * 1000)])
    claims = backend.claim(["default"], limit=2, lease=60, wait=1)
    assert [c.body for c in claims] == [body, b"\x00'\\\"" * 1000]
    assert backend.complete([Done(c, c.body[::-1]) for c in claims]) == [True, True]
    assert backend.replies("big", wait=1) == [body[::-1], (b"\x00'\\\"" * 1000)[::-1]]


@pytest.mark.parametrize("wait", ["server", "client"])
def test_no_rows_are_left_once_replies_are_collected(server, db_url, make, wait) -> None:
    backend = make(f"?wait={wait}")
    backend.enqueue([job(reply_to="c") for _ in range(50)])
    claims = backend.claim(["default"], limit=50, lease=60, wait=1)
    assert all(backend.complete([Done(c, c.id.encode()) for c in claims]))
    got = backend.replies("c", wait=1)
    assert got == [c.id.encode() for c in claims]
    assert backend.replies("c", wait=0) == []
    for table in ("remoteexec_tasks", "remoteexec_replies"):
        assert query(server, db_url, f"SELECT COUNT(*) FROM {table}") == ((0,),)


@pytest.mark.parametrize("wait", ["server", "client"])
def test_a_reply_read_whose_answer_is_lost_is_read_again(make, wait) -> None:
    """A read deletes nothing it has not delivered: the server runs the read, its answer
    never reaches the backend (a dropped connection), and the next read still returns the
    reply. (A ``DELETE ... RETURNING`` read would have lost it for good.)"""
    backend = make(f"?wait={wait}")
    backend.enqueue([job(reply_to="lossy")])
    [c] = backend.claim(["default"], limit=1, lease=60, wait=1)
    assert backend.complete([Done(c, b"answer")]) == [True]
    read, _ = backend._read_replies("lossy", 0.1 if wait == "server" else None)
    backend._db.run(lambda cur: execute(cur, *read))  # ran; its rows are dropped here
    assert backend.replies("lossy", wait=1) == [b"answer"]
    assert backend.replies("lossy", wait=0) == []  # delivered once


def test_replies_come_back_oldest_first(make) -> None:
    backend = make()
    backend.enqueue([job(reply_to="o") for _ in range(5)])
    for n in range(5):
        [c] = backend.claim(["default"], limit=1, lease=60, wait=1)
        backend.complete([Done(c, str(n).encode())])
    assert backend.replies("o", wait=1) == [b"0", b"1", b"2", b"3", b"4"]


def test_sweep_removes_stale_workers_and_expired_replies(server, db_url, make) -> None:
    backend = make(result_ttl=0.2)
    backend.enqueue([job(reply_to="gone")])
    [c] = backend.claim(["default"], limit=1, lease=60, wait=1)
    backend.complete([Done(c, b"never read")])
    from remoteexec.backends import WorkerInfo

    backend.heartbeat(WorkerInfo("w", "h", 1, ["default"], time.time()))
    query(server, db_url, "UPDATE remoteexec_workers SET seen_at = seen_at - 3600")
    time.sleep(0.4)
    backend.sweep()
    assert query(server, db_url, "SELECT COUNT(*) FROM remoteexec_replies") == ((0,),)
    assert query(server, db_url, "SELECT COUNT(*) FROM remoteexec_workers") == ((0,),)


# -- connections and errors --------------------------------------------------------------


def test_driver_errors_become_backend_unavailable_without_the_password(server) -> None:
    closed = MySQLBackend.from_url("mysql://root:s3cr3t-pw@127.0.0.1:1/x?connect_timeout=2")
    with pytest.raises(BackendUnavailable) as info:
        closed.stats()
    assert "s3cr3t-pw" not in str(info.value)
    denied = MySQLBackend.from_url(f"mysql://nobody:s3cr3t-pw@127.0.0.1:{server.port}/x")
    with pytest.raises(BackendUnavailable, match="1045") as info:
        denied.stats()
    assert "s3cr3t-pw" not in str(info.value)
    assert isinstance(info.value.__cause__, pymysql.err.OperationalError)


def test_sql_errors_are_mapped_too(make) -> None:
    backend = make()
    backend.enqueue([job()])
    with pytest.raises(BackendUnavailable, match="1406"):  # data too long: 191 at most
        backend.enqueue([job("q" * 192)])
    assert backend.stats().queues == {"default": 1}  # the connection is usable again


@pytest.mark.parametrize("mode", MODES)
def test_reconnects_after_the_server_restarts(server, make, mode: str) -> None:
    backend = make(f"?claim={mode}")
    backend.enqueue([job(reply_to="r")])
    stats_before = backend.stats()
    server.restart()
    # The dead connection is noticed before use: no call fails after a restart.
    [c] = backend.claim(["default"], limit=1, lease=60, wait=1)
    assert backend.complete([Done(c, b"ok")]) == [True]
    assert backend.replies("r", wait=1) == [b"ok"]
    assert stats_before.queues == {"default": 1}


def test_a_call_during_an_outage_fails_then_recovers(server, make) -> None:
    backend = make()
    backend.enqueue([job()])
    server.kill()
    try:
        with pytest.raises(BackendUnavailable):
            backend.stats()
    finally:
        server.start()
    assert backend.stats().queues == {"default": 1}


def test_a_frozen_server_times_out_as_backend_unavailable(server, make) -> None:
    backend = make("?read_timeout=1&connect_timeout=1")
    j = job()
    backend.enqueue([j])
    server.freeze()
    try:
        with pytest.raises(BackendUnavailable):
            backend.claim(["default"], limit=1, lease=1, wait=0)
    finally:
        server.thaw()
    # The server may still have run the claim it had received: then the task waits for
    # that lease to expire, and is claimed again with its attempt raised.
    [c] = backend.claim(["default"], limit=1, lease=60, wait=10)
    assert c.id == j.id and c.attempt in (1, 2)


def test_each_thread_and_each_forked_child_has_its_own_connection(make) -> None:
    backend = make()
    backend.enqueue([job(queue="fork")])
    conns = []

    def note() -> None:
        backend.stats()
        conns.append(backend._db.connection())  # kept alive, so ids stay distinct

    threads = [threading.Thread(target=note) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in conns}) == 3
    pid = os.fork()
    if pid == 0:  # the child claims through a new connection of its own
        try:
            claims = backend.claim(["fork"], limit=1, lease=60, wait=2)
            ok = len(claims) == 1 and backend.complete([Done(claims[0], None)]) == [True]
            os._exit(0 if ok else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.stats().queues.get("fork", 0) == 0  # the parent's connection still works


@pytest.mark.slow
def test_lock_wait_timeouts_are_retried_inside_the_adapter(server, db_url, make) -> None:
    backend = make()
    j = job()
    backend.enqueue([j])
    [c] = backend.claim(["default"], limit=1, lease=60, wait=1)
    holder = server.connect(database=db_url.rsplit("/", 1)[1])
    cur = holder.cursor()
    cur.execute("START TRANSACTION")
    cur.execute("SELECT * FROM remoteexec_tasks WHERE id = %s FOR UPDATE", (j.id,))
    timer = threading.Timer(6.5, holder.rollback)  # longer than the 5 s lock wait timeout
    timer.start()
    try:
        assert backend.complete([Done(c, b"after the wait")]) == [True]
    finally:
        timer.join()
        holder.close()
    assert backend.replies(c.reply_to, wait=1) == [b"after the wait"]


# -- URLs ---------------------------------------------------------------------------------


def test_url_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="colour"):
        MySQLBackend.from_url("mysql://u:pw@h/db?colour=blue")
    with pytest.raises(ConfigurationError, match="database"):
        MySQLBackend.from_url("mysql://u:pw@h")
    with pytest.raises(ConfigurationError, match="ssl"):
        MySQLBackend.from_url("mysql://u:pw@h/db?ssl=maybe")
    assert isinstance(open_backend("mysql://u@h/db"), MySQLBackend)
    args, options = parse_url("mysql://us%40er:p%3Aw@db.example:3307/app?read_timeout=5")
    assert (args["user"], args["password"], args["host"], args["port"]) == (
        "us@er",
        "p:w",
        "db.example",
        3307,
    )
    assert (args["read_timeout"], args["database"], options) == (5.0, "app", {})
    assert parse_url("mysql://u@h/app?claim=optimistic&wait=client")[1] == {
        "claim": "optimistic",
        "wait": "client",
    }


def test_tls_verifies_certificate_and_host_name(server) -> None:
    args, _ = parse_url("mysql://u@db.example/app?ssl=true")
    ctx = args["ssl"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert parse_url("mysql://u@h/app?ssl=false")[0]["ssl_disabled"] is True
    # The test server has no TLS: asking for it must fail, never fall back to plain text.
    backend = MySQLBackend.from_url(f"mysql://root@127.0.0.1:{server.port}/x?ssl=true")
    with pytest.raises(BackendUnavailable, match="SSL"):
        backend.stats()


@pytest.mark.parametrize("mode", ["skip_locked", "optimistic"])
@pytest.mark.parametrize("wait", ["server", "client"])
def test_an_idle_worker_probes_before_claiming_and_still_finds_work(make, mode, wait) -> None:
    client, worker = make(), make(f"?claim={mode}&wait={wait}")
    assert worker.claim(["default"], limit=1, lease=0.3, wait=0) == []
    time.sleep(0.05)  # idle past _PROBE_AFTER: the next claims start with a cheap read
    first = job()
    client.enqueue([first])
    [c] = worker.claim(["default"], limit=1, lease=0.3, wait=1)
    assert c.id == first.id
    assert worker.claim(["default"], limit=1, lease=0.3, wait=0) == []
    time.sleep(0.4)  # idle again, and the lease has expired: the probe must see it too
    [again] = worker.claim(["default"], limit=1, lease=30, wait=1)
    assert (again.id, again.attempt) == (first.id, 2)


# -- waiting -----------------------------------------------------------------------------


def questions(backend: MySQLBackend) -> int:
    """Statements this thread's connection of ``backend`` has sent (this SHOW included)."""
    [(_, count)] = backend._db.run(
        lambda cur: (cur.execute("SHOW SESSION STATUS LIKE 'Questions'"), cur.fetchall())[1]
    )
    return int(count)


def test_waits_in_the_server_on_mariadb_or_polls_on_request(make) -> None:
    server_side, polling, optimistic = make(), make("?wait=client"), make("?claim=optimistic")
    for backend in (server_side, polling, optimistic):
        backend.stats()
    assert (server_side.wait_mode, polling.wait_mode) == ("server", "client")
    assert optimistic.wait_mode == "client"  # measured faster for optimistic claims
    with pytest.raises(ConfigurationError, match="wait"):
        make("?wait=sometimes")


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_claim_waits_in_the_server_in_one_statement(make, mode) -> None:
    server_side = make(f"?claim={mode}&wait=server")
    polling = make(f"?claim={mode}&wait=client")
    sent = []
    for backend in (server_side, polling):
        before = questions(backend)
        assert backend.claim(["default"], limit=1, lease=30, wait=0.5) == []
        sent.append(questions(backend) - before - 1)  # not counting the SHOW
    # One wait (then the optimistic reads), however long it lasts; the polls are at least
    # two claims (a 0.5 s wait outlasts the first pause, 40 ms at most), often dozens.
    assert sent[0] <= 3 < sent[1], sent


@pytest.mark.parametrize("mode", MODES)
def test_a_claim_waiting_in_the_server_takes_new_work_before_its_wait_ends(make, mode) -> None:
    worker, client = make(f"?claim={mode}&wait=server"), make()
    worker.stats()  # connected: the next claim waits in the server
    new = job()
    timer = threading.Timer(0.3, client.enqueue, ([new],))
    timer.start()
    started = time.monotonic()
    claims = worker.claim(["default"], limit=5, lease=30, wait=5)
    waited = time.monotonic() - started
    timer.join()
    assert [c.id for c in claims] == [new.id]
    assert waited < 4  # taken when it came, not when the wait ran out


def test_a_wait_longer_than_the_read_timeout_is_cut_into_holds(make) -> None:
    """A wait in the server longer than the connection's read timeout would end as a lost
    connection: it is made of shorter holds instead."""
    worker, client = make("?read_timeout=1"), make("?read_timeout=1")
    worker.stats(), client.stats()  # connected: the waits run in the server
    new = job(reply_to="slow")
    timer = threading.Timer(1.5, client.enqueue, ([new],))
    timer.start()
    [claim] = worker.claim(["default"], limit=1, lease=30, wait=5)
    timer.join()
    assert claim.id == new.id
    answer = threading.Timer(1.5, worker.complete, ([Done(claim, b"late")],))
    answer.start()
    assert worker.replies("slow", wait=5) == [b"late"]
    answer.join()

    def serve() -> None:
        [c] = worker.claim(["default"], limit=1, lease=30, wait=1)
        worker.complete([Done(c, b"later")])

    answer = threading.Timer(1.5, serve)
    answer.start()
    assert client.send_and_wait([job(reply_to="slower")], "slower", wait=5) == [b"later"]
    answer.join()


def test_send_and_wait_inserts_and_waits_for_the_reply_in_one_query(make) -> None:
    """One query: a transaction that inserts the job (and deletes the replies read by
    the call before, so both take one commit), then the wait."""
    client, worker = make(), make()

    def serve() -> None:
        [c] = worker.claim(["default"], limit=1, lease=30, wait=5)
        worker.complete([Done(c, c.body)])

    for n, statements in ((1, 4), (2, 5)):
        thread = threading.Thread(target=serve)
        thread.start()
        before = questions(client)
        assert client.send_and_wait([job(body=b"%d" % n, reply_to="me")], "me", wait=5) == [
            b"%d" % n
        ]
        thread.join()
        # "START TRANSACTION; INSERT ...; [DELETE ...;] COMMIT; BEGIN NOT ATOMIC ... END"
        assert questions(client) - before - 1 == statements
    [(_, [(left,)])] = worker._db.run(
        lambda cur: execute(cur, "SELECT COUNT(*) FROM remoteexec_replies WHERE reply_to = 'me'")
    )
    assert left == 1  # the second call's reply: the next read deletes it


def test_send_and_wait_looks_for_its_reply_often_on_a_new_channel(make) -> None:
    """A blocking call expects its reply soon, even on a channel that never had one: the
    server's pauses start at the shortest, not at those of a channel idle for a second
    (20 ms and more: a new client's calls would take half as long again)."""
    client, worker = make(), make()
    client.stats()  # connected: the wait runs in the server

    def serve() -> None:
        [c] = worker.claim(["default"], limit=1, lease=30, wait=5)
        time.sleep(0.3)
        worker.complete([Done(c, b"answer")])

    def index_reads() -> int:  # each test of the wait reads the replies' index once
        [(_, count)] = client._db.run(
            lambda cur: (
                cur.execute("SHOW SESSION STATUS LIKE 'Handler_read_key'"),
                cur.fetchall(),
            )[1]
        )
        return int(count)

    thread = threading.Thread(target=serve)
    thread.start()
    before = index_reads()
    started = time.monotonic()
    assert client.send_and_wait([job(reply_to="fresh")], "fresh", wait=5) == [b"answer"]
    waited = time.monotonic() - started
    thread.join()
    # Paced like an idle channel, every pause is 20 ms or more: at most one test per 20 ms
    # of the wait, however fast the machine, besides a dozen reads of the INSERT and the
    # read (27 in all for this wait). Paced from the shortest: about 200, still several
    # times the bound on a loaded machine, whose pauses overshoot.
    reads, idle_paced = index_reads() - before, 12 + 1 + waited / 0.02
    assert reads > 2 * idle_paced, (reads, waited)


def test_send_and_wait_cut_off_after_the_insert_reports_it_sent(server, db_url, make) -> None:
    client = make()
    client.stats()
    [(conn_id,)] = client._db.run(
        lambda cur: (cur.execute("SELECT CONNECTION_ID()"), cur.fetchall())[1]
    )
    killer = threading.Timer(0.5, query, (server, db_url, f"KILL CONNECTION {conn_id}"))
    killer.start()
    sent = job(reply_to="me")
    assert client.send_and_wait([sent], "me", wait=5) == []  # sent; replies come later
    killer.join()
    assert query(server, db_url, "SELECT id FROM remoteexec_tasks") == ((sent.id,),)
    assert client.replies("me", wait=0) == []  # a new connection works


def test_complete_and_claim_cut_off_in_its_wait_keeps_the_results(server, db_url, make) -> None:
    worker, client = make(), make()
    client.enqueue([job(reply_to="me")])
    [c] = worker.claim(["default"], limit=1, lease=30, wait=1)
    [(conn_id,)] = worker._db.run(
        lambda cur: (cur.execute("SELECT CONNECTION_ID()"), cur.fetchall())[1]
    )
    killer = threading.Timer(0.5, query, (server, db_url, f"KILL CONNECTION {conn_id}"))
    killer.start()
    # The completion goes through, then the claim's wait in the server is cut off.
    done = worker.complete_and_claim([Done(c, b"answer")], ["default"], limit=1, lease=30, wait=5)
    killer.join()
    assert done == ([True], [])  # completed; the claim cut off claims nothing
    assert client.replies("me", wait=1) == [b"answer"]
    assert query(server, db_url, "SELECT COUNT(*) FROM remoteexec_tasks") == ((0,),)


# -- a claim's floor (mysql.claim.claim_locked) -------------------------------------------

_TASK_AT = (
    "INSERT INTO remoteexec_tasks (seq, id, queue, reply_to, body, created) "
    "VALUES ({}, '{}', 'default', 'client', 'x', UNIX_TIMESTAMP())"
)


@pytest.mark.parametrize("wait", ["server", "client"])
def test_a_task_committed_below_a_claims_floor_is_still_claimed(server, db_url, make, wait) -> None:
    """A claim looks above the highest seq it took last time first, but a task below it
    (one that took its seq earlier and committed later, or a released one) is taken
    too: there when the claim starts, or coming during its wait."""
    worker = make(f"?wait={wait}")
    worker.init_db()
    for seq in (100, 200):
        query(server, db_url, _TASK_AT.format(seq, f"t{seq}"))
    claims = worker.claim(["default"], limit=5, lease=30, wait=1)
    assert [c.id for c in claims] == ["t100", "t200"]
    assert worker.complete([Done(c, None) for c in claims]) == [True, True]
    query(server, db_url, _TASK_AT.format(150, "t150"))
    claims = worker.claim(["default"], limit=5, lease=30, wait=1)
    assert [c.id for c in claims] == ["t150"]
    timer = threading.Timer(0.3, query, (server, db_url, _TASK_AT.format(120, "t120")))
    timer.start()
    started = time.monotonic()
    claims = worker.claim(["default"], limit=5, lease=30, wait=5)
    waited = time.monotonic() - started
    timer.join()
    assert [c.id for c in claims] == ["t120"]
    assert waited < 3  # taken when it came


def _pages_accessed(server: MariaDBServer, backend: MySQLBackend, run: Callable[[], object]) -> int:
    """InnoDB pages the statements of ``backend``'s connection (this thread's) accessed while
    ``run()`` ran: their own counts (``Pages_accessed``), from the slow query log, which
    logs this session's every statement (``long_query_time=0``) and no other's (the
    server's default is 10 s). Work elsewhere on the server does not move them."""
    log = server.folder / "statements.log"
    admin = server.connect(database=None)
    try:
        cur = admin.cursor()
        cur.execute("SET GLOBAL slow_query_log_file = %s", (str(log),))
        cur.execute("SET GLOBAL slow_query_log = ON")

        def session(cur: Any) -> int:
            cur.execute("SET SESSION long_query_time = 0, log_slow_verbosity = 'engine'")
            cur.execute("SET SESSION slow_query_log = ON")
            cur.execute("SELECT CONNECTION_ID()")
            return int(cur.fetchall()[0][0])

        def quiet(cur: Any) -> None:
            cur.execute("SET SESSION slow_query_log = OFF, long_query_time = DEFAULT")

        start = log.stat().st_size if log.exists() else 0
        thread_id = backend._db.run(session)
        try:
            run()
        finally:
            backend._db.run(quiet)
    finally:
        try:
            admin.cursor().execute("SET GLOBAL slow_query_log = OFF")
        finally:
            admin.close()
    with log.open() as file:
        file.seek(start)
        entries = file.read().split("# User@Host:")
    pages = 0
    for entry in entries:
        if f"# Thread_id: {thread_id} " in entry and "Pages_accessed:" in entry:
            pages += int(entry.split("Pages_accessed:")[1].split()[0])
    return pages


@pytest.mark.parametrize("wait", ["server", "client"])
def test_a_claim_does_not_step_over_the_rows_it_took(
    server, db_url, make, wait, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed and deleted rows leave index entries marked deleted until InnoDB's purge
    removes them (held back here by an open snapshot, as purge lags on a busy server).
    A claim that starts above the rows it took does not step over them.

    Only a backend's first claim looks for expired leases here (a look scans the queue
    from its start, whatever the floor), so the claims measured do not depend on how long
    the set-up took."""
    monkeypatch.setattr("remoteexec.backends.mysql.claim._EXPIRED_EVERY", 3600.0)
    snapshot = server.connect(database=db_url.rsplit("/", 1)[1])
    worker, client, fresh = make(f"?wait={wait}"), make(), make(f"?wait={wait}")
    try:
        snapshot.cursor().execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        for _ in range(4):
            client.enqueue([job() for _ in range(100)])
            claims = worker.claim(["default"], limit=100, lease=30, wait=1)
            assert worker.complete([Done(c, None) for c in claims]) == [True] * 100
        fresh.stats()  # connected
        pages, taken = [], []
        for backend in (worker, fresh):  # the fresh backend has no floor: it scans them all
            client.enqueue([job()])
            claim = functools.partial(backend.claim, limit=1, lease=30, wait=1)
            run = lambda: taken.extend(claim(["default"]))  # noqa: B023, E731
            pages.append(_pages_accessed(server, backend, run))
        assert len(taken) == 2
        assert 0 < pages[0] * 5 < pages[1], pages
    finally:
        snapshot.close()
