"""The stream losing what it acked while the bridge runs (issue 27 item 9): deleted,
wiped with the server's store, or its subjects edited so routes are no longer stored.
The bridge stops with one fatal line and exit 1, never re-creates the stream, and the
slot's confirmed position does not move past the loss."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError
from nats.js.manager import JetStreamManager
from support.bridge import BridgeProcess, MakeBridge, log_event, start_bridge
from support.nats_helpers import stream_info
from support.outbox import (
    Event,
    bridge_config,
    current_wal_lsn,
    insert_events,
    slot_confirmed_flush_lsn,
    wait_for_ids,
    wait_for_slot_past,
)

from cdc_bridge.dev.nats_server import NatsServer

REPAIR = (
    "run `cdc-bridge audit --config FILE`, then "
    "`cdc-bridge outbox replay --config FILE --missing`"
)
# status_interval is 200ms in the tests' configs: a few intervals, plus a slow start.
DETECTED_WITHIN = 10.0


def with_jsm(url: str, change: Callable[[JetStreamManager], Awaitable[object]]) -> None:
    async def run() -> None:
        client = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            await change(client.jsm(timeout=5.0))
        finally:
            await client.close()

    asyncio.run(run())


def streaming_with_acked_rows(
    make_bridge: MakeBridge, config: dict[str, Any], pg_dsn: str, nats_url: str
) -> BridgeProcess:
    """A streaming bridge whose rows are acked and confirmed in the slot."""
    bridge = start_bridge(make_bridge, config)
    ids = insert_events(pg_dsn, [Event(aggregate_id=f"T-{n}") for n in range(5)])
    wait_for_ids(nats_url, config["nats"]["stream"]["name"], ids)
    wait_for_slot_past(pg_dsn, config["postgres"]["slot"], current_wal_lsn(pg_dsn) - 1)
    return bridge


def fatal_line(bridge: BridgeProcess) -> str:
    line = bridge.wait_for_log(log_event("fatal"), timeout=DETECTED_WITHIN)
    assert bridge.wait_for_exit() == 1
    return line


def test_a_deleted_stream_stops_the_bridge_without_confirming_or_re_creating(
    make_bridge: MakeBridge, pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    stream, slot = unique_name.upper(), unique_name
    bridge = streaming_with_acked_rows(make_bridge, config, pg_dsn, nats_url)
    confirmed = slot_confirmed_flush_lsn(pg_dsn, slot)

    with_jsm(nats_url, lambda jsm: jsm.delete_stream(stream))
    # Rows committed after the deletion must not move the slot either. (WAL without
    # events before them, a checkpoint's running-xacts record say, may be confirmed
    # while the bridge is idle, until the watch sees the loss: no event lies there.)
    before_the_row = current_wal_lsn(pg_dsn)
    insert_events(pg_dsn, [Event(aggregate_id="T-after")])

    line = fatal_line(bridge)
    assert f"stream {stream} was deleted while the bridge ran" in line
    assert "the slot is confirmed through LSN" in line and REPAIR in line
    assert sum('"event": "fatal"' in x for x in bridge.lines) == 1
    assert confirmed is not None
    assert confirmed <= (slot_confirmed_flush_lsn(pg_dsn, slot) or 0) <= before_the_row
    with pytest.raises(NotFoundError):  # never re-created behind the operator's back
        asyncio.run(stream_info(nats_url, stream))


def test_edited_subjects_that_no_longer_cover_a_route_stop_the_bridge(
    make_bridge: MakeBridge, pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    stream = unique_name.upper()
    bridge = streaming_with_acked_rows(make_bridge, config, pg_dsn, nats_url)

    async def narrow(jsm: JetStreamManager) -> None:
        info = await jsm.stream_info(stream)
        info.config.subjects = [f"other{unique_name}.>"]
        await jsm.update_stream(info.config)

    with_jsm(nats_url, narrow)

    line = fatal_line(bridge)
    assert (
        f"subjects were changed to other{unique_name}.>: they no longer cover "
        f"routes[0].subject ({unique_name}.*.*)"
    ) in line
    assert REPAIR in line


def test_a_server_restarted_on_an_empty_store_is_not_silently_re_populated(
    make_bridge: MakeBridge, pg_dsn: str, isolated_nats_server: NatsServer, unique_name: str
) -> None:
    url = isolated_nats_server.url
    config = bridge_config(pg_dsn, url, unique_name)
    stream, slot = unique_name.upper(), unique_name
    bridge = streaming_with_acked_rows(make_bridge, config, pg_dsn, url)
    confirmed = slot_confirmed_flush_lsn(pg_dsn, slot)

    isolated_nats_server.stop()
    shutil.rmtree(isolated_nats_server.store_dir)
    isolated_nats_server.start()

    line = fatal_line(bridge)
    assert f"stream {stream} was deleted while the bridge ran" in line and REPAIR in line
    assert slot_confirmed_flush_lsn(pg_dsn, slot) == confirmed
    with pytest.raises(NotFoundError):
        asyncio.run(stream_info(url, stream))
