"""TLS to the brokers: a TLS-only redis-server and a MariaDB with require_secure_transport,
reached with certificate and host-name verification by real worker processes; refused, and
saying why, with the wrong CA, the wrong host name, no client certificate, or plain text.

The certificates come from ``openssl`` (``tests/_tls.py``); every server is private, on a
free loopback port, TLS only.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteexec import BackendUnavailable, Client, ConfigurationError, using
from remoteexec.backends import open_backend
from remoteexec.backends.mysql.connection import parse_url
from remoteexec.backends.redis.connection import tls_options
from remoteexec.config import redact_url
from tests._mariadb_server import MariaDBServer
from tests._redis_server import RedisServer
from tests._tls import Certificates, make_certificates
from tests.conftest import _need
from tests.farm import Farm, tasks

pytestmark = pytest.mark.timeout(120)

#: Small timeouts: a refused connection must end in an error, never in a wait.
FAST = "socket_connect_timeout=1&socket_timeout=2"
FAST_MYSQL = "connect_timeout=2&read_timeout=5"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    _need("openssl")
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_redis(certs: Certificates) -> Iterator[RedisServer]:
    """TLS only; a client certificate is checked if one is sent."""
    _need("redis-server")
    with RedisServer(tls=certs.for_server()) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_redis(certs: Certificates) -> Iterator[RedisServer]:
    """TLS only, and every client must present a certificate signed by the CA."""
    _need("redis-server")
    with RedisServer(tls=certs.for_server(), tls_auth_clients="yes") as server:
        yield server


@pytest.fixture(scope="module")
def misnamed_redis(certs: Certificates) -> Iterator[RedisServer]:
    """TLS only, presenting a certificate for elsewhere.example."""
    _need("redis-server")
    with RedisServer(tls=certs.for_server(certs.misnamed)) as server:
        yield server


@pytest.fixture(scope="module")
def tls_mariadb(certs: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """require_secure_transport=ON: TCP clients must use TLS."""
    _need("mariadbd")
    with MariaDBServer(tmp_path_factory.mktemp("mariadb"), tls=certs.for_server()) as server:
        yield server


@pytest.fixture(scope="module")
def misnamed_mariadb(
    certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    _need("mariadbd")
    folder = tmp_path_factory.mktemp("mariadb-misnamed")
    with MariaDBServer(folder, tls=certs.for_server(certs.misnamed)) as server:
        yield server


def tls_url(server: RedisServer, ca: Path, *extra: str) -> str:
    return f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca}&{FAST}" + "".join(
        f"&{option}" for option in extra
    )


def mysql_url(server: MariaDBServer, query: str, *, password: str = "") -> str:
    user = f"root:{password}" if password else "root"
    return f"mysql://{user}@127.0.0.1:{server.port}/{server.database}?{query}&{FAST_MYSQL}"


def round_trip(url: str, folder: Path) -> None:
    """A call from this process, run by a real ``remoteexec-worker`` process on ``url``."""
    farm = Farm(url, folder)
    try:
        farm.start()
        farm.worker_pids(1)
        with Client(url) as client, using(client):
            assert tasks.CalculateMultipleOfPi.execute(42) == math.pi * 42
    finally:
        farm.stop()


def refused(url: str) -> str:
    """The message of the ``BackendUnavailable`` that the first use of ``url`` raises."""
    backend = open_backend(url)
    try:
        with pytest.raises(BackendUnavailable) as caught:
            backend.stats()
    finally:
        backend.close()
    return str(caught.value)


# -- Redis ---------------------------------------------------------------------------------


def test_a_tls_only_redis_is_reached_with_verification(tls_redis, certs, tmp_path) -> None:
    tls_redis.client().flushall()
    url = tls_url(tls_redis, certs.ca.cert)
    assert tls_options(url) == {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    round_trip(url, tmp_path)
    # The work went through the TLS server (it has no other port).
    assert tls_redis.client().keys(b"remoteexec:*")


def test_redis_with_a_client_certificate_mutual_tls(mtls_redis, certs, tmp_path) -> None:
    mtls_redis.client().flushall()
    mutual = f"ssl_certfile={certs.client.cert}", f"ssl_keyfile={certs.client.key}"
    round_trip(tls_url(mtls_redis, certs.ca.cert, *mutual), tmp_path)
    message = refused(tls_url(mtls_redis, certs.ca.cert))  # no client certificate
    assert message.startswith(f"Redis at 127.0.0.1:{mtls_redis.port}: TLS connection failed")
    assert "ssl_certfile" in message


def test_redis_with_the_wrong_ca_is_refused_as_a_verification_failure(tls_redis, certs) -> None:
    url = tls_url(tls_redis, certs.wrong_ca.cert).replace("rediss://", "rediss://:hunter2@")
    message = refused(url)
    assert message.startswith(
        f"Redis at 127.0.0.1:{tls_redis.port}: TLS certificate verification failed"
    )
    assert "hunter2" not in message
    # Without ssl_ca_certs only the system's CAs are trusted: the test CA is not one of them.
    assert "verification failed" in refused(tls_url(tls_redis, certs.ca.cert).split("?")[0])


def test_redis_with_the_wrong_host_name_is_refused(misnamed_redis, certs) -> None:
    message = refused(tls_url(misnamed_redis, certs.ca.cert))
    assert message.startswith(
        f"Redis at 127.0.0.1:{misnamed_redis.port}: TLS certificate verification failed"
    )
    assert "not valid for '127.0.0.1'" in message


def test_redis_verification_can_be_turned_off_explicitly(
    misnamed_redis, tls_redis, certs, caplog
) -> None:
    with caplog.at_level(logging.WARNING, "remoteexec.tls"):
        for url in (
            tls_url(misnamed_redis, certs.ca.cert, "ssl_check_hostname=false"),
            tls_url(tls_redis, certs.wrong_ca.cert, "ssl_cert_reqs=none"),
        ):
            backend = open_backend(url)
            try:
                assert backend.stats().queues is not None
            finally:
                backend.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert any("does not verify the server's host name" in w for w in warnings), warnings
    assert any("does not verify the server's certificate" in w for w in warnings), warnings


def test_plain_text_redis_to_a_tls_only_server_fails_at_once(tls_redis) -> None:
    message = refused(f"redis://127.0.0.1:{tls_redis.port}/0?{FAST}")
    assert "reset by peer" in message and "use rediss://" in message


def test_a_worker_with_the_wrong_ca_stops_and_says_why(tls_redis, certs, tmp_path) -> None:
    farm = Farm(tls_url(tls_redis, certs.wrong_ca.cert), tmp_path)
    worker = farm.start("--connect-timeout", "1")
    assert worker.wait(60) == 69, farm.logs()
    assert "TLS certificate verification failed" in farm.logs()


def test_redis_tls_options_are_checked(certs) -> None:
    base = "rediss://127.0.0.1:1/0"
    assert tls_options(f"{base}?ssl_cert_reqs=optional&ssl_check_hostname=no") == {
        "ssl_cert_reqs": "optional",
        "ssl_check_hostname": False,
    }
    assert tls_options(f"{base}?ssl_cert_reqs=none")["ssl_check_hostname"] is False
    assert tls_options("redis://127.0.0.1:1/0") == {}
    bad = {
        "ssl_cert_reqs=maybe": "ssl_cert_reqs",
        "ssl_check_hostname=perhaps": "ssl_check_hostname",
        "ssl_ca_certs=/no/such/ca.pem": "no such file: '/no/such/ca.pem'",
        f"ssl_keyfile={certs.client.key}": "ssl_keyfile needs ssl_certfile",
    }
    for query, expected in bad.items():
        with pytest.raises(ConfigurationError, match=re.escape(expected)):
            open_backend(f"{base}?{query}")


def test_tls_key_passwords_are_never_shown() -> None:
    for url in (
        "rediss://127.0.0.1/0?ssl_certfile=/c.pem&ssl_password=hunter2",
        "mysql://u@h/db?ssl_cert=/c.pem&ssl_key_password=hunter2",
    ):
        assert "hunter2" not in redact_url(url) and "=***" in redact_url(url)
    with pytest.raises(ConfigurationError) as caught:
        open_backend("rediss://127.0.0.1/0?ssl_certfile=/no/c.pem&ssl_password=hunter2")
    assert "hunter2" not in str(caught.value)


# -- MySQL / MariaDB -----------------------------------------------------------------------


def test_a_require_secure_transport_mariadb_is_reached_with_verification(
    tls_mariadb, certs, tmp_path
) -> None:
    url = mysql_url(tls_mariadb, f"ssl_ca={certs.ca.cert}")
    ctx = parse_url(url)[0]["ssl"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    round_trip(url, tmp_path)
    backend = open_backend(url)
    try:  # the session the adapter uses is encrypted
        [(_, cipher)] = backend._db.run(  # type: ignore[attr-defined]
            lambda cur: (cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'"), cur.fetchall())[1]
        )
    finally:
        backend.close()
    assert cipher


def test_mysql_with_a_client_certificate_for_a_user_that_requires_one(tls_mariadb, certs) -> None:
    conn = tls_mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS 'x509'@'127.0.0.1' REQUIRE X509")
            cur.execute(f"GRANT ALL ON `{tls_mariadb.database}`.* TO 'x509'@'127.0.0.1'")
    finally:
        conn.close()
    url = mysql_url(tls_mariadb, f"ssl_ca={certs.ca.cert}").replace("root@", "x509@")
    assert "Access denied for user 'x509'" in refused(url)  # TLS, but no certificate
    backend = open_backend(f"{url}&ssl_cert={certs.client.cert}&ssl_key={certs.client.key}")
    try:
        assert backend.stats().queues is not None
    finally:
        backend.close()


def test_mysql_with_the_wrong_ca_is_refused_as_a_verification_failure(tls_mariadb, certs) -> None:
    where = f"MySQL at 127.0.0.1:{tls_mariadb.port}/{tls_mariadb.database}"
    for query in (f"ssl_ca={certs.wrong_ca.cert}", "ssl=true"):  # ssl=true: the system's CAs
        message = refused(mysql_url(tls_mariadb, query, password="hunter2"))
        assert message.startswith(f"{where}: TLS certificate verification failed"), message
        assert "hunter2" not in message


def test_mysql_with_the_wrong_host_name_is_refused(misnamed_mariadb, certs, caplog) -> None:
    url = mysql_url(misnamed_mariadb, f"ssl_ca={certs.ca.cert}")
    message = refused(url)
    assert "TLS certificate verification failed" in message
    assert "not valid for '127.0.0.1'" in message
    with caplog.at_level(logging.WARNING, "remoteexec.tls"):  # the discouraged opt-out
        backend = open_backend(url + "&ssl_check_hostname=false")
    try:
        assert backend.stats().queues is not None
    finally:
        backend.close()
    assert "does not verify the server's host name" in caplog.text


def test_plain_text_mysql_to_a_require_secure_transport_server_is_refused(tls_mariadb) -> None:
    message = refused(mysql_url(tls_mariadb, "ssl=false"))
    # MariaDB refuses plain text as "access denied"; the error says what that means here.
    assert "(error 1045)" in message and "a server that requires TLS" in message


def test_mysql_tls_options_are_checked(certs) -> None:
    base = "mysql://u@db.example/app"
    ctx = parse_url(f"{base}?ssl_ca={certs.ca.cert}&ssl_verify_mode=none")[0]["ssl"]
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    ctx = parse_url(f"{base}?ssl=1&ssl_check_hostname=false")[0]["ssl"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.check_hostname
    mutual = f"ssl_cert={certs.client.cert}&ssl_key={certs.client.key}"
    assert isinstance(parse_url(f"{base}?{mutual}")[0]["ssl"], ssl.SSLContext)
    assert parse_url(base)[0].keys().isdisjoint({"ssl", "ssl_disabled"})  # PyMySQL decides
    bad = {
        f"ssl=false&ssl_ca={certs.ca.cert}": "ssl=false contradicts ssl_ca",
        "ssl_verify_mode=sometimes": "ssl_verify_mode",
        "ssl_verify_mode=none&ssl_check_hostname=true": "needs a verified certificate",
        f"ssl_key={certs.client.key}": "ssl_key needs ssl_cert",
        "ssl_ca=/no/such/ca.pem": "no such file: '/no/such/ca.pem'",
        f"ssl_cert={certs.ca.cert}": "unusable MySQL TLS file",  # a certificate, no key
    }
    for query, expected in bad.items():
        with pytest.raises(ConfigurationError, match=re.escape(expected)):
            parse_url(f"{base}?{query}")
