import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.changes import ColumnValue
from cdc_bridge.routing.router import Outbound, Poison, Router

HEAD = """\
postgres: {dsn: "postgresql://app@127.0.0.1/app"}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
"""
DEAD_LETTER = "dead_letter: {subject: events.dlq}\n"


def config(routes: str, *, dead_letter: bool = True, extra: str = "") -> BridgeConfig:
    text = HEAD + "routes:\n" + routes + (DEAD_LETTER if dead_letter else "") + extra
    return parse_config(text, env={})


def router(
    routes: str, *, dead_letter: bool = True, extra: str = "", max_payload: int = 1024 * 1024
) -> Router:
    return Router(config(routes, dead_letter=dead_letter, extra=extra), max_payload=max_payload)


def row(**values: ColumnValue) -> dict[str, ColumnValue]:
    base: dict[str, ColumnValue] = {
        "id": "3f0c",
        "aggregate_type": "ticket",
        "aggregate_id": "T-1",
        "event_type": "created",
        "payload": '{"n": 1}',
        "headers": None,
    }
    base.update(values)
    return base


def published(result: Outbound | Poison) -> Outbound:
    assert isinstance(result, Outbound), result
    assert result.route != "dead_letter", result.dead_letter_reason
    return result


def dead_lettered(result: Outbound | Poison) -> Outbound:
    assert isinstance(result, Outbound), result
    assert result.route == "dead_letter"
    assert result.subject == "events.dlq"
    assert result.dead_letter_reason is not None
    assert result.headers["Cdc-Error"] == result.dead_letter_reason
    return result


CONTRACT_ROUTES = """\
  - when: {aggregate_type: ticket}
    subject: "events.ticket.{event_type}"
  - subject: "events.other.{aggregate_type}"
"""


# --- matching --------------------------------------------------------------------------


def test_contract_routes() -> None:
    routes = router(CONTRACT_ROUTES)
    message = published(routes.route("public.outbox", row()))
    assert message == Outbound(
        subject="events.ticket.created",
        data=b'{"n": 1}',
        headers={},
        msg_id="3f0c",
        route="routes[0]",
    )
    other = published(routes.route("public.outbox", row(aggregate_type="invoice")))
    assert (other.subject, other.route) == ("events.other.invoice", "routes[1]")
    assert routes.route_names == ("routes[0]", "routes[1]")


def test_first_match_wins() -> None:
    routes = router(
        """\
  - {name: specific, when: {aggregate_type: ticket, event_type: created}, subject: a.first}
  - {name: broad, when: {aggregate_type: ticket}, subject: a.second}
"""
    )
    assert published(routes.route("public.outbox", row())).route == "specific"
    assert published(routes.route("public.outbox", row(event_type="closed"))).route == "broad"


@pytest.mark.parametrize(
    ("when", "value", "matches"),
    [
        ("ticket", "ticket", True),
        ("ticket", "Ticket", False),
        ("[ticket, case]", "case", True),
        ("[ticket, case]", "other", False),
        ("'tick*'", "ticket", True),
        ("'tick*'", "Ticket", False),  # globs are case-sensitive
        ("'t?cket'", "ticket", True),
        ("'t?cket'", "tcket", False),
        ("[exact, 'g*']", "go", True),
        ("['x*', 'g?']", "go", True),
        ("['x*', 'g?']", "gox", False),
        ("['x*', 'g?']", "xylophone", True),
        ("'*'", "", True),
        ("'[ab]'", "a", False),  # no * or ?: an exact string, brackets and all
        ("'[ab]'", "[ab]", True),
    ],
)
def test_when_kinds(when: str, value: str, matches: bool) -> None:
    routes = router(f"  - {{when: {{aggregate_type: {when}}}, subject: a.hit}}\n")
    result = routes.route("public.outbox", row(aggregate_type=value))
    assert isinstance(result, Outbound)
    assert (result.route == "routes[0]") is matches


@pytest.mark.parametrize("value", [None, b"ticket"])
def test_null_and_bytes_never_match(value: ColumnValue) -> None:
    routes = router("  - {when: {aggregate_type: '*'}, subject: a.hit}\n")
    result = dead_lettered(routes.route("public.outbox", row(aggregate_type=value)))
    assert result.dead_letter_reason == "no route matches"


def test_missing_column_never_matches() -> None:
    routes = router("  - {when: {nope: '*'}, subject: a.hit}\n")
    dead_lettered(routes.route("public.outbox", row()))


def test_table_pseudo_column() -> None:
    routes = router(
        """\
  - {when: {table: billing.outbox}, subject: billing.x}
  - {when: {table: 'public.*'}, subject: public.x}
""",
        extra="outbox: {table: [outbox, billing.outbox]}\n",
    )
    assert published(routes.route("billing.outbox", row())).subject == "billing.x"
    assert published(routes.route("public.outbox", row())).subject == "public.x"


# --- templates -------------------------------------------------------------------------


def test_subject_template_mixes_literals_and_values() -> None:
    routes = router("  - subject: 'events.v{version}.{aggregate_type}_{event_type}'\n")
    message = published(routes.route("public.outbox", row(version="2")))
    assert message.subject == "events.v2.ticket_created"


def test_literal_braces() -> None:
    routes = router("  - subject: 'a.b'\n    headers: {X: '{{{event_type}}}'}\n")
    assert published(routes.route("public.outbox", row())).headers == {"X": "{created}"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "x.>",
            "unsafe value for {event_type} in subject: 'x.>' (a subject token may not be "
            "empty or contain '.', '*', '>' or whitespace)",
        ),
        ("a*", "unsafe value for {event_type} in subject: 'a*'"),
        ("has space", "unsafe value for {event_type} in subject: 'has space'"),
        ("tab\there", "unsafe value for {event_type} in subject: 'tab\\there'"),
        ("del\x7f", "unsafe value for {event_type} in subject: 'del\\x7f'"),
        ("nbsp\u00a0", "unsafe value for {event_type} in subject"),
        ("", "unsafe value for {event_type} in subject: ''"),
    ],
)
def test_unsafe_subject_values_are_dead_lettered(value: str, reason: str) -> None:
    routes = router("  - subject: 'events.{event_type}'\n")
    result = dead_lettered(routes.route("public.outbox", row(event_type=value)))
    assert result.dead_letter_reason is not None
    assert result.dead_letter_reason.startswith(reason)
    # The intended subject, with the offending value shown in its placeholder.
    assert result.headers["Cdc-Subject"] == f"events.{{event_type={value!r}}}"
    assert result.data == b'{"n": 1}'  # the body still travels with the dead letter
    assert result.msg_id == "3f0c"


def test_long_values_are_clipped_in_reasons() -> None:
    routes = router("  - subject: 'events.{event_type}'\n")
    result = dead_lettered(routes.route("public.outbox", row(event_type="x." * 500)))
    assert result.dead_letter_reason is not None
    assert len(result.dead_letter_reason) < 200
    assert "...'" in result.dead_letter_reason


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"event_type": None}, "NULL value for {event_type} in subject"),
        ({"event_type": b"x"}, "bytea value for {event_type} in subject"),
    ],
)
def test_unusable_subject_values(values: dict[str, ColumnValue], reason: str) -> None:
    routes = router("  - subject: 'events.{event_type}'\n")
    result = dead_lettered(routes.route("public.outbox", row(**values)))
    assert result.dead_letter_reason is not None
    assert result.dead_letter_reason.startswith(reason)
    shown = "NULL" if values["event_type"] is None else "bytea"
    assert result.headers["Cdc-Subject"] == f"events.{{event_type={shown}}}"


def test_missing_template_column_is_named() -> None:
    routes = router("  - subject: 'events.{kind}'\n")
    result = dead_lettered(routes.route("public.outbox", row()))
    assert result.dead_letter_reason == "column 'kind' is not in the row (needed by the subject)"
    assert result.headers["Cdc-Subject"] == "events.{kind}"


@pytest.mark.parametrize(
    ("values", "subject"),
    [
        ({"id": None}, "e.ticket.created"),  # rejected before the subject was rendered
        ({"event_type": "a.b", "aggregate_type": "t"}, "e.t.{event_type='a.b'}"),
        ({"headers": "[1]"}, "e.ticket.created"),  # rejected after it
    ],
)
def test_every_dead_letter_of_a_routed_row_names_its_intended_subject(
    values: dict[str, ColumnValue], subject: str
) -> None:
    routes = router("  - subject: 'e.{aggregate_type}.{event_type}'\n")
    result = dead_lettered(routes.route("public.outbox", row(**values)))
    assert result.headers["Cdc-Subject"] == subject


# --- headers ---------------------------------------------------------------------------


def test_route_headers_override_column_headers() -> None:
    routes = router(
        "  - subject: a.b\n"
        "    headers: {Aggregate-Id: '{aggregate_id}', Source: '{table}', Trace: fixed}\n"
    )
    column = json.dumps({"Trace": "from-row", "Tenant": "acme", "Count": 3, "Nested": {"a": 1}})
    message = published(routes.route("public.outbox", row(headers=column)))
    assert message.headers == {
        "Trace": "fixed",
        "Tenant": "acme",
        "Aggregate-Id": "T-1",
        "Source": "public.outbox",
    }


def test_header_values_may_contain_dots() -> None:
    routes = router("  - subject: a.b\n    headers: {Kind: '{event_type}'}\n")
    message = published(routes.route("public.outbox", row(event_type="ticket.created v2")))
    assert message.headers == {"Kind": "ticket.created v2"}


def test_headers_column_may_be_bytes_or_absent() -> None:
    routes = router("  - subject: a.b\n")
    message = published(routes.route("public.outbox", row(headers=b'{"A": "1"}')))
    assert message.headers == {"A": "1"}
    without = row()
    del without["headers"]
    assert published(routes.route("public.outbox", without)).headers == {}


def test_headers_column_can_be_disabled() -> None:
    routes = router("  - subject: a.b\n", extra="outbox: {headers_column: null}\n")
    message = published(routes.route("public.outbox", row(headers="not json")))
    assert message.headers == {}


def test_column_cannot_choose_the_message_id() -> None:
    routes = router("  - subject: a.b\n")
    message = published(routes.route("public.outbox", row(headers='{"Nats-Msg-Id": "evil"}')))
    assert message.headers == {} and message.msg_id == "3f0c"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ("not json", "invalid JSON in headers column 'headers': Expecting value"),
        ('["a"]', "headers column 'headers' holds JSON list, not an object"),
        ('{"Bad Name": "x"}', "invalid header name in headers column: 'Bad Name'"),
        ('{"A": "x\\r\\ny"}', "unsafe value for header 'A' in headers column 'headers'"),
        ("[" * 100_000, "invalid JSON in headers column 'headers'"),
        ('{"Nats-Rollup": "all"}', "header 'Nats-Rollup' in headers column 'headers' is reserved"),
        ('{"nats-expected-stream": "X"}', "header 'nats-expected-stream' in headers column"),
    ],
)
def test_bad_headers_column_is_dead_lettered(headers: str, reason: str) -> None:
    routes = router("  - subject: a.b\n")
    result = dead_lettered(routes.route("public.outbox", row(headers=headers)))
    assert result.dead_letter_reason is not None
    assert result.dead_letter_reason.startswith(reason)
    assert result.headers["Cdc-Subject"] == "a.b"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"event_type": "a\r\nInjected: yes"}, "unsafe value for {event_type} in header 'Kind'"),
        ({"event_type": None}, "NULL value for {event_type} in header 'Kind'"),
    ],
)
def test_bad_header_template_values(values: dict[str, ColumnValue], reason: str) -> None:
    routes = router("  - subject: a.b\n    headers: {Kind: '{event_type}'}\n")
    result = dead_lettered(routes.route("public.outbox", row(**values)))
    assert result.dead_letter_reason is not None
    assert result.dead_letter_reason.startswith(reason)
    assert "\r" not in result.headers["Cdc-Error"] and "\n" not in result.headers["Cdc-Error"]


# --- data and ids ----------------------------------------------------------------------


def test_payload_text_bytes_and_null() -> None:
    routes = router("  - subject: a.b\n")
    assert published(routes.route("t.t", row(payload="é"))).data == "é".encode()
    assert published(routes.route("t.t", row(payload=b"\x00\xff"))).data == b"\x00\xff"
    assert published(routes.route("t.t", row(payload=None))).data == b""


def test_payload_from_another_column() -> None:
    routes = router("  - {subject: a.b, payload: aggregate_id}\n")
    assert published(routes.route("t.t", row())).data == b"T-1"


def test_row_payload_is_a_json_object_with_base64_bytes() -> None:
    routes = router("  - {subject: a.b, payload: row}\n")
    values = row(blob=b"\x00\x01", headers=None)
    message = published(routes.route("public.outbox", values))
    document = json.loads(message.data)
    assert document == {**values, "blob": base64.b64encode(b"\x00\x01").decode()}


def test_missing_payload_column_is_dead_lettered() -> None:
    routes = router("  - subject: a.b\n")
    values = row()
    del values["payload"]
    result = dead_lettered(routes.route("t.t", values))
    assert result.dead_letter_reason == "payload column 'payload' is not in the row"
    assert result.data == b""


def test_id_from_another_column() -> None:
    routes = router("  - {subject: a.b, id: aggregate_id}\n")
    assert published(routes.route("t.t", row())).msg_id == "T-1"


def test_null_id_is_dead_lettered_with_a_stable_id() -> None:
    routes = router("  - subject: a.b\n")
    first = dead_lettered(routes.route("public.outbox", row(id=None)))
    again = dead_lettered(routes.route("public.outbox", row(id=None)))
    other = dead_lettered(routes.route("public.outbox", row(id=None, aggregate_id="T-2")))
    assert first.dead_letter_reason == "NULL id column 'id'"
    assert first.msg_id.startswith("null-id:")
    assert first.msg_id == again.msg_id != other.msg_id
    assert first.data == b'{"n": 1}'


def test_missing_id_column() -> None:
    routes = router("  - {subject: a.b, id: event_id}\n")
    result = dead_lettered(routes.route("t.t", row()))
    assert result.dead_letter_reason == "id column 'event_id' is not in the row"


def test_oversized_payload_is_dead_lettered_without_data() -> None:
    routes = router("  - subject: 'events.{event_type}'\n", max_payload=1000)
    result = dead_lettered(routes.route("t.t", row(payload="x" * 1000)))
    reason = result.dead_letter_reason
    assert reason is not None
    assert reason.startswith("payload of ") and reason.endswith(
        "exceeds the server's max_payload 1000"
    )
    assert result.data == b""
    assert result.headers == {"Cdc-Error": reason, "Cdc-Subject": "events.created"}


def test_headers_count_toward_max_payload_and_the_limit_is_settable() -> None:
    routes = router("  - subject: a.b\n    headers: {Big: '{aggregate_id}'}\n", max_payload=100)
    assert published(routes.route("t.t", row(payload="x" * 10))).data == b"x" * 10
    dead_lettered(routes.route("t.t", row(payload="x" * 10, aggregate_id="y" * 80)))
    routes.max_payload = 10_000
    published(routes.route("t.t", row(payload="x" * 10, aggregate_id="y" * 80)))


def test_no_route_matches() -> None:
    routes = router("  - {when: {aggregate_type: invoice}, subject: a.b}\n")
    result = dead_lettered(routes.route("public.outbox", row()))
    assert result.dead_letter_reason == "no route matches"
    assert result.headers == {"Cdc-Error": "no route matches", "Cdc-Subject": "(no route)"}
    assert result.data == b'{"n": 1}'
    assert result.msg_id == "3f0c"


# --- without a dead letter subject -----------------------------------------------------


@pytest.mark.parametrize(
    ("values", "row_id", "reason"),
    [
        ({"aggregate_type": "invoice"}, "3f0c", "no route matches"),
        ({"id": None}, None, "NULL id column 'id'"),
        ({"event_type": "a.b"}, "3f0c", "unsafe value for {event_type} in subject: 'a.b'"),
    ],
)
def test_poison_without_dead_letter(
    values: dict[str, ColumnValue], row_id: str | None, reason: str
) -> None:
    routes = router(
        "  - {when: {aggregate_type: ticket}, subject: 'e.{event_type}'}\n", dead_letter=False
    )
    result = routes.route("public.outbox", row(**values))
    assert isinstance(result, Poison)
    assert result.row_id == row_id
    assert result.reason.startswith(reason)


# --- publish-time dead letters ---------------------------------------------------------


def test_dead_letter_after_a_publish_error() -> None:
    routes = router("  - subject: 'events.{event_type}'\n")
    original = published(routes.route("public.outbox", row()))
    result = dead_lettered(routes.dead_letter(original, "no stream\r\nmatches subject", "3f0c"))
    assert result.headers == {
        "Cdc-Error": "no stream  matches subject",
        "Cdc-Subject": "events.created",
    }
    assert (result.data, result.msg_id) == (original.data, "3f0c")


def test_dead_letter_of_a_dead_letter_is_poison() -> None:
    routes = router("  - subject: 'events.{event_type}'\n")
    dead = dead_lettered(routes.route("public.outbox", row(event_type="a.b")))
    assert routes.dead_letter(dead, "no stream", "3f0c") == Poison("3f0c", "no stream")


def test_dead_letter_without_config_is_poison() -> None:
    routes = router("  - subject: 'events.{event_type}'\n", dead_letter=False)
    original = published(routes.route("public.outbox", row()))
    assert routes.dead_letter(original, "no stream", "3f0c") == Poison("3f0c", "no stream")


def test_dead_letter_drops_data_that_does_not_fit() -> None:
    routes = router("  - subject: 'events.{event_type}'\n", max_payload=200)
    original = published(routes.route("public.outbox", row(payload="x" * 100)))
    result = dead_lettered(routes.dead_letter(original, "r" * 150, "3f0c"))
    assert result.data == b""


# --- property: a rendered subject keeps the template's shape ---------------------------

SHAPE_ROUTES = "  - subject: 'events.{aggregate_type}.x{event_type}.tail'\n"
SHAPE_ROUTER = Router(config(SHAPE_ROUTES))


@given(aggregate_type=st.text(), event_type=st.text())
def test_rendered_subject_keeps_the_template_shape(aggregate_type: str, event_type: str) -> None:
    result = SHAPE_ROUTER.route(
        "public.outbox", row(aggregate_type=aggregate_type, event_type=event_type)
    )
    assert isinstance(result, Outbound)
    if result.route == "dead_letter":
        assert result.subject == "events.dlq"
        return
    tokens = result.subject.split(".")
    assert result.subject.startswith("events.")
    assert len(tokens) == 4
    assert all(tokens) and tokens[-1] == "tail"
    assert not any(c in result.subject for c in "*> \t\r\n")


# Routing on payload fields: {payload.customer.region}, when: {payload.priority: high}.
PATH_ROUTES = """\
  - name: urgent
    when: {payload.priority: high, payload.flags.vip: true}
    subject: "events.urgent.{payload.customer.region}"
    headers: {Customer: "{payload.customer.id}"}
  - name: regional
    subject: "events.region.{payload.customer.region}"
"""


def order(payload: object) -> dict[str, ColumnValue]:
    return row(payload=json.dumps(payload))


def test_paths_read_inside_the_json_payload() -> None:
    paths = router(PATH_ROUTES)
    document = {
        "priority": "high",
        "flags": {"vip": True},
        "customer": {"region": "eu", "id": 42},
    }
    urgent = published(paths.route("public.outbox", order(document)))
    assert (urgent.route, urgent.subject) == ("urgent", "events.urgent.eu")
    assert urgent.headers["Customer"] == "42"  # a number as JSON writes it
    assert urgent.data == json.dumps(document).encode()  # the payload is published as-is
    other = published(paths.route("public.outbox", order({**document, "priority": "low"})))
    assert (other.route, other.subject) == ("regional", "events.region.eu")


def test_a_missing_path_does_not_match_and_dead_letters_the_subject() -> None:
    paths = router(PATH_ROUTES)
    # No `flags`: `when` does not match; no region: the subject has no value.
    dead = dead_lettered(paths.route("public.outbox", order({"priority": "high"})))
    assert dead.dead_letter_reason == (
        "no value at {payload.customer.region} for the subject: the JSON has no such path"
    )
    assert dead.headers["Cdc-Subject"] == "events.region.{payload.customer.region}"
    assert dead.data == b'{"priority": "high"}'


@pytest.mark.parametrize(
    ("payload", "reason", "shown"),
    [
        (
            {"customer": {"region": None}},
            "JSON null at {payload.customer.region} in subject",
            "{payload.customer.region=NULL}",
        ),
        (
            {"customer": {"region": {"name": "eu"}}},
            "{payload.customer.region} in subject is a JSON object, not a single value",
            "{payload.customer.region=object}",
        ),
        (
            {"customer": ["eu"]},
            "no value at {payload.customer.region} for the subject: the JSON has no such path",
            "{payload.customer.region}",
        ),
        (
            {"customer": {"region": "e.u"}},
            "unsafe value for {payload.customer.region} in subject: 'e.u' (a subject token "
            "may not be empty or contain '.', '*', '>' or whitespace)",
            "{payload.customer.region='e.u'}",
        ),
    ],
)
def test_unusable_path_values_are_named(payload: object, reason: str, shown: str) -> None:
    dead = dead_lettered(router(PATH_ROUTES).route("public.outbox", order(payload)))
    assert dead.dead_letter_reason == reason
    assert dead.headers["Cdc-Subject"] == f"events.region.{shown}"


@pytest.mark.parametrize("payload", [None, "not json", '"a string"'])
def test_no_json_to_read_is_no_value(payload: str | None) -> None:
    dead = dead_lettered(router(PATH_ROUTES).route("public.outbox", row(payload=payload)))
    assert dead.dead_letter_reason is not None
    assert dead.dead_letter_reason.startswith("no value at {payload.customer.region}")


def test_path_numbers_keep_their_text_and_match_yaml_numbers() -> None:
    numbers = router(
        """\
  - when: {payload.version: 2}
    subject: "events.v2.{payload.count}"
    headers: {Amount: "{payload.amount}"}
  - subject: "events.other"
"""
    )
    document = '{"version": 2, "count": 7, "amount": 1.50}'
    hit = published(numbers.route("public.outbox", row(payload=document)))
    assert (hit.subject, hit.headers["Amount"]) == ("events.v2.7", "1.50")
    miss = published(numbers.route("public.outbox", row(payload='{"version": "3"}')))
    assert miss.subject == "events.other"


class CountingDecoder(json.JSONDecoder):
    """Stands in for the routes' JSON decoder, counting the documents parsed. Patched as
    the module's decoder object rather than its ``_parse_json`` function: compiled
    (mypyc) code calls a function of its own module directly, but reads a module
    global from the module, so this sees every parse in both builds."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__(parse_int=str, parse_float=str)
        self.parsed: list[str] = []
        self._refuse = refuse

    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        if self._refuse:
            raise AssertionError("parsed JSON for a config without paths")
        self.parsed.append(s)
        return super().decode(s, *args, **kwargs)


def test_the_json_is_parsed_once_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    import cdc_bridge.routing.rules as router_module

    decoder = CountingDecoder()
    monkeypatch.setattr(router_module, "_JSON_TEXT_NUMBERS", decoder)
    paths = router(PATH_ROUTES)
    published(
        paths.route("public.outbox", order({"priority": "low", "customer": {"region": "eu"}}))
    )
    assert len(decoder.parsed) == 1  # two `when` paths, a subject path: one parse


def test_routes_without_paths_never_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    import cdc_bridge.routing.rules as router_module

    monkeypatch.setattr(router_module, "_JSON_TEXT_NUMBERS", CountingDecoder(refuse=True))
    plain = router('  - subject: "events.{aggregate_type}.{event_type}"\n')
    assert published(plain.route("public.outbox", row())).subject == "events.ticket.created"
