"""The README's first example, copied into files exactly as printed, against a real worker.

The files are the README's ``python`` code blocks whose first line is ``# NAME.py``, so
this test follows the README: change the example there and this runs the new one. The
last test checks the guard behind the one-file case on every call path, in one process.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import remoteexec
from remoteexec import ConfigurationError
from remoteexec.client import importing_tasks
from tests.farm import worker_command

README = Path(__file__).parent.parent / "README.md"
MESSAGE = "remote call made while the worker imports task module 'tasks'"


def example_files() -> dict[str, str]:
    """The README's ``# NAME.py`` code blocks, by file name."""
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.M | re.S)
    files = {}
    for block in blocks:
        first = block.splitlines()[0]
        match = re.fullmatch(r"# (\w+\.py)", first)
        if match:
            files[match.group(1)] = block
    return files


def clean_env() -> dict[str, str]:
    """The environment without REMOTEEXEC_* settings: the example runs on its default."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REMOTEEXEC_")}


def test_the_readme_prints_a_two_file_example() -> None:
    files = example_files()
    assert set(files) == {"tasks.py", "client.py"}
    assert 'if __name__ == "__main__":' in files["client.py"]
    assert "@remote" in files["tasks.py"]


def test_the_two_file_example_runs_as_written_against_a_worker(tmp_path: Path) -> None:
    for name, text in example_files().items():
        (tmp_path / name).write_text(text)
    env = clean_env()
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [*worker_command(), "--import", "tasks"],
            cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    try:
        out = subprocess.run(
            [sys.executable, "client.py"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        worker.send_signal(signal.SIGTERM)
        status = worker.wait(60)
    logs = (tmp_path / "worker.log").read_text()
    assert out.returncode == 0, out.stderr + logs
    assert out.stdout.strip() == repr(math.pi * 42)
    assert status == 0, logs
    assert (tmp_path / "remoteexec.db").exists()  # the embedded default, in the folder


def test_the_example_in_one_file_stops_the_worker_at_once_with_the_fix(
    tmp_path: Path,
) -> None:
    files = example_files()
    # The client's call moved to module level, below the class, in the task module.
    guarded = files["client.py"].split('if __name__ == "__main__":\n', 1)[1]
    (tmp_path / "tasks.py").write_text(files["tasks.py"] + "\n" + textwrap.dedent(guarded))
    worker = subprocess.Popen(
        [*worker_command(), "--import", "tasks"],
        cwd=tmp_path, env=clean_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, stderr = worker.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        worker.terminate()  # the supervisor passes it on to its worker process
        worker.communicate(timeout=30)
        pytest.fail("the worker hung importing a task module that makes a remote call")
    assert worker.returncode == 78, stderr
    assert MESSAGE in stderr
    assert "if __name__ == '__main__':" in stderr


def test_every_call_path_fails_while_a_worker_imports_its_task_modules() -> None:
    client = remoteexec.Client("memory://readme-import-guard")
    task = remoteexec.proxy("Anything")
    token = importing_tasks.set("tasks")
    try:
        with remoteexec.using(client):
            for call in (
                lambda: task.execute(1),
                lambda: task.execute.submit(1),
                lambda: list(task.execute.map([1, 2])),
                lambda: client.submit("Anything", "execute", [1], {}),
            ):
                with pytest.raises(ConfigurationError, match=re.escape(MESSAGE)):
                    call()
        assert sum(client.backend.stats().queues.values()) == 0  # nothing was sent
    finally:
        importing_tasks.reset(token)
    try:
        future = client.submit("Anything", "execute", [1], {})  # once the import is done
        assert future.cancel()
    finally:
        client.close()
