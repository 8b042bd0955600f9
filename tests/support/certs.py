"""A throwaway certificate authority for the TLS tests, made with the ``openssl`` CLI.

Certificates name ``localhost`` and ``127.0.0.1`` (what the tests connect to), last two
days, and use P-256 keys: quick to make on a busy machine.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True, slots=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class ThrowawayCA:
    """A CA with a server certificate (for 127.0.0.1 and localhost) and a client one."""

    ca: Path
    server: CertPair
    client: CertPair

    def give_server_key_to_postgres(self) -> None:
        """PostgreSQL refuses a key others can read, or that belongs to someone else:
        when we are root (and the server runs as postgres) it must be postgres's."""
        self.server.key.chmod(0o600)
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.server.key, account.pw_uid, account.pw_gid)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str = "cdc-bridge-test-ca") -> ThrowawayCA:
    """A new CA in ``folder`` (created), with server and client certificates it signed."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the postgres account reads the server files from here
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    _openssl(
        "req", "-x509", *_EC, "-keyout", str(ca_key), "-out", str(ca_cert), "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    server = _signed(folder, "server", ca_cert, ca_key, "serverAuth")
    client = _signed(folder, "client", ca_cert, ca_key, "clientAuth")
    for path in (ca_cert, server.cert, client.cert, client.key):
        path.chmod(0o644)
    return ThrowawayCA(ca=ca_cert, server=server, client=client)


def _signed(folder: Path, name: str, ca_cert: Path, ca_key: Path, usage: str) -> CertPair:
    key, request, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    _openssl("req", *_EC, "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions),
    )
    return CertPair(cert=cert, key=key)
