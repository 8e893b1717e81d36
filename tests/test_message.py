"""The wire format: extension types, registered types, malformed input, signing, sizes."""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import tracemalloc
import uuid
from collections import OrderedDict, namedtuple
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import IntEnum
from typing import Any

import msgpack
import pytest

from remoteexec.errors import (
    ConfigurationError,
    PayloadTooLarge,
    SerializationError,
    SignatureError,
)
from remoteexec.message import FORMAT_VERSION, Call, Codec, Failure, Reply, register_type

ID = uuid.UUID(int=7).hex
TZ = timezone(timedelta(hours=5, minutes=30))


def make_call(*args: Any, **kwargs: Any) -> Call:
    return Call(ID, "CalculateMultipleOfPi", "execute", args, kwargs, 1.7e9, 3, None)


def roundtrip(value: Any, codec: Codec | None = None) -> Any:
    codec = codec or Codec()
    got = codec.decode_reply(codec.encode_reply(Reply(ID, value, None)))
    assert got.failure is None
    return got.value


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (incl. tzinfo offsets)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(same(k, k2) and same(v, b[k2]) for k2 in b if k2 == k) for k, v in a.items()
        )
    if isinstance(a, (set, frozenset)):
        return a == b and all(any(same(x, y) for y in b if y == x) for x in a)
    if isinstance(a, (datetime, time)):
        return bool(a == b and a.utcoffset() == b.utcoffset() and a.fold == b.fold)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, Decimal) and a.is_nan():
        return b.is_nan() and a.is_snan() == b.is_snan() and str(a) == str(b)
    if isinstance(a, Decimal):
        return str(a) == str(b)  # keeps exponent and sign of zero
    return bool(a == b)


SCALARS = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    2**64,
    -(2**63) - 1,
    10**40,
    -(10**40),
    1.5,
    float("nan"),
    float("inf"),
    "",
    "héllo ✓",
    b"",
    b"\x00\xff",
    (),
    (1, "a"),
    set(),
    {1, 2},
    frozenset(),
    frozenset({"a", (1, 2)}),
    datetime(2024, 2, 29, 23, 59, 58, 123456),
    datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone.utc),
    datetime(1, 1, 1, tzinfo=TZ),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(-timedelta(hours=23, seconds=1))),
    datetime(2021, 11, 7, 1, 30, fold=1),
    date(2024, 2, 29),
    date.min,
    date.max,
    time(0, 0),
    time(23, 59, 59, 999999),
    time(12, 30, tzinfo=TZ),
    time(1, 2, 3, fold=1),
    timedelta(0),
    timedelta(days=-3, microseconds=5),
    timedelta.max,
    timedelta.min,
    Decimal("3.14159265358979323846264338327950288"),
    Decimal("-0.00"),
    Decimal("1E+5"),
    Decimal("NaN"),
    Decimal("-sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    uuid.uuid4(),
    uuid.UUID(int=0),
    complex(1.5, -2),
    complex(0, float("inf")),
]


@pytest.mark.parametrize(
    "value", SCALARS, ids=[f"{type(v).__name__}-{i}" for i, v in enumerate(SCALARS)]
)
def test_every_supported_type_round_trips_exactly(value: Any) -> None:
    assert same(roundtrip(value), value)


def test_extension_types_round_trip_nested_and_as_dict_keys() -> None:
    hashable = [
        v
        for v in SCALARS
        if v.__hash__ is not None and not (isinstance(v, Decimal) and v.is_nan()) and v == v
    ]
    value = {
        "list": [SCALARS, tuple(SCALARS)],
        "keys": {k: i for i, k in enumerate(hashable)},
        "deep": ((1, (2, (3, frozenset({(4, 5)})))), [{"x": {date(2020, 1, 1): (1,)}}]),
        (1, "tuple", (2,)): {frozenset({1}): [set(), {uuid.UUID(int=1)}]},
    }
    assert same(roundtrip(value), value)


def test_aware_datetime_keeps_offset_even_from_a_zoneinfo() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    value = datetime(2024, 7, 1, 12, 0, tzinfo=paris)
    got = roundtrip(value)
    assert got == value
    assert got.utcoffset() == timedelta(hours=2)
    assert isinstance(got.tzinfo, timezone)  # documented: comes back as a fixed offset


def test_time_whose_tzinfo_has_no_fixed_offset_is_refused() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    with pytest.raises(SerializationError, match="offset"):
        Codec().encode_reply(Reply(ID, time(12, tzinfo=paris), None))


def test_subclasses_of_containers_and_scalars_travel_as_their_base_type() -> None:
    class Color(IntEnum):
        RED = 1

    class MyList(list[int]):
        pass

    point = namedtuple("point", "x y")
    got = roundtrip([point(1, 2), OrderedDict(a=1), Color.RED, MyList([3]), True])
    assert same(got, [(1, 2), {"a": 1}, 1, [3], True])
    assert type(got[4]) is bool


def test_call_round_trips_with_args_and_kwargs() -> None:
    codec = Codec()
    call = Call(ID, "T", "run", (1, (2, 3), [4]), {"when": date(2020, 1, 2)}, None, 5, 2.5)
    got = codec.decode_call(codec.encode_call(call))
    assert got == call
    assert type(got.args) is tuple and type(got.args[1]) is tuple and type(got.args[2]) is list


def test_reply_with_failure_round_trips() -> None:
    codec = Codec()
    reply = Reply(ID, None, Failure("remote", "ValueError", "bad n", "Traceback ...\n"))
    assert codec.decode_reply(codec.encode_reply(reply)) == reply


class Money:
    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount, self.currency = amount, currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.amount, self.currency) == (
            other.amount,
            other.currency,
        )

    __hash__ = None  # type: ignore[assignment]


register_type(Money, lambda m: (m.amount, m.currency), lambda v: Money(*v))


def test_registered_type_round_trips_nested() -> None:
    value = {"price": Money(Decimal("9.99"), "EUR"), "all": (Money(Decimal(1), "USD"),)}
    assert roundtrip(value) == value


def test_registering_another_class_under_the_same_name_is_refused() -> None:
    first = type("Clash", (), {"__module__": __name__})
    second = type("Clash", (), {"__module__": __name__})
    register_type(first, lambda o: 0, lambda v: first())
    register_type(first, lambda o: 1, lambda v: first())  # the same class again: fine
    with pytest.raises(ConfigurationError, match="Clash"):
        register_type(second, lambda o: 0, lambda v: second())


def test_registering_a_builtin_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="tuple"):
        register_type(tuple, lambda o: 0, lambda v: ())


def test_unknown_registered_name_is_a_serialization_error() -> None:
    inner = msgpack.packb(["no.such.Type", 1], use_bin_type=True)
    payload = msgpack.packb([ID, msgpack.ExtType(12, inner), None], use_bin_type=True)
    body = msgpack.packb([FORMAT_VERSION, 2, payload, None], use_bin_type=True)
    with pytest.raises(SerializationError, match=r"no\.such\.Type"):
        Codec().decode_reply(body)
    assert Codec().peek_id(body) == ID


def test_registered_encoder_failure_is_a_serialization_error() -> None:
    class Broken:
        pass

    def boom(_: Broken) -> Any:
        raise RuntimeError("nope")

    register_type(Broken, boom, lambda v: Broken())
    with pytest.raises(SerializationError, match="nope"):
        Codec().encode_reply(Reply(ID, [Broken()], None))


@pytest.mark.parametrize(
    "value", [object(), bytearray, lambda: 1, Exception("x"), [1, {2: object()}], "\ud800"]
)
def test_unsupported_values_raise_serialization_error_naming_the_type(value: Any) -> None:
    with pytest.raises(SerializationError) as info:
        Codec().encode_call(make_call(value))
    if not isinstance(value, str):
        leaf = value if not isinstance(value, list) else value[1][2]
        assert type(leaf).__qualname__ in str(info.value)


def test_nesting_too_deep_is_a_serialization_error() -> None:
    value: Any = ()
    for _ in range(200):
        value = (value,)
    with pytest.raises(SerializationError):
        Codec().encode_reply(Reply(ID, value, None))
    # a hostile message nested as deep (built by hand) is refused too, without crashing
    data = msgpack.packb(None)
    for _ in range(200):
        data = msgpack.packb([msgpack.ExtType(1, data)])
    payload = msgpack.packb([ID, msgpack.ExtType(1, data), None])
    with pytest.raises(SerializationError, match="nested"):
        Codec().decode_reply(msgpack.packb([FORMAT_VERSION, 2, payload, None]))
    assert roundtrip([1]) == [1]  # the per-thread state is intact afterwards


def envelope(
    payload: Any, *, version: Any = FORMAT_VERSION, kind: Any = 1, sig: Any = None
) -> bytes:
    raw = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
    return msgpack.packb([version, kind, raw, sig], use_bin_type=True)


VALID: list[Any] = [ID, "T", "m", [1], {}, None, 3, None, "q", "r", 1.7e9]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        b"garbage that is not msgpack",
        msgpack.packb(None),
        msgpack.packb([]),
        msgpack.packb({"a": 1}),
        msgpack.packb([FORMAT_VERSION, 1, "not bytes", None]),
        msgpack.packb([FORMAT_VERSION, 1, b"\x90", "sig"]),
        msgpack.packb([FORMAT_VERSION, 1]),
        envelope(VALID, kind=2),
        envelope(VALID, kind=True),
        envelope(VALID[:-1]),
        envelope([*VALID, 1]),
        envelope({"id": ID}),
        envelope([1, "T", "m", [1], {}, None, 3, None]),
        envelope([ID, "T", "m", "args", {}, None, 3, None]),
        envelope([ID, "T", "m", [1], {1: 2}, None, 3, None]),
        envelope([ID, "T", "m", [1], {}, "soon", 3, None]),
        envelope([ID, "T", "m", [1], {}, None, True, None]),
        envelope([ID, "T", "m", [1], {}, None, 3, "long"]),
        envelope([ID, "T", "m", [msgpack.ExtType(99, b"")], {}, None, 3, None]),
        envelope([ID, "T", "m", [msgpack.ExtType(4, b"\x01")], {}, None, 3, None]),
        envelope([ID, "T", "m", [msgpack.ExtType(5, b"\x00\x00\x00\x00")], {}, None, 3, None]),
        envelope([ID, "T", "m", [msgpack.ExtType(9, b"short")], {}, None, 3, None]),
        envelope([ID, "T", "m", [msgpack.ExtType(8, b"not a number")], {}, None, 3, None]),
        envelope([ID, "T", "m", [msgpack.ExtType(8, "é".encode())], {}, None, 3, None]),
        envelope([ID, "T", "m", [msgpack.ExtType(1, b"\x81\x01\x02")], {}, None, 3, None]),
        envelope([ID, "T", "m", [msgpack.ExtType(2, msgpack.packb([[1]]))], {}, None, 3, None]),
        envelope([ID, "T", "m", [msgpack.ExtType(12, b"\x93\x01\x02\x03")], {}, None, 3, None]),
        envelope(b"\x98" + b"\xc0" * 7),  # truncated payload
        envelope(msgpack.packb(VALID) + b"\x00"),  # trailing bytes
        envelope(b"\x81\x91\x01\x01"),  # a list as a map key
        envelope(b"\x91" * 3000),  # nested beyond msgpack's own stack
    ],
)
def test_malformed_calls_raise_serialization_error(body: bytes) -> None:
    with pytest.raises(SerializationError):
        Codec().decode_call(body)


def test_keep_result_travels_in_the_signed_call_and_is_checked_on_decoding() -> None:
    codec = Codec(secrets=["s3cret"])
    call = Call(ID, "T", "m", (1,), {}, None, 3, None, "q", "", 1.7e9)
    assert codec.decode_call(codec.encode_call(call)).keep_result == 0.0  # not kept
    call.keep_result = 90.5
    assert codec.decode_call(codec.encode_call(call)).keep_result == 90.5
    for bad in [-1, 30 * 86400 + 1, "60", float("nan"), 2**63]:
        with pytest.raises(SerializationError, match="keep_result"):
            Codec().decode_call(envelope([*VALID, {"keep_result": bad}]))


def test_version_mismatch_is_a_serialization_error_naming_both_versions() -> None:
    with pytest.raises(SerializationError, match=r"version 1 .*speaks 2"):
        Codec().decode_call(envelope(VALID, version=1))  # the layout before queue etc.
    with pytest.raises(SerializationError, match="version"):
        Codec().decode_call(msgpack.packb([99]))


def test_random_and_mutated_bodies_only_ever_raise_serialization_errors() -> None:
    rng = random.Random(1234)
    codec, signed = Codec(), Codec(secrets=["k"])
    valid = [
        codec.encode_call(make_call(1, (2, 3.5), {frozenset({4})}, when=datetime.now(TZ))),
        codec.encode_reply(Reply(ID, {"a": [Decimal("1.5"), uuid.uuid4()]}, None)),
        codec.encode_reply(Reply(ID, None, Failure("remote", "E", "m", "t"))),
        signed.encode_call(make_call(Money(Decimal(1), "EUR"))),
    ]
    bodies = [rng.randbytes(rng.randrange(0, 200)) for _ in range(500)]
    for body in valid:
        for _ in range(500):
            mutated = bytearray(body)
            for _ in range(rng.randrange(1, 4)):
                if not mutated:
                    break
                op = rng.randrange(3)
                pos = rng.randrange(len(mutated))
                if op == 0:
                    mutated[pos] = rng.randrange(256)
                elif op == 1:
                    del mutated[pos:]
                else:
                    mutated.insert(pos, rng.randrange(256))
            bodies.append(bytes(mutated))
    for body in bodies:
        for c in (codec, signed):
            for decode in (c.decode_call, c.decode_reply):
                try:
                    decode(body)
                except (SerializationError, SignatureError):
                    pass
            c.peek_id(body)  # never raises


@pytest.fixture
def signer() -> Codec:
    return Codec(secrets=["new-secret", "old-secret"])


def test_signed_messages_round_trip(signer: Codec) -> None:
    body = signer.encode_call(make_call(42))
    assert signer.decode_call(body) == make_call(42)
    sig = msgpack.unpackb(body)[3]
    payload = msgpack.unpackb(body)[2]
    expected = hmac.new(b"new-secret", b"remoteexec\x02\x01" + payload, hashlib.sha256).digest()
    assert sig == expected  # plain HMAC-SHA256 with the first secret


def test_unsigned_message_is_rejected_when_secrets_are_set(signer: Codec) -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        signer.decode_call(Codec().encode_call(make_call(42)))


def test_forged_messages_are_rejected_before_decoding(signer: Codec) -> None:
    forged = Codec(secrets=["guess"]).encode_call(make_call(42))
    with pytest.raises(SignatureError):
        signer.decode_call(forged)
    # a payload swapped under a valid signature, holding something undecodable
    version, kind, _, sig = msgpack.unpackb(signer.encode_call(make_call(42)))
    evil = msgpack.packb([ID, "T", "m", [msgpack.ExtType(99, b"")], {}, None, 3, None])
    with pytest.raises(SignatureError):  # not SerializationError: the payload is never read
        signer.decode_call(msgpack.packb([version, kind, evil, sig]))
    # a signed reply replayed as a call
    reply = signer.encode_reply(Reply(ID, 1, None))
    _, _, payload, sig = msgpack.unpackb(reply)
    with pytest.raises(SignatureError):
        signer.decode_call(msgpack.packb([FORMAT_VERSION, 1, payload, sig]))


def test_rotation_accepts_a_message_signed_with_the_old_secret(signer: Codec) -> None:
    old = Codec(secrets=["old-secret"])
    assert signer.decode_reply(old.encode_reply(Reply(ID, 7, None))).value == 7
    with pytest.raises(SignatureError):  # the first secret signs: old-only peers reject it
        old.decode_reply(signer.encode_reply(Reply(ID, 8, None)))
    long_key = Codec(secrets=["x" * 100, b"bytes-key"])  # keys longer than a SHA-256 block
    assert Codec(secrets=["x" * 100]).decode_call(long_key.encode_call(make_call())) == make_call()


def test_without_secrets_signatures_are_ignored(signer: Codec) -> None:
    assert Codec().decode_call(signer.encode_call(make_call(1))) == make_call(1)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        Codec(secrets=[""])


def test_payload_too_large_on_encode_and_decode() -> None:
    small = Codec(max_message_size=1000)
    with pytest.raises(PayloadTooLarge, match="1000"):
        small.encode_call(make_call(b"x" * 1000))
    with pytest.raises(PayloadTooLarge):
        small.encode_reply(Reply(ID, "y" * 2000, None))
    big_body = Codec().encode_call(make_call(b"x" * 1000))
    with pytest.raises(PayloadTooLarge):
        small.decode_call(big_body)
    assert isinstance(PayloadTooLarge(), SerializationError)
    assert small.decode_call(small.encode_call(make_call(b"x" * 800))).args == (b"x" * 800,)


def test_peek_id_reads_a_reply_id_without_decoding_the_value(signer: Codec) -> None:
    body = signer.encode_reply(Reply(ID, [1, 2], None))
    assert signer.peek_id(body) == ID
    # Unverified on purpose: the client uses it only to fail the call with SignatureError.
    unsigned = Codec().encode_reply(Reply(ID, 1, None))
    assert signer.peek_id(unsigned) == ID
    with pytest.raises(SignatureError):
        signer.decode_reply(unsigned)
    assert Codec().peek_id(b"garbage") is None


def test_codec_is_usable_from_many_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    codec = Codec(secrets=["k"])

    def work(i: int) -> bool:
        value = {"i": i, "t": (i, (i,)), "s": {i}}
        return bool(codec.decode_reply(codec.encode_reply(Reply(ID, value, None))).value == value)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(2000)))


class Celsius:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Celsius) and self.degrees == other.degrees

    __hash__ = None  # type: ignore[assignment]


def test_module_constants() -> None:
    assert FORMAT_VERSION == 2


def test_the_public_register_type_teaches_the_codec() -> None:
    import remoteexec

    remoteexec.register_type(Celsius, lambda c: c.degrees, Celsius)
    body = Codec().encode_reply(Reply(ID, [Celsius(21.5)], None))
    assert b"Celsius" in body  # sent as the registered type, by its name
    got = Codec().decode_reply(body).value
    assert got == [Celsius(21.5)] and type(got[0]) is Celsius


# Large bodies: the payload is decoded in place, not copied ----------------------------------

MiB = 1 << 20


def call_of(*args: Any) -> Call:
    return Call(ID, "T", "m", args, {}, None, 3, None, "q", "r", 1.7e9)


@pytest.mark.parametrize("secrets", [(), ("k",)], ids=["plain", "signed"])
@pytest.mark.parametrize(
    "args",
    [
        ([0] * MiB,),  # 8 bytes a byte: the reason for the allowance
        ([{"id": i, "name": f"n{i}"} for i in range(20_000)],),
        (b"x" * (8 * MiB),),
        ("é" * 100_000, (1, 2), {3, 4}, Decimal("1.5")),
    ],
    ids=["a million zeros", "small dicts", "big bytes", "mixed"],
)
def test_a_large_body_decodes_as_a_small_one(args: tuple[Any, ...], secrets: Any) -> None:
    codec = Codec(secrets=secrets)
    body = codec.encode_call(call_of(*args))
    assert len(body) > 16 * 1024
    assert codec.decode_call(body) == call_of(*args)
    reply = codec.encode_reply(Reply(ID, list(args), None))
    assert codec.decode_reply(reply) == Reply(ID, list(args), None)
    assert codec.peek_id(reply) == ID


def test_a_large_body_in_another_msgpack_layout_decodes_the_same() -> None:
    payload = msgpack.packb([*VALID[:3], [b"x" * 100_000], *VALID[4:]])
    bin32 = b"\xc6" + len(payload).to_bytes(4, "big") + payload
    for head in (b"\x94\x02\x01", b"\xdc\x00\x04\x02\x01", b"\x94\xcc\x02\xd0\x01"):
        for body in (head + bin32 + b"\xc0", head + msgpack.packb(payload) + b"\xc0"):
            assert Codec().decode_call(body).args == (b"x" * 100_000,), body[:8]


@pytest.mark.parametrize(
    "body",
    [
        envelope(b"\x90" * 20_000)[:-1],  # cut in its signature
        envelope(b"\x90" * 20_000) + b"\xc0",  # a fifth value
        envelope(b"\x90" * 20_000)[:-2] + b"\xc0",  # cut in its payload
        b"\x94\x02\x01\xc6\xff\xff\xff\xff" + b"\x90" * 20_000 + b"\xc0",  # length overruns
        envelope("x" * 20_000),  # a str payload
        envelope(b"\x90" * 20_000, sig="x" * 20),
        envelope(b"\x90" * 20_000, sig=[1]),
        envelope(b"\x90" * 20_000, version=1),
        envelope(b"\x90" * 20_000, version="x" * 100),
        envelope(b"\x90" * 20_000, kind=2),
        envelope(b"\x90" * 20_000, kind=[[]]),
        msgpack.packb([FORMAT_VERSION, 1, b"\x90" * 20_000]),
        msgpack.packb([FORMAT_VERSION, 1, b"\x90" * 20_000, None, None]),
        msgpack.packb([b"\x90" * 20_000] * 4),
    ],
)
def test_a_large_malformed_envelope_is_a_serialization_error(body: bytes) -> None:
    assert len(body) > 16 * 1024
    with pytest.raises(SerializationError):
        Codec().decode_call(body)
    assert Codec().peek_id(body) is None


def test_a_large_payload_is_not_copied_while_it_decodes() -> None:
    value = b"x" * (8 * MiB)
    body = Codec().encode_call(call_of(value))
    tracemalloc.start()
    try:
        call = Codec().decode_call(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert call.args == (value,)
    assert peak < 1.25 * len(body)  # the bytes value; the payload is read where it lies
