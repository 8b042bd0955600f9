"""Scenario 6: one very large transaction arrives whole and in order, in bounded memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from support.bridge import BridgeProcess
from support.chaos import (
    Auditor,
    BridgeRunner,
    chaos_bridge_config,
    insert_one_big_transaction,
    stream_message_count,
)
from support.waiting import wait_until

MAX_RSS_GROWTH_KIB = 200 * 1024


@pytest.mark.parametrize(
    "rows",
    [pytest.param(100_000, id="short"), pytest.param(1_000_000, id="long", marks=pytest.mark.slow)],
)
def test_one_large_transaction(
    chaos_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    rows: int,
) -> None:
    bridge = BridgeRunner(
        make_bridge, chaos_bridge_config(dsn=chaos_dsn, nats_url=nats_url, name=unique_name)
    )
    bridge.start()
    baseline_rss = bridge.peak_rss_kib()
    started = time.monotonic()
    insert_one_big_transaction(chaos_dsn, rows)
    committed_in = time.monotonic() - started
    stream = unique_name.upper()
    wait_until(
        lambda: asyncio.run(stream_message_count(nats_url, stream)) >= rows,
        timeout=60 + rows / 1000,
        interval=0.5,
        message=f"the stream did not reach {rows} messages",
    )
    delivered_in = time.monotonic() - started
    peak_rss = bridge.peak_rss_kib()
    result = Auditor(chaos_dsn, nats_url, stream).audit(f"6 one transaction of {rows} rows")
    print(result.summary())
    print(
        f"inserted in {committed_in:.1f}s, all stored after {delivered_in:.1f}s "
        f"({rows / (delivered_in - committed_in):.0f} rows/s); "
        f"bridge peak RSS {peak_rss / 1024:.0f} MiB (after start: {baseline_rss / 1024:.0f} MiB)"
    )
    Auditor.assert_clean(result, bridge.notable_lines())
    assert result.committed == rows
    # The in-flight window bounds memory: a bridge holding the whole transaction would need
    # hundreds of MiB here (a run of 1,000,000 rows peaked 1 MiB above its start)
    assert peak_rss - baseline_rss < MAX_RSS_GROWTH_KIB, "memory grew with the transaction"


DUPLICATE_WINDOW = 2.0


@pytest.mark.parametrize(
    "rows",
    [pytest.param(30_000, id="short"), pytest.param(300_000, id="long", marks=pytest.mark.slow)],
)
def test_bridge_killed_in_the_middle_of_a_large_transaction(
    chaos_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    rows: int,
) -> None:
    """Half of the transaction is stored, none of it confirmed: after a restart past the
    duplicate window the stored half must not be published again, the rest must follow."""
    config = chaos_bridge_config(
        dsn=chaos_dsn, nats_url=nats_url, name=unique_name,
        duplicate_window=f"{DUPLICATE_WINDOW:g}s",
    )
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    stream = unique_name.upper()
    insert_one_big_transaction(chaos_dsn, rows)
    stored_at_kill = wait_until(
        lambda: (count := asyncio.run(stream_message_count(nats_url, stream))) >= rows // 3
        and count,
        timeout=60 + rows / 1000,
        interval=0.1,
        message=f"the stream did not reach {rows // 3} messages",
    )
    bridge.kill()
    time.sleep(DUPLICATE_WINDOW + 0.5)  # the fault: down until the stream forgot the ids
    bridge.start()
    result = Auditor(chaos_dsn, nats_url, stream).audit(
        f"6b kill -9 in a transaction of {rows} rows (after ~{stored_at_kill} stored)",
        timeout=60 + rows / 1000,
    )
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
