"""TLS and authentication options for nats-py, shared by the daemon and the ops commands.

One guard nats-py lacks: it upgrades to TLS only when the server's INFO line asks for
it, and otherwise goes on in plain text, with the password or token in its CONNECT.
So with ``nats.tls`` configured (or a ``tls://`` server URL), the secret is handed over
only once the connection really is TLS, and a connection that is not is refused
(``require_tls``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.client import RawCredentials

from cdc_bridge.core.tls import client_tls_context

if TYPE_CHECKING:
    from cdc_bridge.config.model import NatsConfig


class NatsTlsRequired(nats.errors.Error):
    """``nats.tls`` is configured, but the server did not switch the connection to TLS."""


def connect_options(config: NatsConfig, client: NatsClient) -> dict[str, Any]:
    """Keyword arguments for ``client.connect()``: ``tls`` and the one auth method."""
    options: dict[str, Any] = {}
    if config.tls is not None:
        tls = config.tls
        options["tls"] = client_tls_context(tls.ca_file, tls.cert_file, tls.key_file)
    auth = config.auth
    if auth.user is not None and auth.password is not None:
        options["user"] = auth.user
        options["password"] = _only_over_tls(config, client, auth.password)
    elif auth.token is not None:
        options["token"] = _only_over_tls(config, client, auth.token)
    elif auth.nkey_seed is not None:
        options["nkeys_seed_str"] = auth.nkey_seed
    elif auth.credentials is not None:
        # The text read at start-up, not the path: what was checked is what is used.
        options["user_credentials"] = RawCredentials(auth.credentials)
    return options


def require_tls(config: NatsConfig, client: NatsClient) -> None:
    """Raise NatsTlsRequired when TLS is configured but the connection is plain TCP."""
    if tls_expected(config) and not _server_required_tls(client):
        raise NatsTlsRequired(_PLAIN_TEXT)


def tls_expected(config: NatsConfig) -> bool:
    """``nats.tls`` is set, or a server URL says ``tls://``."""
    return config.tls is not None or any(
        server.strip().lower().startswith("tls://") for server in config.servers
    )


def _only_over_tls(config: NatsConfig, client: NatsClient, secret: str) -> str | Callable[[], str]:
    """The secret, or with TLS configured a callback nats-py calls while writing its
    CONNECT line: by then the TLS upgrade has happened, if the server asked for one."""
    if not tls_expected(config):
        return secret

    def secret_if_encrypted() -> str:
        if not _server_required_tls(client):
            raise NatsTlsRequired(_PLAIN_TEXT)
        return secret

    return secret_if_encrypted


def _server_required_tls(client: NatsClient) -> bool:
    # nats-py upgrades the connection exactly when INFO says tls_required, and fails
    # the connect if the handshake fails; there is no public accessor for either, so
    # this reads the client's private copy of INFO: the one place that does, checked
    # by tests/unit/test_nats_private_api.py against every nats-py upgrade.
    return bool(client._server_info.get("tls_required"))


_PLAIN_TEXT = (
    "nats.tls is configured (or a tls:// server URL), but the NATS server does not "
    "require TLS, so the connection would be plain text: enable TLS on the server "
    "(tls {...} in its config)"
)
