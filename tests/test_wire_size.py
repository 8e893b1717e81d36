"""The walk that measures a message before it is decoded (``remoteexec._wire_size``).

Its sums must cover what decoding allocates (else a bomb gets through) without refusing
what decodes within the allowance (else legitimate calls fail), and it must refuse what
msgpack refuses, no more: each test below measures one of those against real decoding.
"""

from __future__ import annotations

import datetime
import random
import subprocess
import sys
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from remoteexec._exttypes import pack, unpack
from remoteexec._wire_size import measure
from remoteexec.errors import SerializationError

UNLIMITED = 1 << 62

VALUES: dict[str, Any] = {
    "ints": list(range(100_000)),
    "small ints": [1] * 300_000,
    "negative ints": [-i for i in range(50_000)],
    "big ints": [2**62 + i for i in range(20_000)],
    "floats": [i + 0.5 for i in range(100_000)],
    "short strs": [f"ab{i}" for i in range(50_000)],
    "long strs": ["x" * 100 + str(i) for i in range(20_000)],
    "non-ascii strs": [f"é{i}ü€" for i in range(30_000)],
    "bytes": [b"y" * 300] * 3000,
    "records": [{"id": i, "name": f"user {i}"} for i in range(20_000)],
    "rows": [[i, str(i)] for i in range(50_000)],
    "tuples": [(i, i + 1) for i in range(20_000)],
    "sets": [frozenset(range(i % 10)) for i in range(5000)],
    "a big set": set(range(50_000)),
    "datetimes": [
        datetime.datetime(2026, 1, 1, i % 24, tzinfo=datetime.timezone.utc) for i in range(5000)
    ],
    "decimals": [Decimal(i) / 7 for i in range(10_000)],
    "uuids": [uuid.UUID(int=i) for i in range(10_000)],
    "beyond 64 bits": [2**70 + i for i in range(10_000)],
    "nested lists": [[[i]] for i in range(30_000)],
    "a big dict": {i: str(i) for i in range(50_000)},
    "distinct keys": {f"key {i}": i for i in range(50_000)},
    "wide records": [{f"field{k}": k * i for k in range(12)} for i in range(5000)],
}


def decoded_peak(data: bytes) -> int:
    """The peak of memory while the package decodes ``data`` (its walk takes a few KiB), in
    a fresh interpreter, as a worker's: the table of interned strings (map keys) grows from
    what the process has interned before, which differs from test to test."""
    script = (
        "import sys, tracemalloc\n"
        "from remoteexec._exttypes import unpack\n"
        "data = sys.stdin.buffer.read()\n"
        "tracemalloc.start()\n"
        "unpack(data)\n"
        "print(tracemalloc.get_traced_memory()[1])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()
    return int(run.stdout)


@pytest.mark.parametrize("name", VALUES)
def test_the_sum_covers_what_decoding_allocates_and_not_much_more(name: str) -> None:
    data = pack(VALUES[name])
    estimate, peak = measure(data, UNLIMITED), decoded_peak(data)
    ratios = (estimate / len(data), peak / len(data))
    assert 0.95 * peak <= estimate <= 2 * peak + 64 * 1024, ratios


@pytest.mark.parametrize("name", VALUES)
def test_a_value_decodes_through_the_measure_as_it_was_packed(name: str) -> None:
    assert unpack(pack(VALUES[name])) == VALUES[name]


def test_the_walk_stops_at_its_limit_before_reading_the_rest() -> None:
    data = msgpack.packb([[]] * 1_000_000)
    with pytest.raises(SerializationError, match="decodes to more than 1000 bytes"):
        measure(data, 1000)
    assert measure(data, UNLIMITED) >= 64 * 1_000_000


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x92\x01", "2 values in 1 bytes"),
        (b"\x92\x01\xcd\x01", "cut short"),
        (b"\x93\x01\xcb\x40\x04", "cut short"),  # a run that starts past the end
        (b"\xc1", "reserved byte"),
        (b"\x01\x02", "bytes after its value"),
        (b"\xdd\xff\xff\xff\xff", "4294967295 values"),
        (b"\xdf\x00\x00\xff\xff" + b"\x00" * 10, "values in"),
        (b"\xd9\x10abc", "cut short"),
        (b"\xc6\x7f\xff\xff\xff", "cut short"),
        (msgpack.packb(msgpack.ExtType(99, b"x")), "unknown extension type 99"),
        (msgpack.packb(msgpack.ExtType(1, b"\x01")), "not an array"),
        (b"\x91" * 2000 + b"\xc0", "nested deeper than 1024"),
    ],
)
def test_a_malformed_message_is_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(SerializationError, match=why):
        measure(data, UNLIMITED)


def structure(data: bytes) -> Any:
    """``data`` read by msgpack, the package's collection extensions read inside."""

    def ext(code: int, body: bytes) -> Any:
        return structure(body) if code in (1, 2, 3, 12) else msgpack.ExtType(code, body)

    return msgpack.unpackb(data, strict_map_key=False, ext_hook=ext)


def test_the_walk_refuses_exactly_the_structures_msgpack_refuses() -> None:
    """Cut, flipped and spliced messages: the walk and msgpack agree on every one (values
    msgpack reads but the package refuses, like an unknown extension, aside)."""
    rng = random.Random(7)
    seeds = [pack(v) for v in ([1, "ab", 2.5, None, [b"x", {"k": (1, 2)}]], {"a": [1, 2**40]})]
    seeds += [pack(VALUES[name][:50]) for name in ("records", "rows", "tuples", "decimals")]
    for n in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            if not data:
                break
            at = rng.randrange(len(data))
            if rng.random() < 0.2:
                del data[at:]
                data += b"\x00" * rng.randint(0, 2)
            else:
                data[at] = rng.randrange(256)
        if not data:
            continue
        try:
            structure(bytes(data))
            structure_ok = True
        except (TypeError, UnicodeDecodeError):
            continue  # an unhashable key, a bad UTF-8 string: well formed, refused later
        except (ValueError, msgpack.StackError, msgpack.FormatError):
            structure_ok = False  # cut short, extra data, reserved byte, too deep
        try:
            measure(bytes(data), UNLIMITED)
            measured_ok = True
        except SerializationError as exc:
            if "unknown extension" in str(exc) or "not an array" in str(exc):
                continue
            measured_ok = False
        assert measured_ok == structure_ok, (n, bytes(data).hex())
