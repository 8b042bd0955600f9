"""The ops commands' NATS connection: one try per server, quiet, no reconnects."""

from __future__ import annotations

import nats
from nats.aio.client import Client as NatsClient

from cdc_bridge.config import BridgeConfig

API_TIMEOUT = 5.0  # seconds for each JetStream API request


async def connect_quietly(config: BridgeConfig) -> NatsClient:
    """Connect to ``nats.servers``; nats-py's own error logging is silenced, because
    the caller reports a failure in one line of its own."""

    async def ignore(_: Exception) -> None:
        pass

    return await nats.connect(
        servers=list(config.nats.servers),
        name="cdc-bridge-ops",
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=max(int(config.nats.connect_timeout), 1),
        error_cb=ignore,
    )
