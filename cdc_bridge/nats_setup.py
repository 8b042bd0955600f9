"""Connecting to NATS and making sure the configured stream exists."""

from __future__ import annotations

from collections.abc import Callable

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

from cdc_bridge.config import NatsConfig

log = structlog.get_logger("cdc_bridge.nats")


async def connect_nats(config: NatsConfig, on_lost: Callable[[], None]) -> NatsClient:
    """Connect without nats-py's own reconnect buffering.

    After a reconnect nats-py would flush messages buffered while disconnected, while
    the ones lost in the dead socket's send buffer are never retried: later events
    would overtake earlier ones. Instead a lost connection ends the session, and the
    next session replays everything unacked from the slot, in order.
    """

    async def disconnected() -> None:
        on_lost()

    async def error(exc: Exception) -> None:
        log.debug("nats_client_error", error=str(exc))

    return await nats.connect(
        servers=list(config.servers),
        name="cdc-bridge",
        allow_reconnect=False,
        # nats-py retries even the first connect, 60 times 2 s apart by default: try
        # each server twice, quickly, and let the session backoff do the waiting.
        max_reconnect_attempts=1,
        reconnect_time_wait=0.5,
        connect_timeout=max(int(config.connect_timeout), 1),
        ping_interval=10,
        max_outstanding_pings=3,
        disconnected_cb=disconnected,
        closed_cb=disconnected,
        error_cb=error,
    )


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
