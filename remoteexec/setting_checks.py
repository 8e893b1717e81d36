"""The checks of one setting's value, for ``config.py``: each returns the value kept, or
raises ``ConfigurationError`` naming the setting and where it came from (never showing a
secret or a password).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigurationError


def check_size(name: str, value: Any, source: str) -> int:
    if type(value) is not int or value < 1:
        raise ConfigurationError(
            f"{name} must be a positive integer, not {value!r:.100} ({source})"
        )
    return value


def check_password(name: str, value: Any, source: str) -> str:
    if not isinstance(value, str) or not value:
        # The value itself is never shown: it is, or may be, a password.
        raise ConfigurationError(
            f"password must be a non-empty string, not a {type(value).__name__} ({source})"
        )
    return value


def check_blob_url(url: Any, source: str) -> str:
    if not isinstance(url, str) or not url.lower().startswith("file:///"):
        raise ConfigurationError(
            f"blob_url must be a file:///absolute/path URL, not {url!r:.100} ({source})"
        )
    return url


def check_seconds(name: str, value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{name} must be a number of seconds, not {value!r:.100} ({source})"
        )
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(
            f"{name} must be a positive, finite number of seconds, not {value!r} ({source})"
        )
    return float(value)


def check_secrets(value: Any, name: str, source: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, (list, tuple))
        or not items
        or not all(isinstance(s, str) and s for s in items)
    ):
        # The value itself is never shown: it is, or contains, a secret.
        raise ConfigurationError(
            f"{name} must be a non-empty string or a non-empty list of them, "
            f"not a {type(value).__name__} ({source})"
        )
    return tuple(items)
