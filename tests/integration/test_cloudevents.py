"""CloudEvents end to end: rows through a real PostgreSQL and nats-server, read back with
nats-py and parsed by the CloudEvents Python SDK (``cloudevents`` on PyPI, written by the
CloudEvents project, not here), in both content modes of the NATS binding."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary, from_structured
from cloudevents.core.formats.json import JSONFormat
from support.bridge import MakeBridge, log_event
from support.nats_helpers import StreamMessage
from support.outbox import Event, bridge_config, insert_event, wait_for_ids
from support.plugins import PLUGINS, STARTUP_TIMEOUT, run_statements

BRIDGE_HEADERS = ("Nats-Msg-Id", "Cdc-Lsn", "Cdc-Index", "Cdc-Table", "Cdc-Source")


def cloudevents_config(dsn: str, nats_url: str, name: str, plugin: str) -> dict[str, Any]:
    return bridge_config(
        dsn,
        nats_url,
        name,
        postgres={"plugin": plugin},
        outbox={"format": "cloudevents", "change_tables": ["public.tickets"]},
        routes=[
            {  # binary mode (outbox.format), default attributes but one extension
                "name": "orders",
                "when": {"aggregate_type": "order"},
                "subject": f"{name}.order.{{event_type}}",
                "headers": {"Route": "orders"},
                "cloudevents": {"extensions": {"tenant": "{aggregate_id}"}},
            },
            {  # structured mode, every attribute from a template
                "name": "tickets",
                "when": {"aggregate_type": "ticket"},
                "subject": f"{name}.ticket.{{event_type}}",
                "format": "cloudevents-structured",
                "cloudevents": {
                    "source": "/helpdesk/{aggregate_type}",
                    "type": "com.example.ticket.{event_type}",
                    "subject": "ticket/{aggregate_id}",
                    "extensions": {"tenant": "acme"},
                },
            },
            {  # an empty type: no valid CloudEvent, so a dead letter
                "name": "untyped",
                "when": {"aggregate_type": "untyped"},
                "subject": f"{name}.untyped",
                "cloudevents": {"type": "{aggregate_id}"},
            },
            {  # a change of a change table, in Debezium's envelope, structured mode
                "name": "changes",
                "when": {"table": "public.tickets"},
                "subject": f"{name}.cdc.{{action}}",
                "payload": "debezium",
                "format": "cloudevents-structured",
            },
        ],
        dead_letter={"subject": f"{name}.dlq"},
    )


def as_http(message: StreamMessage) -> HTTPMessage:
    """The NATS binding's headers are HTTP's (``ce-`` prefixed in binary mode, content-type
    for the data's media type), so the SDK's HTTP message reads them as they are."""
    return HTTPMessage(headers=dict(message.headers), body=message.data)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_the_cloudevents_sdk_reads_both_modes(
    plugin: str, pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    """What the SDK checks: it parses each stored message (binary: ``from_binary`` over the
    ``ce-*`` and content-type headers, percent-decoding the values and parsing ``time``;
    structured: ``from_structured`` over the JSON body) into a CloudEvent 1.0, validating
    the required attributes (non-empty id, source, type; specversion), the types of the
    optional ones (time a timestamp, subject and datacontenttype strings) and the
    extension names (a-z, 0-9), and decodes the data by its datacontenttype.

    What the test checks: every attribute's value against the row (id = Nats-Msg-Id, the
    templates, time = created_at, cdclsn/cdcindex = Cdc-Lsn/Cdc-Index), the data, that the
    bridge's own headers and the route's header are still on every message, the
    content-type of structured messages, and that a row with an empty type is a dead
    letter instead of an event.
    """
    run_statements(pg_dsn, "CREATE TABLE public.tickets (id int PRIMARY KEY, title text)")
    bridge = make_bridge(cloudevents_config(pg_dsn, nats_url, unique_name, plugin))
    bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
    order = Event("order", "O 1/ü%", "placed", {"total": 12.5, "note": "Café ☕"})
    ticket = Event("ticket", "T-7", "opened", {"title": "Printer jam"})
    untyped = Event("untyped", "", "lost")
    with psycopg.connect(pg_dsn) as conn:
        ids = [insert_event(conn, e) for e in (order, ticket, untyped)]
        conn.execute("INSERT INTO tickets VALUES (7, 'Printer jam')")
        stored = conn.execute("SELECT id::text, created_at, payload::text FROM outbox").fetchall()
        created = {row_id: at for row_id, at, _ in stored}
        payload = {row_id: text for row_id, _, text in stored}
    final = Event("order", "O-2", "final")
    with psycopg.connect(pg_dsn) as conn:
        insert_event(conn, final)
    messages = wait_for_ids(nats_url, unique_name.upper(), [*ids, final.id])
    by_subject = {m.subject.removeprefix(f"{unique_name}."): m for m in messages}
    for message in messages:
        assert all(name in message.headers for name in BRIDGE_HEADERS), message.headers

    database = str(psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"])
    binary = by_subject["order.placed"]
    assert binary.data == payload[order.id].encode()  # the body: the jsonb, unchanged
    check_binary(binary, order, created[order.id], database)
    structured = by_subject["ticket.opened"]
    check_structured(structured, ticket, created[ticket.id])

    dead = by_subject["dlq"]
    assert dead.headers["Nats-Msg-Id"] == untyped.id
    assert dead.headers["Cdc-Error"] == (
        "not a valid CloudEvent: the CloudEvents type renders empty (cloudevents.type)"
    )
    assert not any(name.startswith("ce-") for name in dead.headers)

    change = by_subject["cdc.I"]
    event = from_structured(as_http(change), JSONFormat())
    assert event.get_type() == "public.tickets.I"
    assert event.get_source() == f"/cdc-bridge/{database}/public.tickets"
    assert event.get_id() == change.headers["Nats-Msg-Id"]
    assert event.get_time() is not None  # no created_at: the commit time
    data = event.get_data()
    assert isinstance(data, dict) and data["op"] == "c"
    assert data["after"] == {"id": 7, "title": "Printer jam"}


def check_binary(message: StreamMessage, row: Event, created_at: datetime, database: str) -> None:
    headers = message.headers
    assert headers["content-type"] == "application/json"
    assert headers["ce-tenant"] == "O%201/%C3%BC%25"  # percent-encoded on the wire
    assert headers["Route"] == "orders"
    event = from_binary(as_http(message), JSONFormat())
    check_attributes(event, message, row, created_at)
    assert event.get_source() == f"/cdc-bridge/{database}/public.outbox"
    assert event.get_type() == "placed"
    assert event.get_subject() == "O 1/ü%"
    assert event.get_extension("tenant") == "O 1/ü%"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data() == {"total": 12.5, "note": "Café ☕"}


def check_structured(message: StreamMessage, row: Event, created_at: datetime) -> None:
    assert message.headers["content-type"] == "application/cloudevents+json"
    assert not any(name.startswith("ce-") for name in message.headers)
    event = from_structured(as_http(message), JSONFormat())
    check_attributes(event, message, row, created_at)
    assert event.get_source() == "/helpdesk/ticket"
    assert event.get_type() == "com.example.ticket.opened"
    assert event.get_subject() == "ticket/T-7"
    assert event.get_extension("tenant") == "acme"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data() == {"title": "Printer jam"}


def check_attributes(event: Any, message: StreamMessage, row: Event, created_at: datetime) -> None:
    assert event.get_specversion() == "1.0"
    assert event.get_id() == row.id == message.headers["Nats-Msg-Id"]
    assert event.get_time() == created_at
    assert event.get_extension("cdclsn") == message.headers["Cdc-Lsn"]
    assert event.get_extension("cdcindex") == message.headers["Cdc-Index"]
