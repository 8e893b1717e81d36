"""The Starlette application: the page, ``GET /api/snapshot``, the login form and the
guarded actions.

With a token, ``GET /api/snapshot`` answers 401 until the request proves it (the page then
shows the login form).

An action (``POST /api/purge``, ``/api/dead/retry``, ``/api/dead/drop``, ``/api/cancel``:
withdraw waiting or deferred calls by id, ``Backend.withdraw``) answers 403 and
changes nothing unless ``auth.Guard`` lets it through: actions allowed, the token or a login,
and the CSRF token. Each action taken, and each refused, is logged with who (the client's
address and how it proved the token: ``token`` or ``login``) and what.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..backends import Backend
from .api import Sampler
from .auth import COOKIE, SESSION_TTL, Guard

log = logging.getLogger("remoteexec.dashboard")

_MAX_BODY = 64 * 1024  # bytes of an action's JSON body
_MAX_IDS = 1000  # dead letters one action names
_MAX_CALLS, _MAX_CALL_ID = 100, 191  # calls one cancel names, and the length of an id

Action = Callable[[dict[str, Any]], Awaitable[tuple[dict[str, Any], str]]]


def _ids(body: dict[str, Any], most: int = _MAX_IDS, longest: int = 255) -> list[str] | None:
    """The ``ids`` list of an action's body, if it is a list of at most ``most`` strings
    of at most ``longest`` characters."""
    ids = body.get("ids")
    if type(ids) is not list or not 0 < len(ids) <= most:
        return None
    if not all(type(i) is str and 0 < len(i) <= longest for i in ids):
        return None
    return ids


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw or len(raw) > _MAX_BODY:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if type(data) is dict else {}


async def _purge(backend: Backend, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    queue = body.get("queue") if type(body.get("queue")) is str else None
    count = await run_in_threadpool(backend.purge, queue)
    return {"purged": count}, f"purged queue {queue or '(all)'}: {count} task(s)"


async def _drop(backend: Backend, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    ids = _ids(body)
    if ids is None:
        return {"error": "give the dead letters' ids as a list"}, ""
    count = await run_in_threadpool(backend.drop_dead, ids)
    return {"dropped": count}, f"dropped dead letter(s) {', '.join(ids)}: {count}"


async def _retry(backend: Backend, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    ids = _ids(body)
    if ids is None:
        return {"error": "give the dead letters' ids as a list"}, ""
    retry_dead = getattr(backend, "retry_dead", None)
    if retry_dead is None:
        return {"error": f"{type(backend).__name__} cannot retry dead letters"}, ""
    count = int(await run_in_threadpool(retry_dead, ids))
    return {"retried": count}, f"retried dead letter(s) {', '.join(ids)}: {count}"


async def _cancel(backend: Backend, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    ids = _ids(body, _MAX_CALLS, _MAX_CALL_ID)
    if ids is None:
        return {"error": f"give the calls' ids as a list of at most {_MAX_CALLS}"}, ""
    withdrawn = await run_in_threadpool(backend.withdraw, ids)
    done = ", ".join(withdrawn) or "none (claimed, finished or unknown)"
    return {"cancelled": withdrawn}, f"cancelled call(s) {', '.join(ids)}: withdrew {done}"


def make_app(
    backend: Backend, *, allow_actions: bool = False, token: str | None = None
) -> Starlette:
    """The dashboard for ``backend``; actions need ``allow_actions`` and ``token``."""
    sampler = Sampler(backend)
    guard = Guard(allow_actions=allow_actions, token=token)
    page = files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def snapshot(request: Request) -> Response:
        if not guard.may_read(request):
            return JSONResponse({"error": "log in with the dashboard's token"}, status_code=401)
        data = await run_in_threadpool(sampler.snapshot)
        data["actions"] = guard.actions
        data["signed_in"] = guard.signed_in(request) is not None
        return JSONResponse(data)

    async def csrf_token(request: Request) -> Response:
        return JSONResponse({"csrf": guard.csrf})

    async def login(request: Request) -> Response:
        who = request.client.host if request.client else "?"
        raw = (await request.body())[:_MAX_BODY].decode("utf-8", "replace")
        given = parse_qs(raw).get("token", [None])[0]
        session = guard.login(given)
        if session is None:
            log.warning("dashboard: refused login from %s", who)
            return JSONResponse({"error": "wrong token, or none is set"}, status_code=403)
        log.warning("dashboard: %s logged in", who)
        answer = RedirectResponse("/", status_code=303)
        answer.set_cookie(
            COOKIE,
            session,
            max_age=int(SESSION_TTL),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return answer

    async def logout(request: Request) -> Response:
        guard.logout(request)
        answer = RedirectResponse("/", status_code=303)
        answer.delete_cookie(COOKIE)
        return answer

    def guarded(name: str, action: Action) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            who = request.client.host if request.client else "?"
            reason = guard.refused(request)
            if reason is not None:
                log.warning("dashboard: refused %s from %s: %s", name, who, reason)
                return JSONResponse({"error": reason}, status_code=403)
            who += f" ({guard.signed_in(request)})"
            answer, what = await action(await _body(request))
            if "error" in answer:
                return JSONResponse(answer, status_code=400)
            log.warning("dashboard: %s %s", who, what)
            return JSONResponse(answer)

        return endpoint

    post = ["POST"]
    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/snapshot", snapshot),
            Route("/api/csrf", csrf_token),
            Route("/login", login, methods=post),
            Route("/logout", logout, methods=post),
            Route("/api/purge", guarded("purge", partial(_purge, backend)), methods=post),
            Route("/api/dead/drop", guarded("drop", partial(_drop, backend)), methods=post),
            Route("/api/dead/retry", guarded("retry", partial(_retry, backend)), methods=post),
            Route("/api/cancel", guarded("cancel", partial(_cancel, backend)), methods=post),
        ]
    )
