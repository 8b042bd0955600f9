"""The pure part of the start-up checks: which subjects a route's template can produce."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_bridge.config.load import parse_config
from cdc_bridge.core.subjects import subject_matches
from cdc_bridge.routing.router import Outbound, Router
from cdc_bridge.sink.coverage import route_subject_filter


@pytest.mark.parametrize(
    ("template", "subject_filter"),
    [
        ("events.ticket", "events.ticket"),
        ("events.{aggregate_type}", "events.*"),
        ("events.{aggregate_type}.{event_type}", "events.*.*"),
        ("events.v-{event_type}.x", "events.*.x"),  # a token partly literal is still any
        ("{aggregate_type}.events", "*.events"),
        ("a{{b}}.{event_type}", "a{b}.*"),
        ("events.{aggregate_type}{event_type}", "events.*"),
    ],
)
def test_route_subject_filter(template: str, subject_filter: str) -> None:
    assert route_subject_filter(template) == subject_filter


HEAD = """\
postgres: {dsn: "postgresql://app@127.0.0.1/app"}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
dead_letter: {subject: events.dlq}
"""
TEMPLATES = [
    "events.{aggregate_type}.{event_type}",
    "events.v-{event_type}.x",
    "{aggregate_type}.fixed",
    "events.{aggregate_type}{event_type}",
]


@pytest.mark.parametrize("template", TEMPLATES)
@given(aggregate_type=st.text(max_size=8), event_type=st.text(max_size=8))
def test_every_rendered_subject_falls_under_the_filter(
    template: str, aggregate_type: str, event_type: str
) -> None:
    """Whatever the row holds, the router publishes inside the template's own filter
    (or dead-letters the row): the start-up check covers every subject a route can use."""
    config = parse_config(HEAD + f'routes:\n  - subject: "{template}"\n', env={})
    row = {
        "id": "1",
        "aggregate_type": aggregate_type,
        "event_type": event_type,
        "payload": "{}",
        "headers": None,
    }
    outcome = Router(config).route("public.outbox", row)
    assert isinstance(outcome, Outbound)
    if outcome.route == "dead_letter":
        assert outcome.subject == "events.dlq"
    else:
        assert subject_matches(route_subject_filter(template), outcome.subject)
