"""Every byte read from the broker is untrusted.

Two parts. First, decoding bounds its work and memory: hostile message bodies (nested
extension stacks, bodies of empty containers, hostile envelopes) are refused with
``SerializationError`` once their bytes are measured, before any of their value is built
(``_wire_size.measure``), whatever they would decode to.

Then, on sqlite, redis and mysql, a real ``remoteexec-worker`` serves legitimate calls while
malformed entries are written straight into every structure its backend reads: task
elements and rows (truncated, type-confused, non-UTF-8, garbage msgpack, wrong envelopes,
every call field with bad values, decoding bombs), claim lists and leases, worker-registry
and dead-letter rows, reply elements and rows. The worker process must not restart, no
thread may die, every legitimate call completes, every malformed task entry ends as a dead
letter, and the worker's peak memory stays under 8 times the largest message.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import struct
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest

from remoteexec import Client
from remoteexec._exttypes import MAX_DEPTH, pack, unpack
from remoteexec.backends import open_backend
from remoteexec.backends.redis.elements import (
    BadElement,
    next_attempt,
    pack_task,
    unpack_reply,
    unpack_task,
)
from remoteexec.backends.redis.keys import Keys
from remoteexec.backends.rows import dead_letter_json, worker_json
from remoteexec.errors import SerializationError
from remoteexec.message import Call, Codec, Reply
from tests.conftest import fresh_url
from tests.farm import Farm

MiB = 1 << 20
BOMB = 4 * MiB  # the size of each decoding bomb the suite writes


# Messages and decoding bombs --------------------------------------------------------------

WORKER_ROW = "INSERT INTO workers VALUES"


def make_call(task_id: str, *args: Any, name: str = "Echo", method: str = "value") -> Call:
    call = Call(task_id, name, method, tuple(args), {}, None, 3, None)
    for attr, value in (("queue", "default"), ("reply_to", "nobody"), ("created", time.time())):
        if hasattr(call, attr):
            setattr(call, attr, value)
    return call


def envelope_of(body: bytes) -> list[Any]:
    return list(msgpack.unpackb(body))


def with_payload(body: bytes, payload: bytes) -> bytes:
    version, kind, _, _ = envelope_of(body)
    return msgpack.packb([version, kind, payload, None])


def with_args(body: bytes, args: list[Any]) -> bytes:
    """``body`` (a call) with its args replaced by ``args`` (raw msgpack values)."""
    fields = msgpack.unpackb(envelope_of(body)[2], strict_map_key=False)
    fields[3] = args
    return with_payload(body, msgpack.packb(fields))


def with_raw_args(body: bytes, args: bytes) -> bytes:
    """``body`` (a call) with its args replaced by ``args``, msgpack bytes as given."""
    fields = msgpack.unpackb(envelope_of(body)[2], strict_map_key=False)
    head, tail = msgpack.packb(fields[:3])[1:], msgpack.packb(fields[4:])[1:]  # no headers
    return with_payload(body, bytes([0x90 | len(fields)]) + head + args + tail)


def nested_ext_bomb(size: int, depth: int = MAX_DEPTH - 2) -> bytes:
    """A tuple inside a tuple ... around ``size`` bytes: each level a copy of the rest."""
    inner = msgpack.packb([b"x" * size])
    for _ in range(depth):  # [ExtType(1, inner)], joined as bytes (msgpack packs it slowly)
        inner = b"\x91\xc9" + len(inner).to_bytes(4, "big") + b"\x01" + inner
    return inner


def array_of(item: bytes, n: int) -> bytes:
    """The msgpack array of ``n`` copies of ``item`` (one packed value), built as bytes:
    msgpack packs a list of millions of values in seconds."""
    return msgpack.Packer().pack_array_header(n) + item * n


def bombs(size: int) -> dict[str, bytes]:
    """Payload-level decoding bombs of about ``size`` bytes each (msgpack arrays)."""
    return {
        "nested ext": nested_ext_bomb(size),
        "empty arrays": array_of(b"\x90", size),
        "empty maps": array_of(b"\x80", size),
        "one-entry maps": array_of(msgpack.packb({None: None}), size // 3),
        "empty sets": array_of(msgpack.packb(msgpack.ExtType(2, b"\x90")), size // 3),
        "decimals": array_of(msgpack.packb(msgpack.ExtType(8, b"1")), size // 3),
        "nested arrays": b"\x91" * (size - 1) + b"\xc0",
        # Legitimate up to their last value: a list of small ints (8 bytes a byte) and a
        # list of short strings (20 a byte).
        "ints, then a bad value": array_of(b"\x01", size - 8)[:-1] + b"\xd4\x63\x00",
        "short strings, then a bad value": array_of(b"\xa2ab", size // 3)[:-3] + b"\xd4\x63\x00",
    }


def peak_of(fn: Callable[[], Any]) -> tuple[int, BaseException | None]:
    """The peak of memory traced while ``fn`` runs, and what it raised."""
    tracemalloc.start()
    try:
        fn()
        raised = None
    except Exception as exc:
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, raised


@pytest.mark.parametrize("kind", sorted(bombs(64)))
def test_a_decoding_bomb_is_refused_before_it_is_built(kind: str) -> None:
    data = bombs(2 * MiB)[kind]
    peak, raised = peak_of(lambda: unpack(data))
    assert isinstance(raised, SerializationError), raised
    assert peak < len(data) / 16, peak / len(data)  # the walk's own small change


def test_nested_extensions_are_refused_before_their_copies_add_up() -> None:
    data = nested_ext_bomb(8 * MiB)
    peak, raised = peak_of(lambda: unpack(data))
    assert isinstance(raised, SerializationError)
    assert "decodes to more than" in str(raised)
    # Each level would hold a copy of the rest: 30 levels, 240 MiB. The walk copies none.
    assert peak < len(data) / 16, peak / len(data)


def test_a_codec_refuses_a_bomb_in_a_call_as_a_serialization_error() -> None:
    valid = Codec().encode_call(make_call("t-1", 1))
    assert Codec().decode_call(with_raw_args(valid, msgpack.packb([1]))).args == (1,)
    for kind, bomb in bombs(2 * MiB).items():
        body = with_raw_args(valid, bomb)
        peak, raised = peak_of(lambda b=body: Codec().decode_call(b))
        assert isinstance(raised, SerializationError), raised
        assert peak < len(body), (kind, peak / len(body))  # the envelope's check, no value


def test_a_message_too_small_to_meter_decodes_to_a_few_mib_at_most() -> None:
    small = [
        msgpack.packb([msgpack.ExtType(2, b"\x90")] * 5400),  # sets: 216 bytes from 3
        msgpack.packb([[]] * 16_000),
        nested_ext_bomb(15_000),  # 30 levels: a copy of the rest on each
    ]
    for data in small:
        assert len(data) <= 16 * 1024
        peak, _ = peak_of(lambda d=data: unpack(d))
        assert peak < 4 * MiB, peak


@pytest.mark.parametrize(
    "value",
    [
        list(range(MiB)),  # 8 bytes a slot, 32 an int: 11 times its bytes
        [b"x" * 100] * 50_000,
        # 4.8 MB of records, 7 times that decoded: their keys are counted once
        [{"id": i, "name": f"user {i}", "email": f"u{i}@example.com"} for i in range(100_000)],
        ((((b"y" * (4 * MiB),),),),),  # nested, but not a copy per level of a big stack
        [(i, str(i)) for i in range(50_000)],
        {i: [1.5, None, True] for i in range(20_000)},
        [Decimal("1.25")] * 1000 + [uuid.uuid4()] * 1000,
    ],
    ids=["ints", "bytes", "records", "nested tuples", "pairs", "dict of lists", "decimals"],
)
def test_legitimate_large_values_still_decode(value: Any) -> None:
    assert unpack(pack(value)) == value


def test_a_hostile_envelope_decodes_to_no_more_than_its_size() -> None:
    codec = Codec()
    hostile = [
        b"\x94" + b"\x91" * (4 * MiB) + b"\xc0",  # nested arrays where the version goes
        msgpack.packb([[[]] * MiB]),
        msgpack.packb([{}] * 3 + [None]),
        msgpack.packb([1, 1, msgpack.ExtType(1, b"\x90" * MiB), None]),
        msgpack.packb(list(range(5))),
        b"\xdd\xff\xff\xff\xff",  # an array of 4 billion, truncated
    ]
    for body in hostile:
        peak, raised = peak_of(lambda b=body: codec.decode_call(b))
        assert isinstance(raised, SerializationError), raised
        assert peak < 2 * len(body) + 64 * 1024, (body[:8], peak / len(body))
        assert codec.peek_id(body) is None


@pytest.mark.parametrize("body", [42, 4.5, "text", None, bytearray(b"\x94")])
def test_a_body_of_the_wrong_type_is_a_serialization_error(body: Any) -> None:
    with pytest.raises(SerializationError):
        Codec().decode_call(body)
    with pytest.raises(SerializationError):
        Codec().decode_reply(body)
    assert Codec().peek_id(body) is None


def test_peek_id_reads_no_more_than_the_id() -> None:
    codec = Codec()
    reply = codec.encode_reply(Reply("t-1", None, None))
    bomb = with_payload(reply, b"\x93" + b"\x91" * MiB + b"\xc0" + b"\xc0\xc0")
    peak, raised = peak_of(lambda: codec.peek_id(bomb))
    assert raised is None and peak < 4 * len(bomb)  # copies of the payload, nothing decoded
    assert codec.peek_id(bomb) is None


# Redis's element layout, unit by unit -----------------------------------------------------

HEAD = struct.Struct(">IHH")


def bad_task_elements(body: bytes) -> dict[str, bytes]:
    """Task elements that are not in the layout, by what is wrong with them."""
    elements = {f"{n} bytes": b"\x01" * n for n in range(HEAD.size)}
    elements |= {
        "id overruns": HEAD.pack(1, 100, 0) + b"abc",
        "reply_to overruns": HEAD.pack(1, 1, 100) + b"ab",
        "both overrun": HEAD.pack(1, 65535, 65535) + body,
        "id not UTF-8": HEAD.pack(1, 2, 1) + b"\xff\xfe" + b"r" + body,
        "reply_to not UTF-8": HEAD.pack(1, 1, 2) + b"i" + b"\xc3\x28" + body,
        "id a lone surrogate": HEAD.pack(1, 3, 1)
        + "\ud800".encode("utf-8", "surrogatepass")
        + b"r"
        + body,
    }
    return elements


def test_a_malformed_task_element_raises_bad_element_only() -> None:
    for name, elem in bad_task_elements(b"body").items():
        with pytest.raises(BadElement):
            unpack_task(elem, "q", "t")
        with pytest.raises(BadElement):
            next_attempt(elem)
        assert name
    with pytest.raises(BadElement):  # its attempt cannot be counted once more
        next_attempt(pack_task("i", "r", 2**32 - 1, b"body"))
    claim = unpack_task(pack_task("i", "r", 7, b"body"), "q", "t")
    assert (claim.id, claim.reply_to, claim.body, claim.attempt) == ("i", "r", b"body", 7)


@pytest.mark.parametrize(
    "elem", [b"", b"\x00", b"\x00\x09abc", b"\x00\x02\xff\xfe" + b"reply", b"\xff\xff"]
)
def test_a_malformed_reply_element_raises_bad_element_only(elem: bytes) -> None:
    with pytest.raises(BadElement):
        unpack_reply(elem)


# Rows, unit by unit ---------------------------------------------------------------------


BAD_FIELDS: dict[type, list[Any]] = {  # by the type of the good value
    str: [None, 1, 1.5, [1], {"a": 1}, True],
    int: [None, "text", 1.5, [1], True, 2**70],
    float: [None, "text", [1], True, math.nan, math.inf],
    list: [None, "text", [1], {"a": 1}, 1],
}


def bad_json_rows(good: dict[str, Any]) -> list[Any]:
    """Rows a backend stores as JSON objects like ``good``, but wrong: not JSON, another
    shape, a field missing or extra, each field with values of the wrong type."""
    rows: list[Any] = [b"not json", b"\xff\xfe", b"", b"[1, 2]", b"42", b"null", b'"text"']
    rows.append(b"[" * 100_000)  # deep nesting: RecursionError in json
    rows.append(json.dumps({k: v for k, v in good.items() if k != next(iter(good))}))
    rows.append(json.dumps({**good, "extra": 1}))
    for key, value in good.items():
        for bad in BAD_FIELDS[type(value)]:
            rows.append(json.dumps({**good, key: bad}))
    return rows


GOOD_WORKER = {
    "id": "w1",
    "host": "h",
    "pid": 1,
    "queues": ["default"],
    "started": 1.0,
    "last_seen": 2.0,
    "done": 0,
    "running": 0,
}
GOOD_DEAD = {"id": "t", "queue": "q", "name": "n", "reason": "r", "at": 1.0}


def test_registry_and_dead_letter_rows_are_parsed_defensively() -> None:
    assert worker_json(json.dumps(GOOD_WORKER)) is not None
    assert dead_letter_json(json.dumps(GOOD_DEAD)) is not None
    for row in bad_json_rows(GOOD_WORKER):
        assert worker_json(row) is None, row
    for row in bad_json_rows(GOOD_DEAD):
        assert dead_letter_json(row) is None, row
    full = {**GOOD_DEAD, "traceback": "tb", "deadline": 2.0}
    assert dead_letter_json(json.dumps({**full, "retryable": True})) is not None
    for row in bad_json_rows(full):
        assert dead_letter_json(row) is None, row
    for bad in (2, -1, "yes", None, 1.5, [True]):
        assert dead_letter_json(json.dumps({**full, "retryable": bad})) is None, bad


# Hostile bodies --------------------------------------------------------------------------

BAD_VALUES: list[Any] = [
    None,
    True,
    -1,
    2**64 - 1,
    1.5,
    math.nan,
    math.inf,
    -math.inf,
    "text",
    b"bytes",
    [],
    {},
    [1, [2, {}]],
    msgpack.ExtType(99, b""),  # unknown extension
    msgpack.ExtType(1, b"\xc1"),  # a tuple holding garbage
    msgpack.ExtType(4, b"\x00"),  # a datetime too short
]


def hostile_bodies(valid: bytes, seed: int) -> list[bytes]:
    """Bodies a worker cannot run: garbage, cut or mutated copies of ``valid``, envelopes
    with bad fields, payloads with each call field bad. Only those the codec refuses are
    kept, so each must end as a dead letter."""
    rng = random.Random(seed)
    raw = [
        b"",
        b"\x00",
        b"\xc1",
        b"\xc0",
        b"\x01",
        b"\xff" * 10,
        b'{"json": 1}',
        b"\x91",
        b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\xc9\xff\xff\xff\xff\x01",
        b"\x94\xc0\xc0\xc0\xc0",
        *(rng.randbytes(rng.randrange(1, 300)) for _ in range(8)),
    ]
    raw += [valid[:cut] for cut in range(1, len(valid), max(1, len(valid) // 16))]
    for pos in range(0, len(valid), max(1, len(valid) // 12)):
        flipped = bytearray(valid)
        flipped[pos] ^= 0xFF
        raw.append(bytes(flipped))
    version, kind, payload, _ = envelope_of(valid)
    env = [version, kind, payload, None]
    raw += [msgpack.packb(env[:n]) for n in range(4)]
    raw.append(msgpack.packb([*env, None]))
    for i in range(4):
        for bad in BAD_VALUES:
            raw.append(msgpack.packb([*env[:i], bad, *env[i + 1 :]]))
    fields = msgpack.unpackb(payload, strict_map_key=False)
    raw += [with_payload(valid, p) for p in (b"\xc1", b"\xc0", b"\x80", b"\x90", b"\x95")]
    raw += [with_payload(valid, msgpack.packb([*fields, 1])), with_payload(valid, payload[:-1])]
    for i in range(len(fields)):
        for bad in BAD_VALUES:
            raw.append(with_payload(valid, msgpack.packb([*fields[:i], bad, *fields[i + 1 :]])))
    deep = msgpack.ExtType(1, msgpack.packb([]))
    for _ in range(MAX_DEPTH + 2):
        deep = msgpack.ExtType(1, msgpack.packb([deep]))
    raw.append(with_args(valid, [deep]))
    codec, kept, seen = Codec(), [], set()
    for body in raw:
        if body in seen:
            continue
        seen.add(body)
        try:
            codec.decode_call(body)
        except SerializationError:
            kept.append(body)
    return kept


def bomb_bodies(valid: bytes) -> dict[str, bytes]:
    """Calls whose args are decoding bombs of ``BOMB`` bytes, by kind."""
    return {kind: with_raw_args(valid, bomb) for kind, bomb in bombs(BOMB).items()}


# The suite: a real worker, its backend written to directly -------------------------------


def put_task(url: str, server: Any, task_id: str, body: bytes) -> None:
    """Write one task entry into the broker at ``url``, as a client would (queue default)."""
    if url.startswith("redis"):
        import redis

        with redis.Redis.from_url(url) as r:
            r.lpush(Keys("remoteexec:").waiting("default"), pack_task(task_id, "r", 1, body))
    elif url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None) as conn:
            conn.execute(
                "INSERT INTO tasks (id, queue, reply_to, body, created) "
                "VALUES (?, 'default', 'r', ?, ?)",
                (task_id, body, time.time()),
            )
        conn.close()
    else:
        conn = server.connect(url.rsplit("/", 1)[1].split("?")[0])
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO remoteexec_tasks (id, queue, reply_to, body, created) "
                    "VALUES (%s, 'default', 'r', %s, UNIX_TIMESTAMP(NOW(6)))",
                    (task_id, body),
                )
        finally:
            conn.close()


def dead_ids(url: str) -> set[str]:
    backend = open_backend(url)
    try:
        return {d.id for d in backend.stats().dead}
    finally:
        backend.close()


@dataclass
class Hostile:
    """What was written: task entries that must end as dead letters, other kinds."""

    task_ids: set[str] = field(default_factory=set)  # named task entries
    unnamed: int = 0  # task entries whose id is garbage
    other: int = 0  # registry, dead-letter, reply, lease and queue-name entries
    largest: int = 0

    def task(self, task_id: str | None, size: int) -> None:
        if task_id is None:
            self.unnamed += 1
        else:
            self.task_ids.add(task_id)
        self.largest = max(self.largest, size)

    @property
    def kinds(self) -> int:
        return len(self.task_ids) + self.unnamed + self.other


def write_redis(url: str, reply_to: str, valid: bytes) -> Hostile:
    import redis

    r = redis.Redis.from_url(url)
    keys, q, out = Keys("remoteexec:"), "default", Hostile()
    try:
        for n, body in enumerate(hostile_bodies(valid, 1)):
            r.lpush(keys.waiting(q), pack_task(f"h-{n}", "nobody", 1, body))
            out.task(f"h-{n}", len(body))
        elements = bad_task_elements(b"\xc1")
        for elem in elements.values():
            r.lpush(keys.waiting(q), elem)
            out.task(None, len(elem))
        r.lpush(keys.waiting(q), pack_task("h-max-attempt", "nobody", 2**32 - 1, b"\xc1"))
        out.task("h-max-attempt", 10)
        # Claim lists under expired leases: requeued, found malformed, dead.
        for n, elem in enumerate([*elements.values(), pack_task("h-x", "r", 2**32 - 1, b"")]):
            token = f"hostile{n}".encode() if n % 2 else b"\xff\xfe" + str(n).encode()
            r.rpush(keys.claim_raw(q, token), elem)
            r.zadd(keys.leases(q), {token: 0})
            out.task("h-x" if elem.startswith(HEAD.pack(2**32 - 1, 3, 1)) else None, len(elem))
        r.zadd(keys.leases(q), {b"\xff lease without a claim": 0, b"due-never": 2**60})
        out.other += 2
        r.sadd(keys.queues, b"\xff\xfe not UTF-8")
        out.other += 1
        for n, row in enumerate(bad_json_rows(GOOD_WORKER)):
            r.hset(keys.workers, f"hostile-{n}", row)
            out.other += 1
        r.hset(keys.workers, b"\xff\xfe", b"\xff")
        for row in bad_json_rows(GOOD_DEAD):
            r.lpush(keys.dead, row)
            out.other += 1
        box = keys.replies(reply_to)
        for elem in [b"", b"\x00", b"\x00\x09abc", b"\x00\x02\xff\xfe", b"\x00\x01x\xc1"]:
            r.rpush(box, elem)
            out.other += 1
        r.rpush(box, b"\x00\x01x" + Codec().encode_reply(Reply("x", 1, None)))  # nobody's
        out.other += 1
    finally:
        r.close()
    return out


def write_sqlite(url: str, reply_to: str, valid: bytes) -> Hostile:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    out, now = Hostile(), time.time()
    task = "INSERT INTO tasks (id, queue, reply_to, body, created) VALUES (?, 'default', ?, ?, ?)"
    try:
        for n, body in enumerate(hostile_bodies(valid, 2)):
            conn.execute(task, (f"h-{n}", "nobody", body, now))
            out.task(f"h-{n}", len(body))
        # Type-confused columns: (id, reply_to, body) as SQL expressions.
        confused = [
            ("'h-int-body'", "'r'", "42"),
            ("'h-real-body'", "'r'", "4.5"),
            ("'h-text-body'", "'r'", "'text'"),
            ("'h-bad-text-body'", "'r'", "CAST(x'ff00fe' AS TEXT)"),
            ("'h-int-reply'", "42", "x'c1'"),
            ("'h-real-reply'", "1.5", "x'c1'"),
            ("'h-blob-reply'", "x'ff'", "x'c1'"),
            ("'h-bad-reply'", "CAST(x'fffe' AS TEXT)", "x'c1'"),
            ("420", "'r'", "x'c1'"),  # TEXT affinity: the id '420'
            ("4.25", "'r'", "x'c1'"),
            ("x'00ff'", "'r'", "x'c1'"),  # a blob: the dead letter names its repr
            ("CAST(x'fffe' AS TEXT)", "'r'", "x'c1'"),  # not UTF-8: read as bytes
        ]
        names = {"x'00ff'": repr(b"\x00\xff"), "CAST(x'fffe' AS TEXT)": repr(b"\xff\xfe")}
        for task_id, reply, body in confused:
            conn.execute(
                f"INSERT INTO tasks (id, queue, reply_to, body, created) "
                f"VALUES ({task_id}, 'default', {reply}, {body}, {now})"
            )
            out.task(names.get(task_id, task_id.strip("'")), 8)
        odd = [  # (id, attempt, token, lease_until)
            ("h-real-attempt", "4.5", "NULL", "0"),
            ("h-big-attempt", "9223372036854775807", "NULL", "0"),
            ("h-text-lease", "1", "'tok1'", "'never'"),
            ("h-blob-lease", "1", "'tok2'", "x'00'"),
            ("h-expired", "1", "'tok3'", "0"),
            ("h-text-attempt", "'abc'", "NULL", "0"),
        ]
        for task_id, attempt, token, lease in odd:
            conn.execute(
                "INSERT INTO tasks (id, queue, reply_to, body, attempt, token, lease_until, "
                f"created) VALUES ('{task_id}', 'default', 'r', x'c1', {attempt}, {token}, "
                f"{lease}, {now})"
            )
            out.task(task_id, 1)
        for name in ("42", "x'ff'", "CAST(x'fffe' AS TEXT)", "4.5"):
            conn.execute(f"INSERT OR IGNORE INTO queues (name) VALUES ({name})")
            out.other += 1
        live = time.time() + 3600  # read by stats as a live worker
        bad_workers = [
            ("'w-1'", "'h'", "1", "'not json'"),
            ("'w-2'", "'h'", "1", "'[1, 2]'"),
            ("'w-3'", "'h'", "1", "'{}'"),
            ("'w-4'", "'h'", "'pid'", "'[]'"),
            ("'w-5'", "x'ff'", "1", "'[]'"),
            ("CAST(x'fffe' AS TEXT)", "'h'", "1", "'[]'"),
            ("'w-7'", "'h'", "1.5", "'[]'"),
            ("'w-8'", "'h'", "1", "CAST(x'ff' AS TEXT)"),
            ("'w-9'", "'h'", "1", "'" + "[" * 100_000 + "'"),
        ]
        for wid, host, pid, queues in bad_workers:
            conn.execute(
                f"{WORKER_ROW} ({wid}, {host}, {pid}, {queues}, 1.0, {live}, 0, 0, 0, '{{}}')"
            )
            out.other += 1
        for n, started in enumerate(("'x'", "x'00'")):
            conn.execute(
                f"{WORKER_ROW} ('w-s{n}', 'h', 1, '[]', {started}, {live}, 0, 0, 0, '{{}}')"
            )
            out.other += 1
        for n, (failed, durations) in enumerate(
            [("-0.5", "'{}'"), ("0", "'not json'"), ("0", "'{\"A.run\": [-1]}'"), ("'x'", "'{}'")]
        ):
            conn.execute(
                f"{WORKER_ROW} ('w-f{n}', 'h', 1, '[]', 1.0, {live}, 0, 0, {failed}, {durations})"
            )
            out.other += 1
        bad_dead = [
            ("42", "'q'", "'n'", "'r'", "1.0"),
            ("'t'", "x'ff'", "'n'", "'r'", "1.0"),
            ("'t'", "'q'", "CAST(x'fffe' AS TEXT)", "'r'", "1.0"),
            ("'t'", "'q'", "'n'", "4.5", "1.0"),
            ("'t'", "'q'", "'n'", "'r'", "'yesterday'"),
            ("'t'", "'q'", "'n'", "'r'", "x'00'"),
        ]
        for row in bad_dead:
            conn.execute(
                f"INSERT INTO dead (id, queue, name, reason, at) VALUES ({', '.join(row)})"
            )
            out.other += 1
        for body in ("42", "4.5", "'text'", "CAST(x'ff' AS TEXT)", "x'c1'", "x''"):
            conn.execute(
                f"INSERT INTO replies (reply_to, body, created) VALUES (?, {body}, {now})",
                (reply_to,),
            )
            out.other += 1
    finally:
        conn.close()
    return out


def write_mysql(server: Any, url: str, reply_to: str, valid: bytes) -> Hostile:
    conn = server.connect(url.rsplit("/", 1)[1].split("?")[0])
    out = Hostile()
    now = "UNIX_TIMESTAMP(NOW(6))"
    task = (
        "INSERT INTO remoteexec_tasks (id, queue, reply_to, body, created) "
        f"VALUES (%s, 'default', %s, %s, {now})"
    )
    try:
        with conn.cursor() as cur:
            for n, body in enumerate(hostile_bodies(valid, 3)):
                cur.execute(task, (f"h-{n}", "nobody", body))
                out.task(f"h-{n}", len(body))
            odd = [  # (id, attempt, lock_version, state, token, lease_until)
                ("h-max-attempt", 2147483647, 0, 0, None, 0),
                ("h-max-version", 1, 4294967295, 0, None, 0),
                ("h-min-attempt", -2147483648, 0, 0, None, 0),
                ("h-expired", 1, 0, 1, "x" * 32, 0),
            ]
            for row in odd:
                cur.execute(
                    "INSERT INTO remoteexec_tasks (id, queue, reply_to, body, attempt, "
                    "lock_version, state, token, lease_until, created) "
                    f"VALUES (%s, 'default', 'r', x'c1', %s, %s, %s, %s, %s, {now})",
                    row,
                )
                out.task(row[0], 1)
            worker = (
                "INSERT INTO remoteexec_workers (id, host, pid, queues, started, last_seen, "
                f"done, running, seen_at) VALUES (%s, 'h', 1, %s, 1, 2, 0, 0, {now} + 3600)"
            )
            for n, queues in enumerate(["not json", "[1, 2]", "{}", "null", "", "[" * 10_000]):
                cur.execute(worker, (f"hostile-{n}", queues))
                out.other += 1
            for n, body in enumerate([*hostile_bodies(valid, 4)[:20], b"", b"\x00\x01"]):
                cur.execute(
                    "INSERT INTO remoteexec_replies (reply_to, task_id, body, created) "
                    f"VALUES (%s, %s, %s, {now})",
                    (reply_to, f"x-{n}", body),
                )
                out.other += 1
    finally:
        conn.close()
    return out


def status(pid: int, field_name: str) -> int:
    """A ``/proc/<pid>/status`` figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field_name} for {pid}")


@pytest.fixture
def thread_deaths(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    deaths: list[str] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        deaths.append(f"{args.thread.name if args.thread else '?'}: {args.exc_value!r}")

    monkeypatch.setattr(threading, "excepthook", hook)
    yield deaths


@pytest.mark.timeout(300)  # a farm, hundreds of entries and eight bombs of 4 MiB
@pytest.mark.parametrize(
    ("kind", "secret"),
    [(kind, secret) for secret in (None, "k") for kind in ("sqlite", "redis", "mysql")],
    ids=["sqlite", "redis", "mysql", "sqlite-signed", "redis-signed", "mysql-signed"],
)
def test_hostile_entries_never_stop_the_farm(
    kind: str,
    secret: str | None,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    thread_deaths: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a secret, the worker and the client sign and verify; no hostile entry is."""
    if secret is not None:
        monkeypatch.setenv("REMOTEEXEC_SECRET", secret)
    url = fresh_url(kind, request, tmp_path)
    server = request.getfixturevalue("mariadb_server") if kind == "mysql" else None
    farm = Farm(url, tmp_path)
    farm.start("--threads", "1", lease=2.0)
    try:
        [pid] = farm.worker_pids(1)
        with Client(url, timeout=60) as client:
            futures = [client.submit("Echo", "value", [i], {}) for i in range(20)]
            assert [f.result(60) for f in futures] == list(range(20))
            valid = Codec().encode_call(make_call("template", 1))
            if kind == "redis":
                hostile = write_redis(url, client.reply_to, valid)
            elif kind == "sqlite":
                hostile = write_sqlite(url, client.reply_to, valid)
            else:
                hostile = write_mysql(server, url, client.reply_to, valid)
            futures = [client.submit("Echo", "value", [i], {}) for i in range(20, 60)]
            assert [f.result(60) for f in futures] == list(range(20, 60))
            assert hostile.kinds >= 200, hostile
            stats = settled(url, hostile)
            assert hostile.task_ids <= {d.id for d in stats.dead}
            assert len(stats.dead) >= len(hostile.task_ids) + hostile.unnamed
            assert not any(stats.queues.values()) and stats.running == 0, stats
            assert [w.pid for w in stats.workers] == [pid]

            # Decoding bombs, one at a time: the worker's peak memory is that of one.
            baseline, grown = status(pid, "VmHWM"), {}
            for n, (bomb, body) in enumerate(bomb_bodies(valid).items()):
                put_task(url, server, f"bomb-{n}", body)
                hostile.task(f"bomb-{n}", len(body))
                assert client.call("Echo", "value", [n], {}) == n
                settled(url, hostile)
                grown[bomb] = status(pid, "VmHWM") - baseline  # a peak: it never falls
            assert hostile.task_ids <= {d.id for d in settled(url, hostile).dead}
            assert client.call("Echo", "value", ["after"], {}) == "after"
        # The worker's peak, in multiples of the message: the message itself and the
        # backend's copies of the row (SQLite's page cache and its UPDATE's copies, the
        # drivers' buffers of Redis and MySQL); no bomb is decoded.
        assert max(grown.values()) < 8 * hostile.largest, (max(grown.values()) / BOMB, grown)
        assert farm.worker_pids(1) == [pid]
    finally:
        farm.stop()
    logs = farm.logs()
    assert "replacing" not in logs and "died" not in logs and "Traceback" not in logs, logs[-3000:]
    assert not thread_deaths


def settled(url: str, hostile: Hostile, timeout: float = 60) -> Any:
    """``stats()`` once every hostile task entry is a dead letter and nothing waits or
    runs (or ``timeout`` passed)."""
    backend = open_backend(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            stats = backend.stats()
            if (
                hostile.task_ids <= {d.id for d in stats.dead}
                and len(stats.dead) >= len(hostile.task_ids) + hostile.unnamed
                and not any(stats.queues.values())
                and stats.running == 0
            ) or time.monotonic() > deadline:
                return stats
            time.sleep(0.1)
    finally:
        backend.close()
