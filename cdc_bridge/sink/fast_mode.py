"""Whether per-message mode publishes through JetStream fast-ingest batches.

Decided once per connection, from ``nats.fast_ingest``, the server's version (fast
ingest came with nats-server 2.14) and the stream's ``allow_batched``; only asked when
atomic mode is off (atomic_mode.py): fast batches are not atomic, they are per-message
mode's fast path (fast_publisher.py). `run` and `check` both call ``fast_mode``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from nats.aio.client import Client as NatsClient
from nats.js.api import StreamInfo

from cdc_bridge.core.errors import FatalError
from cdc_bridge.sink.atomic_mode import AtomicMode, Version, connected_version, version_text

if TYPE_CHECKING:
    from cdc_bridge.config.model import NatsConfig

# The first nats-server with fast-ingest batch publishing (ADR-50).
FAST_VERSION = (2, 14, 0)

# Same shape as the atomic decision: on or off, and why.
FastMode = AtomicMode


def decide_fast_mode(
    setting: Literal["auto", True, False],
    server_version: Version | None,
    stream_name: str,
    stream_allows_batched: bool,
    *,
    stream_exists: bool = True,
) -> FastMode:
    """The decision for ``nats.fast_ingest`` = ``setting`` (see decide_atomic_mode: the
    same rules, for 2.14 and ``allow_batched``). Raises FatalError when the setting is
    true and the server or the stream cannot do fast-ingest batches."""
    if setting is False:
        return FastMode(False, "nats.fast_ingest is false")
    missing = _missing(server_version, stream_name, stream_allows_batched, stream_exists)
    if missing is None:
        created = "" if stream_exists else " (created with allow_batched)"
        return FastMode(
            True,
            f"nats-server {version_text(server_version)} and stream {stream_name}{created} "
            "allow fast-ingest batches",
        )
    problem, fix = missing
    if setting is True:
        raise FatalError(
            f"{problem}, and nats.fast_ingest is true: {fix}, or set nats.fast_ingest: "
            "auto (fast-ingest batches where they can be had) or false"
        )
    return FastMode(False, f"{problem}: {fix}")


def _missing(
    version: Version | None, stream_name: str, allows: bool, exists: bool
) -> tuple[str, str] | None:
    """What keeps fast-ingest batches off and how to have them; None: nothing does."""
    if version is None or version < FAST_VERSION:
        return (
            f"nats-server {version_text(version)} has no fast-ingest batches (2.14+ needed)",
            "upgrade the NATS servers",
        )
    if allows:
        return None
    if not exists:
        return (
            f"stream {stream_name} is to be created with nats.stream.allow_batched false",
            "set nats.stream.allow_batched: true",
        )
    return (
        f"stream {stream_name} has allow_batched off",
        "enable allow_batched in the stream's config (the bridge never changes an existing stream)",
    )


async def fast_mode(nc: NatsClient, config: NatsConfig, stream_info: StreamInfo | None) -> FastMode:
    """``decide_fast_mode`` for this connection and stream (``stream_info`` None: the
    bridge will create it with ``nats.stream.allow_batched``)."""
    if stream_info is None:
        allows, exists = config.stream.allow_batched, False
    else:  # nats-py leaves it None when the server leaves it out: off
        allows, exists = bool(stream_info.config.allow_batched), True
    return decide_fast_mode(
        config.fast_ingest, connected_version(nc), config.stream.name, allows, stream_exists=exists
    )
