"""Fire and forget: ``send`` on real ``remoteexec-worker`` processes, every backend that
processes can share (sqlite, redis, mysql)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.farm import Farm, ledger, tasks
from tests.test_e2e import client, wait_for  # noqa: F401  (the fixture, used by name)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("client")]


def test_send_returns_the_id_at_once_and_the_call_runs_with_no_reply_kept(
    farm: Farm, tmp_path: Path
) -> None:
    path = tmp_path / "ledger"
    ids = [tasks.Slow.execute.send(0, ledger=str(path), tag=f"t{i}") for i in range(5)]
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 5
    sent_later = tasks.Slow.execute.options(max_attempts=2).send(0, str(path), "opt")
    farm.start()
    ends = lambda: [line[1] for line in ledger(path) if line[0] == "end"]  # noqa: E731
    wait_for(lambda: len(ends()) == 6, message="the six sent calls to run")
    assert sorted(ends()) == sorted([f"t{i}" for i in range(5)] + ["opt"])
    assert sent_later not in ids
    # The client reads no replies for sent calls: a normal call still gets its own.
    assert tasks.Echo.value(7) == 7


def test_a_failing_sent_call_goes_to_the_worker_log_and_the_worker_keeps_going(farm: Farm) -> None:
    farm.start()
    sent = tasks.Failing.execute.send("boom from send")
    wait_for(lambda: "boom from send" in farm.logs(), message="the failure in the worker's log")
    assert sent in farm.logs()
    assert tasks.Echo.value("after") == "after"


def test_a_sent_call_that_loses_its_worker_every_time_ends_as_a_dead_letter(
    farm: Farm, farm_url: str, tmp_path: Path
) -> None:
    from remoteexec.backends import open_backend

    farm.start(lease=1.0)
    farm.worker_pids(1)
    book = tmp_path / "ledger.txt"
    sent = tasks.KillsItsWorker.execute.send(str(book))  # max_attempts=2
    backend = open_backend(farm_url)
    try:
        wait_for(
            lambda: any(letter.id == sent for letter in backend.stats().dead),
            timeout=60,
            message="the dead letter",
        )
    finally:
        backend.close()
    assert len(ledger(book)) == 2
    assert tasks.Echo.value(3) == 3  # the farm still serves
