"""audit.interval, .window, .settle: the continuous audit is off by default; when on, a
config it could not audit is refused at load, naming the key."""

from __future__ import annotations

import pytest

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.problems import ConfigError

BASE = """\
postgres:
  dsn: postgresql://app@127.0.0.1:5432/app
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {{name: OUTBOX, subjects: ["events.>"]}}
routes:
  - subject: "events.{{event_type}}"
{extra}
"""


def problems(extra: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE.format(extra=extra), source="c.yaml", env={})
    return caught.value.problems


def test_off_by_default_with_an_hour_looked_back_and_a_minute_left_to_settle() -> None:
    audit = parse_config(BASE.format(extra=""), env={}).audit
    assert (audit.interval, audit.window, audit.settle) == (0.0, 3600.0, 60.0)
    assert parse_config(BASE.format(extra="audit:"), env={}).audit == audit


def test_durations_are_read_as_durations() -> None:
    extra = "audit: {interval: 5m, window: 2h, settle: 30s}"
    audit = parse_config(BASE.format(extra=extra), env={}).audit
    assert (audit.interval, audit.window, audit.settle) == (300.0, 7200.0, 30.0)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("audit: {interval: often}", "audit.interval"),
        ("audit: {interval: -1}", "audit.interval"),
        ("audit: {window: 0}", "audit.window"),
        ("audit: {settle: soon}", "audit.settle"),
    ],
)
def test_a_value_that_is_no_duration_names_the_key(extra: str, key: str) -> None:
    [problem] = problems(extra)
    assert problem.startswith(f"c.yaml:8: {key}:"), problem


def test_an_unknown_key_is_reported_with_a_suggestion() -> None:
    [problem] = problems("audit: {intervall: 5m}")
    assert "audit.intervall" in problem and "interval" in problem.split("intervall", 1)[1]


def test_settle_must_leave_a_window() -> None:
    [problem] = problems("audit: {interval: 5m, window: 1m, settle: 1m}")
    assert problem.startswith("c.yaml:8: audit.settle: must be shorter than audit.window")


def test_a_config_without_outbox_rows_is_refused_only_when_audited() -> None:
    messages_only = "outbox: {table: [], message_prefixes: [outbox]}"
    parse_config(BASE.format(extra=messages_only), env={})
    [problem] = problems(messages_only + "\naudit: {interval: 5m}")
    assert "audit.interval: nothing to audit: the config names no outbox table" in problem


def test_routes_with_different_id_columns_are_refused_when_audited() -> None:
    extra = "audit: {interval: 5m}"
    text = BASE.format(extra=extra).replace(
        '  - subject: "events.{event_type}"',
        "  - {when: {event_type: a}, subject: events.a, id: event_id}\n"
        '  - subject: "events.{event_type}"',
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="c.yaml", env={})
    [problem] = caught.value.problems
    assert "audit.interval: routes take Nats-Msg-Id from different columns (event_id, id)" in (
        problem
    )
