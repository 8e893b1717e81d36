"""``register_type(cls)`` in one line for a dataclass or an Enum, checked by the receiver."""

from __future__ import annotations

import dataclasses
import enum
from collections import namedtuple
from typing import Any

import msgpack
import pytest

from remoteexec import ConfigurationError, SerializationError, register_type
from remoteexec.message import Codec, Reply


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str = ""


@dataclasses.dataclass
class Path:
    points: list[Point]
    closed: bool


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


for cls in (Point, Path, Colour, Level):
    register_type(cls)


def roundtrip(value: Any) -> Any:
    codec = Codec()
    reply = codec.decode_reply(codec.encode_reply(Reply("id", value, None)))
    assert reply.failure is None
    return reply.value


def test_dataclasses_and_enums_round_trip_as_themselves_nested_anywhere() -> None:
    value = {
        Colour.RED: Path([Point(0.0, 1.5, "a"), Point(2.0, 3.0)], closed=True),
        "levels": (Level.HIGH, Level.LOW),
        "colours": {Colour.GREEN},
    }
    got = roundtrip(value)
    assert got == value
    assert type(got[Colour.RED].points[0]) is Point
    assert [type(x) for x in got["levels"]] == [Level, Level]  # not plain ints


def test_a_dataclass_travels_as_its_fields_by_name() -> None:
    body = Codec().encode_reply(Reply("id", Point(1.0, 2.0), None))
    assert b"tests.test_records.Point" in body and b"label" in body


def test_a_peer_sending_the_fields_by_name_is_understood() -> None:
    point = {"x": 1.0, "y": 2.0, "label": "p"}
    assert Codec().decode_reply(_registered("tests.test_records.Point", point)).value == Point(
        1.0, 2.0, "p"
    )
    assert Codec().decode_reply(_registered("tests.test_records.Level", 2)).value is Level.HIGH


def _registered(name: str, value: Any) -> bytes:
    """A reply whose value is the registered type ``name`` holding ``value`` (as a peer
    that does not share our class would send it)."""
    inner = msgpack.packb([name, value])
    payload = msgpack.packb(["id", msgpack.ExtType(12, inner), None])
    return msgpack.packb([2, 2, payload, None])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tests.test_records.Point", {"x": 1.0}),  # a field missing
        ("tests.test_records.Point", {"x": 1, "y": 2, "label": "", "z": 3}),  # one too many
        ("tests.test_records.Point", [1.0, 2.0, ""]),  # not a map
        ("tests.test_records.Colour", "blue"),  # not a member
        ("tests.test_records.Level", 3),
    ],
)
def test_what_the_receivers_class_does_not_accept_is_a_serialization_error(
    name: str, value: Any
) -> None:
    with pytest.raises(SerializationError):
        Codec().decode_reply(_registered(name, value))


def test_a_class_that_is_neither_needs_its_functions() -> None:
    class Plain:
        pass

    with pytest.raises(ConfigurationError, match="encode and decode"):
        register_type(Plain)
    with pytest.raises(ConfigurationError, match="not callable"):
        register_type(Plain, lambda p: 0)


def test_a_dataclass_field_outside_init_needs_its_functions() -> None:
    @dataclasses.dataclass
    class Cached:
        x: int
        doubled: int = dataclasses.field(init=False, default=0)

    with pytest.raises(ConfigurationError, match="outside __init__"):
        register_type(Cached)


def test_a_namedtuple_arrives_as_a_tuple_and_a_bytearray_as_bytes() -> None:
    """As the documentation says: they travel as their base types."""
    Pair = namedtuple("Pair", "a b")
    assert type(roundtrip(Pair(1, 2))) is tuple
    assert type(roundtrip(bytearray(b"ab"))) is bytes
