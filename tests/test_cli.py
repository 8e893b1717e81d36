"""The ``remoteexec`` command: call, status, watch, purge, init-db."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.farm import Farm, worker_command


def remoteexec(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remoteexec", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, env=dict(os.environ, **(env or {})),
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


# Credentials kept off the command line ---------------------------------------------------

PASSWORD = "pw-Only-In-A-File-7"


def credential_options(tmp_path: Path, url: str, how: str) -> tuple[list[str], dict[str, str]]:
    """The options and environment that give ``url`` (holding no password) and PASSWORD."""
    if how == "environment":
        return [], {"REMOTEEXEC_URL": url, "REMOTEEXEC_PASSWORD": PASSWORD}
    (tmp_path / "url.txt").write_text(url + "\n")
    (tmp_path / "password.txt").write_text(PASSWORD + "\n")
    (tmp_path / "password.txt").chmod(0o600)
    return ["--url-file", str(tmp_path / "url.txt"), "--password-file", "password.txt"], {}


@pytest.mark.parametrize("how", ["files", "environment"])
def test_a_password_protected_broker_never_shows_its_password_in_a_command_line(
    tmp_path: Path, how: str
) -> None:
    from remoteexec import Client, using
    from tests._redis_server import RedisServer
    from tests.farm import tasks

    with RedisServer(tmp_path / "redis", password=PASSWORD) as server:
        options, env = credential_options(tmp_path, server.url, how)
        farm = Farm(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", tmp_path)
        try:
            farm.start("--threads", "2", processes=2, url_args=options, env=env)
            farm.worker_pids(2)
            with Client(farm.url) as client, using(client):
                assert tasks.Sleepy.execute(0.1) == 0.1  # in a helper process, which stays
                helper, _ = tasks.LimitedNested.execute(1)  # the helper's own client
            lines = farm.command_lines()
            assert helper in lines and len(lines) >= 4, lines  # supervisor, 2 workers, helper
            assert not [line for line in lines.values() if PASSWORD in line]
            for command in (["call", "Echo", "--method", "value", "7"], ["status"], ["purge"]):
                out = remoteexec(*command, *options, cwd=tmp_path, env=env)
                assert out.returncode == 0, out.stderr
                assert PASSWORD not in out.stdout + out.stderr
            assert out.stdout.startswith("purged 0")
        finally:
            farm.stop()
        assert "started worker process" in farm.logs() and PASSWORD not in farm.logs()
    # Without the password the broker refuses, and says so without any password.
    out = remoteexec("status", "--url", server.url, cwd=tmp_path)
    assert out.returncode == 1 and "BackendUnavailable" in out.stderr


@pytest.mark.parametrize("command", ["status", "worker"])
def test_url_and_password_files_that_cannot_be_read_name_the_path_never_the_content(
    tmp_path: Path, command: str
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        if command == "status":
            return remoteexec("status", *args, cwd=tmp_path)
        cmd = [*worker_command(), "--allow-empty", "--burst", *args]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    code = 1 if command == "status" else 78
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "ftp").write_text("ftp://user:hunter2@host/x\n")
    (tmp_path / "redis").write_text("redis://:hunter2@127.0.0.1:1/0")
    (tmp_path / "pw").write_text("other-hunter3")
    for args, named in [
        (["--url-file", "missing"], "cannot read the URL file 'missing': No such file"),
        (["--url-file", "empty"], "the URL file 'empty' is empty"),
        (["--url", "redis://h/0", "--password-file", "empty"], "password file"),
        (["--url-file", "ftp"], "unknown URL scheme 'ftp'"),
        (["--url-file", "redis", "--password-file", "pw"], "give the password in one place"),
    ]:
        out = run(*args)
        assert out.returncode == code and named in out.stderr, out.stderr
        assert "ConfigurationError" in out.stderr or command == "worker"
        assert "hunter2" not in out.stderr and "hunter3" not in out.stderr
    out = run("--url", "redis://h/0", "--url-file", "redis")
    assert out.returncode == 2 and "not allowed with" in out.stderr
