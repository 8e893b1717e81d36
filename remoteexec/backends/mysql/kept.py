"""MySQL's kept results (``Done.keep``) and task states, for ``remoteexec.result``.

``remoteexec_kept (id, body, expires)``: one row per task id whose reply is kept, written
in the completion's transaction and only where that transaction took the task (see
``complete.py``); the first row written for an id stays. Expiry is by the server's clock;
a row past it is never read, and ``sweep`` deletes it. The table is made when a backend
object first connects (``CREATE TABLE IF NOT EXISTS``), so no schema version changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..base import RUNNING, WAITING, Done
from .connection import Part, execute
from .statements import BY_ID, NOW, TASKS, marks

KEPT_TABLE = (
    "CREATE TABLE IF NOT EXISTS remoteexec_kept (id VARBINARY(255) NOT NULL PRIMARY KEY, "
    "body LONGBLOB NOT NULL, expires DOUBLE NOT NULL, KEY ix_kept_expires (expires)) "
    "ENGINE=InnoDB"
)
_INSERT = "INSERT INTO remoteexec_kept (id, body, expires) "
_FIRST = " ON DUPLICATE KEY UPDATE expires = remoteexec_kept.expires"  # the first stays
#: One result, in a compound statement (``complete.py``): keep the reply if the task's
#: DELETE took its row (``@done``).
KEEP_IF_DONE = f"{_INSERT}SELECT %s, %s, {NOW} + %s FROM DUAL WHERE @done = 1{_FIRST}"
#: Otherwise (``@now`` set, held rows locked): keep a reply if its task is still held.
KEEP_IF_HELD = (
    f"{_INSERT}SELECT id, %s, @now + %s FROM {BY_ID} "
    f"WHERE id = %s AND token = %s AND state = 1 AND lease_until > @now{_FIRST}"
)
SWEEP_KEPT = f"{KEPT_TABLE}; DELETE FROM remoteexec_kept WHERE expires <= {NOW}"
_RESULTS = f"SELECT id, body FROM remoteexec_kept WHERE expires > {NOW} AND id IN ({{}})"
_STATES = f"SELECT id, state = 1 AND lease_until > {NOW} FROM {TASKS} WHERE id IN ({{}})"
_LOOKUP = 500  # ids per statement


def kept_parts(done: Sequence[Done]) -> list[Part]:
    """For a completion: the statements that keep the replies of ``done`` that ask for it."""
    return [
        (KEEP_IF_HELD, (d.reply, d.keep, d.claim.id, d.claim.token))
        for d in done
        if d.keep and d.reply is not None
    ]


def results(run: Any, ids: Sequence[str]) -> dict[str, bytes]:
    """The unexpired replies kept under ``ids`` (``run``: the adapter's ``Database.run``)."""
    found: dict[str, bytes] = {}
    for i in range(0, len(ids), _LOOKUP):
        chunk = list(ids[i : i + _LOOKUP])
        [(_, rows)] = run(lambda cur, c=chunk: execute(cur, _RESULTS.format(marks(len(c))), c))
        for task_id, body in rows:
            if isinstance(task_id, bytes) and isinstance(body, bytes):
                found[task_id.decode("utf-8", "replace")] = body
    return found


def states(run: Any, ids: Sequence[str]) -> dict[str, str]:
    """``WAITING`` or ``RUNNING`` for each of ``ids`` with a task row."""
    found: dict[str, str] = {}
    for i in range(0, len(ids), _LOOKUP):
        chunk = list(ids[i : i + _LOOKUP])
        [(_, rows)] = run(lambda cur, c=chunk: execute(cur, _STATES.format(marks(len(c))), c))
        for task_id, live in rows:
            found[str(task_id)] = RUNNING if live else WAITING
    return found
