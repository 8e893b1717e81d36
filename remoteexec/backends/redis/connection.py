"""Connecting to Redis: URL options, TLS, a client that never resends, and error mapping.

``rediss://`` verifies the server: its certificate must chain to a trusted CA (the system's,
or ``?ssl_ca_certs=``) and name the host the URL connects to. ``ssl_cert_reqs=none`` or
``ssl_check_hostname=false`` turn that off, with a warning each time a client is made.

Every redis-py error leaves the adapter through ``map_redis_errors`` as
``BackendUnavailable``, with the URL's password scrubbed from the message; a certificate
the client refuses says so first.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...errors import BackendUnavailable, ConfigurationError
from ..tls import check_files, failure_hint, flag, tls_failure, verify_mode, warn_unverified
from . import topology

#: The URL options passed on to redis-py (``?prefix=`` is the adapter's own): only these,
#: so a misspelt option is a ``ConfigurationError``, not a ``TypeError`` at first use.
#: Nothing that would let redis-py resend a command or decode replies.
_OPTIONS = (
    *("db", "username", "password", "client_name", "health_check_interval"),
    *("socket_timeout", "socket_connect_timeout"),
)
_TCP_OPTIONS = ("socket_keepalive",)  # not on unix://
_TLS_OPTIONS = (  # rediss:// only
    *("ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"),
    *("ssl_password", "ssl_check_hostname", "ssl_min_version", "ssl_ciphers"),
)
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def split_prefix(url: str) -> tuple[str, str]:
    """``url`` without its ``?prefix=`` option, and that prefix (``remoteexec:`` if none)."""
    query = url.partition("?")[2]
    prefix = dict(parse_qsl(query, keep_blank_values=True)).get("prefix", "remoteexec:")
    return _without(url, ("prefix",)), prefix


def _without(url: str, names: Sequence[str]) -> str:
    """``url`` without the query options ``names``."""
    base, _, query = url.partition("?")
    rest = urlencode(
        [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in names]
    )
    # Not urlunsplit: it would make ``unix:///path.sock`` ``unix:/path.sock``.
    return base + ("?" + rest if rest else "")


def check_options(url: str) -> None:
    """Refuse a URL option redis-py does not take for this scheme, naming it.

    Raises:
        ConfigurationError: an unknown option.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    known = [*_OPTIONS, *(_TCP_OPTIONS if scheme != "unix" else ())]
    known += _TLS_OPTIONS if scheme == "rediss" else ()
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if key not in known:
            raise ConfigurationError(
                f"unknown Redis URL option {key!r:.60} for {scheme}://; "
                f"known options: prefix, {', '.join(known)}"
            )


def tls_options(url: str) -> dict[str, Any]:
    """redis-py's TLS arguments for a ``rediss://`` URL: verifying unless the URL says not.

    ``ssl_cert_reqs`` (``required``) and ``ssl_check_hostname`` (true) are parsed here, not
    by redis-py, so that no redis-py version's own default decides whether to verify.

    Raises:
        ConfigurationError: a bad value, or a certificate or key file that does not exist.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "rediss":
        return {}
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    reqs = options.get("ssl_cert_reqs", "required").lower()
    verify = verify_mode("ssl_cert_reqs", reqs) != ssl.CERT_NONE
    check = flag("ssl_check_hostname", options.get("ssl_check_hostname", "true"))
    check_files(options, _TLS_FILES)
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise ConfigurationError("ssl_keyfile needs ssl_certfile (the client certificate)")
    if not verify:
        warn_unverified("Redis", parts.hostname, "certificate", "ssl_cert_reqs=none")
    elif not check:
        warn_unverified("Redis", parts.hostname, "host name", "ssl_check_hostname=false")
    return {"ssl_cert_reqs": reqs, "ssl_check_hostname": verify and check}


def secrets_in(url: str) -> list[str]:
    """The passwords in ``url`` (userinfo, ``?password=``, ``?ssl_password=``), as written
    and unquoted."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    secrets = [parts.password, query.get("password"), query.get("ssl_password")]
    return [s for s in secrets if s] + [unquote(s) for s in secrets if s]


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def connect(url: str, *, socket_timeout: float, secrets: Sequence[str]) -> redis.Redis:
    """A client for ``url`` that never resends a command.

    Raises:
        ConfigurationError: the URL or one of its options is invalid.
    """
    if urlsplit(url).scheme.lower() in topology.SCHEMES:
        return topology.connect(url, socket_timeout=socket_timeout)  # type: ignore[return-value]
    check_options(url)
    tls = tls_options(url)
    url = _without(url, tuple(tls))
    try:
        return redis.Redis.from_url(
            url,
            **tls,
            decode_responses=False,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5.0,
            # No automatic resend: a claim sent twice would put two tasks in one claim
            # list. A pooled connection the server closed is replaced on checkout.
            retry=Retry(NoBackoff(), 0),
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid Redis URL: {scrub(str(exc), secrets)}") from None


def blocking_wait(client: redis.Redis, socket_timeout: float) -> float:
    """How long one server-side blocking command may wait on ``client``.

    Well below the socket timeout, and short enough that a stopping worker notices within
    a second.
    """
    pool = getattr(client, "connection_pool", None)  # a cluster's: per node
    timeout = pool.connection_kwargs.get("socket_timeout") if pool else socket_timeout
    return min(1.0, float(timeout) / 4) if timeout else 1.0


class map_redis_errors:
    """Map every redis-py error to ``BackendUnavailable`` (secrets scrubbed).

    With ``url``, a TLS failure names the server and says what to check, and a
    connection reset on ``redis://`` says that a TLS-only port does that to plain text.
    A class, not ``contextlib.contextmanager``: it wraps every command on the hot path,
    and one instance serves any number of ``with`` blocks, nested or in other threads.
    """

    def __init__(self, secrets: Sequence[str], *, url: str = "") -> None:
        self._secrets = secrets
        parts = urlsplit(url)
        self._scheme = parts.scheme.lower()
        self._query = dict(parse_qsl(parts.query))
        self._host = parts.hostname
        self._where = parts.netloc.rpartition("@")[2]  # host:port, never the password

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, redis.RedisError):
            text = scrub(str(exc), self._secrets)
            message = f"Redis: {type(exc).__name__}: {text}"
            failure = tls_failure(exc) if self._scheme == "rediss" else None
            if failure is not None:
                hint = failure_hint(
                    failure,
                    self._host,
                    ca="ssl_ca_certs",
                    client_cert=None if "ssl_certfile" in self._query else "ssl_certfile",
                )
                message = f"Redis at {self._where}: {failure}{hint}"
            elif self._scheme == "redis" and "reset by peer" in text:
                message += " (a server that accepts only TLS resets plain text: use rediss://)"
            raise BackendUnavailable(message) from None
