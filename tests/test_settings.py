"""One settings model for clients and workers: every worker option from the flag, the
``REMOTEEXEC_*`` variable or the ``worker:`` section of ``remoteexec.yaml``, in that order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from remoteexec.client import Client
from remoteexec.errors import ConfigurationError
from remoteexec.future import CallOptions
from remoteexec.worker_config import OPTIONS, Option, resolve_worker
from tests.farm import Farm, worker_command


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder, with no ``REMOTEEXEC_*`` variable set."""
    for name in list(os.environ):
        if name.startswith("REMOTEEXEC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(folder: Path, data: dict[str, Any]) -> None:
    (folder / "remoteexec.yaml").write_text(yaml.safe_dump(data))


# name: (file value, environment value, argument value, and what each resolves to)
CASES: dict[str, tuple[Any, str, Any, Any, Any, Any]] = {
    "imports": (["a", "b"], "c,d", ["e"], ["a", "b"], ["c", "d"], ["e"]),
    "tasks_dir": ("tasks", "env_tasks", "arg_tasks", "tasks", "env_tasks", "arg_tasks"),
    "queues": ("jobs", "hi, lo", "x,y", ["jobs"], ["hi", "lo"], ["x", "y"]),
    "processes": (3, "4", 5, 3, 4, 5),
    "threads": (6, "7", 8, 6, 7, 8),
    "lease": (12, "13.5", 14.0, 12.0, 13.5, 14.0),
    "burst": (True, "no", True, True, False, True),
    "allow_empty": (False, "yes", False, False, True, False),
    "connect_timeout": (1.5, "2", 3.0, 1.5, 2.0, 3.0),
    "log_level": ("debug", "warning", "ERROR", "DEBUG", "WARNING", "ERROR"),
}


def test_every_worker_option_has_a_precedence_case() -> None:
    assert set(CASES) == set(OPTIONS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_file_only_then_environment_over_file_then_argument_over_environment(
    folder: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    file_value, env_value, arg_value, from_file, from_env, from_arg = CASES[name]
    assert resolve_worker()[name] == OPTIONS[name].default
    write_config(folder, {"worker": {name: file_value}})
    assert resolve_worker()[name] == from_file
    monkeypatch.setenv(Option.env(name), env_value)
    assert resolve_worker()[name] == from_env
    assert resolve_worker(**{name: arg_value})[name] == from_arg
    assert resolve_worker(**{name: None})[name] == from_env  # None: not given


@pytest.mark.parametrize(
    ("name", "bad"),
    [("processes", "0"), ("threads", "many"), ("lease", "-1"), ("burst", "maybe"),
     ("log_level", "loud"), ("queues", " , "), ("connect_timeout", "inf")],
)  # fmt: skip
def test_an_invalid_value_names_the_setting_and_its_source(
    folder: Path, monkeypatch: pytest.MonkeyPatch, name: str, bad: str
) -> None:
    write_config(folder, {"worker": {name: bad}})
    with pytest.raises(ConfigurationError, match=rf"{name}.*worker\.{name} in config file"):
        resolve_worker()
    (folder / "remoteexec.yaml").unlink()
    monkeypatch.setenv(Option.env(name), bad)
    with pytest.raises(ConfigurationError, match=rf"{name}.*{Option.env(name)}"):
        resolve_worker()


def test_an_unknown_worker_key_is_named(folder: Path) -> None:
    write_config(folder, {"worker": {"proceses": 2}})
    with pytest.raises(ConfigurationError, match=r"worker\.proceses"):
        resolve_worker()


def test_a_worker_section_does_not_disturb_the_shared_settings(folder: Path) -> None:
    from remoteexec.config import resolve

    write_config(folder, {"queue": "jobs", "worker": {"processes": 2}})
    assert resolve().queue == "jobs"


def test_a_worker_and_a_client_started_in_a_folder_with_only_its_yaml_agree_on_the_queue(
    folder: Path,
) -> None:
    url = f"sqlite:///{folder / 'jobs.db'}"
    write_config(
        folder,
        {"url": url, "queue": "jobs", "worker": {"imports": ["rx_e2e_tasks"], "lease": 5}},
    )
    farm = Farm(url, folder)
    path = os.pathsep.join([str(folder), *sys.path])
    env = dict(os.environ, PYTHONPATH=path)
    with open(folder / "worker-0.log", "ab") as log:  # no flag: all from remoteexec.yaml
        worker = subprocess.Popen(worker_command(), cwd=folder, env=env, stdout=log, stderr=log)
    farm.commands.append(worker)
    try:
        farm.worker_pids(1)
        with Client() as client:
            assert client.settings.queue == "jobs"
            future = client.submit("Echo", "value", [41], {}, CallOptions(timeout=30))
            assert future.result() == 41
        assert "serving jobs with 1 thread(s), lease 5 s" in farm.logs()
    finally:
        farm.stop()


def test_a_worker_with_an_invalid_setting_exits_78_naming_it(folder: Path) -> None:
    write_config(folder, {"worker": {"threads": 0}})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), REMOTEEXEC_PROCESSES="2")
    out = subprocess.run(
        worker_command(), cwd=folder, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 78
    assert "threads must be a whole number of at least 1, not 0 (worker.threads in config" in (
        out.stderr
    )
