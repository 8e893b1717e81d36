"""SQLite-specific behaviour, on real files: processes, forks, URLs, schema, lock contention.

The contract itself is covered by ``test_contract.py``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from remoteexec.backends import DeadLetter, Done, Job, WorkerInfo, open_backend
from remoteexec.backends.sqlite import SCHEMA_VERSION, SQLiteBackend
from remoteexec.backends.sqlite import connection as sqlite_mod
from remoteexec.errors import BackendUnavailable, ConfigurationError


def job(queue: str = "default", reply_to: str = "client-1", body: bytes = b"x") -> Job:
    return Job(uuid.uuid4().hex, queue, reply_to, body)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "remoteexec.db"


@pytest.fixture
def backend(db: Path) -> Any:
    b = SQLiteBackend.from_url(f"sqlite:///{db}")
    yield b
    b.close()


# -- several processes on one file ---------------------------------------------------------


class _CountRetries(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "is busy" in record.getMessage()


def _consume(url: str, limit: int, ready: Any, all_enqueued: Any, out: Any) -> None:
    """Claim and complete until the producer is done and nothing is left."""
    retries = _CountRetries()
    logging.getLogger("remoteexec.sqlite").addHandler(retries)
    logging.getLogger("remoteexec.sqlite").setLevel(logging.DEBUG)
    backend = SQLiteBackend.from_url(url)
    seen: list[str] = []
    try:
        backend.stats()
        ready.release()
        while True:
            claims = backend.claim(["default"], limit=limit, lease=60, wait=0.2)
            if not claims:
                if all_enqueued.is_set():
                    break
                continue
            accepted = backend.complete([Done(c, c.id.encode()) for c in claims])
            seen += [c.id for c, ok in zip(claims, accepted, strict=True) if ok]
        out.put(("ok", seen, retries.count))
    except BaseException as exc:
        out.put(("error", repr(exc), retries.count))
    finally:
        backend.close()


def test_processes_claiming_from_one_file_never_share_a_task(db: Path) -> None:
    url = f"sqlite:///{db}"
    producer = SQLiteBackend.from_url(url)
    ctx = multiprocessing.get_context("spawn")
    ready, all_enqueued, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_consume, args=(url, limit, ready, all_enqueued, out))
        for limit in (1, 3, 7, 16)
    ]
    for w in workers:
        w.start()
    jobs = [job() for _ in range(2000)]
    try:
        for _ in workers:
            assert ready.acquire(timeout=60)
        # Many small write transactions while four processes claim: plenty of lock conflicts,
        # and with SQLite's own busy handler off each one is retried by the adapter itself.
        for i in range(0, len(jobs), 10):
            producer.enqueue(jobs[i : i + 10])
        all_enqueued.set()
        results = [out.get(timeout=100) for _ in workers]
    finally:
        for w in workers:
            w.join(10)
    assert [detail for status, detail, _ in results if status == "error"] == []
    seen = [task_id for _, ids, _ in results for task_id in ids]
    assert len(seen) == len(set(seen)), "a task was claimed by two processes"
    assert sorted(seen) == sorted(j.id for j in jobs)
    replies: list[bytes] = []
    while batch := producer.replies("client-1", wait=0.5):
        replies += batch
    assert sorted(replies) == sorted(j.id.encode() for j in jobs)
    producer.close()
    print(sum(n for _, _, n in results), "lock conflicts retried in the workers")


def test_a_forked_child_opens_its_own_connection(backend: SQLiteBackend) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    backend.enqueue([job()])
    parent_conn = backend._db.connection()
    from_child = job(queue="child")
    with warnings.catch_warnings():  # Python 3.12+ warns about fork with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            mine = backend._db.connection()
            backend.enqueue([from_child])
            [c] = backend.claim(["default"], limit=1, lease=30, wait=1)
            backend.complete([Done(c, b"from the child")])
            backend.close()  # closes the child's connection, never the parent's
            code = 0 if mine is not parent_conn else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection survived the child and sees what the child did.
    assert backend._db.connection() is parent_conn
    assert backend.replies("client-1", wait=1) == [b"from the child"]
    [c] = backend.claim(["child"], limit=1, lease=30, wait=1)
    assert c.id == from_child.id


def test_each_thread_has_its_own_connection(backend: SQLiteBackend) -> None:
    conns: list[sqlite3.Connection] = []

    def use() -> None:
        backend.enqueue([job()])  # opens this thread's connection (with retries)
        conns.append(backend._db.connection())

    threads = [threading.Thread(target=use) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    use()
    assert len({id(c) for c in conns}) == 3
    assert backend.stats().queues == {"default": 3}


# -- URLs ----------------------------------------------------------------------------------


def test_a_relative_url_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    backend = open_backend("sqlite:///data/queue.db")
    assert isinstance(backend, SQLiteBackend)
    assert backend.path == str(tmp_path / "data" / "queue.db")
    monkeypatch.chdir("/")  # resolved once, at open: a later chdir does not move it
    backend.enqueue([job()])
    backend.close()
    assert (tmp_path / "data" / "queue.db").is_file()


def test_an_absolute_url_has_four_slashes(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"
    backend = open_backend(f"sqlite:///{path}")  # tmp_path starts with "/"
    assert isinstance(backend, SQLiteBackend)
    assert backend.path == str(path)
    backend.enqueue([job()])
    backend.close()
    assert path.is_file()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/queue.db",
        "sqlite:///:memory:",
        "sqlite:///queue.db?mode=ro",
        "sqlite:///folder/",
    ],
)
def test_a_malformed_url_is_a_configuration_error_naming_it(url: str) -> None:
    with pytest.raises(ConfigurationError, match="malformed SQLite URL") as info:
        SQLiteBackend.from_url(url)
    assert repr(url) in str(info.value)


def test_a_missing_folder_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "queue.db"
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        open_backend(f"sqlite:///{missing}")
    assert str(tmp_path / "nope") in str(info.value)
    assert not (tmp_path / "nope").exists()


def test_a_folder_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a folder"):
        SQLiteBackend.from_url(f"sqlite:///{tmp_path}")


# -- schema and file settings --------------------------------------------------------------


def test_schema_version_and_wal_are_recorded_in_the_file(backend: SQLiteBackend, db: Path) -> None:
    backend.stats()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"tasks", "replies", "workers", "dead"} <= tables
    finally:
        conn.close()


def test_a_version_2_database_gets_the_dead_letters_tasks(db: Path) -> None:
    backend = SQLiteBackend.from_url(f"sqlite:///{db}")
    backend.stats()
    backend.close()
    conn = sqlite3.connect(db)
    conn.executescript(
        """DROP TABLE dead;
        CREATE TABLE dead (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, queue TEXT NOT NULL,
            name TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
        INSERT INTO dead (id, queue, name, reason, at) VALUES ('old', 'q', 'T.x', 'lost', 1.0);
        ALTER TABLE workers DROP COLUMN failed;
        ALTER TABLE workers DROP COLUMN durations;
        PRAGMA user_version = 2;"""
    )
    conn.close()
    backend = SQLiteBackend.from_url(f"sqlite:///{db}")
    try:
        backend.bury(DeadLetter("new", "q", "T.x", "failed", 2.0, "tb"), job("q"))
        assert [(d.id, d.traceback, d.retryable) for d in backend.dead_letters()] == [
            ("new", "tb", True),
            ("old", "", False),
        ]
        assert backend.retry_dead(["old", "new"]) == 1
    finally:
        backend.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    conn.close()


def test_a_version_3_file_gains_the_workers_figures(db: Path) -> None:
    backend = SQLiteBackend.from_url(f"sqlite:///{db}")
    backend.stats()
    backend.close()
    conn = sqlite3.connect(db)  # as version 3 made it, with a worker's row
    conn.execute("ALTER TABLE workers DROP COLUMN failed")
    conn.execute("ALTER TABLE workers DROP COLUMN durations")
    now = time.time()
    conn.execute("INSERT INTO workers VALUES ('old', 'h', 1, '[\"q\"]', ?, ?, 5, 0)", (now, now))
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    backend = SQLiteBackend.from_url(f"sqlite:///{db}")
    try:
        [old] = backend.stats().workers
        assert (old.id, old.done, old.failed, old.durations) == ("old", 5, 0, {})
        backend.heartbeat(WorkerInfo("new", "h", 2, ["q"], now, now, 1, 0, 1, {"A.run": [1]}))
        new = next(w for w in backend.stats().workers if w.id == "new")
        assert (new.failed, new.durations) == (1, {"A.run": [1]})
    finally:
        backend.close()


def test_a_newer_schema_is_refused(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    backend = SQLiteBackend.from_url(f"sqlite:///{db}")
    with pytest.raises(ConfigurationError, match="schema version"):
        backend.stats()
    backend.close()


def test_a_file_that_is_not_a_database_is_backend_unavailable(db: Path) -> None:
    db.write_bytes(b"this is not a database" * 100)
    backend = SQLiteBackend.from_url(f"sqlite:///{db}")
    with pytest.raises(BackendUnavailable, match=str(db)) as info:
        backend.enqueue([job()])
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    backend.close()


# -- lock contention -----------------------------------------------------------------------


def _hold_write_lock(db: Path, release: threading.Event) -> threading.Thread:
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(30)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait(10)
    return thread


def test_a_lock_held_for_a_while_is_waited_out(
    backend: SQLiteBackend, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "remoteexec.sqlite")
    backend.stats()  # create the file and schema first
    release = threading.Event()
    holder = _hold_write_lock(db, release)
    errors: list[BaseException] = []

    def enqueue() -> None:
        try:
            backend.enqueue([job()])
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=enqueue)
    writer.start()
    writer.join(0.5)  # many of the adapter's tries, well within its retrying time
    release.set()
    holder.join()
    writer.join()
    assert errors == []
    assert backend.stats().queues == {"default": 1}
    assert any("is busy" in r.getMessage() for r in caplog.records)  # the adapter retried


def test_a_lock_that_never_ends_becomes_backend_unavailable(
    backend: SQLiteBackend, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.stats()
    monkeypatch.setattr(sqlite_mod, "_RETRY_FOR", 0.5)
    release = threading.Event()
    holder = _hold_write_lock(db, release)
    try:
        other = SQLiteBackend.from_url(f"sqlite:///{db}")
        with pytest.raises(BackendUnavailable, match="locked"):
            other.enqueue([job()])
        other.close()
    finally:
        release.set()
        holder.join()


# -- claims and waiting ---------------------------------------------------------------------


def test_a_waiting_claim_wakes_when_a_lease_expires_without_any_write(
    backend: SQLiteBackend,
) -> None:
    j = job()
    backend.enqueue([j])
    [first] = backend.claim(["default"], limit=1, lease=0.3, wait=1)
    expires = time.monotonic() + 0.3
    # Nothing is committed while this waits: only the lease's expiry can wake it.
    [second] = backend.claim(["default"], limit=1, lease=30, wait=10)
    assert time.monotonic() - expires < 2.0  # woken by the expiry, not at the end of the wait
    assert (second.id, second.attempt) == (j.id, 2)
    assert backend.complete([Done(first, b"late")]) == [False]


def test_waiting_calls_wake_for_writes_from_another_process(backend: SQLiteBackend) -> None:
    ctx = multiprocessing.get_context("spawn")
    j = job(reply_to="R")
    ready, go, enqueued_at = ctx.Event(), ctx.Event(), ctx.Value("d", 0.0)
    producer = ctx.Process(
        target=_enqueue_when_told,
        args=(f"sqlite:///{backend.path}", j, ready, go, enqueued_at),
    )
    producer.start()
    assert ready.wait(60)  # the producer is up and has opened the file
    go.set()  # it writes only after this, so the write comes while the claim below waits
    [c] = backend.claim(["default"], limit=1, lease=30, wait=30)
    woke = time.time()
    producer.join(30)
    assert c.id == j.id and producer.exitcode == 0
    assert woke - enqueued_at.value < 2.0  # woken by the write, not at the end of the wait


def _enqueue_when_told(url: str, j: Job, ready: Any, go: Any, enqueued_at: Any) -> None:
    backend = SQLiteBackend.from_url(url)
    ready.set()
    go.wait(60)
    time.sleep(0.3)  # well into the claim's wait (what is tested is a wake mid-wait)
    enqueued_at.value = time.time()
    backend.enqueue([j])
    backend.close()


# -- bookkeeping ---------------------------------------------------------------------------


def test_sweep_removes_stale_workers_and_stats_keep_drained_queues(
    backend: SQLiteBackend, db: Path
) -> None:
    backend.heartbeat(WorkerInfo("old", "h", 1, ["a"], 0.0, last_seen=1.0))
    backend.heartbeat(WorkerInfo("new", "h", 2, ["a", "b"], 0.0))
    backend.enqueue([job("a")])
    [c] = backend.claim(["a"], limit=1, lease=30, wait=1)
    backend.complete([Done(c, None)])
    backend.sweep()
    stats = backend.stats()
    assert [(w.id, w.queues) for w in stats.workers] == [("new", ["a", "b"])]
    assert stats.queues == {"a": 0} and stats.running == 0
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT id FROM workers")] == ["new"]
    conn.close()


def _looks_while_waiting(backend: SQLiteBackend, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many times an empty 0.2 s reply wait looks at the file's data version."""
    looks = 0
    data_version = backend._db.data_version

    def counted() -> int:
        nonlocal looks
        looks += 1
        return data_version()

    monkeypatch.setattr(backend._db, "data_version", counted)
    assert backend.replies("nobody", wait=0.2) == []
    monkeypatch.undo()
    return looks


def test_a_wait_looks_often_while_calls_flow_and_seldom_when_idle(
    backend: SQLiteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pause between looks is a 50th of the time since work was last found: a
    blocking call's reply is seen within a fraction of a millisecond, and an idle
    waiter costs little. (Pauses backing off from 1 ms made calls take 2-3 ms.)"""
    backend.enqueue([job()])
    assert backend.claim(["default"], limit=1, lease=30, wait=1)  # work found
    assert _looks_while_waiting(backend, monkeypatch) > 50  # about 200; 12 backing off
    backend._idle._last["work"] -= 10  # idle for 10 s: 25 ms pauses
    assert _looks_while_waiting(backend, monkeypatch) <= 10


def test_large_bodies_are_claimed_intact_beside_small_ones(
    backend: SQLiteBackend, db: Path
) -> None:
    # A body over 64 KiB is read after the claim, alone: the claim's own result is small.
    bodies = [b"small", bytes(range(256)) * 1024, b"", b"\x00" * (64 * 1024 + 1), b"s" * 65536]
    jobs = [job(body=body) for body in bodies]
    backend.enqueue(jobs)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(  # a large text body, written by someone else: quarantined, not claimed
        "INSERT INTO tasks (id, queue, reply_to, body, created) VALUES ('t', 'default', 'r', ?, 0)",
        ("t" * 100_000,),
    )
    conn.close()
    claims = backend.claim(["default"], limit=10, lease=30, wait=0)
    assert [(c.id, c.body) for c in claims] == [(j.id, j.body) for j in jobs]
    assert [d.id for d in backend.stats().dead] == ["t"]
    backend.complete([Done(c, None) for c in claims])
    assert backend.claim(["default"], limit=10, lease=30, wait=0) == []
