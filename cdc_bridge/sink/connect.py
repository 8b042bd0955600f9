"""Connecting to NATS and making sure the configured stream exists."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.client import ServerVersion
from nats.js.api import StorageType, StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

from cdc_bridge.config.model import NatsConfig
from cdc_bridge.core.redaction import redact_dsn
from cdc_bridge.sink.auth import NatsTlsRequired, connect_options, require_tls

log = structlog.get_logger("cdc_bridge.nats")

# How nats-py words the server's -ERR for a refused publish or subscribe.
_PERMISSIONS_VIOLATION = "permissions violation"


class NatsPermissionError(nats.errors.Error):
    """The server refused a publish or subscribe the bridge needs.

    The server does not close the connection for it: a refused publish is dropped and
    its ack never comes, a refused subscribe leaves requests unanswered. Without this
    the session would only see timeouts.
    """


class NatsConnectError(nats.errors.Error):
    """No server of ``nats.servers`` took the connection; the message names them."""


class NatsAuthError(NatsConnectError):
    """The server refused the bridge's credentials (``Authorization Violation``, an
    expired or revoked user): no retry with the same credentials gets in."""


# How nats-server words a refused CONNECT: wrong or missing user, password, token, NKey
# or credentials ("Authorization Violation"); a user JWT that expired or was revoked.
_AUTH_REFUSED = re.compile(
    r"authorization violation|(?:user|account) authentication (?:expired|revoked)",
    re.IGNORECASE,
)


def auth_refused(reason: BaseException | None) -> bool:
    """Whether a failed connect's reason is the server refusing the credentials."""
    if isinstance(reason, nats.errors.AuthorizationError):
        return True
    return reason is not None and _AUTH_REFUSED.search(str(reason)) is not None


def unreachable(servers: Sequence[str], reason: BaseException | None) -> str:
    """The line for NATS servers none of which took the connection: every URL,
    credentials masked, and the last reason given. Shared by `run` and `check`."""
    shown = ", ".join(redact_dsn(server) for server in servers)
    why = (str(reason).strip() or type(reason).__name__) if reason else "no server answered"
    return redact_dsn(f"cannot connect to NATS at {shown}: {why}")


def nats_address(servers: Sequence[str]) -> str:
    """``host:port`` of each server URL, comma-separated: never a user, password or
    token (the URL's scheme is left out too, as in PostgreSQL's ``host:port``)."""
    addresses = []
    for server in servers:
        text = server.strip()
        if "://" not in text:
            text = f"nats://{text}"
        try:
            parts = urlsplit(text)
            host, port = parts.hostname, parts.port
        except ValueError:
            host, port = None, None
        if not host:
            addresses.append("(unparsable nats.servers entry)")
            continue
        host = f"[{host}]" if ":" in host else host
        addresses.append(f"{host}:{port or 4222}")
    return ", ".join(addresses)


def server_version_text(version: ServerVersion) -> str:
    """``Client.connected_server_version`` as the server gave it, e.g. "2.11.4-RC.1"."""
    try:
        text = f"{version.major}.{version.minor}.{version.patch}"
        prerelease, build = version.prerelease, version.build
    except ValueError:  # not semver: nats-py keeps no public copy of the raw text
        return "unknown"
    if prerelease:
        text += f"-{prerelease}"
    if build:
        text += f"+{build}"
    return text


def permission_error(exc: BaseException) -> NatsPermissionError | None:
    """The NatsPermissionError for a nats-py error that is a permissions violation."""
    text = str(exc).strip()
    if _PERMISSIONS_VIOLATION not in text.lower():
        return None
    server_message = text.removeprefix("nats: ").strip().strip("'")
    return NatsPermissionError(
        f"NATS permissions: {server_message} (the bridge's NATS user lacks a permission "
        "it needs; see docs/security.md)"
    )


async def connect_nats(
    config: NatsConfig,
    on_lost: Callable[[], None],
    on_denied: Callable[[NatsPermissionError], None] | None = None,
) -> NatsClient:
    """Connect without nats-py's own reconnect buffering.

    After a reconnect nats-py would flush messages buffered while disconnected, while
    the ones lost in the dead socket's send buffer are never retried: later events
    would overtake earlier ones. Instead a lost connection ends the session, and the
    next session replays everything unacked from the slot, in order.

    ``on_denied`` hears of every permissions violation the server reports on this
    connection, and should end the session with it; without it they are logged here.
    """

    async def disconnected() -> None:
        on_lost()

    last_error: list[Exception] = []  # why a connect failed, for its line

    async def error(exc: Exception) -> None:
        last_error[:] = [exc]
        denied = permission_error(exc)
        if denied is None:
            log.debug("nats_client_error", error=str(exc))
            return
        if on_denied is None:
            log.error("nats_permission_denied", error=str(denied))
        else:
            on_denied(denied)  # the session's failure line will say it

    client = NatsClient()
    try:
        await client.connect(
            servers=list(config.servers),
            name="cdc-bridge",
            allow_reconnect=False,
            # nats-py retries even the first connect, 60 times 2 s apart by default: try
            # each server twice, quickly, and let the session backoff do the waiting.
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int; any float works
            connect_timeout=max(int(config.connect_timeout), 1),
            ping_interval=10,
            max_outstanding_pings=3,
            disconnected_cb=disconnected,
            closed_cb=disconnected,
            error_cb=error,
            **connect_options(config, client),
        )
        require_tls(config, client)
    except BaseException as exc:
        await close_failed_client(client)
        if isinstance(exc, nats.errors.Error) and not isinstance(exc, NatsTlsRequired):
            # nats-py's words name no server, and NoServersError not even the reason
            no_servers = isinstance(exc, nats.errors.NoServersError)
            reason = last_error[0] if no_servers and last_error else exc
            refused = NatsAuthError if auth_refused(reason) else NatsConnectError
            raise refused(unreachable(config.servers, reason)) from None
        raise
    return client


async def close_failed_client(client: NatsClient, timeout: float = 1.0) -> None:
    """Close a client whose connect failed: nats-py raises without closing the socket
    when reconnects are off. Bounded, because closing after a failed TLS handshake can
    wait forever for a transport that will never report closed."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await client.close()


async def ensure_stream(nc: NatsClient, config: NatsConfig) -> StreamInfo:
    """Create the stream if it is missing. An existing stream's config is never changed."""
    js = nc.jetstream()
    wanted = config.stream
    try:
        return await js.stream_info(wanted.name)
    except NotFoundError:
        pass
    info = await js.add_stream(
        StreamConfig(
            name=wanted.name,
            subjects=list(wanted.subjects),
            duplicate_window=wanted.duplicate_window,
            storage=StorageType(wanted.storage),
            num_replicas=wanted.replicas,
            max_age=wanted.max_age or None,
        )
    )
    log.info("stream_created", stream=wanted.name, subjects=list(wanted.subjects))
    return info
