"""Scenario 4: the bridge's connections to PostgreSQL and to NATS are reset mid-stream."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from support.bridge import BridgeProcess, log_event
from support.chaos import Auditor, BridgeRunner, LoadGenerator, chaos_bridge_config
from support.tcp_proxy import TcpProxy

from cdc_bridge.devstack import NatsServer, PostgresServer


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
    chaos_seed: int,
    cuts_per_side: int,
) -> None:
    rng = random.Random(chaos_seed)
    dbname = chaos_dsn.rsplit("/", 1)[1]
    with TcpProxy(pg_server.port) as pg_proxy, TcpProxy(nats_server.port) as nats_proxy:
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
                bridge.current.wait_for_log(log_event("session_failed"), since=mark)
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
