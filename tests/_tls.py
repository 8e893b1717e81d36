"""Certificates for the TLS tests, made with the ``openssl`` command in a folder of their own.

``make_certificates(folder)`` writes, all with P-256 keys and valid for two days:

* ``ca``: the test certificate authority;
* ``server``: signed by ``ca``, for ``localhost`` and ``127.0.0.1`` (subjectAltName);
* ``client``: signed by ``ca``, for client authentication (mutual TLS);
* ``wrong_ca``: another authority, which signed none of the above;
* ``misnamed``: signed by ``ca``, for ``elsewhere.example`` only.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests._server import server_binary

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_LEAF = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
{names}
"""


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerTLS:
    """What a TLS-only test server presents (``cert``, ``key``) and trusts (``ca``, which
    also signed ``cert``), and the certificate its own readiness probe presents."""

    cert: Path
    key: Path
    ca: Path
    probe: Pair

    def context(self) -> ssl.SSLContext:
        """A verifying client context for the probe (and for assertions): it trusts ``ca``,
        presents ``probe``, and skips the host-name check (a misnamed server must start)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(self.probe.cert), str(self.probe.key))
        return ctx


@dataclass(frozen=True)
class Certificates:
    ca: Pair
    server: Pair
    client: Pair
    wrong_ca: Pair
    misnamed: Pair

    def for_server(self, pair: Pair | None = None) -> ServerTLS:
        """A server's TLS files: ``pair`` (``server`` by default), trusting ``ca``."""
        pair = pair or self.server
        return ServerTLS(cert=pair.cert, key=pair.key, ca=self.ca.cert, probe=self.client)


def _openssl(*args: str) -> None:
    done = subprocess.run(
        [server_binary("openssl"), *args], capture_output=True, timeout=60, check=False
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"openssl {args[0]} failed:\n{output[-2000:]}")


def _authority(folder: Path, name: str) -> Pair:
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    _openssl(
        "req", "-x509", *_KEY, "-keyout", str(pair.key), "-out", str(pair.cert), "-days", "2",
        "-subj", f"/CN=remoteexec test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return pair


def _leaf(folder: Path, name: str, ca: Pair, *, usage: str, names: str = "") -> Pair:
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    csr, ext = folder / f"{name}.csr", folder / f"{name}.ext"
    ext.write_text(_LEAF.format(usage=usage, names=f"subjectAltName = {names}" if names else ""))
    _openssl(
        "req", "-new", *_KEY, "-keyout", str(pair.key), "-out", str(csr),
        "-subj", f"/CN=remoteexec test {name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", str(pair.cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return pair


def make_certificates(folder: Path) -> Certificates:
    """Make the test CA, certificates and keys in ``folder`` (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _authority(folder, "ca")
    return Certificates(
        ca=ca,
        server=_leaf(folder, "server", ca, usage="serverAuth", names="DNS:localhost, IP:127.0.0.1"),
        client=_leaf(folder, "client", ca, usage="clientAuth"),
        wrong_ca=_authority(folder, "wrong_ca"),
        misnamed=_leaf(folder, "misnamed", ca, usage="serverAuth", names="DNS:elsewhere.example"),
    )
