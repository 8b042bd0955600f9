"""pgoutput and wal2json, through the whole bridge, publish the very same messages.

One database, one workload, two bridges: one streams through a pgoutput slot, the other
through a wal2json slot, each to its own nats-server with the same stream config. Both
slots decode the same WAL, so commit LSNs, indexes and deterministic ids agree too: every
stored message must be identical, subject, body and header block, except ``Cdc-Source``
(which names the slot).

The workload covers text, uuid, json/jsonb, bytea (all byte values, NULs, empty, 64 KiB,
NULL), numbers, booleans, timestamps, arrays, NULLs, unicode in bodies and headers,
multi-row and interleaved transactions, rollbacks, and logical decoding messages (valid,
invalid, with and without an id, other prefixes, non-transactional). The database sets
``bytea_output = escape`` to prove the wal2json session still reads bytea as hex.

The one known difference, NaN and Infinity in numeric/float columns (wal2json 2.5 writes
them as null), is checked at the end for exactly what it is.
"""

from __future__ import annotations

import json
import os
from typing import Any

import psycopg
import pytest
from support.bridge import MakeBridge
from support.nats_helpers import StreamMessage
from support.outbox import (
    Event,
    bridge_config,
    insert_event,
    insert_events,
    wait_for_ids,
)
from support.plugins import comparable, run_statements, stream_through_both_plugins

from cdc_bridge.dev.nats_server import NatsServer

# Debian packages wal2json for the system PostgreSQL only (support/pg_installs.py)
pytestmark = pytest.mark.needs_wal2json

TABLES = """
CREATE TABLE public.blobs (id text PRIMARY KEY, kind text NOT NULL, payload bytea);
CREATE TABLE public.types (
    id int PRIMARY KEY, n numeric, i int, bi bigint, b boolean, f float8, r real,
    ts timestamptz, t timestamp, d date, j json, jb jsonb, u uuid, arr text[], txt text
);
"""

ENVELOPE = {
    "aggregate_type": "order",
    "aggregate_id": "O-1",
    "event_type": "placed",
    "payload": {"total": 12.50, "items": ["é", "🎫"], "note": "multi\nline"},
}


def parity_config(dsn: str, nats_url: str, name: str, plugin: str) -> dict[str, Any]:
    """The same config for both bridges but for the slot, publication and server."""
    return bridge_config(
        dsn,
        nats_url,
        name,
        postgres={"slot": f"{name}_{plugin}", "publication": f"{name}_{plugin}", "plugin": plugin},
        outbox={
            "table": ["public.outbox", "public.blobs", "public.types"],
            "message_prefixes": ["orders", "billing"],
        },
        routes=[
            {
                "name": "blobs",
                "when": {"table": "public.blobs"},
                "subject": f"{name}.blob.{{kind}}",
            },
            {
                "name": "types",
                "when": {"table": "public.types"},
                "subject": f"{name}.types",
                "payload": "row",
            },
            {
                "name": "orders",
                "when": {"table": "message:orders"},
                "subject": f"{name}.msg.{{aggregate_type}}.{{event_type}}",
                "headers": {"Aggregate-Id": "{aggregate_id}"},
            },
            {"subject": f"{name}.{{aggregate_type}}.{{event_type}}"},
        ],
        dead_letter={"subject": f"{name}.dlq"},
    )


def emit(
    conn: psycopg.Connection[Any], prefix: str, content: object, *, transactional: bool = True
) -> None:
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    conn.execute("SELECT pg_logical_emit_message(%s, %s, %s)", (transactional, prefix, text))


def run_workload(dsn: str) -> str:
    """Everything the parity test publishes; the id of the last event."""
    # 1. outbox rows with unicode and messages in one transaction
    with psycopg.connect(dsn) as conn:
        insert_event(
            conn,
            Event(
                payload={"text": "🎫🚀 👩‍💻 工单 \u202eevil\u202c"},
                headers={"Title": "工单 🎫 ✓", "N": 1},
            ),
        )
        emit(conn, "orders", ENVELOPE)  # no id: "<commit LSN>-1"
        insert_event(conn, Event(event_type="updated", payload="a top-level string"))
        emit(conn, "orders", "{not an envelope")  # dead letter
        emit(conn, "orders", {**ENVELOPE, "payload": None, "aggregate_id": 7})  # dead letter
        insert_event(conn, Event(event_type="closed", payload=[1, 2.5, None, True]))
    # 2. rolled back: nothing of it may appear
    with psycopg.connect(dsn) as conn:
        insert_event(conn, Event(event_type="rolled_back"))
        emit(conn, "orders", {**ENVELOPE, "event_type": "rolled_back"})
        conn.rollback()
    # 3. bytea
    blobs: list[tuple[str, str, bytes | None]] = [
        ("b-all", "allbytes", bytes(range(256))),
        ("b-nul", "nuls", b"\x00" * 16),
        ("b-big", "random", os.urandom(64 * 1024)),
        ("b-empty", "empty", b""),
        ("b-null", "null", None),
    ]
    with psycopg.connect(dsn) as conn:
        for blob in blobs:
            conn.execute("INSERT INTO public.blobs (id, kind, payload) VALUES (%s, %s, %s)", blob)
    # 4. every other type, as whole-row JSON
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO public.types VALUES (1, 12345678901234567890.123400, 42,"
            " 9007199254740993, true, 1.5e300, 0.1, '2024-01-02 03:04:05.123456+00',"
            " '2024-01-02 03:04:05', '2024-02-29', '{ \"a\" :  1,\"a\":2 }',"
            ' \'{"k": 1.0, "e": 1E+2, "s": "ü"}\', \'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\','
            " ARRAY['x', NULL, 'y z'], '')"
        )
        conn.execute(
            "INSERT INTO public.types VALUES (2, 0.00000000000000000001, -1, -1, false,"
            " -1.25e-300, '-0', NULL, NULL, NULL, 'null', 'null', NULL, '{}', 'ünï')"
        )
        conn.execute("INSERT INTO public.types (id) VALUES (3)")
    # 5. ignored: not transactional, another prefix
    with psycopg.connect(dsn, autocommit=True) as conn:
        emit(conn, "orders", {**ENVELOPE, "event_type": "not_transactional"}, transactional=False)
        emit(conn, "unrelated", ENVELOPE)
    # 6. messages with ids and headers, between rows; the catch-all route for billing
    with psycopg.connect(dsn) as conn:
        emit(conn, "orders", {**ENVELOPE, "id": "msg-1", "headers": {"Trace-Id": "t-1", "X": 2}})
        emit(conn, "unrelated", "{}")
        insert_event(conn, Event(aggregate_type="billing", event_type="row"))
        emit(
            conn,
            "billing",
            {
                "aggregate_type": "billing",
                "aggregate_id": "B-1",
                "event_type": "invoiced",
                "payload": "a string payload",
            },
        )
    # 7. interleaved transactions, committed in reverse order
    writers = [psycopg.connect(dsn) for _ in range(2)]
    try:
        for round_no in range(2):
            for k, conn in enumerate(writers):
                insert_event(conn, Event(aggregate_id=f"W{k}-{round_no}"))
                emit(conn, "orders", {**ENVELOPE, "aggregate_id": f"W{k}-{round_no}"})
        writers[1].commit()
        writers[0].commit()
    finally:
        for conn in writers:
            conn.close()
    # 8. the last one: once it is stored, everything before it is
    return insert_events(dsn, [Event(event_type="final")])[0]


def test_both_plugins_publish_identical_messages(
    pg_dsn: str,
    nats_url: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    dsn = pg_dsn
    run_statements(dsn, TABLES, f"ALTER DATABASE db_{unique_name} SET bytea_output = 'escape'")
    servers = {"pgoutput": nats_url, "wal2json": isolated_nats_server.url}
    stream = unique_name.upper()
    stored = stream_through_both_plugins(
        make_bridge,
        lambda url, plugin: parity_config(dsn, url, unique_name, plugin),
        servers,
        stream,
        lambda: run_workload(dsn),
    )
    pgoutput, wal2json = stored["pgoutput"], stored["wal2json"]
    assert [comparable(nats_url, stream, m) for m in pgoutput] == [
        comparable(isolated_nats_server.url, stream, m) for m in wal2json
    ]
    assert [m.headers["Cdc-Source"].rsplit("/", 1)[1] for m in (pgoutput[0], wal2json[0])] == [
        f"{unique_name}_pgoutput",
        f"{unique_name}_wal2json",
    ]
    check_what_was_published(pgoutput, unique_name)
    check_known_difference(dsn, servers, stream, unique_name, len(pgoutput))


def check_what_was_published(messages: list[StreamMessage], name: str) -> None:
    """The parity is not between two empty or equally broken streams."""
    subjects = [m.subject.removeprefix(f"{name}.") for m in messages]
    assert subjects == [
        "ticket.created",
        "msg.order.placed",
        "ticket.updated",
        "dlq",
        "dlq",
        "ticket.closed",
        "blob.allbytes",
        "blob.nuls",
        "blob.random",
        "blob.empty",
        "blob.null",
        "types",
        "types",
        "types",
        "msg.order.placed",
        "billing.row",
        "billing.invoiced",
        "ticket.created",
        "msg.order.placed",
        "ticket.created",
        "msg.order.placed",
        "ticket.created",
        "msg.order.placed",
        "ticket.created",
        "msg.order.placed",
        "ticket.final",
    ]
    by_subject = {m.subject.removeprefix(f"{name}."): m for m in messages}
    first_tx = messages[:6]
    lsn = first_tx[0].headers["Cdc-Lsn"]
    assert [m.headers["Cdc-Index"] for m in first_tx] == ["0", "1", "2", "3", "4", "5"]
    assert first_tx[1].headers["Nats-Msg-Id"] == f"{lsn}-1"
    assert first_tx[1].headers["Cdc-Table"] == "message:orders"
    assert first_tx[1].headers["Aggregate-Id"] == "O-1"
    assert json.loads(first_tx[1].data) == ENVELOPE["payload"]
    assert first_tx[3].headers["Nats-Msg-Id"] == f"{lsn}-3"
    assert first_tx[3].data == b"{not an envelope"
    assert "invalid message envelope" in first_tx[3].headers["Cdc-Error"]
    assert first_tx[3].headers["Cdc-Subject"] == "(no route)"
    assert "'aggregate_id' must be a string" in first_tx[4].headers["Cdc-Error"]
    assert json.loads(messages[2].data) == "a top-level string"
    assert by_subject["blob.allbytes"].data == bytes(range(256))
    assert by_subject["blob.nuls"].data == b"\x00" * 16
    assert len(by_subject["blob.random"].data) == 64 * 1024
    assert by_subject["blob.empty"].data == b"" and by_subject["blob.null"].data == b""
    types = [json.loads(m.data) for m in messages[11:14]]
    assert types[0]["n"] == "12345678901234567890.123400"
    assert types[0]["bi"] == "9007199254740993" and types[0]["b"] == "t"
    assert types[0]["j"] == '{ "a" :  1,"a":2 }'
    assert types[0]["jb"] == '{"e": 100, "k": 1.0, "s": "ü"}'
    assert types[0]["arr"] == '{x,NULL,"y z"}'
    assert types[1]["r"] == "-0" and types[1]["b"] == "f"
    assert all(v is None for k, v in types[2].items() if k != "id")
    with_id = messages[14]
    assert with_id.headers["Nats-Msg-Id"] == "msg-1"
    assert with_id.headers["Trace-Id"] == "t-1" and "X" not in with_id.headers
    assert messages[16].data == b'"a string payload"'
    assert messages[16].headers["Cdc-Table"] == "message:billing"


def check_known_difference(
    dsn: str, servers: dict[str, str], stream: str, name: str, already: int
) -> None:
    """NaN and Infinity: pgoutput gives PostgreSQL's text, wal2json 2.5 gives null."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO public.types (id, n, f, r) VALUES (4, 'NaN', 'Infinity', '-Infinity')"
        )
    rows = {}
    for plugin, url in servers.items():
        messages = wait_for_ids(url, stream, ["4"], timeout=30)
        assert len(messages) == already + 1
        rows[plugin] = json.loads(messages[-1].data)
    assert {k: rows["pgoutput"][k] for k in ("n", "f", "r")} == {
        "n": "NaN",
        "f": "Infinity",
        "r": "-Infinity",
    }
    assert {k: rows["wal2json"][k] for k in ("n", "f", "r")} == {"n": None, "f": None, "r": None}
    rest = rows["pgoutput"].keys() - {"n", "f", "r"}
    assert {k: rows["pgoutput"][k] for k in rest} == {k: rows["wal2json"][k] for k in rest}
