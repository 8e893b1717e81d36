"""The Redis adapter's Lua scripts (``scripts/claim.lua``, ``scripts/complete.lua``) and
their loader.

What they buy: a claim pass and a completion are each one command, whatever the batch
size, instead of one to two commands per task (``commands.claim_pass``,
``commands.complete_batch``): fewer commands for the worker to pack and parse, and for
Redis to dispatch. They save no round trip: with scripting denied, the adapter sends the
same steps as plain commands in as many round trips (``bench/``'s
``remoteexec-redis-noscript`` row measures that path).

The scripts keep the script-free layout exactly (a claim is the list ``{q}:c:<token>``
holding the task, its lease the token's score in ``{q}:l``), so workers with and without
scripting share one farm, and everything else (``renew``, ``release``, requeuing expired
leases, ``lost``, ``stats``) is the same code either way. Their parameters are ``KEYS``
and ``ARGV`` only: the text sent is the files' as shipped.

``Scripts`` loads them once per connection set. A server that refuses ``SCRIPT LOAD``
(an ACL denying ``@scripting``, or scripting disabled) turns them off for this adapter;
``NOSCRIPT`` (Redis restarted and forgot them) loads them again and resends, which is safe
because a refused ``EVALSHA`` ran nothing.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoPermissionError, NoScriptError

from .wire import Link, run

log = logging.getLogger("remoteexec.redis")

NAMES = ("claim", "complete")


def source(name: str) -> str:
    """The text of ``scripts/<name>.lua``, as shipped with the package."""
    return (resources.files(__package__ or __name__) / "scripts" / f"{name}.lua").read_text()


class Scripts:
    """The scripts' SHA1s on one server, loaded on first use (``off`` if refused)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shas: dict[str, bytes] | None = None
        self.off = False

    def shas(self, link: Link) -> dict[str, bytes] | None:
        """The loaded scripts by name, or None when the server refuses scripting."""
        if self.off:
            return None
        if self._shas is None:
            with self._lock:
                if self._shas is None and not self.off:
                    self._load(link)
        return self._shas

    def _load(self, link: Link) -> None:
        try:
            loaded = run(link, [("SCRIPT", "LOAD", _SOURCES[name]) for name in NAMES])
        except redis.ResponseError as exc:  # NOPERM, or scripting disabled
            log.info("Lua scripting refused (%s): using the script-free commands", exc)
            self.off = True
            return
        self._shas = dict(zip(NAMES, loaded, strict=True))

    def run(self, link: Link, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Run ``(script name, keys and args)`` calls in one round trip; their replies.

        Raises:
            redis.ResponseError: a script failed, or scripting was refused meanwhile (then
                ``off`` is set, nothing ran, and the caller takes the script-free path).
        """
        for _ in range(2):
            shas = self.shas(link)
            if shas is None:
                raise NoPermissionError("Lua scripting is off for this adapter")
            try:
                return run(link, [("EVALSHA", shas[name], *rest) for name, rest in calls])
            except NoScriptError:  # Redis restarted: none of them ran
                with self._lock:
                    self._shas = None
            except NoPermissionError:
                self.off = True
                raise
        raise redis.ResponseError("Lua scripts could not be loaded")


_SOURCES = {name: source(name) for name in NAMES}
