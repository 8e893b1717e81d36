"""Type checkers see remote methods typed: mypy --strict and pyright over ``tests/typing/``.

``tests/typing/methods.py`` (``@remote_method``) is checked by mypy without the plugin, by
mypy with ``remoteexec.mypy_plugin`` and by pyright (basedpyright, which ships Node.js in
its wheel: nothing is fetched at test time); ``tests/typing/plugin.py`` (plain ``@remote``)
by mypy with the plugin. A line the checkers must flag carries the checker's own ignore
comment with the error code, and unused ignores are errors (mypy ``warn_unused_ignores``,
pyright ``reportUnnecessaryTypeIgnoreComment``): a clean run means every expected error
was reported on its line with its code, and no other.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from remoteexec import Client, RemoteMethod, Worker, remote, remote_method, using

# Each runs a type checker from scratch (no cache of an earlier run): a minute on a busy machine.
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
METHODS = TYPING / "methods.py"
PLUGIN = TYPING / "plugin.py"


@remote(name="typing-Invoices")
class Invoices:
    @remote_method
    def due_date(self, d: date, *, days: int = 30) -> date:
        return d + timedelta(days=days)

    @remote_method
    async def later(self, d: date) -> date:
        return d + timedelta(days=1)


def test_remote_method_changes_nothing_at_run_time() -> None:
    proxy: Any = Invoices  # for checkers the class itself: __wrapped__ is the proxy's
    plain = proxy.__wrapped__.__dict__["due_date"]
    assert remote_method(plain) is plain
    assert isinstance(Invoices.due_date, RemoteMethod)
    assert proxy.__wrapped__().due_date(date(2026, 1, 1), days=1) == date(2026, 1, 2)  # local
    url = f"memory://{uuid.uuid4().hex}"
    worker = Worker(url, threads=1, lease=5)
    thread = threading.Thread(target=worker.run)
    with Client(url) as client, using(client):
        thread.start()
        try:
            assert Invoices.due_date(date(2026, 1, 1)) == date(2026, 1, 31)
            assert Invoices.due_date.submit(date(2026, 1, 1), days=2).result() == date(2026, 1, 3)
            assert list(Invoices.later.map([date(2026, 1, 1)])) == [date(2026, 1, 2)]
        finally:
            worker.stop()
            thread.join(10)
    assert not thread.is_alive()


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # The checkers (and the mypy plugin they import) must see this tree's remoteexec.
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def expected(path: Path, checker: str) -> int:
    """How many errors ``path`` marks for ``checker`` (``type`` or ``pyright``)."""
    return len(re.findall(rf"  # {checker}: ignore\[[a-zA-Z-]+\]", path.read_text()))


def mypy(config: Path, cache: Path, *files: Path) -> None:
    result = run("-m", "mypy", "--config-file", config, "--cache-dir", cache, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Success: no issues found in {len(files)} source file" in result.stdout


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def test_each_example_expects_errors() -> None:
    # A file whose markers were all lost would pass for the wrong reason.
    assert expected(METHODS, "type") == expected(METHODS, "pyright") == 11
    assert expected(PLUGIN, "type") == 11


def test_mypy_with_the_plugin_types_plain_remote_classes(mypy_cache: Path) -> None:
    mypy(TYPING / "mypy.ini", mypy_cache, METHODS, PLUGIN)


def test_mypy_without_the_plugin_types_remote_method(mypy_cache: Path, tmp_path: Path) -> None:
    config = (TYPING / "mypy.ini").read_text()
    without = re.sub(r"(?m)^plugins = .*\n", "", config)
    assert without != config
    (tmp_path / "mypy.ini").write_text(without)
    mypy(tmp_path / "mypy.ini", mypy_cache, METHODS)


def test_pyright_types_remote_method() -> None:
    result = run(
        "-m",
        "basedpyright",
        "--pythonpath",
        sys.executable,
        "--project",
        TYPING / "pyrightconfig.json",
        "--outputjson",
    )
    report = json.loads(result.stdout)
    messages = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']} ({d.get('rule')})"
        for d in report["generalDiagnostics"]
    ]
    assert messages == []
    assert report["summary"]["filesAnalyzed"] == 1
    assert result.returncode == 0, result.stderr
