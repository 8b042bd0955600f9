"""The ops commands' NATS connection: one try per server, quiet, no reconnects."""

from __future__ import annotations

import asyncio

import nats.errors
from nats.aio.client import Client as NatsClient

from cdc_bridge.cli.errors import OpsError
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.sink.auth import connect_options, require_tls
from cdc_bridge.sink.connect import close_failed_client, unreachable

API_TIMEOUT = 5.0  # seconds for each JetStream API request
_RETRY_WAIT = 0.2  # seconds between tries of one server


async def connect_quietly(config: BridgeConfig) -> NatsClient:
    """Connect to ``nats.servers``, giving up within seconds when none answers.

    nats-py keeps cycling through the servers on its first connect until each has
    failed ``max_reconnect_attempts`` times (0 means forever), sleeping
    ``reconnect_time_wait`` in between: 1 and a short wait make that two quick tries
    per server. Failing, raises OpsError with the last reason, in one line.
    """

    errors: list[Exception] = []

    async def remember(error: Exception) -> None:
        errors.append(error)

    connect_timeout = max(int(config.nats.connect_timeout), 1)
    deadline = len(config.nats.servers) * 2 * (connect_timeout + _RETRY_WAIT) + 1
    client = NatsClient()
    try:
        async with asyncio.timeout(deadline):
            await client.connect(
                servers=list(config.nats.servers),
                name="cdc-bridge-ops",
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=_RETRY_WAIT,  # type: ignore[arg-type]  # float works
                connect_timeout=connect_timeout,
                error_cb=remember,
                **connect_options(config.nats, client),
            )
            require_tls(config.nats, client)
            return client
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        await close_failed_client(client)
        last = errors[-1] if errors else exc
        raise OpsError(config.redactor()(unreachable(config.nats.servers, last))) from None
