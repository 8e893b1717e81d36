"""The ``remoteexec`` command: call, status, watch, purge, init-db."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.farm import Farm


def remoteexec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remoteexec", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def sqlite_farm(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    farm = Farm(url, tmp_path)
    farm.start(processes=2)
    farm.worker_pids(2)
    yield url, tmp_path
    farm.stop()


def test_call_status_watch_and_purge(sqlite_farm) -> None:
    url, folder = sqlite_farm
    out = remoteexec("call", "--url", url, "Echo", "--method", "both", "1", '"x"', cwd=folder)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[1, "x"], {}]
    out = remoteexec("call", "--url", url, "Failing", '"boom"', cwd=folder)
    assert out.returncode == 1 and "the task raised ValueError: bad value: boom" in out.stderr
    out = remoteexec("call", "--url", url, "Echo", "not-json", cwd=folder)
    assert out.returncode != 0 and "JSON" in out.stderr
    status = remoteexec("status", "--url", url, cwd=folder)
    assert status.returncode == 0 and "Workers: 2" in status.stdout
    watch = remoteexec("watch", "--url", url, "--count", "2", cwd=folder)
    assert watch.returncode == 0 and watch.stdout.count("tasks/s") == 2
    purge = remoteexec("purge", "--url", url, "--queue", "default", cwd=folder)
    assert purge.returncode == 0 and "purged 0" in purge.stdout


def test_bad_url_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    out = remoteexec("status", "--url", "ftp://user:hunter2@host/x", cwd=tmp_path)
    assert out.returncode == 1 and "ConfigurationError" in out.stderr
    assert "hunter2" not in out.stderr


def test_init_db_prints_the_schema(tmp_path: Path) -> None:
    out = remoteexec("init-db", "--url", "mysql://root@127.0.0.1:1/x", "--print", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "CREATE TABLE IF NOT EXISTS" in out.stdout and "LONGBLOB" in out.stdout


def test_init_db_applies_the_schema(mariadb_server, tmp_path: Path) -> None:
    out = remoteexec("init-db", "--url", mariadb_server.url, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with mariadb_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES")
        assert any("tasks" in row[0] for row in cur.fetchall())


def test_worker_imports_a_tasks_dir_and_serves_the_queues_given(tmp_path: Path) -> None:
    from remoteexec import Client, proxy, using
    from tests.farm import worker_command

    folder = tmp_path / "task_types"
    folder.mkdir()
    (folder / "hostname_task.py").write_text(
        "import socket\nfrom remoteexec import remote\n\n"
        "@remote\nclass WhatMachine:\n    def execute(self):\n        return socket.gethostname()\n"
    )
    url = f"sqlite:///{tmp_path / 'dir.db'}"
    cmd = [*worker_command(), "--url", url, "--tasks-dir", str(folder), "--queues", "a,b",
           "--threads", "2", "--burst"]  # fmt: skip
    with Client(url) as client, using(client):
        futures = [proxy("WhatMachine", queue=q).execute.submit() for q in ("b", "a")]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert [f.result(timeout=10) for f in futures] == [socket.gethostname()] * 2
