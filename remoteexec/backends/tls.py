"""What the Redis and MySQL adapters share about TLS: reading URL flags and files, the
warning when verification is off, and saying why a TLS connection failed."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping, Sequence

from ..errors import ConfigurationError

log = logging.getLogger("remoteexec.tls")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: What ``ssl_cert_reqs`` (Redis) and ``ssl_verify_mode`` (MySQL) may be.
VERIFY_MODES = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def flag(
    name: str, value: str, *, also_true: Sequence[str] = (), also_false: Sequence[str] = ()
) -> bool:
    """The URL option ``name=value`` as a boolean.

    Raises:
        ConfigurationError: ``value`` is not a recognised true or false.
    """
    lowered = value.lower()
    if lowered in (*_TRUE, *also_true):
        return True
    if lowered in (*_FALSE, *also_false):
        return False
    raise ConfigurationError(f"bad URL option {name}={value!r:.40}: use true or false")


def verify_mode(name: str, value: str) -> ssl.VerifyMode:
    """The URL option ``name=value`` (``required``, ``optional`` or ``none``) as an ``ssl``
    verify mode.

    Raises:
        ConfigurationError: any other value.
    """
    try:
        return VERIFY_MODES[value.lower()]
    except KeyError:
        raise ConfigurationError(
            f"bad URL option {name}={value!r:.40}: use {', '.join(VERIFY_MODES)}"
        ) from None


def check_files(options: Mapping[str, str], names: Sequence[str]) -> None:
    """Refuse a certificate or key file option naming no file.

    Raises:
        ConfigurationError: naming the option and the path.
    """
    for name in names:
        path = options.get(name)
        if path is not None and not os.path.isfile(path):
            raise ConfigurationError(f"URL option {name}: no such file: {path!r:.200}")


def warn_unverified(broker: str, host: str | None, what: str, option: str) -> None:
    """Log that TLS to ``host`` does not check ``what`` because of the URL's ``option``."""
    log.warning(
        "TLS to %s at %s does not verify the server's %s (URL option %s): anyone on the "
        "network path can pose as the broker",
        broker,
        host,
        what,
        option,
    )


def tls_failure(exc: BaseException) -> str | None:
    """Why a TLS connection failed, if ``exc`` (or an exception it arose from) says one did."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {seen.verify_message or seen.reason}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS connection failed: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return None


def failure_hint(failure: str, host: str | None, *, ca: str, client_cert: str | None) -> str:
    """What to check after ``failure`` (from ``tls_failure``); ``ca`` and ``client_cert`` are
    the URL options that name the CA file and the client certificate (None: one is given)."""
    if "verification" in failure:
        return (
            f" (the server's certificate must chain to a CA in {ca}, or the system's, "
            f"and name {host})"
        )
    if client_cert is not None:
        return f" (does the server require a client certificate? {client_cert})"
    return ""
