"""Completions: acknowledge tasks and store their replies, atomically.

A completion is one transaction (the caller adds START TRANSACTION and COMMIT): a task's
reply is stored, and the task deleted, only while the token that claimed it still holds an
unexpired lease, so a task completes once, and a late worker's result is refused.

* One result, where the server runs compound statements (MariaDB): one block deletes the
  task where its token holds it, then stores the reply only if that took the row. Inside a
  block nothing is sent to the client between statements, so ``ROW_COUNT()`` holds the
  ``DELETE``'s count even when the worker died after sending the completion (between two
  statements of a plain multi-statement query, MariaDB then sometimes lost it: the reply
  was not stored while the task's deletion committed, about 1 completion in 200).
* Otherwise, one or many: lock the tasks still held (``FOR UPDATE``, in id order) as of
  one ``@now``, insert their replies with one ``INSERT ... SELECT`` from those rows per
  chunk, delete them. Every condition reads the task rows.
* A reply with ``Done.keep`` is also kept under its id (``kept.py``), by one more
  statement conditional the same way; a claim with no ``reply_to`` only keeps it.

* A task put back (``Done.again``): one ``UPDATE`` of the held row each, after the rest;
  its row count says whether it was held.

Every statement reaches task rows through the unique id index (``BY_ID``): a scan of the
lease index would lock other workers' claimed rows too and deadlock with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ..base import Done
from .connection import Part, Result
from .kept import KEEP_IF_DONE, kept_parts
from .statements import (
    BY_ID,
    DELETE_HELD,
    NOW,
    PUT_BACK_LATER,
    PUT_BACK_NOW,
    REPLY_IF_DONE,
    REPLY_INSERT,
    TASKS,
    marks,
)

Read = Callable[[Result], list[bool]]  # the transaction's results -> accepted, per Done


def completion(
    done: Sequence[Done], max_packet: int, compound: bool = False
) -> tuple[list[Part], Read]:
    """The statements that complete ``done`` (to run between START TRANSACTION and
    COMMIT), and how to read which were accepted from the results (START's first);
    ``compound``: the server runs compound statements."""
    if compound and len(done) == 1 and done[0].again is None:
        return _one(done[0])
    if all(d.again is None for d in done):
        return _finish(done, max_packet)
    rest = [d for d in done if d.again is None]
    parts, read_rest = _finish(rest, max_packet) if rest else ([], lambda _: [])
    first = 1 + len(parts)  # the result of the first put-back
    now = time.time()
    for d in done:
        if d.again is not None:
            held = (d.claim.id, d.claim.token)
            delay = d.again.not_before - now
            put = (PUT_BACK_LATER, (d.again.body, delay, *held)) if delay > 0 else None
            parts.append(put or (PUT_BACK_NOW, (d.again.body, *held)))

    def read(result: Result) -> list[bool]:
        finished = iter(read_rest(result))
        put_back = iter(count == 1 for count, _ in result[first:])
        return [next(finished if d.again is None else put_back) for d in done]

    return parts, read


def _finish(done: Sequence[Done], max_packet: int) -> tuple[list[Part], Read]:
    """``completion`` of items that put nothing back."""
    kept = kept_parts(done)  # kept results (kept.py)
    by_token: dict[str, list[str]] = {}
    for d in done:
        by_token.setdefault(d.claim.token, []).append(d.claim.id)
    ors = " OR ".join(f"(token = %s AND id IN ({marks(len(ids))}))" for ids in by_token.values())
    held = f"state = 1 AND lease_until > @now AND ({ors})"
    held_args = tuple(a for tok, ids in by_token.items() for a in (tok, *ids))
    parts: list[Part] = [
        (f"SET @now = {NOW}", ()),
        (f"SELECT id, token FROM {BY_ID} WHERE {held} ORDER BY id FOR UPDATE", held_args),
    ]
    bodies: dict[str, bytes] = {}  # the first reply given for each id
    for d in done:
        if d.claim.id not in bodies and d.reply is not None and d.claim.reply_to:
            bodies[d.claim.id] = d.reply
    chunk: list[str] = []
    used = 0
    for task_id, body in bodies.items():  # escaped bodies take at most twice their size
        if chunk and used + len(body) > max_packet // 4:
            parts.append(_replies_sql(held, held_args, chunk, bodies))
            chunk, used = [], 0
        chunk.append(task_id)
        used += len(body) + len(task_id)
    if chunk:
        parts.append(_replies_sql(held, held_args, chunk, bodies))
    parts += kept
    parts.append((f"DELETE {TASKS} FROM {BY_ID} WHERE {held}", held_args))

    def read(result: Result) -> list[bool]:
        taken = set(result[2][1])  # 0 is START TRANSACTION, 1 SET @now
        accepted: list[bool] = []
        for d in done:  # a task completes once: a repeat of it in the batch is refused
            key = (d.claim.id, d.claim.token)
            accepted.append(key in taken)
            taken.discard(key)
        return accepted

    return parts, read


def _replies_sql(
    held: str, held_args: tuple[Any, ...], ids: list[str], bodies: dict[str, bytes]
) -> Part:
    """INSERT ... SELECT of the replies to ``ids`` whose tasks are ``held``."""
    cases = " ".join(["WHEN %s THEN %s"] * len(ids))
    sql = (
        f"{REPLY_INSERT}SELECT reply_to, id, CASE id {cases} END, @now FROM {BY_ID} "
        f"WHERE {held} AND id IN ({marks(len(ids))}) ORDER BY FIELD(id, {marks(len(ids))})"
    )
    return sql, (*(a for i in ids for a in (i, bodies[i])), *held_args, *ids, *ids)


def _one(done: Done) -> tuple[list[Part], Read]:
    """``completion`` of one result, in one compound statement; its result set is the
    ``DELETE``'s row count (1: accepted)."""
    claim = done.claim
    sql = [f"BEGIN NOT ATOMIC {DELETE_HELD}", "SET @done = ROW_COUNT()"]
    args: list[Any] = [claim.id, claim.token]
    if done.reply is not None and claim.reply_to:
        sql.append(REPLY_IF_DONE)
        args += [claim.reply_to, claim.id, done.reply]
    if done.keep and done.reply is not None:
        sql.append(KEEP_IF_DONE)
        args += [claim.id, done.reply, done.keep]
    sql.append("SELECT @done; END")

    def read(result: Result) -> list[bool]:
        rows = result[1][1]  # 0 is START TRANSACTION
        return [bool(rows) and rows[0][0] == 1]

    return [("; ".join(sql), tuple(args))], read
