"""Least privilege, shown: the broker users of docs/security.md ("Least privilege"), created
from the lines written there, run a real farm end to end, and the broker refuses them
anything else.

Each test starts a private server, creates the documented users with test passwords, starts
a ``remoteexec-worker`` as the worker user (its password in a file, never on a command line)
and calls through a client user: plain, async, failing, nested, time-limited (a helper
process), slow (the client's lost-call checks), signed (start records) and cancelled calls;
then ``remoteexec status`` as the client and ``remoteexec purge`` and ``withdraw`` as the worker.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from remoteexec import Client, RemoteError, WorkerLost, using
from tests.farm import Farm, tasks

pytestmark = pytest.mark.timeout(180)

SECURITY = Path(__file__).resolve().parent.parent / "docs" / "security.md"
PASSWORDS = {
    "ADMIN-PASSWORD": "adm-9fQ2",
    "CLIENT-PASSWORD": "cli-4kT7",
    "WORKER-PASSWORD": "wrk-8pX3",
}
SECRET = "privileges-test-secret"
#: What no remoteexec user may run (a key outside the prefix included).
FORBIDDEN = [
    ["FLUSHALL"], ["FLUSHDB"], ["CONFIG", "GET", "*"], ["KEYS", "*"], ["DEBUG", "SLEEP", "0"],
    ["SHUTDOWN"], ["SET", "elsewhere", "x"], ["GET", "elsewhere"], ["EVAL", "return 1", "0"],
]  # fmt: skip


def documented(heading: str, language: str, n: int = 0) -> str:
    """The ``n``-th ``language`` code block under ``heading`` in docs/security.md, with the
    placeholder passwords replaced by PASSWORDS."""
    section = SECURITY.read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    block = section.split(f"```{language}\n")[n + 1].split("\n```", 1)[0]
    for placeholder, password in PASSWORDS.items():
        block = block.replace(placeholder, password)
    return block


def remoteexec(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "remoteexec", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, env=dict(os.environ, REMOTEEXEC_SECRET=SECRET, **env),
    )  # fmt: skip


def password_file(folder: Path, role: str) -> str:
    path = folder / f"{role}.password"
    path.write_text(PASSWORDS[f"{role.upper()}-PASSWORD"] + "\n")
    path.chmod(0o600)
    return str(path)


def run_farm(farm: Farm, folder: Path, worker_url: str, client_url: str) -> None:
    """A worker as the worker user, calls as the client user: every kind of call succeeds."""
    farm.start(
        "--threads", "2",
        url_args=["--url", worker_url, "--password-file", password_file(folder, "worker")],
        env={"REMOTEEXEC_SECRET": SECRET},
    )  # fmt: skip
    farm.worker_pids(1)
    with Client(client_url, secret=SECRET) as client, using(client):
        assert tasks.CalculateMultipleOfPi.execute(2) == pytest.approx(6.283185307179586)
        assert tasks.Echo.later(5) == 5
        with pytest.raises(RemoteError, match="bad value: x"):
            tasks.Failing.execute("x")
        assert tasks.Nested.execute(1) == pytest.approx(3.141592653589793)
        helper, value = tasks.LimitedNested.execute(1)  # a helper process, with its client
        assert value == pytest.approx(3.141592653589793)
        assert tasks.Slow.execute(3) > 0  # the client checks on it meanwhile
        idle = tasks.Echo.value.options(queue="nobody-serves-this").submit(1)
        assert idle.cancel()
        assert tasks.Echo.value.options(delay=0.3).submit(7).result(timeout=30) == 7
        deferred = tasks.Echo.value.options(delay=60, timeout=120).submit(1)
        assert deferred.cancel()
        kept = tasks.Echo.value.options(keep_result=60).send(8)
        assert client.result(kept, timeout=30) == 8 and client.status(kept) == "done"
        assert tasks.Flaky.execute(str(folder / "flaky.txt"), 1) == 2  # one retry
        lines = farm.command_lines()
        assert helper in lines and not [
            line for line in lines.values() if any(p in line for p in PASSWORDS.values())
        ]
        with pytest.raises(WorkerLost):  # the supervisor hands its claims back, twice
            tasks.KillsItsWorker.execute()


def check_tools(folder: Path, client_url: str, worker_url: str) -> None:
    """``status`` works as the client user; ``purge`` needs (and works as) the worker user."""
    client_pw = {"REMOTEEXEC_PASSWORD_FILE": password_file(folder, "client")}
    out = remoteexec("status", "--url", client_url, cwd=folder, **client_pw)
    assert out.returncode == 0 and "Workers:" in out.stdout, out.stderr
    out = remoteexec("purge", "--url", client_url, cwd=folder, **client_pw)
    assert out.returncode == 1, out.stdout
    worker_pw = {"REMOTEEXEC_PASSWORD_FILE": password_file(folder, "worker")}
    out = remoteexec("purge", "--url", worker_url, cwd=folder, **worker_pw)
    assert out.returncode == 0 and out.stdout.startswith("purged 0"), out.stderr


def check_withdraw(worker_url: str) -> None:
    """The dashboard's cancel (``Backend.withdraw``) works as the worker user."""
    import time
    import uuid

    from remoteexec.backends import Job, open_backend

    backend = open_backend(worker_url)
    try:
        now, later = Job(uuid.uuid4().hex, "q", "r", b"x"), Job(uuid.uuid4().hex, "q", "r", b"x")
        later.not_before = time.time() + 60
        backend.enqueue([now, later])
        assert backend.withdraw([now.id, later.id]) == [now.id, later.id]
        assert backend.purged([now.id, later.id]) == {now.id, later.id}
    finally:
        backend.close()


# Redis ------------------------------------------------------------------------------------


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[tuple[redis.Redis, int]]:
    """A private Redis with the documented users; its admin client, and its port."""
    from tests._redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        admin = server.client()
        lines = documented("### Redis", "text").splitlines()
        assert [line.split()[2] for line in lines] == ["remoteexec-client", "remoteexec-worker"]
        for line in lines:
            admin.execute_command(*line.split())
        admin.execute_command("ACL", "LOG", "RESET")
        yield admin, server.port
        admin.close()


def quietly_refused(admin: redis.Redis) -> list[dict[str, str]]:
    """What the server refused the users (``ACL LOG``), even where the caller went on."""
    log = admin.acl_log()
    return [e for e in log if e["object"] != "client|setinfo"]  # redis-py ignores that one


def test_the_documented_redis_users_run_a_farm_and_nothing_else(
    acl_server: tuple[redis.Redis, int], tmp_path: Path
) -> None:
    admin, port = acl_server
    for user in ("remoteexec-client", "remoteexec-worker"):
        for command in FORBIDDEN:
            allowed = admin.execute_command("ACL", "DRYRUN", user, *command)
            assert allowed != b"OK", (user, command)
    assert admin.execute_command("ACL", "DRYRUN", "remoteexec-client", "SCRIPT", "LOAD", "")
    base = f"127.0.0.1:{port}/0"
    farm = Farm(f"redis://remoteexec-worker:{PASSWORDS['WORKER-PASSWORD']}@{base}", tmp_path)
    try:
        run_farm(
            farm,
            tmp_path,
            f"redis://remoteexec-worker@{base}",
            f"redis://remoteexec-client:{PASSWORDS['CLIENT-PASSWORD']}@{base}",
        )
        assert quietly_refused(admin) == []
        check_tools(
            tmp_path, f"redis://remoteexec-client@{base}", f"redis://remoteexec-worker@{base}"
        )
        check_withdraw(f"redis://remoteexec-worker:{PASSWORDS['WORKER-PASSWORD']}@{base}")
    finally:
        farm.stop()
    assert {e["username"] for e in quietly_refused(admin)} == {"remoteexec-client"}  # its purge
    assert "scripting refused" not in farm.logs()  # the worker ran the Lua scripts
    assert int(admin.info("commandstats")["cmdstat_evalsha"]["calls"]) > 0
    # The server itself refuses what the grant leaves out.
    worker = redis.Redis(
        port=port, username="remoteexec-worker", password=PASSWORDS["WORKER-PASSWORD"]
    )
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.set("elsewhere", "x")
    worker.close()


# MySQL ------------------------------------------------------------------------------------


def grant(server: Any, statements: str) -> None:
    with server.connect() as root, root.cursor() as cur:
        for statement in statements.split(";"):
            if statement.strip():
                cur.execute(statement)


def test_the_documented_mysql_users_run_a_farm_and_cannot_drop_a_table(tmp_path: Path) -> None:
    from tests._mariadb_server import MariaDBServer

    with MariaDBServer(tmp_path / "mariadb", database="remoteexec") as server:
        grant(server, documented("### MySQL / MariaDB", "sql", 0))  # the admin
        base = f"127.0.0.1:{server.port}/remoteexec"
        (tmp_path / "admin.url").write_text(f"mysql://remoteexec_admin@{base}\n")
        password_file(tmp_path, "admin")
        out = remoteexec(
            "init-db", "--url-file", "admin.url", "--password-file", "admin.password",
            cwd=tmp_path, REMOTEEXEC_PASSWORD="not-this-one",  # the flag wins
        )  # fmt: skip
        assert out.returncode == 0 and "schema ready" in out.stdout, out.stderr
        grant(server, documented("### MySQL / MariaDB", "sql", 1))  # the client and worker
        farm = Farm(f"mysql://remoteexec_worker:{PASSWORDS['WORKER-PASSWORD']}@{base}", tmp_path)
        try:
            run_farm(
                farm,
                tmp_path,
                f"mysql://remoteexec_worker@{base}",
                f"mysql://remoteexec_client:{PASSWORDS['CLIENT-PASSWORD']}@{base}",
            )
            check_tools(
                tmp_path, f"mysql://remoteexec_client@{base}", f"mysql://remoteexec_worker@{base}"
            )
            check_withdraw(f"mysql://remoteexec_worker:{PASSWORDS['WORKER-PASSWORD']}@{base}")
        finally:
            farm.stop()
        worker = pymysql.connect(
            host="127.0.0.1", port=server.port, user="remoteexec_worker",
            password=PASSWORDS["WORKER-PASSWORD"], database="remoteexec",
        )  # fmt: skip
        with worker, worker.cursor() as cur:
            for statement in (
                "DROP TABLE remoteexec_tasks",
                "ALTER TABLE remoteexec_tasks ADD COLUMN x INT",
                "CREATE TABLE elsewhere (x INT)",
                "UPDATE remoteexec_schema SET version = 0",
                "SELECT * FROM mysql.user",
            ):
                with pytest.raises(pymysql.err.OperationalError) as refused:
                    cur.execute(statement)
                assert refused.value.args[0] in (1142, 1143), statement  # command/column denied
            cur.execute("SELECT COUNT(*) FROM remoteexec_tasks")
        for password in PASSWORDS.values():
            assert password not in farm.logs()
