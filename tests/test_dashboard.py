"""`remoteexec dashboard`: the page in headless Chromium over real workers; guarded actions."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import uvicorn

from remoteexec import Client, using
from remoteexec.backends import Job, open_backend
from remoteexec.dashboard.app import make_app
from tests.farm import tasks

PIDS_JS = "return [...document.querySelectorAll('#workers tr')].map(r => r.cells[1].textContent)"
DOCS_SHOT = Path(__file__).parent.parent / "docs" / "images" / "dashboard.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, driven through Debian's chromedriver."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (shutil.which("chromium") and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("chromium and chromium-driver are not installed (scripts/test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1100,900",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def _serve(app: Any) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)


def _page_numbers(driver: Any) -> tuple[int, int, str]:
    """Workers shown, the sum of their ``done`` column, and the page's update stamp, read
    from the rendered DOM in one step (the page re-renders every second)."""
    rows, done, stamp = driver.execute_script(
        "const rows = [...document.querySelectorAll('#workers tr')];"
        "return [rows.length, rows.reduce((n, r) => n + Number(r.cells[5].textContent), 0),"
        " document.body.dataset.updated];"
    )
    return int(rows), int(done), str(stamp)


@pytest.mark.parametrize("farm_url", ["sqlite", "redis", "mysql"], indirect=True)
def test_page_shows_throughput_and_workers_of_a_live_farm(farm: Any, browser: Any) -> None:
    farm.start(processes=2)
    farm.worker_pids(2)
    backend = open_backend(farm.url)
    stop = threading.Event()
    completed = [0]

    def load() -> None:
        with Client(farm.url) as client, using(client):
            while not stop.is_set():
                tasks.CalculateMultipleOfPi.execute(3)
                completed[0] += 1

    loader = threading.Thread(target=load, daemon=True)
    try:
        for url in _serve(make_app(backend)):
            browser.get(url)
            loader.start()
            time.sleep(3)
            workers, done0, stamp0 = _page_numbers(browser)
            count0 = completed[0]
            stamps = {stamp0}
            for _ in range(6):  # updates at least every 2 s
                time.sleep(2)
                stamps.add(_page_numbers(browser)[2])
            assert len(stamps) == 7
            workers, done1, _ = _page_numbers(browser)
            ours = completed[0] - count0
            assert workers == 2
            assert ours > 0 and abs((done1 - done0) - ours) <= 0.2 * ours, (done1 - done0, ours)
            pids = browser.execute_script(PIDS_JS)
            os.kill(int(pids[0]), signal.SIGKILL)  # lease 2 s: gone from the page within 7 s
            deadline = time.monotonic() + 2.0 + 5.0
            while pids[0] in browser.execute_script(PIDS_JS):
                assert time.monotonic() < deadline, "the killed worker is still on the page"
                time.sleep(0.2)
            if "sqlite" in farm.url:
                DOCS_SHOT.parent.mkdir(exist_ok=True)
                browser.save_screenshot(str(DOCS_SHOT))
    finally:
        stop.set()
        loader.join(10)
        backend.close()


def _post(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    body = json.dumps({"queue": "q"}).encode()
    request = urllib.request.Request(url + "api/purge", body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _csrf(url: str) -> str:
    with urllib.request.urlopen(url + "api/csrf", timeout=10) as answer:
        return str(json.load(answer)["csrf"])


def _queued(url: str, n: int) -> None:
    backend = open_backend(url)
    backend.enqueue([Job(f"j{i}", "q", "nobody", b"x") for i in range(n)])
    backend.close()


@pytest.mark.parametrize("allow, token", [(False, None), (False, "t"), (True, None), (True, "t")])
def test_actions_answer_403_unless_allowed_with_token_and_csrf(
    tmp_path: Path, allow: bool, token: str | None
) -> None:
    url = f"sqlite:///{tmp_path / 'rx.db'}"
    _queued(url, 3)
    backend = open_backend(url)
    try:
        for site in _serve(make_app(backend, allow_actions=allow, token=token)):
            csrf = _csrf(site)
            for headers in (
                {},
                {"Authorization": "Bearer t"},
                {"X-CSRF-Token": csrf},
                {"Authorization": "Bearer wrong", "X-CSRF-Token": csrf},
                {"Authorization": "Bearer t", "X-CSRF-Token": "wrong"},
            ):
                assert _post(site, headers)[0] == 403
            assert backend.stats().queues.get("q") == 3
            good = {"Authorization": "Bearer t", "X-CSRF-Token": csrf}
            status, answer = _post(site, good)
            if allow and token:
                assert (status, answer) == (200, {"purged": 3})
                assert backend.stats().queues.get("q", 0) == 0
            else:
                assert status == 403
                assert backend.stats().queues.get("q") == 3
    finally:
        backend.close()


def test_a_purge_is_logged_with_who_and_what(tmp_path: Path, caplog: Any) -> None:
    url = f"sqlite:///{tmp_path / 'rx.db'}"
    _queued(url, 2)
    backend = open_backend(url)
    try:
        for site in _serve(make_app(backend, allow_actions=True, token="t")):
            with caplog.at_level(logging.INFO, logger="remoteexec.dashboard"):
                _post(site, {"Authorization": "Bearer t", "X-CSRF-Token": _csrf(site)})
        assert any("127.0.0.1 purged queue q: 2 task(s)" in r.getMessage() for r in caplog.records)
    finally:
        backend.close()
