"""`cdc-bridge routes test` and the pure preview behind it."""

import json
from pathlib import Path

import pytest

from cdc_bridge.cli.main import main
from cdc_bridge.config.load import parse_config
from cdc_bridge.routing.preview import column_text, preview_row, resolve_table, row_from_json

CONFIG = """\
postgres: {dsn: "postgresql://app@127.0.0.1/app"}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
outbox:
  table: [public.outbox, billing.outbox]
routes:
  - name: tickets
    when: {aggregate_type: ticket}
    subject: "events.ticket.{event_type}"
    headers: {Aggregate-Id: "{aggregate_id}"}
  - name: invoices
    when: {table: billing.outbox}
    subject: "events.billing.{event_type}"
"""
DEAD_LETTER = "dead_letter: {subject: events.dlq}\n"

TICKET = {
    "id": "7",
    "aggregate_type": "ticket",
    "aggregate_id": "T-1",
    "event_type": "created",
    "payload": {"n": 1},
    "headers": None,
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG + DEAD_LETTER)
    return path


@pytest.fixture
def config_without_dead_letter(tmp_path: Path) -> Path:
    path = tmp_path / "no-dlq.yaml"
    path.write_text(CONFIG)
    return path


def routes_test(
    capsys: pytest.CaptureFixture[str], config: Path, row: object, *extra: str
) -> tuple[int, str, str]:
    text = row if isinstance(row, str) else json.dumps(row)
    code = main(["routes", "test", "--config", str(config), "--row", text, *extra])
    out, err = capsys.readouterr()
    return code, out, err


# --- the command ------------------------------------------------------------------------------


def test_routed_row_prints_route_subject_headers_and_payload(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    code, out, err = routes_test(capsys, config_file, TICKET)
    assert code == 0, err
    assert out.splitlines() == [
        "route:    tickets",
        "subject:  events.ticket.created",
        "headers:",
        "  Aggregate-Id: T-1",
        "  Nats-Msg-Id: 7",
        "payload (8 bytes):",
        '  {"n": 1}',
    ]


def test_json_output_is_one_stable_object(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    code, out, _ = routes_test(capsys, config_file, TICKET, "--json")
    assert code == 0
    assert json.loads(out) == {
        "outcome": "routed",
        "route": "tickets",
        "subject": "events.ticket.created",
        "intended_subject": None,
        "msg_id": "7",
        "headers": {"Aggregate-Id": "T-1", "Nats-Msg-Id": "7"},
        "payload": '{"n": 1}',
        "payload_encoding": "utf-8",
        "payload_bytes": 8,
        "reason": None,
    }


@pytest.mark.parametrize("event_type", ["x.>", "a b", "", "a*"])
def test_unsafe_value_is_dead_lettered_with_exit_1(
    capsys: pytest.CaptureFixture[str], config_file: Path, event_type: str
) -> None:
    code, out, _ = routes_test(capsys, config_file, {**TICKET, "event_type": event_type}, "--json")
    assert code == 1
    shown = json.loads(out)
    assert shown["outcome"] == "dead_letter"
    assert shown["subject"] == "events.dlq"
    assert "unsafe value for {event_type}" in shown["reason"]
    assert shown["headers"]["Cdc-Error"] == shown["reason"]
    assert shown["payload"] == '{"n": 1}'


def test_dead_letter_in_plain_text_names_the_reason_first(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    code, out, _ = routes_test(capsys, config_file, {**TICKET, "aggregate_type": "user"})
    assert code == 1
    assert out.splitlines()[:3] == [
        "dead letter: no route matches",
        "route:    dead_letter",
        "subject:  events.dlq",
    ]


def test_too_large_payload_shows_the_intended_subject(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    row = {**TICKET, "payload": "x" * 500}
    code, out, _ = routes_test(capsys, config_file, row, "--json", "--max-payload", "300")
    assert code == 1
    shown = json.loads(out)
    assert "exceeds the server's max_payload 300" in shown["reason"]
    assert shown["intended_subject"] == "events.ticket.created"
    assert shown["headers"]["Cdc-Subject"] == "events.ticket.created"
    assert (shown["payload"], shown["payload_bytes"]) == ("", 0)


def test_without_dead_letter_the_row_is_poison(
    capsys: pytest.CaptureFixture[str], config_without_dead_letter: Path
) -> None:
    row = {**TICKET, "event_type": "a.b"}
    code, out, _ = routes_test(capsys, config_without_dead_letter, row)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("poison row (id 7): unsafe value for {event_type}")
    assert "would stop at this row" in lines[1]

    code, out, _ = routes_test(capsys, config_without_dead_letter, row, "--json")
    shown = json.loads(out)
    assert (shown["outcome"], shown["route"], shown["subject"]) == ("poison", None, None)
    assert shown["msg_id"] == "7"
    assert shown["payload"] is None and shown["headers"] == {}


def test_poison_shows_the_intended_subject_when_one_was_rendered(
    capsys: pytest.CaptureFixture[str], config_without_dead_letter: Path
) -> None:
    row = {**TICKET, "payload": "x" * 500}
    code, out, _ = routes_test(
        capsys, config_without_dead_letter, row, "--json", "--max-payload", "300"
    )
    assert code == 1
    assert json.loads(out)["intended_subject"] == "events.ticket.created"


def test_table_option_selects_the_outbox_table(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    row = {**TICKET, "aggregate_type": "invoice"}
    code, out, _ = routes_test(capsys, config_file, row, "--json", "--table", "billing.outbox")
    assert code == 0
    assert json.loads(out)["subject"] == "events.billing.created"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"id": 7,', "cdc-bridge: --row: invalid JSON: "),
        ("[1, 2]", "cdc-bridge: --row: expected a JSON object"),
        ('{"n": NaN}', "cdc-bridge: --row: invalid JSON: NaN is not valid JSON"),
    ],
)
def test_bad_row_is_a_usage_error_on_one_line(
    capsys: pytest.CaptureFixture[str], config_file: Path, row: str, message: str
) -> None:
    code, out, err = routes_test(capsys, config_file, row)
    assert code == 2
    assert out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_unknown_table_and_bad_config_are_usage_errors(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    code, _, err = routes_test(capsys, config_file, TICKET, "--table", "public.other")
    assert code == 2
    assert "--table: the bridge reads only public.outbox, billing.outbox" in err

    broken = tmp_path / "broken.yaml"
    broken.write_text(CONFIG.replace('subject: "events.billing', 'subjekt: "events.billing'))
    code, _, err = routes_test(capsys, broken, TICKET)
    assert code == 2
    assert "invalid configuration" in err and "did you mean 'subject'?" in err


# --- the pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("created", "created"),
        (None, None),
        (42, "42"),
        (True, "true"),
        (False, "false"),
        ([1, "a", None], '[1, "a", null]'),
        # jsonb orders keys shorter first, then bytewise, and writes ": " and ", ".
        ({"bb": 1, "a": {"z": [], "yy": "é\n"}}, '{"a": {"z": [], "yy": "é\\n"}, "bb": 1}'),
    ],
)
def test_column_text_is_postgres_text_form(value: object, text: str | None) -> None:
    assert column_text(value) == text


@pytest.mark.parametrize(
    ("number", "text"), [("1.50", "1.50"), ("1e3", "1000"), ("-0.0", "0.0"), ("2.5E-2", "0.025")]
)
def test_numbers_print_as_postgres_numeric(number: str, text: str) -> None:
    assert row_from_json(f'{{"n": {number}}}') == {"n": text}


def test_row_keeps_strings_verbatim_and_null_as_null() -> None:
    row = row_from_json('{"a": " x ", "b": null, "c": "{\\"k\\": 1}"}')
    assert row == {"a": " x ", "b": None, "c": '{"k": 1}'}


def test_resolve_table_defaults_to_the_first_outbox_table() -> None:
    config = parse_config(CONFIG, env={})
    assert resolve_table(config, None) == "public.outbox"
    assert resolve_table(config, "outbox") == "public.outbox"
    assert resolve_table(config, "billing.outbox") == "billing.outbox"


def test_preview_of_bytes_payload_is_base64() -> None:
    config = parse_config(CONFIG + DEAD_LETTER, env={})
    row = {**row_from_json(json.dumps(TICKET)), "payload": b"\xff\x00"}
    shown = preview_row(config, "public.outbox", row).as_json()
    assert (shown["payload"], shown["payload_encoding"]) == ("/wA=", "base64")
