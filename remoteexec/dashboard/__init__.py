"""``remoteexec dashboard``: a web page and a JSON API over ``Backend.stats()``.

Read-only unless started with ``allow_actions=True`` and a token; see ``docs/dashboard.md``.
Needs the ``dashboard`` extra (Starlette and Uvicorn).
"""

from __future__ import annotations

import logging

__all__ = ["serve"]

log = logging.getLogger("remoteexec.dashboard")


def serve(
    url: str | None,
    *,
    bind: str = "127.0.0.1",
    port: int = 8765,
    allow_actions: bool = False,
    token: str | None = None,
) -> None:
    """Serve the dashboard for the backend at ``url`` until interrupted."""
    import uvicorn

    from ..client import Client
    from .app import make_app

    if bind not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning(
            "the dashboard is bound to %s without a token: anyone who reaches it can read it", bind
        )
    with Client(url) as client:
        app = make_app(client.backend, allow_actions=allow_actions, token=token)
        uvicorn.run(app, host=bind, port=port, log_level="warning")
