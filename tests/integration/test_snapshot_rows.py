"""Snapshot rows (issue 32): the bridge turns the messages `cdc-bridge snapshot` writes
into R change events, on both plugins, built exactly as the table's inserts are.

The rows are written here with the SQL of core/snapshots.py's format (one message per
row, in a transaction that holds the rows FOR SHARE), so these tests pin the bridge's
side of the contract; the command's own tests pin the other side.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from support.bridge import MakeBridge
from support.change_tables import BIG, TICKETS, change_config, debezium_config
from support.outbox import Event, insert_event
from support.plugins import PLUGINS, comparable, run_statements, stream_through_both_plugins

from cdc_bridge.core.snapshots import SNAPSHOT_PREFIX, snapshot_msg_id
from cdc_bridge.dev.nats_server import NatsServer

SNAPSHOT_ID = "tickets-test"


def write_snapshot_rows(
    conn: psycopg.Connection[Any], table: str, snapshot_id: str = SNAPSHOT_ID
) -> None:
    """Every row of ``table`` (key: its primary key) as one snapshot message each."""
    schema, name = table.split(".")
    columns = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), atttypid::int FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " AND attgenerated = '' ORDER BY attnum",
        [table],
    ).fetchall()
    key = [
        k
        for (k,) in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = %s::regclass AND i.indisprimary",
            [table],
        )
    ]
    # The type's output function's text, as pgoutput sends it (`::text` differs: a
    # boolean casts to 'true', its output is 't'); num_nulls tells a NULL column from a
    # composite value whose fields are all NULL.
    described = ", ".join(
        f"json_build_array('{n}', '{t}', {oid}, CASE WHEN num_nulls(t.\"{n}\") = 1 THEN NULL"
        f" ELSE format('%%s', t.\"{n}\") END)"
        for n, t, oid in columns
    )
    keys = ", ".join(f"'{k}'" for k in key)
    conn.execute(
        f"SELECT pg_logical_emit_message(true, '{SNAPSHOT_PREFIX}', json_build_object("
        f"'v', 1, 'snapshot', %s::text, 'schema', '{schema}', 'table', '{name}',"
        f" 'key', json_build_array({keys}), 'columns', json_build_array({described}))::text)"
        f" FROM (SELECT * FROM {table} ORDER BY {', '.join(key)} FOR SHARE) t",
        [snapshot_id],
    )


def insert_then_snapshot(dsn: str) -> str:
    """Three rows inserted (I), then read by a snapshot (R); the last outbox id."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO tickets VALUES (1, 'Printer jam', 'open', 2, 12.5, false, '\\x00ff',"
            f" {BIG})"
        )
        conn.execute("INSERT INTO tickets (id, title, estimate) VALUES (3, 'Café ☕', 'NaN')")
        conn.execute("INSERT INTO tickets (id, title, done) VALUES (20, 'Toner', true)")
    with psycopg.connect(dsn) as conn:
        write_snapshot_rows(conn, "public.tickets")
        # a snapshot row of a table this bridge does not serve: not published
        conn.execute("CREATE TABLE IF NOT EXISTS public.others (id int PRIMARY KEY)")
        conn.execute("INSERT INTO public.others VALUES (1)")
    with psycopg.connect(dsn) as conn:
        write_snapshot_rows(conn, "public.others")
        return insert_event(conn, Event(aggregate_id="T-1", event_type="after"))


@pytest.mark.needs_wal2json
def test_snapshot_rows_are_the_inserts_with_action_r_on_both_plugins(
    pg_dsn: str,
    nats_url: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    run_statements(pg_dsn, TICKETS)
    servers = {"pgoutput": nats_url, "wal2json": isolated_nats_server.url}
    stream = unique_name.upper()
    stored = stream_through_both_plugins(
        make_bridge,
        lambda url, plugin: change_config(pg_dsn, url, unique_name, plugin),
        servers,
        stream,
        lambda: insert_then_snapshot(pg_dsn),
    )
    pgoutput, wal2json = stored["pgoutput"], stored["wal2json"]
    assert [comparable(nats_url, stream, m) for m in pgoutput] == [
        comparable(isolated_nats_server.url, stream, m) for m in wal2json
    ]
    subjects = [m.subject.removeprefix(f"{unique_name}.") for m in pgoutput]
    assert subjects == ["tickets.I"] * 3 + ["tickets.R"] * 3 + ["ticket.after"]
    inserts, reads = pgoutput[:3], pgoutput[3:6]
    for inserted, read in zip(inserts, reads, strict=True):
        body = json.loads(read.data)
        assert body["action"] == "R" and "identity" not in body
        assert {**body, "action": "I"} == json.loads(inserted.data)
    ids = [m.headers["Nats-Msg-Id"] for m in reads]
    assert ids == [snapshot_msg_id(SNAPSHOT_ID, "public.tickets", (k,)) for k in ("1", "3", "20")]
    # one source transaction: one Cdc-Lsn, the last one marked
    assert len({m.headers["Cdc-Lsn"] for m in reads}) == 1
    assert [m.headers.get("Cdc-Tx-Last") for m in reads] == [None, None, "true"]


def test_snapshot_rows_in_debezium_envelopes_are_op_r(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    run_statements(pg_dsn, TICKETS)
    stream = unique_name.upper()
    stored = stream_through_both_plugins(
        make_bridge,
        lambda url, plugin: debezium_config(pg_dsn, url, unique_name, plugin),
        {"pgoutput": nats_url},
        stream,
        lambda: insert_then_snapshot(pg_dsn),
    )["pgoutput"]
    envelopes = [json.loads(m.data) for m in stored[:6]]
    assert [e["op"] for e in envelopes] == ["c"] * 3 + ["r"] * 3
    assert [e["source"]["snapshot"] for e in envelopes] == ["false"] * 3 + ["true"] * 3
    for created, read in zip(envelopes[:3], envelopes[3:], strict=True):
        assert read["before"] is None and read["after"] == created["after"]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_unreadable_snapshot_row_is_dead_lettered(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge, plugin: str
) -> None:
    run_statements(pg_dsn, TICKETS)
    stream = unique_name.upper()

    def workload() -> str:
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(
                "SELECT pg_logical_emit_message(true, %s, %s)",
                [SNAPSHOT_PREFIX, '{"v": 1, "snapshot": "s1"}'],
            )
            return insert_event(conn, Event(aggregate_id="T-1", event_type="after"))

    stored = stream_through_both_plugins(
        make_bridge,
        lambda url, p: change_config(pg_dsn, url, unique_name, p),
        {plugin: nats_url},
        stream,
        workload,
    )[plugin]
    dead, after = stored
    assert dead.subject == f"{unique_name}.dlq"
    assert dead.data == b'{"v": 1, "snapshot": "s1"}'
    assert "snapshot row has no 'schema' string" in dead.headers["Cdc-Error"]
    assert after.subject == f"{unique_name}.ticket.after"
