"""The bytes of the Redis adapter's list elements, read back as untrusted input.

A task element is ``>IHH`` (attempt, len(id), len(reply_to)), then id, reply_to and body;
a reply element is ``>H`` (len(id)), then id and the reply. Anyone with write access to
the broker may have written an element: one not in this layout raises ``BadElement``, and
a malformed task element is moved out of its queue into the dead letters (``quarantine``),
never claimed.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import redis
from redis.client import Pipeline

from ...errors import SerializationError
from ..base import MAX_DEAD_LETTERS, Claim, DeadLetter
from .keys import Keys

log = logging.getLogger("remoteexec.redis")

_HEAD = struct.Struct(">IHH")  # attempt, len(id), len(reply_to); then id, reply_to, body
_ID = struct.Struct(">H")  # a reply element: len(id), id, reply
_MAX_ATTEMPT = 2**32 - 1  # what the attempt field holds


class BadElement(SerializationError):
    """A list element read from Redis that is not in this module's layout."""


def pack_task(task_id: str, reply_to: str, attempt: int, body: bytes) -> bytes:
    i, r = task_id.encode(), reply_to.encode()
    return _HEAD.pack(attempt, len(i), len(r)) + i + r + body


def unpack_task(elem: bytes, queue: str, token: str) -> Claim:
    """The claim a task element holds.

    Raises:
        BadElement: it is shorter than its header says, or its id or reply_to is not
            UTF-8.
    """
    attempt, n, m = _task_head(elem)
    i = _HEAD.size
    try:
        ident, reply_to = elem[i : i + n].decode(), elem[i + n : i + n + m].decode()
    except UnicodeDecodeError:
        raise BadElement("task element: its id or reply_to is not UTF-8") from None
    return Claim(ident, queue, reply_to, elem[i + n + m :], attempt, token)


def _task_head(elem: Any) -> tuple[int, int, int]:
    if type(elem) is not bytes:
        raise BadElement(f"task element is a {type(elem).__name__}, not bytes")
    if len(elem) < _HEAD.size:
        raise BadElement(f"task element of {len(elem)} bytes: shorter than its header")
    attempt, n, m = _HEAD.unpack_from(elem)
    if _HEAD.size + n + m > len(elem):
        raise BadElement(f"task element of {len(elem)} bytes: id and reply_to overrun it")
    return attempt, n, m


def task_id_of(elem: Any) -> str:
    """Best effort, for a dead letter: the id of a task element, or ``"?"``. Never raises."""
    try:
        _, n, _ = _task_head(elem)
    except BadElement:
        return "?"
    return str(elem[_HEAD.size : _HEAD.size + n].decode("utf-8", "replace"))


def next_attempt(elem: bytes) -> tuple[int, bytes]:
    """A task element's attempt, and the element with its attempt one higher.

    Raises:
        BadElement: as ``unpack_task``, or its attempt cannot be raised.
    """
    unpack_task(elem, "", "")
    attempt, n, m = _HEAD.unpack_from(elem)
    if attempt >= _MAX_ATTEMPT:
        raise BadElement(f"task element with attempt {attempt}: cannot count another")
    return attempt, _HEAD.pack(attempt + 1, n, m) + elem[_HEAD.size :]


def pack_reply(task_id: str, reply: bytes) -> bytes:
    ident = task_id.encode()
    return _ID.pack(len(ident)) + ident + reply


def unpack_reply(elem: bytes) -> tuple[str, bytes]:
    """A reply element's task id and reply.

    Raises:
        BadElement: it is shorter than its header says, or its id is not UTF-8.
    """
    if type(elem) is not bytes or len(elem) < _ID.size:
        raise BadElement("reply element shorter than its header")
    start = _ID.size + _ID.unpack_from(elem)[0]
    if start > len(elem):
        raise BadElement(f"reply element of {len(elem)} bytes: its id overruns it")
    try:
        return elem[_ID.size : start].decode(), elem[start:]
    except UnicodeDecodeError:
        raise BadElement("reply element: its id is not UTF-8") from None


def dead_element(p: Pipeline, keys: Keys, queue: str, elem: Any, reason: str) -> None:
    """Queue on ``p`` the dead letter of a malformed task element of ``queue``, logged."""
    log.error("malformed task element in queue %r moved to the dead letters: %s", queue, reason)
    reason = f"malformed task element: {reason}"
    letter = DeadLetter(task_id_of(elem), queue, "?", reason, time.time())
    p.lpush(keys.dead, json.dumps(asdict(letter)))
    p.ltrim(keys.dead, 0, MAX_DEAD_LETTERS - 1)


def quarantine(
    client: redis.Redis, keys: Keys, queue: str, bad: Sequence[tuple[str, bytes, str]]
) -> None:
    """Move malformed task elements, each ``(token, element, reason)`` just claimed, out
    of their claim lists and leases into the dead letters."""
    with client.pipeline(transaction=True) as p, client.pipeline(transaction=False) as late:
        for token, elem, reason in bad:
            p.delete(keys.claim(queue, token))
            p.zrem(keys.leases(queue), token)
            dead_element(late, keys, queue, elem, reason)  # in a slot of its own on a cluster
        p.execute()
        late.execute()
