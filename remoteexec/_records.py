"""Encoders for ``register_type(cls)`` with no functions given: dataclasses and enums.

A dataclass travels as a map of its fields by name (every field must be an ``__init__``
field: the receiver calls ``cls(**fields)``), an Enum member as its value (the receiver
calls ``cls(value)``). The receiver's own class decides what is accepted: a map with other
names, or a value that is not a member, is refused with ``SerializationError``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

from .errors import ConfigurationError, SerializationError

__all__ = ["derived"]


def derived(cls: type[Any]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """``(encode, decode)`` for a dataclass or an Enum; ``ConfigurationError`` otherwise."""
    if isinstance(cls, enum.EnumMeta):
        return _enum(cls)
    if dataclasses.is_dataclass(cls):
        return _dataclass(cls)
    raise ConfigurationError(
        f"register_type({cls.__qualname__}) needs encode and decode functions: "
        "only a dataclass or an Enum can do without"
    )


def _enum(cls: type[enum.Enum]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    def decode(value: Any) -> Any:
        try:
            return cls(value)
        except (ValueError, TypeError) as exc:
            raise SerializationError(f"{value!r:.100} is not a {cls.__qualname__}") from exc

    return (lambda member: member.value), decode


def _dataclass(cls: type[Any]) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    if not all(f.init for f in fields):
        raise ConfigurationError(
            f"register_type({cls.__qualname__}): a field outside __init__ needs encode and decode"
        )
    expected = set(names)

    def encode(obj: Any) -> dict[str, Any]:
        return {name: getattr(obj, name) for name in names}

    def decode(value: Any) -> Any:
        if not isinstance(value, dict) or set(value) != expected:
            raise SerializationError(f"not the fields of a {cls.__qualname__}")
        return cls(**value)

    return encode, decode
