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
from remoteexec.backends import DeadLetter, Job, open_backend
from remoteexec.dashboard.app import make_app
from remoteexec.errors import CallPurged, RemoteError, WorkerLost
from remoteexec.liveness import LIVENESS_AFTER, LIVENESS_EVERY
from tests.conftest import fresh_url
from tests.farm import tasks

PIDS_JS = "return [...document.querySelectorAll('#workers tr')].map(r => r.cells[1].textContent)"
FAILED_JS = (
    "return [...document.querySelectorAll('#workers tr')]"
    ".reduce((n, r) => n + Number(r.cells[6].textContent), 0);"
)
DURATIONS_JS = (
    "const rows = [...document.querySelectorAll('#durations tr')];"
    "return rows.length && Object.fromEntries(rows.map(r => [r.cells[0].textContent,"
    " r.cells[1].textContent]))"
)
HEALTH_JS = "return document.querySelector('#health').textContent"
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
            for _ in range(10):  # updates at least every 2 s; 20 s: the heartbeats' lag
                time.sleep(2)  # (up to 3 s: heartbeat, sampling, page) is small beside it
                stamps.add(_page_numbers(browser)[2])
            assert len(stamps) == 11
            workers, done1, _ = _page_numbers(browser)
            ours = completed[0] - count0
            assert workers == 2
            assert ours > 0 and abs((done1 - done0) - ours) <= 0.2 * ours, (done1 - done0, ours)
            with Client(farm.url) as client, using(client):
                for _ in range(3):
                    with pytest.raises(RemoteError):
                        tasks.Failing.execute("x")
            _wait_for(browser, FAILED_JS.replace("return", "return 3 ===").replace(";", ""))
            durations = _wait_for(browser, DURATIONS_JS)
            assert int(durations["CalculateMultipleOfPi.execute"]) > 0, durations
            assert durations["Failing.execute"] == "3", durations
            with urllib.request.urlopen(url + "api/snapshot", timeout=10) as answer:
                points = json.load(answer)["throughput"]
            assert sum(p["failed"] * 1.0 for p in points) > 0, points  # the failed/s line
            health = _wait_for(browser, HEALTH_JS)
            assert ("maxmemory_policy" if "redis" in farm.url else "bytes") in health, health
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


def _post(
    url: str, headers: dict[str, str], path: str = "api/purge", data: Any = None
) -> tuple[int, Any]:
    body = json.dumps({"queue": "q"} if data is None else data).encode()
    request = urllib.request.Request(url + path, body, headers, method="POST")
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


ACTIONS = [
    ("api/cancel", {"ids": ["j0", "unknown"]}, {"cancelled": ["j0"]}),
    ("api/purge", {"queue": "q"}, {"purged": 2}),
    ("api/dead/retry", {"ids": ["d1"]}, {"retried": 1}),
    ("api/dead/drop", {"ids": ["d2"]}, {"dropped": 1}),
]


def _state(backend: Any) -> tuple[Any, ...]:
    stats = backend.stats()
    return stats.queues.get("q", 0), stats.queues.get("r", 0), sorted(d.id for d in stats.dead)


@pytest.mark.parametrize("allow, token", [(False, None), (False, "t"), (True, None), (True, "t")])
def test_actions_answer_403_unless_allowed_with_token_and_csrf(
    tmp_path: Path, allow: bool, token: str | None
) -> None:
    url = f"sqlite:///{tmp_path / 'rx.db'}"
    _queued(url, 3)
    backend = open_backend(url)
    now = time.time()
    backend.bury(DeadLetter("d1", "r", "A.run", "failed", now), Job("d1", "r", "", b"x"))
    backend.bury(DeadLetter("d2", "r", "A.run", "failed", now), Job("d2", "r", "", b"x"))
    before = _state(backend)
    assert before == (3, 0, ["d1", "d2"])
    try:
        for site in _serve(make_app(backend, allow_actions=allow, token=token)):
            csrf = _csrf(site)
            for headers in (
                {},
                {"Authorization": "Bearer t"},
                {"X-CSRF-Token": csrf},
                {"Authorization": "Bearer wrong", "X-CSRF-Token": csrf},
                {"Authorization": "Bearer t", "X-CSRF-Token": "wrong"},
                {"Cookie": "rx_session=forged", "X-CSRF-Token": csrf},
            ):
                for path, body, _ in ACTIONS:
                    assert _post(site, headers, path, body)[0] == 403, (path, headers)
            assert _state(backend) == before
            good = {"Authorization": "Bearer t", "X-CSRF-Token": csrf}
            for path, body, answer in ACTIONS:
                if allow and token:
                    assert _post(site, good, path, body) == (200, answer)
                else:
                    assert _post(site, good, path, body)[0] == 403
            assert _state(backend) == ((0, 1, []) if allow and token else before)
    finally:
        backend.close()


def test_the_login_form_refuses_a_wrong_token_and_a_dashboard_without_one(
    tmp_path: Path,
) -> None:
    backend = open_backend(f"sqlite:///{tmp_path / 'rx.db'}")
    try:
        for allow, token, given, status in [
            (True, "t", "wrong", 403),
            (False, None, "t", 403),
            (False, "t", "t", 303),  # to read: actions stay off (see above)
            (True, "t", "t", 303),
        ]:
            for site in _serve(make_app(backend, allow_actions=allow, token=token)):
                request = urllib.request.Request(
                    site + "login", f"token={given}".encode(), method="POST"
                )
                opener = urllib.request.build_opener(_NoRedirect)
                try:
                    with opener.open(request, timeout=10) as answer:
                        got, cookie = answer.status, answer.headers.get("set-cookie", "")
                except urllib.error.HTTPError as exc:
                    with exc:
                        got, cookie = exc.code, exc.headers.get("set-cookie", "")
                assert got == status
                assert ("rx_session=" in cookie) == (status == 303)
                if cookie:
                    assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
    finally:
        backend.close()


def test_with_a_token_the_data_is_only_for_who_proves_it(tmp_path: Path) -> None:
    backend = open_backend(f"sqlite:///{tmp_path / 'rx.db'}")
    try:
        for site in _serve(make_app(backend, token="t")):
            for headers, status in [({}, 401), ({"Authorization": "Bearer x"}, 401)]:
                request = urllib.request.Request(site + "api/snapshot", headers=headers)
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(request, timeout=10)
                with refused.value:
                    assert refused.value.code == status
            token = {"Authorization": "Bearer t"}
            request = urllib.request.Request(site + "api/snapshot", headers=token)
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert json.load(answer)["actions"] is False
    finally:
        backend.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def test_a_purge_is_logged_with_who_and_what(tmp_path: Path, caplog: Any) -> None:
    url = f"sqlite:///{tmp_path / 'rx.db'}"
    _queued(url, 2)
    backend = open_backend(url)
    try:
        for site in _serve(make_app(backend, allow_actions=True, token="t")):
            with caplog.at_level(logging.INFO, logger="remoteexec.dashboard"):
                _post(site, {"Authorization": "Bearer t", "X-CSRF-Token": _csrf(site)})
        logged = [r.getMessage() for r in caplog.records]
        assert "dashboard: 127.0.0.1 (token) purged queue q: 2 task(s)" in logged
    finally:
        backend.close()


@pytest.mark.parametrize("bad", [{}, {"ids": "j0"}, {"ids": []}, {"ids": [1]}, {"ids": [""]},
    {"ids": ["x" * 192]}, {"ids": ["j"] * 101}])  # fmt: skip
def test_a_cancel_takes_a_list_of_at_most_100_short_ids(tmp_path: Path, bad: Any) -> None:
    url = f"sqlite:///{tmp_path / 'rx.db'}"
    _queued(url, 1)
    backend = open_backend(url)
    try:
        for site in _serve(make_app(backend, allow_actions=True, token="t")):
            good = {"Authorization": "Bearer t", "X-CSRF-Token": _csrf(site)}
            assert _post(site, good, "api/cancel", bad)[0] == 400
            assert backend.states(["j0"]) == {"j0": "waiting"}
            most = {"ids": ["x" * 191] * 99 + ["j0"]}
            assert _post(site, good, "api/cancel", most) == (200, {"cancelled": ["j0"]})
    finally:
        backend.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["sqlite", "redis", "mysql"])
def test_a_cancelled_waiting_call_ends_its_callers_future_with_call_purged(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: Any
) -> None:
    url = fresh_url(kind, request, tmp_path)
    backend = open_backend(url)
    bound = LIVENESS_AFTER + 2 * LIVENESS_EVERY + 1.0 + 2.0  # liveness.py's, with slack
    try:
        with Client(url) as client, using(client):
            running = tasks.Echo.value.submit("running")  # no worker serves its queue
            [claim] = backend.claim(["default"], limit=1, lease=60, wait=10)  # a worker's
            cancelled = tasks.Echo.value.submit("cancelled")
            ids = [str(cancelled.task_id), str(running.task_id)]
            assert claim.id == ids[1]
            deadline = time.monotonic() + 10
            while backend.states(ids) != {ids[0]: "waiting", ids[1]: "running"}:
                assert time.monotonic() < deadline, "the call was not queued"
                time.sleep(0.05)
            for site in _serve(make_app(backend, allow_actions=True, token="t")):
                good = {"Authorization": "Bearer t", "X-CSRF-Token": _csrf(site)}
                with caplog.at_level(logging.INFO, logger="remoteexec.dashboard"):
                    answer = _post(site, good, "api/cancel", {"ids": ids})
                assert answer == (200, {"cancelled": [ids[0]]})  # the claimed one runs on
            assert isinstance(cancelled.exception(timeout=bound), CallPurged)
            assert backend.states(ids) == {ids[1]: "running"}
            backend.release([claim])
            logged = [r.getMessage() for r in caplog.records]
            what = f"cancelled call(s) {ids[0]}, {ids[1]}: withdrew {ids[0]}"
            assert f"dashboard: 127.0.0.1 (token) {what}" in logged
    finally:
        backend.close()


def _log_in(browser: Any, token: str) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + 10
    while not browser.find_elements(By.ID, "token"):
        assert time.monotonic() < deadline, "the page shows no login form"
        time.sleep(0.1)
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login").click()


def _wait_for(browser: Any, script: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := browser.execute_script(script)):
        assert time.monotonic() < deadline, f"never true: {script}"
        time.sleep(0.1)
    return value


DEAD_IDS_JS = "return [...document.querySelectorAll('#dead tr')].map(r => r.dataset.id)"


def test_the_login_form_sets_a_strict_http_only_session_that_drops_a_dead_letter(
    browser: Any, caplog: Any
) -> None:
    backend = open_backend(f"memory://{os.urandom(4).hex()}")
    trace = 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: bad'
    backend.bury(DeadLetter("d1", "q", "Poison.execute", "worker lost 3 times", time.time(), trace))
    backend.bury(DeadLetter("d2", "q", "Other.execute", "undecodable", time.time()))
    for site in _serve(make_app(backend, allow_actions=True, token="s3cret")):
        browser.delete_all_cookies()
        browser.get(site)
        _wait_for(browser, "return document.getElementById('token')")  # data only after login
        assert not browser.execute_script("return document.querySelectorAll('#dead tr').length")
        _log_in(browser, "wrong")
        _wait_for(browser, "return document.body.innerText.includes('wrong token')", 5.0)
        assert "wrong token" in browser.page_source  # the 403 answer
        browser.get(site)
        _log_in(browser, "s3cret")
        shown = _wait_for(browser, "return document.querySelector('#dead pre.traceback')")
        assert shown.get_attribute("textContent") == trace
        [cookie] = browser.get_cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
            "rx_session",
            True,
            "Strict",
        )
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly
        _wait_for(browser, "return document.querySelector('#dead tr[data-id=d1] button')")
        with caplog.at_level(logging.INFO, logger="remoteexec.dashboard"):
            browser.execute_script(
                "[...document.querySelectorAll('#dead tr[data-id=d1] button')]"
                ".find(b => b.textContent === 'drop').click()"
            )
            _wait_for(browser, DEAD_IDS_JS.replace("return", "return !") + ".includes('d1')")
        assert [d.id for d in backend.dead_letters()] == ["d2"]
        logged = [r.getMessage() for r in caplog.records]
        assert "dashboard: 127.0.0.1 (login) dropped dead letter(s) d1: 1" in logged
        # The session alone is no action: without the CSRF token the answer is 403.
        session = {"Cookie": f"rx_session={cookie['value']}"}
        assert _post(site, session, "api/dead/drop", {"ids": ["d2"]})[0] == 403
        csrf = {"X-CSRF-Token": _csrf(site)}
        assert _post(site, {**session, **csrf}, "api/dead/drop", {"ids": ["d2"]}) == (
            200,
            {"dropped": 1},
        )
        # The form beside "log out" cancels a waiting call by its id.
        backend.enqueue([Job("c1", "q", "nobody", b"x")])
        browser.execute_script("window.confirm = () => true")
        field = _wait_for(browser, "return document.getElementById('cancel-id')")
        field.send_keys("c1")
        browser.execute_script("document.querySelector('#cancel button').click()")
        _wait_for(browser, "return document.getElementById('result').textContent.includes('c1')")
        assert (backend.states(["c1"]), backend.purged(["c1"])) == ({}, {"c1"})
    backend.close()


def _poison(farm: Any, kind: str) -> str:
    """Make a dead letter: a sent call that raises, or a call that kills its worker on
    every attempt. Returns the task's id."""
    with Client(farm.url) as client, using(client):
        if kind == "raises":
            return str(tasks.Failing.execute.send("poison"))
        future = tasks.Poison.execute.submit()
        with pytest.raises(WorkerLost):
            future.result(timeout=60)
        return str(future.task_id)


@pytest.mark.parametrize("kind", ["raises", "kills its worker"])
@pytest.mark.parametrize("farm_url", ["sqlite"], indirect=True)
def test_a_poison_tasks_dead_letter_shows_and_a_retry_from_the_page_runs_it_again(
    farm: Any, browser: Any, kind: str
) -> None:
    farm.start(processes=2)
    farm.worker_pids(2)
    backend = open_backend(farm.url)
    try:
        task_id = _poison(farm, kind)
        deadline = time.monotonic() + 30
        while not (letters := [d for d in backend.dead_letters() if d.id == task_id]):
            assert time.monotonic() < deadline, "no dead letter"
            time.sleep(0.2)
        [letter] = letters
        if kind == "raises":
            assert "ValueError: bad value: poison" in letter.traceback, letter
        for site in _serve(make_app(backend, allow_actions=True, token="t")):
            browser.delete_all_cookies()
            browser.get(site)
            _log_in(browser, "t")
            _wait_for(browser, DEAD_IDS_JS + f".includes({json.dumps(task_id)})")
            shown = browser.execute_script(
                "return [...document.querySelectorAll('#dead pre.traceback')]"
                ".map(p => p.textContent)"
            )
            assert shown == ([letter.traceback] if letter.traceback else [])
            _wait_for(browser, "return document.querySelector('#dead tr button')")
            browser.execute_script(
                "[...document.querySelectorAll('#dead tr button')]"
                ".find(b => b.textContent === 'retry').click()"
            )
            # It runs again: it fails again and is buried again, later.
            deadline = time.monotonic() + 60
            while not [d for d in backend.dead_letters() if d.id == task_id and d.at > letter.at]:
                assert time.monotonic() < deadline, "the retried task did not run again"
                time.sleep(0.2)
    finally:
        backend.close()
