"""cdc_bridge.outbox against the session PostgreSQL: what emit writes, and in which
transaction.

Logical messages leave no row to look at, so those tests read them back from a pgoutput
slot with ``pg_logical_slot_peek_binary_changes`` and the bridge's own decoder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from psycopg import sql
from support.bridge import MakeBridge, log_event, parse_json_line, start_bridge
from support.outbox import Event as Row
from support.outbox import bridge_config, insert_events, wait_for_ids

from cdc_bridge.core.changes import LogicalMessage
from cdc_bridge.dev.devstack import dev_schema_sql
from cdc_bridge.outbox import (
    Event,
    OutboxUsageError,
    emit,
    emit_async,
    emit_many,
    emit_many_async,
)
from cdc_bridge.routing.messages import EnvelopeColumns, message_event
from cdc_bridge.source.decoding.pgoutput import PgoutputDecoder

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SPAN = SpanContext(  # the span TRACEPARENT describes
    trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
    span_id=0x00F067AA0BA902B7,
    is_remote=False,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)


def outbox_rows(dsn: str, table: str = "public.outbox") -> list[dict[str, Any]]:
    schema, _, name = table.partition(".")
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            sql.SQL(
                "SELECT * FROM {} ORDER BY created_at, ctid"  # ctid: insertion order here
            ).format(sql.Identifier(schema, name))
        ).fetchall()


def emit_ticket(conn: Any, **overrides: Any) -> uuid.UUID:
    fields: dict[str, Any] = {
        "aggregate_type": "ticket",
        "aggregate_id": "T-1",
        "event_type": "created",
        "payload": {"title": "printer on fire"},
        **overrides,
    }
    return emit(conn, **fields)


# --- table mode, sync ---------------------------------------------------------------------


def test_emit_inserts_one_row_with_the_given_values(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        event_id = emit(
            conn,
            aggregate_type="ticket",
            aggregate_id="T-7",
            event_type="ticket:created",
            payload={"title": "Ünïcode ☃", "priority": 2, "tags": ["a", "b"], "x": None},
            headers={"Source": "tests"},
        )
    [row] = outbox_rows(pg_dsn)
    assert isinstance(event_id, uuid.UUID)
    assert row["id"] == event_id
    assert (row["aggregate_type"], row["aggregate_id"], row["event_type"]) == (
        "ticket",
        "T-7",
        "ticket:created",
    )
    assert row["payload"] == {"title": "Ünïcode ☃", "priority": 2, "tags": ["a", "b"], "x": None}
    assert row["headers"] == {"Source": "tests"}


@pytest.mark.parametrize(
    "payload", ["just a string", 42, 1.5, True, None, [1, "two"], {"nested": {"deep": [{}]}}]
)
def test_any_json_value_is_a_payload(pg_dsn: str, payload: object) -> None:
    with psycopg.connect(pg_dsn) as conn:
        emit_ticket(conn, payload=payload)
    [row] = outbox_rows(pg_dsn)
    assert row["payload"] == payload
    assert row["headers"] is None


def test_the_callers_id_is_used_and_returned(pg_dsn: str) -> None:
    chosen = uuid.uuid4()
    with psycopg.connect(pg_dsn) as conn:
        assert emit_ticket(conn, id=chosen) == chosen
        assert emit_ticket(conn, id=str(uuid.UUID(int=7)).upper()) == uuid.UUID(int=7)
    assert {row["id"] for row in outbox_rows(pg_dsn)} == {chosen, uuid.UUID(int=7)}


def test_an_id_that_is_not_a_uuid_is_refused_before_anything_is_sent(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn, pytest.raises(ValueError, match="UUID"):
        emit_ticket(conn, id="order-42")
    assert outbox_rows(pg_dsn) == []


def test_nan_is_not_json_and_is_refused(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn, pytest.raises(ValueError, match="not JSON"):
        emit_ticket(conn, payload={"ratio": float("nan")})
    assert outbox_rows(pg_dsn) == []


def test_rollback_removes_the_event_with_the_business_write(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE tickets (id text PRIMARY KEY, title text NOT NULL)")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO tickets VALUES ('T-1', 'kept?')")
        emit_ticket(conn)
        conn.rollback()
        conn.execute("INSERT INTO tickets VALUES ('T-2', 'kept')")
        kept = emit_ticket(conn, aggregate_id="T-2")
    with psycopg.connect(pg_dsn) as conn:
        titles = conn.execute("SELECT id FROM tickets").fetchall()
    assert titles == [("T-2",)]
    assert [row["id"] for row in outbox_rows(pg_dsn)] == [kept]


def test_emit_joins_a_transaction_block_and_a_savepoint_rollback(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with conn.transaction():
            kept = emit_ticket(conn)
            with conn.transaction(force_rollback=True):  # a savepoint, rolled back
                emit_ticket(conn, event_type="rolled_back")
        with pytest.raises(ZeroDivisionError), conn.transaction():
            emit_ticket(conn, event_type="rolled_back")
            raise ZeroDivisionError
    assert [row["id"] for row in outbox_rows(pg_dsn)] == [kept]


def test_autocommit_without_a_transaction_is_refused(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(OutboxUsageError, match="autocommit"):
            emit_ticket(conn)
        with pytest.raises(OutboxUsageError, match="autocommit"):
            emit_many(conn, [Event("ticket", "T-1", "created", {})])
    assert outbox_rows(pg_dsn) == []


def test_emit_never_commits(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        emit_ticket(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with psycopg.connect(pg_dsn) as other:  # another session sees nothing yet
            assert other.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        conn.rollback()
    assert outbox_rows(pg_dsn) == []


def test_a_cursor_works_and_keeps_its_own_results(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT n FROM generate_series(1, 3) n")
        event_id = emit_ticket(cursor)
        assert cursor.fetchall() == [(1,), (2,), (3,)]
    assert [row["id"] for row in outbox_rows(pg_dsn)] == [event_id]


def test_bytes_go_to_a_bytea_payload_column_of_a_table_with_an_odd_name(pg_dsn: str) -> None:
    # A name that needs quoting in both parts, and no headers column at all.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "Odd Schema"')
        conn.execute(
            'CREATE TABLE "Odd Schema"."out""box" (id uuid PRIMARY KEY, aggregate_type text,'
            " aggregate_id text, event_type text, payload bytea,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
    table = 'Odd Schema.out"box'
    raw = bytes(range(256))
    with psycopg.connect(pg_dsn) as conn:
        event_id = emit_ticket(conn, payload=raw, table=table)
        emit_ticket(conn, payload=bytearray(b"\x00\xff"), table=table)
    rows = outbox_rows(pg_dsn, table)
    assert [(row["id"], bytes(row["payload"])) for row in rows[:1]] == [(event_id, raw)]
    assert bytes(rows[1]["payload"]) == b"\x00\xff"


@pytest.mark.parametrize("table", ["", ".outbox", "public.", "a.b.c"])
def test_a_malformed_table_name_is_refused(pg_dsn: str, table: str) -> None:
    with psycopg.connect(pg_dsn) as conn, pytest.raises(ValueError, match="table"):
        emit_ticket(conn, table=table)


async def test_the_wrong_flavour_of_connection_is_a_clear_type_error(pg_dsn: str) -> None:
    with pytest.raises(TypeError, match="not object"):
        emit_ticket(object())
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        with pytest.raises(TypeError, match=r"use emit_async"):
            emit_ticket(conn)


# --- emit_many ----------------------------------------------------------------------------


def test_emit_many_writes_events_and_mappings_in_order(pg_dsn: str) -> None:
    events: list[Event | dict[str, Any]] = [
        Event("ticket", "T-1", "created", {"n": 1}),
        {
            "aggregate_type": "ticket",
            "aggregate_id": "T-1",
            "event_type": "updated",
            "payload": {"n": 2},
            "headers": {"Actor": "ana"},
        },
        Event("ticket", "T-2", "created", {"n": 3}, id=uuid.UUID(int=3)),
    ]
    with psycopg.connect(pg_dsn) as conn:
        ids = emit_many(conn, events)
    rows = outbox_rows(pg_dsn)
    assert [row["id"] for row in rows] == ids
    assert ids[2] == uuid.UUID(int=3)
    assert [row["payload"] for row in rows] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [row["headers"] for row in rows] == [None, {"Actor": "ana"}, None]


def test_emit_many_of_nothing_sends_nothing(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # would refuse if it sent
        assert emit_many(conn, iter([])) == []


def test_emit_many_refuses_an_unknown_key_before_sending(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn, pytest.raises(TypeError, match="aggregate"):
        emit_many(
            conn,
            [
                Event("ticket", "T-1", "created", {}),
                {
                    "aggregate_typ": "ticket",
                    "aggregate_id": "T-1",
                    "event_type": "x",
                    "payload": {},
                },
            ],
        )
    assert outbox_rows(pg_dsn) == []


def test_emit_many_in_a_rolled_back_transaction_leaves_nothing(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        emit_many(conn, [Event("ticket", f"T-{n}", "created", {}) for n in range(50)])
        conn.rollback()
    assert outbox_rows(pg_dsn) == []


# --- async ----------------------------------------------------------------------------------


async def test_emit_async_on_a_connection_and_a_cursor(pg_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        first = await emit_async(
            conn,
            aggregate_type="ticket",
            aggregate_id="T-1",
            event_type="created",
            payload={"n": 1},
            traceparent=TRACEPARENT,
        )
        async with conn.cursor() as cursor:
            second = await emit_async(
                cursor,
                aggregate_type="ticket",
                aggregate_id="T-1",
                event_type="updated",
                payload={"n": 2},
            )
        await conn.rollback()
        kept = await emit_many_async(
            conn,
            [
                Event("ticket", "T-9", "created", {"n": 9}),
                {
                    "aggregate_type": "ticket",
                    "aggregate_id": "T-9",
                    "event_type": "closed",
                    "payload": None,
                },
            ],
        )
    assert first != second
    rows = outbox_rows(pg_dsn)
    assert [row["id"] for row in rows] == kept
    assert [row["payload"] for row in rows] == [{"n": 9}, None]


async def test_emit_async_refuses_autocommit_and_sync_connections(pg_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(OutboxUsageError):
            await emit_async(conn, aggregate_type="t", aggregate_id="1", event_type="e", payload={})
        async with conn.transaction():
            event_id = await emit_async(
                conn, aggregate_type="t", aggregate_id="1", event_type="e", payload={}
            )
    with psycopg.connect(pg_dsn) as sync_conn, pytest.raises(TypeError, match="use emit"):
        await emit_async(
            sync_conn,  # type: ignore[arg-type]
            aggregate_type="t",
            aggregate_id="1",
            event_type="e",
            payload={},
        )
    assert [row["id"] for row in outbox_rows(pg_dsn)] == [event_id]


# --- trace propagation ----------------------------------------------------------------------


def test_traceparent_lands_in_the_headers_column(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        emit_ticket(conn, traceparent=TRACEPARENT)
        emit_ticket(conn, traceparent=TRACEPARENT, headers={"Source": "tests"})
        # The caller's own header wins over the argument
        emit_ticket(conn, traceparent=TRACEPARENT, headers={"traceparent": "mine"})
    assert [row["headers"] for row in outbox_rows(pg_dsn)] == [
        {"traceparent": TRACEPARENT},
        {"traceparent": TRACEPARENT, "Source": "tests"},
        {"traceparent": "mine"},
    ]


@pytest.mark.parametrize(
    "bad", ["", "00-abc-def-01", TRACEPARENT.upper(), "ff" + TRACEPARENT[2:], TRACEPARENT + "\r\n"]
)
def test_a_malformed_traceparent_is_refused(pg_dsn: str, bad: str) -> None:
    with psycopg.connect(pg_dsn) as conn, pytest.raises(ValueError, match="traceparent"):
        emit_ticket(conn, traceparent=bad)


def test_a_jetstream_header_is_refused_before_it_becomes_a_poison_row(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn, pytest.raises(ValueError, match="'Nats-TTL'"):
        emit_ticket(conn, headers={"Nats-TTL": "1h"})
    assert outbox_rows(pg_dsn) == []


def test_the_current_opentelemetry_span_is_propagated(pg_dsn: str) -> None:
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(SPAN)))
    try:
        with psycopg.connect(pg_dsn) as conn:
            emit_ticket(conn)
            emit_many(conn, [Event("ticket", "T-2", "created", {}, headers={"A": "b"})])
    finally:
        otel_context.detach(token)
    with psycopg.connect(pg_dsn) as conn:
        emit_ticket(conn, aggregate_id="T-3")  # no span now: no header
    assert [row["headers"] for row in outbox_rows(pg_dsn)] == [
        {"traceparent": TRACEPARENT},
        {"traceparent": TRACEPARENT, "A": "b"},
        None,
    ]


def test_without_opentelemetry_installed_no_trace_header_is_added(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(SPAN)))
    monkeypatch.setitem(sys.modules, "opentelemetry.propagate", None)  # its import fails
    try:
        with psycopg.connect(pg_dsn) as conn:
            emit_ticket(conn)  # a span is active, but there is no propagator to ask
            emit_ticket(conn, traceparent=TRACEPARENT)  # the argument needs no OpenTelemetry
    finally:
        otel_context.detach(token)
    assert [row["headers"] for row in outbox_rows(pg_dsn)] == [None, {"traceparent": TRACEPARENT}]


# --- message mode ---------------------------------------------------------------------------


def create_pgoutput_slot(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE public.outbox").format(sql.Identifier(name))
        )
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def peek_messages(dsn: str, slot: str) -> list[LogicalMessage]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        payloads = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
            (slot, slot),
        ).fetchall()
    decoder = PgoutputDecoder()
    changes = [decoder.decode(bytes(payload)) for (payload,) in payloads]
    return [change for change in changes if isinstance(change, LogicalMessage)]


def test_message_mode_emits_a_transactional_envelope_and_no_row(
    pg_dsn: str, unique_name: str
) -> None:
    create_pgoutput_slot(pg_dsn, unique_name)
    with psycopg.connect(pg_dsn) as conn:
        event_id = emit_ticket(
            conn,
            via="message",
            prefix="tickets",
            traceparent=TRACEPARENT,
            headers={"Source": "tests"},
            payload={"title": "Ünïcode", "n": 1.5},
        )
        rest = emit_many(
            conn,
            [
                Event("ticket", "T-1", "updated", "a string payload"),
                Event("ticket", "T-1", "closed", None),
            ],
            via="message",
            prefix="tickets",
        )
    with psycopg.connect(pg_dsn) as conn:
        emit_ticket(conn, via="message", prefix="tickets", event_type="rolled_back")
        conn.rollback()
    with psycopg.connect(pg_dsn) as conn, conn.transaction():  # committed, but not its savepoint
        with conn.transaction(force_rollback=True):
            emit_ticket(conn, via="message", prefix="tickets", event_type="rolled_back")
        conn.execute("SELECT 1")

    assert outbox_rows(pg_dsn) == []
    messages = peek_messages(pg_dsn, unique_name)
    assert [(m.prefix, m.transactional) for m in messages] == [("tickets", True)] * 3
    events = [
        message_event(m.prefix, m.content, default_id="unused", columns=EnvelopeColumns())
        for m in messages
    ]
    assert [event.problem for event in events] == [None, None, None]  # valid envelopes
    assert [event.msg_id for event in events] == [str(event_id), *map(str, rest)]
    first = events[0].row
    assert (first["aggregate_type"], first["aggregate_id"], first["event_type"]) == (
        "ticket",
        "T-1",
        "created",
    )
    assert json.loads(str(first["payload"])) == {"title": "Ünïcode", "n": 1.5}
    assert json.loads(str(first["headers"])) == {"traceparent": TRACEPARENT, "Source": "tests"}
    assert [events[1].row["payload"], events[2].row["payload"]] == ['"a string payload"', "null"]


async def test_message_mode_async(pg_dsn: str, unique_name: str) -> None:
    create_pgoutput_slot(pg_dsn, unique_name)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        event_id = await emit_async(
            conn,
            aggregate_type="ticket",
            aggregate_id="T-1",
            event_type="created",
            payload={},
            via="message",
        )
    [message] = peek_messages(pg_dsn, unique_name)
    assert message.prefix == "outbox"  # the default prefix
    assert json.loads(message.content)["id"] == str(event_id)


def test_message_mode_refuses_bytes_and_an_empty_prefix(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        with pytest.raises(TypeError, match="bytes"):
            emit_ticket(conn, via="message", payload=b"raw")
        with pytest.raises(ValueError, match="prefix"):
            emit_ticket(conn, via="message", prefix="")
        with pytest.raises(ValueError, match="via"):
            emit_ticket(conn, via="carrier pigeon")


# --- the README's example, as written -------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(language: str, after: str) -> str:
    """The first ```language block of README.md that follows the text ``after``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start : text.index("```", start)]


def test_the_readme_emit_example_runs_on_the_dev_schema_and_lands_on_its_subject(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge, tmp_path: Path
) -> None:
    """README's emit() snippet and its minimal config, verbatim, on `make dev`'s schema."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(dev_schema_sql())
    config: dict[str, Any] = yaml.safe_load(readme_block("yaml", "A minimal config"))
    config["postgres"].update(dsn=pg_dsn, slot=unique_name, publication=unique_name)
    config["nats"]["servers"] = [nats_url]
    start_bridge(make_bridge, config)

    snippet = readme_block("python", "## Using it in your service")
    subprocess.run(
        [sys.executable, "-c", snippet], env={**os.environ, "DSN": pg_dsn}, cwd=tmp_path, check=True
    )

    with psycopg.connect(pg_dsn) as conn:
        ticket_id, title = conn.execute("SELECT id, title FROM tickets").fetchone() or ("", "")
        row = conn.execute("SELECT id::text, aggregate_id FROM outbox").fetchone()
    assert row is not None and row[1] == ticket_id
    [message] = wait_for_ids(nats_url, config["nats"]["stream"]["name"], [row[0]])
    assert message.subject == "events.ticket.created"
    assert json.loads(message.data) == {"id": ticket_id, "title": title}


def test_a_message_of_a_prefix_the_bridge_does_not_publish_is_warned_of_once_and_counted(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    """emit(via="message") beside a bridge without outbox.message_prefixes: the slot
    moves past the message, and the operator hears of it (once) and can count them."""
    config = bridge_config(pg_dsn, nats_url, unique_name)  # no message_prefixes
    bridge = start_bridge(make_bridge, config)
    prefix = f"{unique_name}.events"  # the session's server is shared: a prefix of our own
    for event_type in ("created", "closed"):
        with psycopg.connect(pg_dsn) as conn:
            emit_ticket(conn, via="message", prefix=prefix, event_type=event_type)
    # A row after them: once it is published, the bridge has read past both messages.
    wait_for_ids(nats_url, config["nats"]["stream"]["name"], insert_events(pg_dsn, [Row()]))

    bridge.wait_for_log(log_event("logical_message_ignored", prefix=prefix))
    warned = [
        record
        for line in bridge.lines
        if (record := parse_json_line(line)) is not None
        and record.get("event") == "logical_message_ignored"
        and record.get("prefix") == prefix
    ]
    assert len(warned) == 1, warned
    assert warned[0]["level"] == "warning"
    assert "outbox.message_prefixes" in warned[0]["error"] and prefix in warned[0]["error"]

    with urllib.request.urlopen(f"{bridge.http_url()}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert f'cdc_bridge_logical_messages_ignored_total{{prefix="{prefix}"}} 2.0' in metrics
    assert bridge.terminate() == 0
