"""``remoteexec dead list|retry|drop``: the dead letters a backend keeps, from the command
line; and end to end, a poison task's dead letter retried on real workers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from remoteexec import Client, using
from remoteexec.backends import Backend, DeadLetter, Job, open_backend
from remoteexec.backends.sqlite import SQLiteBackend
from tests.farm import Farm, ledger, tasks
from tests.test_cli import remoteexec
from tests.test_e2e import wait_for


def test_dead_list_shows_dead_letters_by_queue_as_text_and_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    backend = SQLiteBackend.from_url(url)
    backend.bury(DeadLetter("t1", "a", "Poison.execute", "worker lost 3 times", time.time()))
    backend.bury(DeadLetter("t2", "b", "Other.execute", "undecodable", time.time()))
    backend.close()
    out = remoteexec("dead", "list", "--url", url, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "t1" in out.stdout and "Poison.execute: worker lost 3 times" in out.stdout
    assert out.stdout.index("t2") < out.stdout.index("t1")  # newest first
    out = remoteexec("dead", "list", "--queue", "a", "--json", "--url", url, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    assert json.loads(line)["id"] == "t1" and json.loads(line)["queue"] == "a"


def test_dead_list_of_an_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    out = remoteexec("dead", "list", "--url", "ftp://user:hunter2@host/x", cwd=tmp_path)
    assert out.returncode == 1 and "hunter2" not in out.stderr


def test_dead_drop_removes_the_ids_given_or_all(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    backend = SQLiteBackend.from_url(url)
    for i in range(3):
        backend.bury(DeadLetter(f"t{i}", "a", "Poison.execute", "lost", time.time()))
    out = remoteexec("dead", "drop", "--url", url, cwd=tmp_path)
    assert out.returncode == 1 and "either" in out.stderr  # neither ids nor --all
    out = remoteexec("dead", "drop", "t1", "--url", url, cwd=tmp_path)
    assert out.returncode == 0 and "dropped 1" in out.stdout, out.stderr
    assert [d.id for d in backend.dead_letters()] == ["t2", "t0"]
    out = remoteexec("dead", "drop", "--all", "--url", url, cwd=tmp_path)
    assert out.returncode == 0 and "dropped 2" in out.stdout, out.stderr
    assert backend.dead_letters() == []
    backend.close()


def test_dead_list_marks_retryable_letters_and_shows_tracebacks_on_request(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    backend = SQLiteBackend.from_url(url)
    trace = "Traceback (most recent call last):\n  File 'x.py'\nValueError: poison\n"
    late = DeadLetter("late", "a", "P.execute", "failed", time.time(), trace, deadline=1.0)
    backend.bury(late, Job("late", "a", "", b"body"))
    backend.bury(DeadLetter("lost", "a", "P.execute", "undecodable", time.time()))
    backend.close()
    out = remoteexec("dead", "list", "--url", url, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lost, late_line = out.stdout.splitlines()
    assert "not-kept" in lost and "retryable" in late_line and "past its deadline" in late_line
    assert "ValueError" not in out.stdout
    out = remoteexec("dead", "list", "--traceback", "--url", url, cwd=tmp_path)
    assert "    ValueError: poison" in out.stdout
    out = remoteexec("dead", "list", "--json", "--url", url, cwd=tmp_path)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["id"], r["retryable"], r["traceback"]) for r in rows] == [
        ("lost", False, ""),
        ("late", True, trace),
    ]


def test_dead_retry_enqueues_named_or_all_and_says_what_it_skipped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    backend = SQLiteBackend.from_url(url)
    for name, queue in (("r1", "a"), ("r2", "b"), ("r3", "a")):
        backend.bury(
            DeadLetter(name, queue, "P.execute", "failed", time.time()), Job(name, queue, "", b"x")
        )
    backend.bury(DeadLetter("nokeep", "a", "P.execute", "lost", time.time()))
    late = DeadLetter("late", "a", "P.execute", "failed", time.time(), deadline=1.0)
    backend.bury(late, Job("late", "a", "", b"x"))
    out = remoteexec("dead", "retry", "--url", url, cwd=tmp_path)
    assert out.returncode == 1 and "either" in out.stderr  # neither ids nor --all
    out = remoteexec("dead", "retry", "r1", "nokeep", "nope", "--url", url, cwd=tmp_path)
    assert out.returncode == 1 and "retried 1 dead letter(s)" in out.stdout
    assert "nope: no such dead letter" in out.stderr
    assert "nokeep: cannot be retried" in out.stderr
    out = remoteexec("dead", "retry", "--all", "--queue", "a", "--url", url, cwd=tmp_path)
    assert out.returncode == 0 and "retried 2 dead letter(s)" in out.stdout, out.stderr
    assert "late: past its deadline" in out.stdout and "skipped 1 dead letter(s)" in out.stdout
    assert sorted(d.id for d in backend.dead_letters()) == ["nokeep", "r2"]
    claims = backend.claim(["a"], limit=10, lease=30, wait=0)
    assert sorted(c.id for c in claims) == ["late", "r1", "r3"]
    backend.close()


# -- end to end: a poison task's dead letter, retried ---------------------------------------


def _letter(backend: Backend, task_id: str) -> DeadLetter | None:
    return next((d for d in backend.dead_letters() if d.id == task_id), None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("secret", [None, "a-secret-for-dead-letters"])
def test_a_failing_sent_call_is_buried_with_its_traceback_and_retry_runs_it_again(
    farm: Farm, farm_url: str, tmp_path: Path, secret: str | None
) -> None:
    farm.start(env={"REMOTEEXEC_SECRET": secret} if secret else None)
    book = tmp_path / "runs"
    options = {"secret": secret} if secret else {}
    with Client(farm_url, **options) as client, using(client):
        sent = tasks.RaisesAlways.execute.send(str(book))  # max_attempts=2
    backend = open_backend(farm_url)
    try:
        wait_for(lambda: _letter(backend, sent) is not None, 60, "the dead letter")
        letter = _letter(backend, sent)
        assert letter is not None and letter.retryable
        assert letter.name == "RaisesAlways.execute" and "ValueError" in letter.reason
        assert 'raise ValueError("poison' in letter.traceback
        assert letter.traceback.rstrip().endswith("ValueError: poison: this task always fails")
        assert len(ledger(book)) == 1  # a failure is not retried by itself
        out = remoteexec("dead", "retry", sent, "--url", farm_url, cwd=tmp_path)
        assert out.returncode == 0 and "retried 1 dead letter(s)" in out.stdout, out.stderr
        wait_for(lambda: len(ledger(book)) == 2, 60, "the retried run")
        wait_for(lambda: _letter(backend, sent) is not None, 60, "the second dead letter")
        assert len(ledger(book)) == 2
    finally:
        backend.close()


@pytest.mark.timeout(120)
def test_a_task_that_lost_its_worker_runs_again_when_retried_with_secrets(
    farm: Farm, farm_url: str, tmp_path: Path
) -> None:
    """With secrets the workers count starts themselves: a retry resets that count."""
    secret = "a-secret-for-lost-tasks"
    farm.start(lease=1.0, env={"REMOTEEXEC_SECRET": secret})
    book = tmp_path / "runs"
    with Client(farm_url, secret=secret) as client, using(client):
        sent = tasks.KillsItsWorker.execute.send(str(book))  # max_attempts=2
    backend = open_backend(farm_url)
    try:
        wait_for(lambda: _letter(backend, sent) is not None, 60, "the dead letter")
        assert len(ledger(book)) == 2
        assert backend.retry_dead([sent]) == 1
        wait_for(lambda: len(ledger(book)) == 4, 60, "two more runs")
    finally:
        backend.close()
