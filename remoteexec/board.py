"""``ClaimBoard``: what a worker process holds, in a file its supervisor reads once it died.

The supervisor gives each worker process a file (``WorkerSettings.board_fd``). The worker
posts there, per serving thread, the claims that thread took last, and says once it has
reached its broker. When the process dies, the supervisor reads the file (``read_board``)
and ends the leases still posted, so their tasks are claimable again at once.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgpack

if TYPE_CHECKING:
    from .backends import Claim

_SLOT = 2**16  # bytes of a board per serving thread
_READY, _NONE = msgpack.packb("ready"), msgpack.packb([])


class ClaimBoard:
    """What a worker process holds, in a file its supervisor reads once it has died.

    The file has a header slot (``"ready"`` once the worker reached its broker) and one slot
    per serving thread, holding that thread's latest batch of claims as the msgpack list
    ``[[id, queue, token], ...]`` behind a 4-byte length. A thread overwrites its slot with
    each batch it claims: a copy into shared memory, no system call. Claims settled since
    are harmless there (their leases are no longer held by those tokens); a batch that does
    not fit its slot is not posted (its claims then wait out their leases).
    """

    def __init__(self, fd: int, threads: int) -> None:
        os.ftruncate(fd, (threads + 1) * _SLOT)
        self._map = mmap.mmap(fd, (threads + 1) * _SLOT)

    def ready(self) -> None:
        self._put(0, _READY)

    def post(self, thread: int, claims: Sequence[Claim]) -> None:
        data = msgpack.packb([(c.id, c.queue, c.token) for c in claims])
        self._put(thread + 1, data if len(data) <= _SLOT - 4 else _NONE)

    def _put(self, slot: int, data: bytes) -> None:
        at = slot * _SLOT
        self._map[at + 4 : at + 4 + len(data)] = data
        self._map[at : at + 4] = len(data).to_bytes(4, "little")  # last: a torn slot is skipped


def read_board(fd: int) -> tuple[bool, list[list[str]]]:
    """Whether the worker behind ``fd`` reached its broker, and the claims it posted."""
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    ready, claims = False, []
    for at in range(0, len(data) - 4, _SLOT):
        size = int.from_bytes(data[at : at + 4], "little")
        try:
            posted = msgpack.unpackb(data[at + 4 : at + 4 + size]) if size else None
        except (ValueError, msgpack.UnpackException):
            continue
        if posted == "ready":
            ready = True
        elif isinstance(posted, list):
            claims += [c for c in posted if isinstance(c, list) and len(c) == 3]
    return ready, claims
