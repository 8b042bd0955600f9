"""The TLS context of the NATS connection, built from the config's file paths.

Built once while the config is loaded (so an unreadable or mismatched file is a config
error naming its key) and again for every connection (so a renewed certificate is
picked up at the next reconnect).
"""

from __future__ import annotations

import ssl


class TlsFileError(Exception):
    """A TLS file that cannot be used; ``key`` is its config key (``ca_file`` ...)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def client_tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    """A context that verifies the server (its certificate and host name) against
    ``ca_file``, or the system's CAs without one; with ``cert_file``/``key_file`` it
    also presents a client certificate."""
    # create_default_context: CERT_REQUIRED and check_hostname, TLS 1.2 at least.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    for key, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path is not None:
            _require_readable(key, path)
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsFileError(
                "ca_file", f"cannot use {ca_file}: {_ssl_reason(exc)} (expected PEM certificates)"
            ) from None
    if cert_file is not None:
        try:
            context.load_cert_chain(certfile=cert_file, keyfile=key_file)
        except (OSError, ssl.SSLError) as exc:
            # OpenSSL does not say which of the two it could not use: name the pair.
            raise TlsFileError(
                "cert_file",
                f"cannot use {cert_file} with key {key_file or cert_file}: "
                f"{_ssl_reason(exc)} (expected a PEM certificate and its unencrypted key)",
            ) from None
    return context


def _require_readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise TlsFileError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).replace("_", " ").lower()
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc)
