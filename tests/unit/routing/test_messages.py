"""Logical decoding message envelopes -> outbox-like rows (cdc_bridge.routing.messages)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_bridge.config.load import parse_config
from cdc_bridge.routing.messages import (
    EnvelopeColumns,
    MessageEvent,
    default_message_id,
    message_event,
    message_table,
)
from cdc_bridge.routing.router import Outbound, Router

DEFAULT_ID = "0/16B3748-0"
COLUMNS = EnvelopeColumns()


def event(content: str | bytes, columns: EnvelopeColumns = COLUMNS) -> MessageEvent:
    raw = content.encode() if isinstance(content, str) else content
    return message_event("orders", raw, default_id=DEFAULT_ID, columns=columns)


def envelope(**overrides: object) -> str:
    document: dict[str, object] = {
        "aggregate_type": "order",
        "aggregate_id": "O-1",
        "event_type": "placed",
        "payload": {"total": 12.5},
    }
    document.update(overrides)
    return json.dumps({k: v for k, v in document.items() if v is not _DROP})


_DROP = object()


def test_default_id_is_commit_lsn_and_index() -> None:
    assert default_message_id(0x16B3748, 0) == "0/16B3748-0"
    assert default_message_id((0x1F << 32) | 0xAB, 12) == "1F/AB-12"


def test_table_name_for_routing() -> None:
    assert message_table("orders") == "message:orders"


def test_a_minimal_envelope_becomes_a_row() -> None:
    result = event(envelope())
    assert result.problem is None
    assert result.table == "message:orders"
    assert result.msg_id == DEFAULT_ID
    assert result.row == {
        "id": DEFAULT_ID,
        "aggregate_type": "order",
        "aggregate_id": "O-1",
        "event_type": "placed",
        "payload": '{"total": 12.5}',
        "headers": None,
    }


def test_the_payload_is_the_text_as_written() -> None:
    content = (
        '{ "aggregate_type":"a", "aggregate_id":"1", "event_type":"e",\n'
        '  "payload" : {"b": 1.50, "a": [1e3, "é\\u00e9"] , "a": null}\n}'
    )
    # Number forms, spacing, key order, escapes and even duplicate inner keys: untouched
    assert event(content).row["payload"] == '{"b": 1.50, "a": [1e3, "é\\u00e9"] , "a": null}'


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        ("a string", '"a string"'),  # a JSON string, quotes included, like a jsonb column
        (None, "null"),
        (42, "42"),
        ([1, 2], "[1, 2]"),
        ({}, "{}"),
    ],
)
def test_any_json_value_is_a_payload(payload: object, text: str) -> None:
    assert event(envelope(payload=payload)).row["payload"] == text


def test_id_and_headers_are_taken_from_the_envelope() -> None:
    result = event(envelope(id="evt-1", headers={"Trace-Id": "t", "N": 1}))
    assert result.problem is None
    assert result.msg_id == "evt-1"
    assert result.row["id"] == "evt-1"
    assert result.row["headers"] == '{"Trace-Id": "t", "N": 1}'


def test_null_id_and_null_headers_count_as_absent() -> None:
    result = event(envelope(id=None, headers=None))
    assert result.problem is None
    assert result.msg_id == DEFAULT_ID
    assert result.row["headers"] is None


def test_columns_follow_the_outbox_config_names() -> None:
    columns = EnvelopeColumns(id="event_id", payload="body", headers=None)
    result = event(envelope(headers={"A": "b"}), columns)
    assert result.row == {
        "event_id": DEFAULT_ID,
        "aggregate_type": "order",
        "aggregate_id": "O-1",
        "event_type": "placed",
        "body": '{"total": 12.5}',
    }
    assert columns.names() == set(result.row)
    assert COLUMNS.names() == set(event(envelope()).row)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "content is not a JSON object: expected '{' at offset 0"),
        (b"not json", "content is not a JSON object: expected '{'"),
        (b"[1, 2]", "content is not a JSON object: expected '{'"),
        (b'"text"', "content is not a JSON object"),
        (b'{"a": 1,}', "content is not a JSON object: expected a key"),
        (b'{"a" 1}', "expected ':'"),
        (b'{"a": 1 "b": 2}', "expected ',' or '}'"),
        (b'{"a": 1} trailing', "unexpected text after the object"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"a": nope}', "content is not a JSON object: Expecting value"),
        (b'{"payload": NaN}', "NaN is not JSON"),
        (b'{"payload": [' * 100_000, "content is not a JSON object"),
        (b"\xff{}", "content is not UTF-8 text"),
        (b"{}", "missing key 'aggregate_type'"),
        (envelope(event_type=_DROP).encode(), "missing key 'event_type'"),
        (envelope(payload=_DROP).encode(), "missing key 'payload'"),
        (envelope(aggregate_id=7).encode(), "'aggregate_id' must be a string, got a number"),
        (envelope(event_type=None).encode(), "'event_type' must be a string, got null"),
        (envelope(id=5).encode(), "'id' must be a non-empty string, got a number"),
        (envelope(id="").encode(), "'id' must be a non-empty string, got a string"),
        (envelope(headers=["x"]).encode(), "'headers' must be a JSON object, got an array"),
        (envelope(header={}).encode(), "unknown key 'header'"),
    ],
)
def test_invalid_envelopes_say_why(content: bytes, problem: str) -> None:
    result = event(content)
    assert result.problem is not None and problem in result.problem
    assert result.content == content  # the dead letter carries what was emitted
    assert result.table == "message:orders"


def test_an_invalid_envelope_keeps_its_own_id() -> None:
    result = event(envelope(id="evt-9", payload=_DROP))
    assert result.problem == "missing key 'payload'"
    assert result.msg_id == "evt-9"


@given(st.binary(max_size=200))
def test_never_raises_on_any_content(content: bytes) -> None:
    result = event(content)
    assert result.problem is not None or result.row["id"] == DEFAULT_ID


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.text()
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )
)
def test_payload_text_parses_back_to_the_payload(payload: object) -> None:
    result = event(envelope(payload=payload))
    assert result.problem is None
    text = result.row["payload"]
    assert isinstance(text, str) and json.loads(text) == payload


# --- through the router -----------------------------------------------------------------

CONFIG = """
postgres: {dsn: "postgresql://x@127.0.0.1/db"}
nats: {servers: [nats://127.0.0.1:4222], stream: {name: S, subjects: ["ev.>"]}}
outbox: {table: [], message_prefixes: [orders]}
routes:
  - when: {table: "message:orders"}
    subject: "ev.{aggregate_type}.{event_type}"
"""


def test_a_message_row_routes_like_an_outbox_row() -> None:
    router = Router(parse_config(CONFIG, env={}))
    result = event(envelope(headers={"Trace-Id": "t-1"}))
    outcome = router.route(result.table, result.row)
    assert outcome == Outbound(
        subject="ev.order.placed",
        data=b'{"total": 12.5}',
        headers={"Trace-Id": "t-1"},
        msg_id=DEFAULT_ID,
        route="routes[0]",
    )
