"""Who may read and act on the dashboard: the token, the login form's sessions, the CSRF
token.

A dashboard given a token shows its data only to requests that prove they know it; one
without a token shows it to anyone who reaches it (on loopback, by default). An action goes
ahead only when the dashboard allows actions, the request proves it knows the token
(``Authorization: Bearer <token>``, or the session cookie the login form set after being
given the token) and it carries the CSRF token the page reads from ``GET /api/csrf`` (header
``X-CSRF-Token``). The session cookie is ``HttpOnly`` and ``SameSite=Strict``: a script
cannot read it and another site's request does not carry it.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time

from starlette.requests import Request

COOKIE = "rx_session"
SESSION_TTL = 12 * 3600.0  # seconds a login lasts
_MAX_SESSIONS = 1000  # the oldest is forgotten beyond it


def same(given: str | None, expected: str) -> bool:
    """``given == expected``, in constant time; False for None."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Guard:
    """The token, the CSRF token and the live sessions of one dashboard."""

    def __init__(self, *, allow_actions: bool, token: str | None) -> None:
        self.token = token or None
        self.actions = allow_actions and self.token is not None
        self.csrf = secrets.token_urlsafe(32)
        self._sessions: dict[str, float] = {}  # session id -> expiry (monotonic)
        self._lock = threading.Lock()

    def may_read(self, request: Request) -> bool:
        """Whether ``request`` may read the data: there is no token, or it proves it."""
        return self.token is None or self.signed_in(request) is not None

    def login(self, token: str | None) -> str | None:
        """A new session id if ``token`` is the token, else None."""
        if self.token is None or not same(token, self.token):
            return None
        session, now = secrets.token_urlsafe(32), time.monotonic()
        with self._lock:
            self._sessions = {s: t for s, t in self._sessions.items() if t > now}
            while len(self._sessions) >= _MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session] = now + SESSION_TTL
        return session

    def logout(self, request: Request) -> None:
        with self._lock:
            self._sessions.pop(request.cookies.get(COOKIE, ""), None)

    def signed_in(self, request: Request) -> str | None:
        """How ``request`` proves it knows the token (``"token"``, ``"login"``), or None."""
        if self.token is None:
            return None
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and same(auth.removeprefix("Bearer "), self.token):
            return "token"
        session = request.cookies.get(COOKIE)
        if session:
            with self._lock:
                expiry = self._sessions.get(session)
            if expiry is not None and expiry > time.monotonic():
                return "login"
        return None

    def refused(self, request: Request) -> str | None:
        """Why an action is refused, or None when it may go ahead."""
        if not self.actions:
            return "actions are off (start the dashboard with --allow-actions and a token)"
        if self.signed_in(request) is None:
            return "a valid token or login is required"
        if not same(request.headers.get("x-csrf-token"), self.csrf):
            return "a valid CSRF token is required"
        return None
