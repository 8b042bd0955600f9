"""Scenarios: the publication dropped, or the stream deleted, under steady load (issue 27).

Each fault must stop the bridge (exit 1, one fatal line naming the repair) without the slot
confirmed past it, while the load goes on writing. Then the repair the fatal line names,
with the load still running: for the publication, create it again, start the bridge until
it has caught up, stop it, `audit`, `outbox replay --missing --yes`, start it; for the
stream, `init` (creates it), `audit`, `outbox replay --missing --yes`, start the bridge.
The auditor then finds every committed row exactly once, the replayed ones (Cdc-Replay:
true, sent late on purpose) left out of its order check only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from support.bridge import BridgeProcess, run_cli
from support.chaos import (
    Auditor,
    BridgeRunner,
    LoadGenerator,
    LoadReport,
    chaos_bridge_config,
    slot_state,
)
from support.outbox import current_wal_lsn, wait_for_slot_past

from cdc_bridge.core.lsn import format_lsn

VARIANTS = [
    pytest.param(600, 600, id="short"),
    pytest.param(3000, 3000, id="long", marks=pytest.mark.slow),
]


def execute(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)




def fatal_error(bridge: BridgeRunner) -> str:
    run = bridge.current
    assert run.wait_for_exit(15) == 1, bridge.notable_lines()
    [fatal] = [r for r in run.json_records() if r.get("event") == "fatal"]
    return str(fatal["error"])


def assert_slot_held(dsn: str, slot: str, fault_at: int) -> None:
    state = slot_state(dsn, slot)
    assert state is not None
    assert state.confirmed_flush_lsn <= fault_at, (
        f"slot confirmed through {format_lsn(state.confirmed_flush_lsn)}, "
        f"past the fault at {format_lsn(fault_at)}"
    )


def audit_and_replay(config_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`cdc-bridge audit --json`, then `outbox replay --missing --yes --json` (the bridge
    stopped, the load still writing): both documents."""
    audit = run_cli(config_path, "audit", "--json")
    assert audit.returncode in (0, 1), audit.stderr
    replay = run_cli(config_path, "outbox", "replay", "--missing", "--yes", "--json")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    return json.loads(audit.stdout), json.loads(replay.stdout)


def finish(
    bridge: BridgeRunner, load: LoadGenerator, auditor: Auditor, scenario: str, published: int
) -> LoadReport:
    """Let the repaired bridge stream a while, stop the load; the audit must be clean, and
    the stream must hold exactly the replays `outbox replay` said it published."""
    try:
        load.wait_for_rows(300)
    finally:
        report = load.stop()
    result = auditor.audit(scenario)
    print(report.summary())
    print(result.summary())
    Auditor.assert_clean(result, bridge.notable_lines())
    assert result.committed == report.rows_committed
    replayed = sum(m.replayed for m in auditor.stored_messages())
    assert replayed == published > 0
    assert bridge.current.running, bridge.notable_lines()
    return report


@pytest.mark.parametrize(("rows_before", "rows_during"), VARIANTS)
def test_publication_dropped_under_load_then_repaired(
    chaos_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    rows_before: int,
    rows_during: int,
) -> None:
    u = unique_name
    config = chaos_bridge_config(dsn=chaos_dsn, nats_url=nats_url, name=u)
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)
    auditor = Auditor(chaos_dsn, nats_url, u.upper())
    load.start()
    try:
        load.wait_for_rows(rows_before)
        execute(chaos_dsn, f"DROP PUBLICATION {u}")
        dropped_at = current_wal_lsn(chaos_dsn)
        error = fatal_error(bridge)
        assert f"publication {u} was dropped, while the bridge was streaming" in error
        assert "cdc-bridge audit" in error and "--missing" in error
        assert_slot_held(chaos_dsn, u, dropped_at)

        load.wait_for_rows(rows_during)  # rows pgoutput will never decode
        execute(
            chaos_dsn,
            f"CREATE PUBLICATION {u} FOR TABLE public.outbox WITH (publish = 'insert')",
        )
        created_at = current_wal_lsn(chaos_dsn)
        bridge.start()
        wait_for_slot_past(chaos_dsn, u, created_at, timeout=30)  # caught up
        assert bridge.terminate() == 0, bridge.notable_lines()
        audit, replay = audit_and_replay(bridge.current.config_path)
        print(
            f"repair: audit missing {audit['missing']} (some merely not streamed yet), "
            f"replay published {replay['published']}, pending in slot "
            f"{replay['pending_in_slot']}"
        )
        bridge.start()
    except BaseException:
        load.stop()
        raise
    finish(bridge, load, auditor, "publication dropped under load", int(replay["published"]))


def delete_stream(url: str, stream: str) -> None:
    async def run() -> None:
        client = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            await client.jsm(timeout=5.0).delete_stream(stream)
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.parametrize(("rows_before", "rows_during"), VARIANTS)
def test_stream_deleted_under_load_then_repaired(
    chaos_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: Callable[..., BridgeProcess],
    chaos_seed: int,
    rows_before: int,
    rows_during: int,
) -> None:
    u, stream = unique_name, unique_name.upper()
    config = chaos_bridge_config(dsn=chaos_dsn, nats_url=nats_url, name=u)
    bridge = BridgeRunner(make_bridge, config)
    bridge.start()
    load = LoadGenerator(chaos_dsn, seed=chaos_seed)
    auditor = Auditor(chaos_dsn, nats_url, stream)
    load.start()
    try:
        load.wait_for_rows(rows_before)
        delete_stream(nats_url, stream)
        deleted_at = current_wal_lsn(chaos_dsn)
        error = fatal_error(bridge)
        assert f"stream {stream} was deleted while the bridge ran" in error
        assert "`cdc-bridge init --config FILE` creates a missing one" in error
        assert "cdc-bridge outbox replay --config FILE --missing" in error
        assert_slot_held(chaos_dsn, u, deleted_at)

        load.wait_for_rows(rows_during)  # waiting in the slot
        config_path = bridge.current.config_path
        init = run_cli(config_path, "init")
        assert init.returncode == 0, init.stdout + init.stderr
        audit, replay = audit_and_replay(config_path)
        print(
            f"repair: audit missing {audit['missing']}, unretained {audit['unretained']}, "
            f"replay published {replay['published']}, pending in slot "
            f"{replay['pending_in_slot']}"
        )
        bridge.start()
    except BaseException:
        load.stop()
        raise
    finish(bridge, load, auditor, "stream deleted under load", int(replay["published"]))
