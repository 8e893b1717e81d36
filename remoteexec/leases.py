"""``Leases``: the claims a worker holds, and the monitor that keeps them.

A serving thread takes a batch of claims (``take``), runs them, and lets go of each when
its result is sent (``settle``) or it is handed back unstarted (``release``). A claim whose
task killed its helper process is dropped, its lease ended at once (``abandon``): the
attempt counts, as if a worker process had died.

The thread that called ``Worker.run`` is the monitor: it sends the worker's first
heartbeat (``connect``), then, while any serving thread lives (``monitor``), a heartbeat
every second (with the tasks done and running), renews every lease still in use every
third of a lease, lets the backend sweep every minute, and stops the worker once its
supervisor is gone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend, Claim, Done, WorkerInfo
from .errors import BackendUnavailable

log = logging.getLogger("remoteexec.worker")

#: Seconds: a lease renewed for this long is claimable again at once.
EXPIRE_NOW = 0.001
_BEAT_EVERY = 1.0  # seconds between heartbeats
_SWEEP_EVERY = 60.0  # seconds between two sweeps


@dataclass(slots=True)
class Held:
    """A claim the worker holds, and what it knows about the task."""

    claim: Claim
    started: float | None = None
    time_limit: float | None = None
    label: str = ""
    key: int = 0  # the secret that verified the call: its replies are signed with it
    abandoned: bool = False  # its attempt ended without a reply (its helper died)
    blobs: list[Any] = field(default_factory=list)  # its arguments' blob references
    finished: bool = False  # its result is made and about to be sent: leave it alone


class Leases:
    """The claims a worker holds, by (task id, lease token), and their leases.

    Args:
        backend: the worker's backend adapter.
        info: what the worker's heartbeat reports; ``settle`` counts ``done`` in it.
        lease: seconds a claim is held without renewal.
    """

    def __init__(self, backend: Backend, info: WorkerInfo, lease: float) -> None:
        self._backend = backend
        self._info = info
        self._lease = lease
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], Held] = {}
        #: What the monitor runs every ``_SWEEP_EVERY`` seconds, after the backend's sweep.
        self.sweeps: list[Callable[[], None]] = []
        #: What the monitor runs before each heartbeat (to fill in ``info``).
        self.beats: list[Callable[[], None]] = []

    # What the serving threads do ---------------------------------------------------------

    def take(self, claims: Sequence[Claim]) -> None:
        """Hold ``claims``, just claimed."""
        with self._lock:
            for claim in claims:
                self._held[claim.id, claim.token] = Held(claim)

    def held(self, claim: Claim) -> Held:
        """What is held for ``claim``.

        Raises:
            KeyError: ``claim`` is no longer held.
        """
        return self._held[claim.id, claim.token]

    def finish(self, claim: Claim) -> None:
        """Mark ``claim``'s result as made: its lease needs no renewal any more."""
        held = self._held.get((claim.id, claim.token))
        if held is not None:
            held.finished = True

    def still_held(self, claims: Sequence[Claim]) -> list[Claim]:
        """Those of ``claims`` still held."""
        with self._lock:
            return [c for c in claims if (c.id, c.token) in self._held]

    def settle(self, finished: Sequence[Done], accepted: Sequence[bool]) -> list[Any]:
        """Let go of the claims of sent results; count those whose lease still held.
        Returns the blob references of the calls those results completed."""
        blobs: list[Any] = []
        with self._lock:
            for done, ok in zip(finished, accepted, strict=False):
                held = self._held.pop((done.claim.id, done.claim.token), None)
                if ok:
                    self._info.done += 1
                    blobs += held.blobs if held is not None else ()
                else:
                    log.warning("result of task %s discarded: its lease was lost", done.claim.id)
        return blobs

    def release(self, claims: Sequence[Claim]) -> None:
        """Hand back ``claims`` unstarted (the attempt does not count)."""
        self._drop(claims)
        quietly(self._backend.release, claims)
        log.info("handed back %d unstarted task(s)", len(claims))

    def abandon(self, held: Held) -> None:
        """End ``held``'s lease now, as if it had expired (the attempt counts)."""
        held.abandoned = True
        self._drop([held.claim])
        quietly(self._backend.renew, [held.claim], lease=EXPIRE_NOW)

    def _drop(self, claims: Sequence[Claim]) -> None:
        with self._lock:
            for claim in claims:
                self._held.pop((claim.id, claim.token), None)

    # What the monitor does ---------------------------------------------------------------

    def connect(self, timeout: float) -> None:
        """Send the first heartbeat, retrying an unreachable broker for ``timeout`` s.

        Raises:
            BackendUnavailable: the broker is still unreachable after ``timeout`` s.
        """
        deadline, pause = time.monotonic() + timeout, 0.1
        while True:
            try:
                self._backend.heartbeat(self._info)
                return
            except BackendUnavailable as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendUnavailable(
                        f"the broker is unreachable (tried for {timeout:g} s): {exc}"
                    ) from exc
                log.warning("the broker is unreachable, retrying for %.0f s: %s", left, exc)
                time.sleep(min(pause, left))
                pause = min(pause * 2, 2.0)

    def monitor(
        self,
        servers: Sequence[threading.Thread],
        stopping: threading.Event,
        *,
        stop: Callable[[], None],
        supervised: bool,
    ) -> None:
        """Keep the worker's heartbeat and leases while any of ``servers`` lives; call
        ``stop`` once the supervisor is gone (``supervised``)."""
        parent = os.getppid()
        next_renew = next_beat = next_sweep = 0.0
        while any(t.is_alive() for t in servers):
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + _BEAT_EVERY
                self._heartbeat()
            if now >= next_renew:
                next_renew = now + self._lease / 3
                self.renew()
            if now >= next_sweep:
                next_sweep = now + _SWEEP_EVERY
                for sweep in (self._backend.sweep, *self.sweeps):
                    quietly(sweep)
            if supervised and os.getppid() != parent:
                log.warning("the supervisor is gone")
                stop()
            if stopping.is_set():
                time.sleep(0.05)  # the serving threads are finishing their tasks
            else:
                stopping.wait(0.1)

    def _heartbeat(self) -> None:
        for beat in self.beats:
            beat()
        with self._lock:
            self._info.running = sum(
                h.started is not None and not h.finished for h in self._held.values()
            )
        self._info.last_seen = time.time()
        quietly(self._backend.heartbeat, self._info)

    def renew(self) -> None:
        """Renew the leases of the claims still in use; log those lost."""
        with self._lock:
            held = [h for h in self._held.values() if not (h.abandoned or h.finished)]
        if not held:
            return
        try:
            kept = self._backend.renew([h.claim for h in held], lease=self._lease)
        except BackendUnavailable as exc:
            log.warning("renewing %d lease(s) failed: %s", len(held), exc)
            return
        with self._lock:  # a claim completed meanwhile was not lost, just finished
            lost = [
                h
                for h, ok in zip(held, kept, strict=True)
                if not ok and self._held.get((h.claim.id, h.claim.token)) is h
            ]
        for h in lost:
            log.warning("lease on task %s lost: another worker may run it", h.claim.id)


def quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or None with a warning if the broker is unavailable."""
    try:
        return fn(*args, **kwargs)
    except BackendUnavailable as exc:
        log.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)
        return None
