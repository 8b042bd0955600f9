"""The dead-letter policy (routing/dead_letters.py): what replaces a message JetStream
can never store."""

from __future__ import annotations

import pytest

from cdc_bridge.config.load import parse_config
from cdc_bridge.routing.dead_letters import POISON_FIX, DeadLetterPolicy, PoisonRowError
from cdc_bridge.routing.router import Router

CONFIG = """
postgres: {dsn: "postgresql://u@localhost/db", slot: s, publication: p}
nats: {servers: ["nats://127.0.0.1:4222"], stream: {name: EVENTS, subjects: ["events.>"]}}
outbox: {table: public.outbox}
routes:
  - subject: "events.{aggregate_type}"
"""

HEADERS = {
    "Trace": "t-1",
    "Nats-Msg-Id": "3f0c",
    "Cdc-Lsn": "0/16B3748",
    "Cdc-Index": "2",
    "Cdc-Table": "public.outbox",
    "Cdc-Source": "7301/s",
}


def policy(extra: str = "") -> DeadLetterPolicy:
    return DeadLetterPolicy(Router(parse_config(CONFIG + extra, env={})))


def test_the_replacement_is_the_dead_letter_with_the_originals_bridge_headers() -> None:
    subject, data, headers = policy("dead_letter: {subject: events.dlq}\n").replacement(
        "events.ticket", b'{"a":1}', dict(HEADERS), "no stream captures subject events.ticket"
    )
    assert subject == "events.dlq"
    assert data == b'{"a":1}'
    assert headers == {
        "Cdc-Error": "no stream captures subject events.ticket",
        "Cdc-Subject": "events.ticket",
        **{k: v for k, v in HEADERS.items() if k != "Trace"},
    }


def test_the_replacement_of_a_transactions_last_event_is_its_last_event() -> None:
    """Cdc-Tx-Last is on the last event only: a replacement keeps it, or its absence."""
    last = {**HEADERS, "Cdc-Tx-Last": "true"}
    dlq = policy("dead_letter: {subject: events.dlq}\n")
    _, _, headers = dlq.replacement("events.ticket", b"{}", last, "too large")
    assert headers["Cdc-Tx-Last"] == "true"
    _, _, headers = dlq.replacement("events.ticket", b"{}", dict(HEADERS), "too large")
    assert "Cdc-Tx-Last" not in headers


def test_without_a_dead_letter_subject_it_is_a_poison_row_naming_the_row() -> None:
    with pytest.raises(PoisonRowError) as caught:
        policy().replacement("events.ticket", b"{}", dict(HEADERS), "too large")
    assert str(caught.value) == (
        "row id=3f0c (public.outbox): too large; no dead_letter is configured, so the "
        f"bridge stops without confirming past it ({POISON_FIX})"
    )
    assert "fix: add a dead_letter subject, or a route" in POISON_FIX


def test_a_dead_letter_that_cannot_be_stored_has_nowhere_further_to_go() -> None:
    with pytest.raises(PoisonRowError, match="the dead-letter subject itself cannot be stored"):
        policy("dead_letter: {subject: events.dlq}\n").replacement(
            "events.dlq", b"{}", dict(HEADERS), "no stream captures subject events.dlq"
        )
