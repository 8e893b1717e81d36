"""Settings resolution: where the backend URL, secrets and defaults come from.

Each setting is taken from the first of these that gives it:

1. explicit arguments: ``Client(url, timeout=5)``, ``configure(...)``, ``Worker(...)``;
   an argument given as ``None`` counts as not given;
2. the environment: ``REMOTEEXEC_URL``, ``REMOTEEXEC_SECRET`` (comma-separated for
   rotation, the first signs), ``REMOTEEXEC_TIMEOUT``, ``REMOTEEXEC_BLOB_URL``,
   ``REMOTEEXEC_BLOB_THRESHOLD``, ``REMOTEEXEC_MAX_BLOB_SIZE``; an empty variable counts
   as unset;
3. a YAML file: ``REMOTEEXEC_CONFIG`` if set, else ``./remoteexec.yaml`` if it exists, with
   the ``Settings`` field names as keys (plus ``secret`` for a single one), e.g.::

       url: redis://:s3cret@broker:6379/0
       secrets: [new-key, old-key]
       timeout: 30
       queue: gpu

   plus a ``worker:`` section for the worker's own options (``worker_config.py``);
4. the defaults below (``url`` = ``sqlite:///remoteexec.db`` in the working directory).

A password kept apart from the URL (the ``password`` argument, ``REMOTEEXEC_PASSWORD`` or
``REMOTEEXEC_PASSWORD_FILE``) is resolved like the other settings and kept apart in
``Settings.password``; ``Settings.backend_url`` fills it into the URL (see
``remoteexec.credentials``).

Anything invalid raises ``ConfigurationError`` naming the value and where it came from;
secrets never appear in messages, and URLs only through ``redact_url``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .credentials import env_password, with_password
from .errors import ConfigurationError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_URL",
    "SCHEMES",
    "Settings",
    "check_name",
    "redact_url",
    "resolve",
]

DEFAULT_URL = "sqlite:///remoteexec.db"
CONFIG_FILE = "remoteexec.yaml"
SCHEMES = (
    *("redis", "rediss", "unix", "redis+cluster", "redis+sentinel"),
    *("mysql", "sqlite", "memory"),
)
_NETWORK_SCHEMES = ("redis", "rediss", "mysql")


@dataclass(frozen=True)
class Settings:
    """Resolved settings shared by clients and workers.

    Attributes:
        url: the backend URL.
        secrets: HMAC signing keys; the first signs, any verifies. Empty: no signing.
        timeout: the default seconds a caller waits for a result, or None (no limit).
        result_ttl: seconds an uncollected result is kept.
        max_message_size: the largest message, in bytes.
        lease: seconds a worker's claim lasts without renewal.
        max_attempts: expired leases a task survives before the caller gets ``WorkerLost``.
        queue: the default queue.
        max_age: seconds after its creation that a worker with secrets still runs a signed
            call without a deadline (a replay of an older one is refused).
        blob_threshold: bytes above which an argument or result travels out of band.
        max_blob_size: the largest argument or result, in bytes, that travels out of band.
        blob_url: where out-of-band payloads are kept: ``file:///path`` (a shared
            folder), or None for the backend's own blob storage.
        password: the broker password kept apart from ``url`` (None: the URL's own, if
            any); ``backend_url`` holds both.
    """

    url: str = DEFAULT_URL
    secrets: tuple[str, ...] = ()
    timeout: float | None = None
    result_ttl: float = 3600.0
    max_message_size: int = 64 * 2**20
    lease: float = 30.0
    max_attempts: int = 3
    queue: str = "default"
    max_age: float = 86400.0
    blob_threshold: int = 256 * 2**10
    max_blob_size: int = 2 * 2**30
    blob_url: str | None = None
    password: str | None = None

    @property
    def backend_url(self) -> str:
        """``url`` with ``password`` filled in: what the backend connects with."""
        if self.password is None:
            return self.url
        return with_password(self.url, self.password, source="", shown="")

    def __repr__(self) -> str:
        # Never show the secrets or a password, even in a debugger or a log line.
        return (
            f"Settings(url={redact_url(self.url)!r}, secrets=<{len(self.secrets)} hidden>, "
            f"timeout={self.timeout!r}, result_ttl={self.result_ttl!r}, "
            f"max_message_size={self.max_message_size!r}, lease={self.lease!r}, "
            f"max_attempts={self.max_attempts!r}, queue={self.queue!r}, "
            f"max_age={self.max_age!r}, blob_threshold={self.blob_threshold!r}, "
            f"max_blob_size={self.max_blob_size!r}, blob_url={self.blob_url!r}, "
            f"password={'<hidden>' if self.password else None})"
        )


_OPTIONS = (
    *("secret", "secrets", "timeout", "result_ttl", "max_message_size", "lease"),
    *("max_attempts", "queue", "max_age", "password", "blob_threshold", "max_blob_size"),
    "blob_url",
)
#: Settings also read from ``REMOTEEXEC_<NAME>`` (upper case), and whether they are sizes.
_ENV_SETTINGS = {"blob_url": False, "blob_threshold": True, "max_blob_size": True}
_FILE_KEYS = ("url", *_OPTIONS, "worker")  # worker: the worker section (worker_config.py)


def resolve(url: str | None = None, **options: Any) -> Settings:
    """Resolve the settings from arguments, environment, YAML file and defaults.

    Args:
        url: the backend URL, e.g. ``redis://localhost:6379/0``.
        **options: ``secret`` (a string or a list of strings) or ``secrets``, ``timeout``,
            ``result_ttl``, ``max_message_size``, ``lease``, ``max_attempts``, ``queue``,
            ``max_age``, ``password`` (filled into a URL that holds none),
            ``blob_threshold``, ``max_blob_size``, ``blob_url``.

    Returns:
        The resolved ``Settings``.

    Raises:
        ConfigurationError: an unknown option; a value of the wrong type or range; a
            non-numeric ``REMOTEEXEC_TIMEOUT``; a config file that cannot be read, is not
            valid YAML or is not a mapping; a URL without a scheme or with an unknown one;
            a password setting that cannot be read, or that the URL cannot take.
    """
    for name in options:
        if name not in _OPTIONS:
            raise ConfigurationError(
                f"unknown option {name!r}; known options: url, {', '.join(_OPTIONS)}"
            )
    explicit = {k: v for k, v in options.items() if v is not None}
    if url is not None:
        explicit["url"] = url
    merged: dict[str, Any] = {}
    password_from = ""
    for source, values in (*_file_layer(), _env_layer(), ("argument", explicit)):
        merged.update(_normalize(values, source))
        password_from = source if "password" in values else password_from
    merged.setdefault("url", DEFAULT_URL)
    if "password" in merged:  # checked now: the URL takes one, and holds none of its own
        url = merged["url"]
        with_password(url, merged["password"], source=password_from, shown=redact_url(url))
    return Settings(**merged)


def _env_layer() -> tuple[str, dict[str, Any]]:
    values: dict[str, Any] = {}
    env = os.environ
    if env.get("REMOTEEXEC_URL"):
        values["url"] = env["REMOTEEXEC_URL"]
    if env.get("REMOTEEXEC_SECRET"):
        secrets = [s.strip() for s in env["REMOTEEXEC_SECRET"].split(",") if s.strip()]
        if not secrets:
            raise ConfigurationError("REMOTEEXEC_SECRET holds no secret (only commas/spaces)")
        values["secrets"] = secrets
    password = env_password()
    if password is not None:
        values["password"] = password
    raw = env.get("REMOTEEXEC_TIMEOUT", "").strip()
    if raw:
        try:
            values["timeout"] = float(raw)
        except ValueError:
            raise ConfigurationError(
                f"REMOTEEXEC_TIMEOUT={raw[:100]!r} is not a number of seconds"
            ) from None
    for name, size in _ENV_SETTINGS.items():
        raw = env.get(f"REMOTEEXEC_{name.upper()}", "").strip()
        if raw:
            values[name] = _env_size(name, raw) if size else raw
    return "environment", values


def _env_size(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"REMOTEEXEC_{name.upper()}={raw[:100]!r} is not a number of bytes"
        ) from None


def _file_layer() -> tuple[tuple[str, dict[str, Any]], ...]:
    found = read_config_file()
    if found is None:
        return ()
    source, data = found
    return ((source, {k: v for k, v in data.items() if v is not None and k != "worker"}),)


def read_config_file() -> tuple[str, dict[str, Any]] | None:
    """The config file's settings and its description (``config file 'PATH'``), or None
    if there is none; every top-level key is checked to be known.

    Raises:
        ConfigurationError: a file that cannot be read, is not YAML or holds unknown keys.
    """
    given = os.environ.get("REMOTEEXEC_CONFIG", "")
    path = Path(given) if given else Path.cwd() / CONFIG_FILE
    if not given and not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigurationError(f"cannot read config file {str(path)!r}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the problem and its line: YAML's own message quotes the file, secrets included.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigurationError(
            f"config file {str(path)!r} is not valid YAML{where}: {problem}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"config file {str(path)!r} must be a mapping of settings, not a {type(data).__name__}"
        )
    for key in data:
        if key not in _FILE_KEYS:
            raise ConfigurationError(
                f"unknown key {str(key)[:100]!r} in config file {str(path)!r}; "
                f"known keys: {', '.join(_FILE_KEYS)}"
            )
    return f"config file {str(path)!r}", data


def _normalize(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check one layer's values; return them under ``Settings`` field names."""
    if "secret" in values and "secrets" in values:
        raise ConfigurationError(f"give either secret or secrets, not both ({source})")
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in ("secret", "secrets"):
            out["secrets"] = _check_secrets(value, name, source)
        elif name in _CHECKS:
            out[name] = _CHECKS[name](name, value, source)
    return out


def _check_size(name: str, value: Any, source: str) -> int:
    if type(value) is not int or value < 1:
        raise ConfigurationError(
            f"{name} must be a positive integer, not {value!r:.100} ({source})"
        )
    return value


def _check_password(name: str, value: Any, source: str) -> str:
    if not isinstance(value, str) or not value:
        # The value itself is never shown: it is, or may be, a password.
        raise ConfigurationError(
            f"password must be a non-empty string, not a {type(value).__name__} ({source})"
        )
    return value


def _check_blob_url(url: Any, source: str) -> str:
    if not isinstance(url, str) or not url.lower().startswith("file:///"):
        raise ConfigurationError(
            f"blob_url must be a file:///absolute/path URL, not {url!r:.100} ({source})"
        )
    return url


#: The largest task body a dead letter keeps, to be retried (``Backend.retry_dead``).
MAX_DEAD_BODY = 1 << 20

#: The largest ``max_attempts`` a call may carry (workers refuse calls above it).
MAX_ATTEMPTS = 1000
MAX_SHARDS = 64  # slots one queue may be spread over (a Redis Cluster)


def check_attempts(value: Any, source: str = "argument") -> int:
    """``value`` if it is a valid ``max_attempts`` (an int from 1 to ``MAX_ATTEMPTS``).

    Raises:
        ConfigurationError: naming the value and where it came from.
    """
    if type(value) is not int or not 1 <= value <= MAX_ATTEMPTS:
        raise ConfigurationError(
            f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS}, "
            f"not {value!r:.100} ({source})"
        )
    return value


#: The longest queue or task name, in characters.
MAX_NAME = 128
#: The longest method name: a task's label (``task.method``) stays under 256 characters.
MAX_METHOD_NAME = 100


def check_name(kind: str, value: Any, source: str = "") -> str:
    """``value``, if it is a valid ``kind`` (``"queue"``, ``"task"`` or ``"method"``) name:
    a string of 1 to ``MAX_NAME`` printable characters (no control characters, no line
    breaks); a method name is a Python identifier of at most ``MAX_METHOD_NAME``.

    Raises:
        ConfigurationError: naming the value (its start, if long) and ``source``.
    """
    where = f" ({source})" if source else ""
    if not isinstance(value, str):
        raise ConfigurationError(f"a {kind} name must be a string, not {value!r:.80}{where}")
    limit = MAX_METHOD_NAME if kind == "method" else MAX_NAME
    if len(value) > limit:
        raise ConfigurationError(
            f"a {kind} name must be at most {limit} characters, not {len(value)}: "
            f"{value!r:.80}...{where}"
        )
    if kind == "method" and not value.isidentifier():
        raise ConfigurationError(f"a method name must be a Python identifier, not {value!r}{where}")
    if not value or not value.isprintable():
        raise ConfigurationError(
            f"a {kind} name must be 1 to {limit} printable characters, not {value!r}{where}"
        )
    return value


def _check_seconds(name: str, value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{name} must be a number of seconds, not {value!r:.100} ({source})"
        )
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(
            f"{name} must be a positive, finite number of seconds, not {value!r} ({source})"
        )
    return float(value)


def _check_secrets(value: Any, name: str, source: str) -> tuple[str, ...]:
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


def _check_url(url: Any, source: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"url must be a non-empty string, not {type(url).__name__} ({source})"
        )
    shown = redact_url(url)
    if "://" not in url:
        raise ConfigurationError(
            f"URL {shown!r} has no scheme ({source}); use one of {', '.join(_schemes())}"
        )
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in _NETWORK_SCHEMES:
            parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise ConfigurationError(f"malformed URL {shown!r} ({source}): {exc}") from None
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"unknown URL scheme {scheme[:40]!r} in {shown!r} ({source}); "
            f"use one of {', '.join(_schemes())}"
        )
    return url


def _schemes() -> list[str]:
    return [f"{s}:///" if s == "sqlite" else f"{s}://" for s in SCHEMES]


_SECRET_PARAM = re.compile(
    r"([?&;](?:ssl_|ssl_key_)?(?:password|passwd|pwd|secret|token)=)[^&;#]*", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe to log or show.

    Both ``scheme://user:password@host`` and ``?password=...`` (also ``passwd``, ``pwd``,
    ``secret``, ``token``, and the TLS key passwords ``ssl_password``, ``ssl_key_password``)
    query parameters are redacted. In doubt (an ``@`` in an odd
    place) more is hidden rather than less.

    Args:
        url: a backend URL.

    Returns:
        The URL with passwords replaced by ``***``; otherwise unchanged.
    """
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    if "@" in rest:
        userinfo, _, tail = rest.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            rest = f"{user}:***@{tail}"
    return head + sep + _SECRET_PARAM.sub(r"\1***", rest)


#: How each setting but the secrets is checked: ``(name, value, source)`` to the value kept.
_CHECKS: dict[str, Callable[[str, Any, str], Any]] = {
    "url": lambda _, value, source: _check_url(value, source),
    "timeout": _check_seconds,
    "result_ttl": _check_seconds,
    "lease": _check_seconds,
    "max_age": _check_seconds,
    "max_message_size": _check_size,
    "blob_threshold": _check_size,
    "max_blob_size": _check_size,
    "max_attempts": lambda _, value, source: check_attempts(value, source),
    "queue": lambda _, value, source: check_name("queue", value, source),
    "password": _check_password,
    "blob_url": lambda _, value, source: _check_blob_url(value, source),
}
