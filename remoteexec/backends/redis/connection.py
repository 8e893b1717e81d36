"""Connecting to Redis: URL options, a client that never resends, and error mapping.

Every redis-py error leaves the adapter through ``map_redis_errors`` as
``BackendUnavailable``, with the URL's password scrubbed from the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...errors import BackendUnavailable, ConfigurationError
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


def split_prefix(url: str) -> tuple[str, str]:
    """``url`` without its ``?prefix=`` option, and that prefix (``remoteexec:`` if none)."""
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    prefix = dict(pairs).get("prefix", "remoteexec:")
    rest = urlencode([(k, v) for k, v in pairs if k != "prefix"])
    # Not urlunsplit: it would make ``unix:///path.sock`` ``unix:/path.sock``.
    return base + ("?" + rest if rest else ""), prefix


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


def secrets_in(url: str) -> list[str]:
    """The passwords in ``url`` (userinfo or ``?password=``), as written and unquoted."""
    parts = urlsplit(url)
    secrets = [parts.password, dict(parse_qsl(parts.query)).get("password")]
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
    try:
        return redis.Redis.from_url(
            url,
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

    A class, not ``contextlib.contextmanager``: it wraps every command on the hot path,
    and one instance serves any number of ``with`` blocks, nested or in other threads.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, redis.RedisError):
            message = f"Redis: {type(exc).__name__}: {scrub(str(exc), self._secrets)}"
            raise BackendUnavailable(message) from None
