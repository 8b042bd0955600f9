"""Catalog changes under a running bridge (issue 27, items 7, 8, 11): detected within a
status interval, the slot never confirmed past them, one fatal line with the repair, and
the repair (the documented commands) loses nothing.

pgoutput decodes a table's rows only while the publication includes it; without these
checks a dropped publication or a re-created table made PostgreSQL skip rows with a line
in its own log only, while the bridge confirmed the slot past them and stayed ready.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from support.bridge import BridgeProcess, MakeBridge, run_cli, start_bridge
from support.outbox import (
    Event,
    bridge_config,
    commit_lsn,
    current_wal_lsn,
    insert_events,
    slot_confirmed_flush_lsn,
    wait_for_ids,
    wait_for_slot_past,
)

from cdc_bridge.dev.nats_server import NatsServer


def execute(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)




def fatal_line(bridge: BridgeProcess) -> str:
    assert bridge.wait_for_exit(15) == 1
    [fatal] = [r for r in bridge.json_records() if r.get("event") == "fatal"]
    return str(fatal["error"])


def events(n: int, tag: str) -> list[Event]:
    return [Event(event_type=f"{tag}{i}") for i in range(n)]


def streaming_with_rows(
    pg_dsn: str, nats: NatsServer, u: str, make_bridge: MakeBridge
) -> tuple[BridgeProcess, list[str]]:
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats.url, u))
    before = insert_events(pg_dsn, events(3, "before"))
    wait_for_ids(nats.url, u.upper(), before)
    return bridge, before


def test_a_publication_dropped_while_streaming_holds_the_slot_and_replay_repairs_it(
    pg_dsn: str, nats_server: NatsServer, unique_name: str, make_bridge: MakeBridge
) -> None:
    u = unique_name
    bridge, before = streaming_with_rows(pg_dsn, nats_server, u, make_bridge)
    execute(pg_dsn, f"DROP PUBLICATION {u}")
    dropped_at = current_wal_lsn(pg_dsn)
    during = insert_events(pg_dsn, events(3, "during"))

    error = fatal_line(bridge)
    assert f"publication {u} was dropped, while the bridge was streaming" in error
    assert "cdc-bridge audit" in error and "--missing" in error
    confirmed = slot_confirmed_flush_lsn(pg_dsn, u)
    assert confirmed is not None and confirmed <= dropped_at

    # A restart does not quietly create it again: the rows skipped meanwhile would be lost.
    again = make_bridge(bridge_config(pg_dsn, nats_server.url, u))
    assert f"publication {u} does not exist, but slot {u} does" in fatal_line(again)

    # The repair the line names: create it, let the bridge catch up, stop it, audit and
    # replay what is missing, start it again.
    execute(pg_dsn, f"CREATE PUBLICATION {u} FOR TABLE public.outbox WITH (publish = 'insert')")
    config = bridge_config(pg_dsn, nats_server.url, u)
    caught_up = start_bridge(make_bridge, config)
    after = insert_events(pg_dsn, events(2, "after"))
    wait_for_ids(nats_server.url, u.upper(), after)
    assert caught_up.terminate() == 0
    audit = run_cli(caught_up.config_path, "audit", "--json")
    assert set(json.loads(audit.stdout)["missing_ids"]) <= set(during)
    replay = run_cli(caught_up.config_path, "outbox", "replay", "--missing", "--yes")
    assert replay.returncode == 0, replay.stderr
    repaired = start_bridge(make_bridge, config)
    later = insert_events(pg_dsn, events(2, "later"))
    every = [*before, *during, *after, *later]
    messages = wait_for_ids(nats_server.url, u.upper(), every)
    assert sorted(m.headers["Nats-Msg-Id"] for m in messages) == sorted(every)  # each once
    assert repaired.terminate() == 0
    assert run_cli(repaired.config_path, "audit").returncode == 0, "audit after the repair"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "DROP TABLE public.outbox; CREATE TABLE public.outbox (LIKE public.outbox_copy);"
            " ALTER PUBLICATION {u} ADD TABLE public.outbox",
            "table public.outbox was dropped and created again",
        ),
        (
            "ALTER TABLE public.outbox RENAME COLUMN event_type TO kind",
            "column 'event_type' is used by the config but is not a column of public.outbox",
        ),
    ],
    ids=["table-recreated", "column-renamed"],
)
def test_a_table_or_column_changed_while_streaming_stops_the_bridge_holding_the_slot(
    pg_dsn: str,
    nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
    change: str,
    expected: str,
) -> None:
    u = unique_name
    execute(pg_dsn, "CREATE TABLE public.outbox_copy (LIKE public.outbox INCLUDING ALL)")
    bridge, _ = streaming_with_rows(pg_dsn, nats_server, u, make_bridge)
    changed_at = current_wal_lsn(pg_dsn)
    execute(pg_dsn, change.format(u=u))
    error = fatal_line(bridge)
    assert expected in error and "while the bridge was streaming" in error
    confirmed = slot_confirmed_flush_lsn(pg_dsn, u)
    assert confirmed is not None and confirmed <= changed_at


def test_the_watch_costs_nothing_when_all_is_well(
    pg_dsn: str, nats_server: NatsServer, unique_name: str, make_bridge: MakeBridge
) -> None:
    """The slot still follows the acks within a few status intervals."""
    u = unique_name
    bridge, _ = streaming_with_rows(pg_dsn, nats_server, u, make_bridge)
    ids = insert_events(pg_dsn, events(5, "more"))
    messages = wait_for_ids(nats_server.url, u.upper(), ids)
    wait_for_slot_past(pg_dsn, u, max(commit_lsn(m) for m in messages), timeout=10)
    assert bridge.running
