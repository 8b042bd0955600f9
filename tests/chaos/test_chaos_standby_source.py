"""Scenario 10: the bridge reads from a hot standby (``postgres.source: standby``, 16+).

The slot lives on the standby, so decoding stays off the primary; the publication is made
on the primary (``postgres.primary_dsn``). Under load on the primary the standby is
restarted; then the outbox stays idle (the primary writes nothing at all) and a last
event must still arrive at once and be confirmed: no stall. The auditor compares.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.bridge import BridgeProcess
from support.chaos import (
    Auditor,
    BridgeRunner,
    LoadGenerator,
    StoredMessage,
    chaos_bridge_config,
    read_stream,
    stream_message_count,
)
from support.ha import Pair, primary_and_standby, slot_on
from support.outbox import slot_confirmed_flush_lsn
from support.waiting import wait_until

from cdc_bridge.dev.pginstall import PgInstall

pytestmark = pytest.mark.needs_standby_decoding


@pytest.fixture
def pair(devstack_tmp: Path, pg_install: PgInstall, unique_name: str) -> Iterator[Pair]:
    with primary_and_standby(devstack_tmp, pg_install, f"db_{unique_name}") as both:
        yield both


def read_all(url: str, stream: str) -> list[StoredMessage]:
    return asyncio.run(read_stream(url, stream))


@pytest.mark.parametrize(
    "idle",
    [pytest.param(12.0, id="short"), pytest.param(60.0, id="minute", marks=pytest.mark.slow)],
)
def test_reading_from_a_standby_under_load_its_restart_and_an_idle_outbox(
    pair: Pair,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    idle: float,
) -> None:
    primary_dsn = pair.primary.dsn(pair.database)
    standby_dsn = pair.standby.dsn(pair.database)
    config = chaos_bridge_config(dsn=standby_dsn, nats_url=nats_url, name=unique_name)
    config["postgres"] |= {"source": "standby", "primary_dsn": primary_dsn}
    bridge = BridgeRunner(make_bridge, config)
    bridge.start(timeout=60)
    assert slot_on(pair.standby, pair.database, unique_name) is not None
    assert slot_on(pair.primary, pair.database, unique_name) is None  # the slot is not there
    load = LoadGenerator(primary_dsn, seed=chaos_seed)
    load.start()
    try:
        load.wait_for_rows(300)
        mark = bridge.current.mark()
        pair.standby.restart("fast")
        bridge.wait_streaming(since=mark, timeout=60)
        load.wait_for_rows(300)
    finally:
        report = load.stop()
    stream = unique_name.upper()
    time.sleep(idle)  # the scenario itself: nothing at all is written for this long
    held = asyncio.run(stream_message_count(nats_url, stream))
    assert held == report.rows_committed  # all caught up before the idle spell ended
    after = LoadGenerator(primary_dsn, seed=chaos_seed + 1)
    started = time.monotonic()
    after.start()
    try:
        wait_until(lambda: asyncio.run(stream_message_count(nats_url, stream)) > held, 15)
        arrived = time.monotonic() - started
        after.wait_for_rows(50)
    finally:
        after_report = after.stop()
    last_commit = max(m.lsn for m in read_all(nats_url, stream))

    def confirmed_past_the_last_event() -> bool:
        confirmed = slot_confirmed_flush_lsn(standby_dsn, unique_name)
        return confirmed is not None and confirmed >= last_commit

    wait_until(confirmed_past_the_last_event, timeout=30)
    result = Auditor(primary_dsn, nats_url, unique_name.upper()).audit("10 standby source")
    print(report.summary())
    print(f"{result.summary()}; after {idle:g}s idle the next event arrived in {arrived:.2f}s")
    Auditor.assert_clean(result, bridge.notable_lines())
    assert result.committed == report.rows_committed + after_report.rows_committed
    assert len(bridge.runs) == 1 and bridge.current.running
