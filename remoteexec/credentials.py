"""Credentials kept off the command line: URL and password files, and a password kept apart
from the URL.

A password on a command line shows in ``ps`` to every user of the machine; a file readable
by its owner only, or the environment (``/proc/<pid>/environ`` is readable by the process's
owner only), does not. ``remoteexec.config`` fills the password in:

* The ``password`` argument, ``REMOTEEXEC_PASSWORD``, or ``REMOTEEXEC_PASSWORD_FILE``
  naming a file that holds it, goes into the resolved URL's user part: ``redis://host/0``
  becomes ``redis://:pw@host/0`` (Redis ``AUTH pw``), ``mysql://app@host/db`` becomes
  ``mysql://app:pw@host/db``.
* A URL that holds a password already plus a password setting is ambiguous: a
  ``ConfigurationError``. The password stays apart (``Settings.password``) until the
  backend connects (``Settings.backend_url``), so resolving settings again (a worker
  hands its own to the clients its tasks call through) finds no password in the URL.

Files are read as UTF-8 text with one trailing line break removed. A file that is missing,
unreadable or empty is a ``ConfigurationError`` naming its path, never its content.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from .errors import ConfigurationError

__all__ = ["PASSWORD_SCHEMES", "env_password", "read_secret_file", "with_password"]

#: The URL schemes that take a password.
PASSWORD_SCHEMES = ("redis", "rediss", "unix", "mysql")


def read_secret_file(path: str, what: str) -> str:
    """The content of the file at ``path``, without its trailing line break.

    Args:
        path: the file.
        what: what it holds, for messages (``"URL"``, ``"password"``).

    Raises:
        ConfigurationError: the file is missing, unreadable, not UTF-8 text or empty; the
            message names the path and the reason, never the content.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigurationError(f"cannot read the {what} file {path!r}: {reason}") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise ConfigurationError(f"the {what} file {path!r} is empty")
    return text


def env_password() -> str | None:
    """The password the environment sets; None if it sets none.

    Raises:
        ConfigurationError: both ``REMOTEEXEC_PASSWORD`` and ``REMOTEEXEC_PASSWORD_FILE``
            are set, or the file cannot be read.
    """
    given, path = os.environ.get("REMOTEEXEC_PASSWORD"), os.environ.get("REMOTEEXEC_PASSWORD_FILE")
    if given and path:
        raise ConfigurationError(
            "both REMOTEEXEC_PASSWORD and REMOTEEXEC_PASSWORD_FILE are set: give one"
        )
    if path:
        return read_secret_file(path, "password")
    return given or None


def with_password(url: str, password: str, *, source: str, shown: str) -> str:
    """``url`` with ``password`` in its user part (percent-encoded).

    Args:
        url: a backend URL.
        password: the password to fill in.
        source: where the password came from, for messages.
        shown: ``url`` with any password hidden, for messages.

    Raises:
        ConfigurationError: the scheme takes no password, or the URL holds one already.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in PASSWORD_SCHEMES:
        raise ConfigurationError(
            f"a password is set ({source}) but the URL {shown!r} takes none; "
            f"only {', '.join(s + '://' for s in PASSWORD_SCHEMES)} URLs do"
        )
    given = (parts.password, dict(parse_qsl(parts.query)).get("password"))
    if any(given):
        raise ConfigurationError(
            f"the URL {shown!r} holds a password, and a password is set too ({source}): "
            f"give the password in one place only"
        )
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]  # "user:@host" holds an empty password: replace it
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))
