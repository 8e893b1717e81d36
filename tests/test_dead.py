"""``remoteexec dead list``: the dead letters a backend keeps, from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

from remoteexec.backends import DeadLetter
from remoteexec.backends.sqlite import SQLiteBackend
from tests.test_cli import remoteexec


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
