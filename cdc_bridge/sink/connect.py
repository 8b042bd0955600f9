"""Connecting to NATS and making sure the configured stream exists."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.client import ServerVersion
from nats.js.api import StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError

from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.redaction import redact_dsn
from cdc_bridge.sink.auth import NatsTlsRequired, connect_options, require_tls

if TYPE_CHECKING:
    from cdc_bridge.config.model import NatsConfig
    from cdc_bridge.config.model import StreamConfig as WantedStream

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


# JetStream's err_code when a new stream's subjects overlap an existing stream's.
SUBJECTS_OVERLAP = 10065


class StreamOverlap(FatalError):
    """The configured stream is missing and cannot be created: another stream of the
    account stores some of its subjects. No retry cures it, only a config change."""


@dataclass(frozen=True, slots=True)
class Overlap:
    """What `run`, `check` and `init` say when the stream overlaps others (see
    ``stream_overlap``): ``check`` shows the problem and the fix apart."""

    problem: str
    fix: str

    @property
    def line(self) -> str:
        return f"{self.problem}: {self.fix}"


def stream_overlap(
    name: str, subjects: Sequence[str], others: Sequence[tuple[str, Sequence[str] | None]]
) -> Overlap:
    """The one line for stream ``name`` (to be created on ``subjects``) whose subjects
    overlap the existing streams ``others`` (name, subjects; None when this NATS user may
    not read them): it names each of them with what it stores, and the two ways out."""
    mine = ", ".join(subjects)
    theirs = " and ".join(
        f"stream {other}"
        + ("" if stored is None else f" (which stores {', '.join(stored) or 'no subjects'})")
        for other, stored in others
    )
    problem = (
        f"nats.stream: stream {name} cannot be created: its subjects ({mine}) overlap "
        f"{theirs or 'an existing stream'}, and JetStream stores a subject in one stream only"
    )
    fix = (
        "give this bridge's stream subjects no other stream stores (nats.stream.subjects, "
        "with the routes and dead_letter.subject inside them)"
    )
    if others:
        fix += f", or set nats.stream.name: {others[0][0]} to use the existing stream"
    return Overlap(problem, fix)


async def overlapping_streams(
    nc: NatsClient, wanted: WantedStream, timeout: float = 5.0
) -> list[tuple[str, tuple[str, ...] | None]]:
    """The other streams of the account that store some subject of ``wanted``, with
    their subjects: the server's own lookup ($JS.API.STREAM.NAMES with a subject filter
    matches with overlap semantics), one request per configured subject."""
    names: list[str] = []
    for subject in wanted.subjects:
        reply = await nc.request(
            "$JS.API.STREAM.NAMES", json.dumps({"subject": subject}).encode(), timeout=timeout
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            raise APIError.from_error(answer["error"])
        for found in answer.get("streams") or ():
            if found != wanted.name and found not in names:
                names.append(found)
    jsm = nc.jsm(timeout=timeout)
    others: list[tuple[str, tuple[str, ...] | None]] = []
    for other in names:
        try:
            info = await jsm.stream_info(other)
        except NotFoundError:
            continue  # deleted since
        except (nats.errors.Error, TimeoutError):
            others.append((other, None))  # a user that may not read it: named all the same
            continue
        others.append((other, tuple(info.config.subjects or ())))
    return others


async def ensure_stream(nc: NatsClient, config: NatsConfig) -> StreamInfo:
    """Create the stream if it is missing. An existing stream's config is never changed.
    Raises StreamOverlap when other streams already store some of its subjects."""
    js = nc.jetstream()
    wanted = config.stream
    try:
        return await js.stream_info(wanted.name)
    except NotFoundError:
        pass
    if others := await overlapping_streams(nc, wanted):
        raise StreamOverlap(stream_overlap(wanted.name, wanted.subjects, others).line)
    try:
        info = await js.add_stream(
            StreamConfig(
                name=wanted.name,
                subjects=list(wanted.subjects),
                duplicate_window=wanted.duplicate_window,
                storage=StorageType(wanted.storage),
                num_replicas=wanted.replicas,
                max_age=wanted.max_age or None,
                # Only asked of servers that know it (2.12+): older ones refuse nothing
                # but store no such field, and sink/atomic_mode.py keeps them off.
                allow_atomic=wanted.allow_atomic,
                # Fast-ingest batches (2.14+; sink/fast_mode.py), the same way.
                allow_batched=wanted.allow_batched,
            )
        )
    except APIError as exc:
        if exc.err_code != SUBJECTS_OVERLAP:
            raise
        # created since the lookup above: name it, or retry when it is gone again
        if not (others := await overlapping_streams(nc, wanted)):
            raise
        raise StreamOverlap(stream_overlap(wanted.name, wanted.subjects, others).line) from None
    log.info("stream_created", stream=wanted.name, subjects=list(wanted.subjects))
    return info
