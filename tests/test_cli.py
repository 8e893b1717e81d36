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


# Version, help, the worker subcommand --------------------------------------------------

COMMANDS = [
    ["demo"],
    ["status"],
    ["watch"],
    ["call"],
    ["purge"],
    ["init-db"],
    ["worker"],
    ["dead", "list"],
    ["dead", "drop"],
    ["dashboard"],
    [],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c else "remoteexec")
def test_every_command_prints_its_version(tmp_path: Path, command: list[str]) -> None:
    from remoteexec import __version__

    out = remoteexec(*command, "--version", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["remoteexec", *command, __version__]


def test_remoteexec_worker_prints_its_version(tmp_path: Path) -> None:
    out = subprocess.run([*worker_command(), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("remoteexec-worker ")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c else "remoteexec")
def test_help_shows_no_rst_markup_and_every_option_explained(
    tmp_path: Path, command: list[str]
) -> None:
    out = remoteexec(*command, "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "``" not in out.stdout
    if command == ["worker"]:
        assert out.stdout.startswith("usage: remoteexec worker")
        for option in ("--processes N ", "--threads M ", "--queues QUEUES "):
            assert option in out.stdout  # followed by its help text
        assert "{DEBUG,INFO,WARNING,ERROR}" in out.stdout and "debug" not in out.stdout
    if command == ["call"]:
        assert "--kw KEY=VALUE" in out.stdout and "--queue QUEUE" in out.stdout


def test_the_log_level_is_taken_in_any_case(tmp_path: Path) -> None:
    out = remoteexec("worker", "--log-level", "debug", "--queues", "", cwd=tmp_path)
    assert "invalid choice" not in out.stderr and "--queues" in out.stderr


# call: queue, keywords, JSON output --------------------------------------------------

VALUES_TASKS = """
from datetime import datetime, timezone
from decimal import Decimal
from remoteexec import remote

@remote
class Values:
    def execute(self):
        return {"price": Decimal("1.10"), "at": datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc),
                "raw": b"hi", "tags": {"b", "a"}}
"""


@pytest.fixture
def queue_farm(tmp_path: Path):
    (tmp_path / "cli_values.py").write_text(VALUES_TASKS)
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    farm = Farm(url, tmp_path)
    farm.start("--queues", "side", "--import", "cli_values")
    farm.worker_pids(1)
    yield url, tmp_path
    farm.stop()


def test_call_takes_a_queue_and_keyword_arguments(queue_farm) -> None:
    url, folder = queue_farm
    out = remoteexec(
        "call", "--url", url, "--queue", "side", "Echo", "--method", "both", "1",
        "--kw", "n=[1, 2]", "--kw", "word=plain text", "--timeout", "30", cwd=folder,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[1], {"n": [1, 2], "word": "plain text"}]
    bad = remoteexec("call", "--url", url, "Echo", "--kw", "no-equals", cwd=folder)
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr


def test_call_prints_decimal_datetime_bytes_and_sets_as_json(queue_farm) -> None:
    url, folder = queue_farm
    out = remoteexec("call", "--url", url, "--queue", "side", "Values", cwd=folder)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "price": "1.10", "at": "2026-01-02T03:04:00+00:00", "raw": "aGk=", "tags": ["a", "b"],
    }  # fmt: skip


def test_a_remote_error_exits_1_with_the_remote_traceback(queue_farm) -> None:
    url, folder = queue_farm
    out = remoteexec("call", "--url", url, "--queue", "side", "Failing", '"boom"', cwd=folder)
    assert out.returncode == 1 and out.stdout == ""
    assert "Traceback" in out.stderr and 'raise ValueError(f"bad value: {text}")' in out.stderr


# Pipes, and the settings every command honours ------------------------------------------


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_status_into_a_closed_pipe_ends_without_a_traceback(tmp_path: Path, reader: str) -> None:
    url = f"sqlite:///{tmp_path / 'pipe.db'}"
    command = f"{sys.executable} -m remoteexec status --url {url} | {reader}"
    out = subprocess.run(
        ["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    if reader == "head -1":
        assert len(out.stdout.splitlines()) == 1


@pytest.mark.parametrize("how", ["environment", "config file"])
def test_commands_honour_remoteexec_url_and_the_config_file(
    mariadb_server, tmp_path: Path, how: str
) -> None:
    env = {"REMOTEEXEC_URL": mariadb_server.url}
    if how == "config file":
        (tmp_path / "remoteexec.yaml").write_text(json.dumps({"url": mariadb_server.url}))
        env = {"REMOTEEXEC_URL": ""}
    out = remoteexec("init-db", cwd=tmp_path, env=env)
    assert out.returncode == 0 and "schema ready" in out.stdout, out.stderr
    status = remoteexec("status", cwd=tmp_path, env=env)
    assert status.returncode == 0 and "Workers: 0" in status.stdout, status.stderr
