"""Whether the bridge publishes each source transaction as one JetStream atomic batch.

Decided once per connection, from ``nats.atomic_transactions``, the server's version
(atomic batches came with nats-server 2.12) and the stream's ``allow_atomic``. `run`
and `check` both call ``atomic_mode``, so check applies exactly the rules run applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from nats.aio.client import Client as NatsClient
from nats.js.api import StreamInfo

from cdc_bridge.core.errors import FatalError

if TYPE_CHECKING:
    from cdc_bridge.config.model import NatsConfig

# The first nats-server with atomic batch publishing (ADR-50).
ATOMIC_VERSION = (2, 12, 0)

Version = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class AtomicMode:
    enabled: bool
    reason: str  # why on, or why off and what turns it on: for log lines and `check`


def version_text(version: Version | None) -> str:
    return "(version unknown)" if version is None else ".".join(map(str, version))


def decide_atomic_mode(
    setting: Literal["auto", True, False],
    server_version: Version | None,
    stream_name: str,
    stream_allows_atomic: bool,
    *,
    stream_exists: bool = True,
) -> AtomicMode:
    """The decision for ``nats.atomic_transactions`` = ``setting``.

    ``server_version`` is None when the server's version is not semver: such a server is
    taken as too old (the safe side: per-message publishing works on every server).
    ``stream_exists`` False: the stream is yet to be created by the bridge, with
    ``stream_allows_atomic`` from ``nats.stream.allow_atomic``. Raises FatalError when
    the setting is true and the server or the stream cannot do atomic batches."""
    if setting is False:
        return AtomicMode(False, "nats.atomic_transactions is false")
    missing = _missing(server_version, stream_name, stream_allows_atomic, stream_exists)
    if missing is None:
        stream = f"stream {stream_name}" + ("" if stream_exists else " (created with allow_atomic)")
        return AtomicMode(
            True, f"nats-server {version_text(server_version)} and {stream} allow atomic batches"
        )
    problem, fix = missing
    if setting is True:
        raise FatalError(
            f"{problem}, and nats.atomic_transactions is true: {fix}, or set "
            "nats.atomic_transactions: auto (atomic batches where they can be had) or false"
        )
    meant = "or set nats.atomic_transactions: false to say per-message mode is meant"
    return AtomicMode(False, f"{problem}: {fix}, {meant}")


def _missing(
    version: Version | None, stream_name: str, allows: bool, exists: bool
) -> tuple[str, str] | None:
    """What keeps atomic batches off and how to have them; None: nothing does."""
    if version is None or version < ATOMIC_VERSION:
        return (
            f"nats-server {version_text(version)} has no atomic batches (2.12+ needed)",
            "upgrade the NATS servers",
        )
    if allows:
        return None
    if not exists:
        return (
            f"stream {stream_name} is to be created with nats.stream.allow_atomic false",
            "set nats.stream.allow_atomic: true",
        )
    return (
        f"stream {stream_name} has allow_atomic off",
        "enable allow_atomic in the stream's config (the bridge never changes an existing stream)",
    )


def connected_version(nc: NatsClient) -> Version | None:
    """The connected server's major, minor and patch; None when it is not semver."""
    version = nc.connected_server_version
    try:
        return (version.major, version.minor, version.patch)
    except ValueError:
        return None


async def atomic_mode(
    nc: NatsClient, config: NatsConfig, stream_info: StreamInfo | None
) -> AtomicMode:
    """``decide_atomic_mode`` for this connection and stream. ``stream_info`` None: the
    stream does not exist yet (`check`), and the bridge will create it with
    ``nats.stream.allow_atomic``. Raises FatalError when ``nats.atomic_transactions`` is
    true and atomic batches cannot be had.

    Async so that it may come to ask the server more (its batch limits, say) without
    changing its callers."""
    if stream_info is None:
        allows, exists = config.stream.allow_atomic, False
    else:  # nats-py leaves it None when the server leaves it out: off
        allows, exists = bool(stream_info.config.allow_atomic), True
    return decide_atomic_mode(
        config.atomic_transactions,
        connected_version(nc),
        config.stream.name,
        allows,
        stream_exists=exists,
    )
