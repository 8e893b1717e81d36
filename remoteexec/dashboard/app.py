"""The Starlette application: the page, ``GET /api/snapshot`` and the guarded actions.

An action answers 403 and changes nothing unless the dashboard allows actions, the request
carries the token (``Authorization: Bearer <token>``) and the CSRF token the page reads from
``GET /api/csrf`` (header ``X-CSRF-Token``). Each action taken is logged with who and what.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from importlib.resources import files

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..backends import Backend
from .api import Sampler

log = logging.getLogger("remoteexec.dashboard")


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def make_app(
    backend: Backend, *, allow_actions: bool = False, token: str | None = None
) -> Starlette:
    """The dashboard for ``backend``; actions need ``allow_actions`` and ``token``."""
    sampler = Sampler(backend)
    csrf = secrets.token_urlsafe(32)
    page = files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def snapshot(request: Request) -> Response:
        data = await run_in_threadpool(sampler.snapshot)
        data["actions"] = allow_actions and token is not None
        return JSONResponse(data)

    async def csrf_token(request: Request) -> Response:
        return JSONResponse({"csrf": csrf})

    def refused(request: Request) -> str | None:
        """Why the action is refused, or None when it may go ahead."""
        if not allow_actions or token is None:
            return "actions are off (start the dashboard with --allow-actions and a token)"
        auth = request.headers.get("authorization", "")
        if not _same(auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None, token):
            return "a valid token is required"
        if not _same(request.headers.get("x-csrf-token"), csrf):
            return "a valid CSRF token is required"
        return None

    async def purge(request: Request) -> Response:
        reason = refused(request)
        who = request.client.host if request.client else "?"
        if reason is not None:
            log.warning("dashboard: refused purge from %s: %s", who, reason)
            return JSONResponse({"error": reason}, status_code=403)
        body = await request.json() if await request.body() else {}
        queue = body.get("queue") if isinstance(body, dict) else None
        queue = queue if isinstance(queue, str) else None
        count = await run_in_threadpool(backend.purge, queue)
        log.warning("dashboard: %s purged queue %s: %d task(s)", who, queue or "(all)", count)
        return JSONResponse({"purged": count})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/snapshot", snapshot),
            Route("/api/csrf", csrf_token),
            Route("/api/purge", purge, methods=["POST"]),
        ]
    )
