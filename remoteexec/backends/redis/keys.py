"""The name of every key the Redis adapter writes (the layout is drawn in the package)."""

from __future__ import annotations

from dataclasses import dataclass

#: A member of every leases zset, at +inf, longer than a listpack member may be (Redis's
#: zset-max-listpack-value, 64 bytes by default): the set is a skiplist from the first
#: claim on. A small zset is a listpack, and each ZADD to it scans and moves the whole
#: set; in a skiplist it is a short walk. Readers of the set need not skip it: it has no
#: claim list, no expiry, and is never due.
SKIPLIST_KEEPER = "~" * 65

BELLS = 16  # doorbells kept per queue


@dataclass(frozen=True)
class Keys:
    """The name of every key under ``prefix``; a queue's keys share its ``{queue}`` slot."""

    prefix: str

    def _of(self, queue: str, kind: str) -> str:
        return f"{self.prefix}{{{queue}}}:{kind}"

    def waiting(self, queue: str) -> str:
        return self._of(queue, "w")

    def leases(self, queue: str) -> str:
        return self._of(queue, "l")

    def bells(self, queue: str) -> str:
        return self._of(queue, "b")

    def shards(self, queue: str) -> str:
        return self._of(queue, "n")

    def claim(self, queue: str, token: str) -> str:
        return self._of(queue, "c:" + token)

    def claim_raw(self, queue: str, token: bytes) -> bytes:
        """``claim`` for a token as read from the leases set (any bytes, not ours only)."""
        return self._of(queue, "c:").encode() + token

    def replies(self, reply_to: str) -> str:
        return self._of(reply_to, "r")

    @property
    def epoch(self) -> str:
        return self.prefix + "epoch"

    @property
    def queues(self) -> str:
        return self.prefix + "queues"

    @property
    def workers(self) -> str:
        return self.prefix + "workers"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"

    @property
    def dead_tasks(self) -> str:
        """The tasks of retryable dead letters, by id: hashed with ``dead`` (one slot)."""
        return f"{self.prefix}{{{self.dead}}}:tasks"

    @property
    def purged(self) -> str:
        return self.prefix + "purged"

    def starts(self, task_id: str) -> str:
        return self.prefix + "starts:" + task_id
