"""Scenario 3: PostgreSQL restarts under load: immediate (crash recovery), fast (clean), and
SIGKILL to the postmaster and its backends (a crash without even the immediate shutdown)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.bridge import BridgeProcess
from support.chaos import (
    Auditor,
    BridgeRunner,
    LoadGenerator,
    chaos_bridge_config,
    install_chaos_schema,
)

from cdc_bridge.dev.postgres_server import PostgresServer


@pytest.mark.parametrize(
    "modes",
    [
        pytest.param(("immediate", "fast", "kill"), id="short"),
        pytest.param(("immediate", "fast", "kill") * 3, id="long", marks=pytest.mark.slow),
    ],
)
def test_postgres_restarted_under_load(
    isolated_pg_server: PostgresServer,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    modes: tuple[str, ...],
) -> None:
    server = isolated_pg_server
    dsn = server.create_database(f"db_{unique_name}")
    install_chaos_schema(dsn)
    bridge = BridgeRunner(
        make_bridge, chaos_bridge_config(dsn=dsn, nats_url=nats_url, name=unique_name)
    )
    bridge.start()
    load = LoadGenerator(dsn, seed=chaos_seed)
    load.start()
    try:
        for mode in modes:
            load.wait_for_rows(400)
            mark = bridge.current.mark()
            if mode == "kill":
                server.kill()  # SIGKILL to the postmaster and every backend: a crash
                server.start()
            else:
                server.restart(mode)
            bridge.wait_streaming(since=mark, timeout=60)
        load.wait_for_rows(400)
    finally:
        report = load.stop()
    result = Auditor(dsn, nats_url, unique_name.upper()).audit(
        f"3 PostgreSQL restarts {'/'.join(modes)}"
    )
    print(report.summary())
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
    assert result.committed == report.rows_committed
