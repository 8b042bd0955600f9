"""Scenario 4: the bridge's connections to PostgreSQL and to NATS are reset mid-stream."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from support.bridge import BridgeProcess
from support.chaos import Auditor, BridgeRunner, LoadGenerator, chaos_bridge_config
from support.tcp_proxy import TcpProxy

from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import PostgresServer

ACK_TIMEOUT = 2.0


@pytest.mark.parametrize(
    "cuts_per_side",
    [pytest.param(3, id="short"), pytest.param(10, id="long", marks=pytest.mark.slow)],
)
def test_connections_cut_under_load(
    pg_server: PostgresServer,
    chaos_dsn: str,
    nats_server: NatsServer,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    tcp_proxy: Callable[[int], TcpProxy],
    chaos_seed: int,
    cuts_per_side: int,
) -> None:
    rng = random.Random(chaos_seed)
    dbname = chaos_dsn.rsplit("/", 1)[1]
    pg_proxy, nats_proxy = tcp_proxy(pg_server.port), tcp_proxy(nats_server.port)
    config = chaos_bridge_config(
        dsn=f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{dbname}",
        nats_url=f"nats://127.0.0.1:{nats_proxy.port}",
        name=unique_name,
    )
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)  # straight to the server: never cut
    load.start()
    sides = [pg_proxy, nats_proxy] * cuts_per_side
    rng.shuffle(sides)
    try:
        for proxy in sides:
            load.wait_for_rows(rng.randint(100, 500))
            mark = bridge.current.mark()
            assert proxy.cut() > 0, "the bridge had no connection to cut"
            # A new session has started (repeated failures are logged only once a minute)
            bridge.wait_streaming(since=mark, timeout=60)
        load.wait_for_rows(300)
    finally:
        report = load.stop()
    cut = f"{pg_proxy.cut_total} PostgreSQL and {nats_proxy.cut_total} NATS connections cut"
    result = Auditor(chaos_dsn, nats_url, unique_name.upper()).audit(f"4 TCP cuts ({cut})")
    print(report.summary())
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
    assert result.committed == report.rows_committed
    assert bridge.current.running, "the bridge gave up"


@pytest.mark.parametrize(
    "pause",
    [
        pytest.param(0.8, id="shorter_than_ack_timeout"),
        pytest.param(4.0, id="longer_than_ack_timeout"),
    ],
)
def test_nats_silent_partition_under_load(
    chaos_dsn: str,
    nats_server: NatsServer,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    tcp_proxy: Callable[[int], TcpProxy],
    chaos_seed: int,
    pause: float,
) -> None:
    """No RST, no FIN: bytes just stop flowing both ways, twice, then flow again."""
    nats_proxy = tcp_proxy(nats_server.port)
    config = chaos_bridge_config(
        dsn=chaos_dsn, nats_url=f"nats://127.0.0.1:{nats_proxy.port}", name=unique_name,
        ack_timeout=f"{ACK_TIMEOUT:g}s",
    )
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)
    load.start()
    try:
        for _ in range(2):
            load.wait_for_rows(300)
            mark = bridge.current.mark()
            nats_proxy.pause()
            time.sleep(pause)  # the fault's length is the point here, not a condition
            nats_proxy.resume()
            if pause > ACK_TIMEOUT:
                bridge.wait_streaming(since=mark, timeout=60)  # it noticed and started over
        load.wait_for_rows(300)
    finally:
        report = load.stop()
    result = Auditor(chaos_dsn, nats_url, unique_name.upper()).audit(
        f"4b NATS silent partition of {pause:g}s, twice"
    )
    print(report.summary())
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
    assert bridge.current.running, "the bridge gave up"
