"""Scenario 9: the primary fails over to its physical standby under load (PostgreSQL 17+).

A primary with one synchronous standby that synchronizes slots (``sync_replication_slots``,
``hot_standby_feedback``, ``primary_slot_name``, a ``primary_conninfo`` with ``dbname``; the
primary's ``synchronized_standby_slots`` names the standby's physical slot). The bridge and
the load both use a two-host DSN with ``target_session_attrs=read-write``. The primary is
stopped (immediate: a crash; fast: a planned switchover), the standby promoted, and the
writes go on against it. The auditor then compares the new primary's outbox with the
stream: every committed event once, in commit order.

Without a synchronized slot (``postgres.failover: false``) the bridge must stop with the
one "failover without a synchronized slot" line and never create a new slot (which would
skip what was committed since).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
import yaml
from support.bridge import BridgeProcess, log_event, parse_json_line
from support.chaos import Auditor, BridgeRunner, LoadGenerator, chaos_bridge_config
from support.ha import (
    Pair,
    primary_and_standby,
    set_and_reload,
    slot_on,
    wait_until_synchronized,
)

from cdc_bridge.cli.main import main
from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.dev.pginstall import PgInstall
from cdc_bridge.dev.postgres_server import PostgresServer

pytestmark = pytest.mark.needs_failover_slots

FAILOVER_LINE = "failover without a synchronized slot"


@pytest.fixture
def pair(devstack_tmp: Path, pg_install: PgInstall, unique_name: str) -> Iterator[Pair]:
    with primary_and_standby(devstack_tmp, pg_install, f"db_{unique_name}") as both:
        yield both


async def _newest_lsn(url: str, stream: str) -> int:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        if not info.state.messages:
            return 0
        msg = await js.get_msg(stream, seq=info.state.last_seq)
        return parse_lsn((msg.headers or {}).get("Cdc-Lsn", "0/0"))
    finally:
        await nc.close()


def wait_for_event_after(url: str, stream: str, lsn: int, timeout: float = 60.0) -> float:
    """Seconds until the stream holds an event committed after ``lsn``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if asyncio.run(_newest_lsn(url, stream)) > lsn:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"no event from after LSN {lsn:X} within {timeout:g}s")


def current_lsn(server: PostgresServer, database: str) -> int:
    with psycopg.connect(server.dsn(database), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


# The kill is the harder case and runs in `make test`; the planned switchover (fast
# shutdown, promote) takes as long again and runs with the slow variants.
@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("immediate", id="kill"),
        pytest.param("fast", id="switchover", marks=pytest.mark.slow),
    ],
)
def test_failover_to_a_synchronized_standby_loses_and_repeats_nothing(
    pair: Pair,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    mode: str,
) -> None:
    config = chaos_bridge_config(dsn=pair.dsn(), nats_url=nats_url, name=unique_name)
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    assert slot_on(pair.primary, pair.database, unique_name) is not None
    row = slot_on(pair.primary, pair.database, unique_name)
    assert row is not None and row[0] is True, f"not a failover slot: {row}"
    load = LoadGenerator(pair.dsn(), seed=chaos_seed)
    load.start()
    try:
        load.wait_for_rows(300)
        wait_until_synchronized(pair, unique_name)
        load.wait_for_rows(300)
        mark = bridge.current.mark()
        pair.primary.stop(mode)
        pair.standby.promote()
        promoted_at = current_lsn(pair.standby, pair.database)
        seconds = wait_for_event_after(nats_url, unique_name.upper(), promoted_at)
        print(f"{mode}: first event from the new primary {seconds:.2f}s after promotion")
        bridge.wait_streaming(since=mark, timeout=30)
        load.wait_for_rows(300)
    finally:
        report = load.stop()
    result = Auditor(pair.dsn(), nats_url, unique_name.upper()).audit(f"9 failover ({mode})")
    print(report.summary())
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
    assert result.committed == report.rows_committed
    assert bridge.current.running, "the bridge resumed by itself, without a restart"
    assert len(bridge.runs) == 1
    assert seconds < 15.0


def test_failover_without_a_synchronized_slot_stops_with_one_line_and_skips_nothing(
    pair: Pair,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failover slot the standby never synchronized (its slot sync worker is off):
    check warned, and after the failover the bridge stops rather than skip."""
    set_and_reload(pair.standby, "sync_replication_slots", "off")
    config = chaos_bridge_config(dsn=pair.dsn(), nats_url=nats_url, name=unique_name)
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    row = slot_on(pair.primary, pair.database, unique_name)
    assert row is not None and row[0] is True
    warnings = [
        line["detail"]
        for line in check_lines(capsys, tmp_path, config)
        if line["check"] == "postgres.failover" and line["status"] == "warn"
    ]
    assert any("sync_replication_slots is off" in w for w in warnings), warnings
    assert any("is not synchronized there" in w for w in warnings), warnings
    load = LoadGenerator(pair.dsn(), rows_per_second=100)
    load.start()
    try:
        load.wait_for_rows(100)
        pair.primary.stop("immediate")
        pair.standby.promote()
        load.wait_for_rows(50)
        code = bridge.current.wait_for_exit(timeout=60)
    finally:
        load.stop()
    assert code == 1
    fatal = [
        record
        for line in bridge.current.lines
        if (record := parse_json_line(line)) is not None and record.get("event") == "fatal"
    ]
    assert len(fatal) == 1, bridge.notable_lines()
    error = str(fatal[0]["error"])
    assert FAILOVER_LINE in error and f"127.0.0.1:{pair.standby.port}" in error
    assert "docs/production.md#high-availability" in error
    # Never skipped: no new slot was made on the new primary
    assert slot_on(pair.standby, pair.database, unique_name) is None
    assert sum(log_event("slot_created")(line) for line in bridge.current.lines) == 1
    # What was published is a gap-free prefix of what was committed, in commit order:
    # the rest waits for the recovery (docs/production.md), nothing was skipped
    auditor = Auditor(pair.dsn(), nats_url, unique_name.upper())
    committed = [row.id for row in auditor.committed_rows()]
    stored = [message.msg_id for message in auditor.stored_messages()]
    assert stored and stored == committed[: len(stored)]
    print(f"not synchronized: committed {len(committed)}, published {len(stored)} (a prefix)")


def check_lines(
    capsys: pytest.CaptureFixture[str], folder: Path, config: dict[str, Any]
) -> list[dict[str, Any]]:
    path = folder / "check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    main(["check", "--config", str(path), "--json"])
    results: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return results
