"""When a deferred call may start: ``delay`` and ``eta``, checked, and the call's
``Job.not_before`` made from them at submit (``client._prepare``).

A call's deadline counts from its submit whatever its delay: a call that could not start
before its deadline is refused at submit, and nothing is sent. So is a signed call with no
deadline that could not start within ``max_age`` (workers with secrets refuse it then).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from .errors import ConfigurationError


def check_delay(value: Any) -> float:
    """``value`` as seconds to wait before the call may start.

    Raises:
        ConfigurationError: it is not a finite number of seconds, 0 or more.
    """
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(
            f"delay must be a finite number of seconds >= 0, not {value!r:.100}"
        )
    return float(value)


def check_eta(value: Any) -> float:
    """``value`` (a ``datetime``, aware or naive local time, or epoch seconds) as epoch
    seconds.

    Raises:
        ConfigurationError: it is none of those, or not a finite time >= the epoch.
    """
    if isinstance(value, datetime.datetime):
        at = value.timestamp()  # a naive datetime is local time
    elif type(value) in (int, float):
        at = float(value)
    else:
        raise ConfigurationError(
            f"eta must be a datetime or epoch seconds, not a {type(value).__name__}"
        )
    if not math.isfinite(at) or at < 0:
        raise ConfigurationError(f"eta must be a finite time after the epoch, not {value!r:.100}")
    return at


def not_before(
    delay: float | None, eta: float | None, now: float, expiry: float | None, label: str
) -> float:
    """The ``Job.not_before`` of a call submitted at ``now`` (0: at once), from its
    ``delay`` or else its ``eta``.

    Raises:
        ConfigurationError: the call could not start before ``expiry`` (its deadline, or
            for a signed call without one, ``max_age`` after the submit).
    """
    at = now + delay if delay is not None else eta or 0.0
    if expiry is not None and at >= expiry:
        raise ConfigurationError(
            f"{label} could not start before it expires: it may start {at - now:.3g} s "
            f"after the submit, and expires {expiry - now:.3g} s after it (its timeout; "
            "max_age for a signed call without one)"
        )
    return at if at > now else 0.0
