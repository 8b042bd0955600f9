"""CloudEvents formats and the Debezium envelope, router and finish step (pure)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.problems import ConfigError
from cdc_bridge.core.changes import ChangeColumn, ColumnValue, EventPosition, RowChange
from cdc_bridge.core.headers import parse_header_lines
from cdc_bridge.routing.cloudevents import header_value
from cdc_bridge.routing.router import Outbound, Poison, Router

HEAD = """\
postgres: {dsn: "postgresql://app@127.0.0.1/shop"}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
dead_letter: {subject: events.dlq}
"""
# 2026-12-01 22:40:33.123456 UTC, in microseconds since 2000-01-01
COMMIT_TIME = 849_480_033_123_456
AT = EventPosition(lsn=0x16B3748, lsn_text="0/16B3748", index=2, commit_time=COMMIT_TIME, xid=771)


def router(routes: str, outbox: str = "") -> Router:
    return Router(parse_config(HEAD + outbox + "routes:\n" + routes, env={}))


def row(**values: ColumnValue) -> dict[str, ColumnValue]:
    base: dict[str, ColumnValue] = {
        "id": "3f0c",
        "aggregate_type": "order",
        "aggregate_id": "O-1",
        "event_type": "placed",
        "payload": '{"n": 1}',
        "headers": None,
        "created_at": "2026-12-01 23:40:33.5+01",
    }
    base.update(values)
    return base


def finished(outcome: Outbound | Poison) -> tuple[bytes, dict[str, str]]:
    assert isinstance(outcome, Outbound) and outcome.route != "dead_letter", outcome
    assert outcome.event is not None
    data, lines = outcome.event.finish(AT)
    return data, {**outcome.headers, **parse_header_lines(lines)}


def reason(outcome: Outbound | Poison) -> str:
    assert isinstance(outcome, Outbound) and outcome.dead_letter_reason is not None, outcome
    return outcome.dead_letter_reason


BINARY = '  - subject: "events.{event_type}"\n    format: cloudevents\n'
STRUCTURED = '  - subject: "events.{event_type}"\n    format: cloudevents-structured\n'


def test_plain_routes_have_no_event_to_finish() -> None:
    outcome = router('  - subject: "events.{event_type}"\n').route("public.outbox", row())
    assert isinstance(outcome, Outbound) and outcome.event is None
    assert outcome.data == b'{"n": 1}'


def test_binary_mode_attributes_are_ce_headers_and_the_body_is_unchanged() -> None:
    data, headers = finished(router(BINARY).route("public.outbox", row()))
    assert data == b'{"n": 1}'
    assert headers == {
        "ce-specversion": "1.0",
        "ce-id": "3f0c",
        "ce-source": "/cdc-bridge/shop/public.outbox",
        "ce-type": "placed",
        "ce-subject": "O-1",
        "ce-time": "2026-12-01T23:40:33.5+01:00",
        "ce-cdclsn": "0/16B3748",
        "ce-cdcindex": "2",
        "content-type": "application/json",
    }


def test_outbox_format_is_every_routes_default_and_a_route_overrides_it() -> None:
    routes = (
        '  - when: {event_type: placed}\n    subject: "events.a"\n    format: plain\n'
        '  - subject: "events.b"\n'
    )
    chosen = router(routes, outbox="outbox: {format: cloudevents-structured}\n")
    plain = chosen.route("public.outbox", row())
    assert isinstance(plain, Outbound) and plain.event is None
    data, headers = finished(chosen.route("public.outbox", row(event_type="paid")))
    assert headers["content-type"] == "application/cloudevents+json"
    assert json.loads(data)["type"] == "paid"


def test_structured_mode_is_the_json_event_format() -> None:
    routes = STRUCTURED + (
        "    cloudevents:\n"
        '      source: "/shop/{aggregate_type}"\n'
        '      type: "com.example.{aggregate_type}.{event_type}"\n'
        '      subject: "{aggregate_type}/{aggregate_id}"\n'
        '      extensions: {tenant: "{aggregate_type}", n2: "x"}\n'
    )
    data, headers = finished(router(routes).route("public.outbox", row(created_at=None)))
    assert headers["content-type"] == "application/cloudevents+json"
    assert not any(name.startswith("ce-") for name in headers)
    assert json.loads(data) == {
        "specversion": "1.0",
        "id": "3f0c",
        "source": "/shop/order",
        "type": "com.example.order.placed",
        "subject": "order/O-1",
        "datacontenttype": "application/json",
        "tenant": "order",
        "n2": "x",
        "time": "2026-12-01T22:40:33.123456Z",  # no created_at: the commit time
        "cdclsn": "0/16B3748",
        "cdcindex": "2",
        "data": {"n": 1},
    }


@pytest.mark.parametrize(
    ("payload", "content_type", "member"),
    [
        (b"\x00\xff", "application/octet-stream", ("data_base64", "AP8=")),
        ("not json", "text/plain; charset=utf-8", ("data", "not json")),
        ('"a string"', "application/json", ("data", "a string")),
    ],
)
def test_structured_data_by_payload_type(
    payload: ColumnValue, content_type: str, member: tuple[str, str]
) -> None:
    data, _ = finished(router(STRUCTURED).route("public.outbox", row(payload=payload)))
    event = json.loads(data)
    assert event["datacontenttype"] == content_type
    assert event[member[0]] == member[1]
    assert ("data" in event) != ("data_base64" in event)


def test_a_json_or_jsonb_payload_column_is_json_without_a_parse() -> None:
    """PostgreSQL checked a json or jsonb column's text: the decoder names those columns
    (Insert.json_columns) and the event's datacontenttype is JSON with no parse per event.
    The payload below could never be in a jsonb column: it shows that nothing parsed it."""
    unparsed = row(payload="{not parsed")
    binary = router(BINARY)
    _, headers = finished(binary.route("public.outbox", unparsed, frozenset({"payload"})))
    assert headers["content-type"] == "application/json"
    _, headers = finished(binary.route("public.outbox", unparsed, frozenset({"headers"})))
    assert headers["content-type"] == "text/plain; charset=utf-8"  # parsed: not JSON
    json_required = STRUCTURED + "    cloudevents: {datacontenttype: application/json}\n"
    assert isinstance(
        router(json_required).route("public.outbox", row(), frozenset({"payload"})), Outbound
    )


def test_a_null_payload_is_an_event_without_data() -> None:
    data, _ = finished(router(STRUCTURED).route("public.outbox", row(payload=None)))
    event = json.loads(data)
    assert "data" not in event and "datacontenttype" not in event
    data, headers = finished(router(BINARY).route("public.outbox", row(payload=None)))
    assert data == b"" and "content-type" not in headers


def test_header_values_are_percent_encoded_as_the_binding_says() -> None:
    assert header_value("order.placed/v1") == "order.placed/v1"
    assert header_value('a b"c%d') == "a%20b%22c%25d"
    assert header_value("Café ☕") == "Caf%C3%A9%20%E2%98%95"
    routes = BINARY + '    cloudevents: {subject: "{aggregate_id}"}\n'
    _, headers = finished(router(routes).route("public.outbox", row(aggregate_id="Zoë 1")))
    assert headers["ce-subject"] == "Zo%C3%AB%201"


@pytest.mark.parametrize(
    ("created_at", "time"),
    [
        ("2026-12-01 22:40:33+00", "2026-12-01T22:40:33Z"),
        ("2026-12-01 22:40:33.123+05:30", "2026-12-01T22:40:33.123+05:30"),
        ("2026-12-01 22:40:33.1-08", "2026-12-01T22:40:33.1-08:00"),
        ("2026-12-01 22:40:33", "2026-12-01T22:40:33Z"),  # without a zone: UTC
        ("infinity", "2026-12-01T22:40:33.123456Z"),  # not a time: the commit time
    ],
)
def test_time_is_created_at_as_rfc3339(created_at: str, time: str) -> None:
    data, _ = finished(router(STRUCTURED).route("public.outbox", row(created_at=created_at)))
    assert json.loads(data)["time"] == time


def test_rows_that_make_no_valid_cloudevent_are_dead_lettered_with_the_reason() -> None:
    empty_type = router(BINARY).route("public.outbox", row(event_type=""))
    # (the subject template refuses the empty event_type first, as for plain routes)
    assert "event_type" in reason(empty_type)
    typed = BINARY.replace("{event_type}", "x") + '    cloudevents: {type: "{aggregate_type}"}\n'
    assert reason(router(typed).route("public.outbox", row(aggregate_type=""))) == (
        "not a valid CloudEvent: the CloudEvents type renders empty (cloudevents.type)"
    )
    sourced = BINARY + '    cloudevents: {source: "{aggregate_type}"}\n'
    assert "source renders empty" in reason(
        router(sourced).route("public.outbox", row(aggregate_type=""))
    )
    no_type = BINARY.replace("{event_type}", "x")
    missing = router(no_type).route("public.outbox", {"id": "1", "payload": "{}"})
    assert (
        reason(missing) == "column 'event_type' is not in the row (needed by the cloudevents.type)"
    )
    json_required = STRUCTURED + "    cloudevents: {datacontenttype: application/json}\n"
    assert "is not JSON" in reason(router(json_required).route("public.outbox", row(payload="x")))


def test_a_missing_default_subject_is_left_out() -> None:
    data, _ = finished(router(STRUCTURED).route("public.outbox", row(aggregate_id=None)))
    assert "subject" not in json.loads(data)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("Tenant", "invalid CloudEvents extension name 'Tenant'"),
        ("tenant_id", "invalid CloudEvents extension name 'tenant_id'"),
        ("a" * 21, "at most 20 characters"),
        ("cdclsn", "cdclsn is set by the bridge itself"),
        ("type", "type is set by the bridge itself"),
    ],
)
def test_extension_names_follow_the_spec(name: str, problem: str) -> None:
    routes = BINARY + f'    cloudevents: {{extensions: {{{name}: "x"}}}}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD + "routes:\n" + routes, source="c.yaml", env={})
    [line] = caught.value.problems
    assert line.startswith(f"c.yaml:9: routes[0].cloudevents.extensions.{name}: ")
    assert problem in line
    ok = BINARY + "    cloudevents: {extensions: {" + "a1" * 10 + ': "x"}}\n'
    parse_config(HEAD + "routes:\n" + ok, env={})


def test_an_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD + "routes:\n" + BINARY.replace("cloudevents", "ce"), env={})
    assert caught.value.problems == [
        "<config>:8: routes[0].format: expected 'plain', 'cloudevents' or "
        "'cloudevents-structured', got 'ce'"
    ]


def test_the_sdk_accepts_the_attributes() -> None:
    """The CloudEvents SDK's own validation of every attribute of a structured event."""
    from cloudevents.core.formats.json import JSONFormat

    data, _ = finished(router(STRUCTURED).route("public.outbox", row()))
    event = JSONFormat().read(None, data)
    assert event.get_id() == "3f0c" and event.get_type() == "placed"
    assert event.get_extension("cdclsn") == "0/16B3748"


# --- Debezium's envelope -------------------------------------------------------------

CHANGES = """\
outbox: {change_tables: [public.tickets]}
"""
DEBEZIUM = '  - subject: "cdc.tickets"\n    payload: debezium\n'


def column(name: str, value: ColumnValue, type_oid: int = 25) -> ChangeColumn:
    return ChangeColumn(name, "integer" if type_oid == 23 else "text", type_oid, value)


ID1 = column("id", "1", 23)
TITLE = column("title", "Printer jam")
BLOB = ChangeColumn("blob", "bytea", 17, b"\x00\xff")


def envelope(change: RowChange, routes: str = DEBEZIUM) -> dict[str, Any]:
    outcome = router(routes, outbox=CHANGES).route_change(change, "0/16B3748-2")
    data, headers = finished(outcome)
    assert isinstance(outcome, Outbound) and outcome.msg_id == "0/16B3748-2"
    assert headers == {}
    document: dict[str, Any] = json.loads(data)
    return document


def test_debezium_insert() -> None:
    document = envelope(RowChange("I", "public", "tickets", (ID1, TITLE, BLOB), ()))
    assert list(document) == ["before", "after", "source", "op", "ts_ms"]
    assert document["before"] is None
    assert document["after"] == {"id": 1, "title": "Printer jam", "blob": "AP8="}
    assert document["op"] == "c"
    assert document["ts_ms"] == 1_796_164_833_123
    assert document["source"] == {
        "version": "cdc-bridge",
        "connector": "postgresql",
        "name": "cdc-bridge",
        "ts_ms": 1_796_164_833_123,
        "snapshot": "false",
        "db": "shop",
        "schema": "public",
        "table": "tickets",
        "txId": 771,
        "lsn": 0x16B3748,
        "xmin": None,
    }
    assert base64.b64decode(document["after"]["blob"]) == b"\x00\xff"


def test_debezium_update_before_is_the_old_row_under_full_only() -> None:
    new = (ID1, column("title", "Fixed"))
    default = envelope(RowChange("U", "public", "tickets", new, (ID1,)))
    assert default["op"] == "u" and default["before"] is None
    assert default["after"] == {"id": 1, "title": "Fixed"}
    full = envelope(RowChange("U", "public", "tickets", new, (ID1, TITLE)))
    assert full["before"] == {"id": 1, "title": "Printer jam"}


def test_debezium_delete_before_is_the_identity() -> None:
    document = envelope(RowChange("D", "public", "tickets", (), (ID1,)))
    assert document["op"] == "d"
    assert document["before"] == {"id": 1} and document["after"] is None


def test_debezium_inside_a_cloudevent() -> None:
    routes = DEBEZIUM + "    format: cloudevents-structured\n"
    outcome = router(routes, outbox=CHANGES).route_change(
        RowChange("U", "public", "tickets", (ID1,), (ID1,)), "0/16B3748-2"
    )
    data, _ = finished(outcome)
    event = json.loads(data)
    assert event["type"] == "public.tickets.U"  # a change's default type
    assert event["source"] == "/cdc-bridge/shop/public.tickets"
    assert event["data"]["op"] == "u" and event["data"]["source"]["txId"] == 771


def test_debezium_routes_need_change_tables_and_refuse_outbox_rows() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD + "routes:\n" + DEBEZIUM, env={})
    assert caught.value.problems == [
        "<config>:8: routes[0].payload: `debezium` publishes changes of "
        "outbox.change_tables, and none are listed"
    ]
    outcome = router(DEBEZIUM, outbox=CHANGES).route("public.outbox", row())
    assert "(payload: debezium)" in reason(outcome)


def test_routes_test_shows_the_cloudevent() -> None:
    from cdc_bridge.routing.preview import preview_row

    config = parse_config(HEAD + "routes:\n" + BINARY, env={})
    shown = preview_row(config, "public.outbox", row())
    assert shown.headers["ce-type"] == "placed" and shown.headers["ce-cdclsn"] == "0/0"
    assert shown.headers["Nats-Msg-Id"] == shown.headers["ce-id"] == "3f0c"
    assert shown.payload == b'{"n": 1}'


def test_attribute_headers_come_from_the_event_only() -> None:
    headers = '{"ce-type": "forged", "Content-Type": "text/x", "Trace": "t1"}'
    _, finished_headers = finished(router(BINARY).route("public.outbox", row(headers=headers)))
    assert finished_headers["ce-type"] == "placed" and finished_headers["Trace"] == "t1"
    assert "Content-Type" not in finished_headers
    routes = BINARY + '    headers: {ce-type: "x", Content-Type: "y", Ok: "z"}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(HEAD + "routes:\n" + routes, env={})
    assert [p.split(": ", 2)[1] for p in caught.value.problems] == [
        "routes[0].headers.ce-type",
        "routes[0].headers.Content-Type",
    ]
    assert "set the attribute under the route's `cloudevents` key" in caught.value.problems[0]
