"""Hostile values in every place a row's text reaches the wire (issue 27, items 1, 2, 13).

Each value is routed, framed as the pipeline and the publisher frame it (sink/wire.py),
and the frame is read back by nats-py's own protocol parser and header parser, as a
subscriber would read it: exactly one message, with exactly the headers the bridge meant.
A value that cannot be sent makes a dead letter with the reason, never a changed frame.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.client import Client as NatsClient
from nats.protocol.parser import Parser

from cdc_bridge.config.load import parse_config
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.changes import ColumnValue
from cdc_bridge.core.headers import header_lines
from cdc_bridge.core.wire_text import (
    MAX_HEADER_BLOCK,
    frame_problem,
    id_problem,
    sendable_id,
    shown,
    subject_limit,
)
from cdc_bridge.routing.messages import EnvelopeColumns, message_event
from cdc_bridge.routing.router import Outbound, Poison, Router

HEAD = """\
postgres: {dsn: "postgresql://app@127.0.0.1/app"}
nats:
  servers: [nats://127.0.0.1:4222]
  stream: {name: OUTBOX, subjects: ["events.>"]}
"""


def config(routes: str, *, dead_letter: bool = True, extra: str = "") -> BridgeConfig:
    dead = "dead_letter: {subject: events.dlq}\n" if dead_letter else ""
    return parse_config(HEAD + "routes:\n" + routes + dead + extra, env={})


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

HOSTILE = [
    "a\rb",
    "a\nb",
    "a\r\nInjected-Hdr: yes",
    "x\r\n\r\nbody",  # a blank line would end the header block early
    "x\r\nNats-Expected-Last-Sequence: 1",
    "nul\x00byte",
    "bell\x07",
    "del\x7f",
    "esc\x1b[31m",
    "lone \ud800 surrogate",
    "\udfff",
]
# Values that are awkward but sendable: they must arrive unchanged.
AWKWARD = ["a: b", "Name: value", "colons:::", "tab\tinside", "ünïcødé ✓", "x" * 2000]

ROUTES = """\
  - name: by_aggregate_id
    when: {aggregate_type: by_id}
    subject: events.x
    id: aggregate_id
  - name: header_template
    when: {aggregate_type: header}
    subject: events.h
    headers: {X-Agg: '{aggregate_id}'}
  - name: subject_token
    when: {aggregate_type: subject}
    subject: 'events.{event_type}'
"""


def router(on_reserved: list[str] | None = None) -> Router:
    callback = on_reserved.append if on_reserved is not None else None
    return Router(config(ROUTES), on_reserved_header=callback)


class _Received:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes, bytes | None]] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, payload: bytes, hdr: bytes | None
    ) -> None:
        self.messages.append((subject, payload, hdr))


def frame(outbound: Outbound) -> bytes:
    """The HPUB frame the publisher writes for ``outbound``, with the pipeline's lines."""
    lines = (
        header_lines(outbound.headers)
        + f"Nats-Msg-Id: {outbound.msg_id}\r\nCdc-Lsn: 0/16B3748\r\nCdc-Index: 0\r\n"
        + "Cdc-Table: public.outbox\r\nCdc-Source: app/slot\r\n"
    )
    block = f"NATS/1.0\r\n{lines}\r\n".encode()
    size = len(block) + len(outbound.data)
    assert frame_problem(outbound.subject, len(block), size, 1 << 20, subject_limit()) is None
    head = f"HPUB {outbound.subject} _INBOX.abc.1 {len(block)} {size}\r\n".encode()
    return head + block + outbound.data + b"\r\n"


def received(wire: bytes) -> list[tuple[str, bytes, dict[str, str]]]:
    """What a subscriber gets for ``wire``: the server relays HPUB as HMSG."""
    as_delivered = b"HMSG " + wire.removeprefix(b"HPUB ").replace(b" ", b" 1 ", 1)
    sink = _Received()
    asyncio.run(Parser(sink).parse(as_delivered))
    client = NatsClient()
    out = []
    for subject, payload, hdr in sink.messages:
        headers = asyncio.run(client._process_headers(hdr)) or {}
        out.append((subject.decode(), payload, headers))
    return out


def expected_headers(outbound: Outbound) -> dict[str, str]:
    return {
        **outbound.headers,
        "Nats-Msg-Id": outbound.msg_id,
        "Cdc-Lsn": "0/16B3748",
        "Cdc-Index": "0",
        "Cdc-Table": "public.outbox",
        "Cdc-Source": "app/slot",
    }


def sent(outcome: Outbound | Poison) -> tuple[Outbound, dict[str, str]]:
    """The outbound message read back: exactly one message with exactly its headers."""
    assert isinstance(outcome, Outbound), outcome
    [(subject, payload, headers)] = received(frame(outcome))
    assert subject == outcome.subject
    assert payload == outcome.data
    assert headers == expected_headers(outcome)
    return outcome, headers


def dead_letter_of(outcome: Outbound | Poison) -> Outbound:
    outbound, _ = sent(outcome)
    assert outbound.route == "dead_letter", outbound
    assert outbound.subject == "events.dlq"
    return outbound


@pytest.mark.parametrize("value", HOSTILE)
def test_an_id_that_cannot_be_sent_is_dead_lettered_with_a_stand_in_id(value: str) -> None:
    result = dead_letter_of(
        router().route("public.outbox", row(aggregate_type="by_id", aggregate_id=value))
    )
    assert result.msg_id == sendable_id(value) != value
    assert result.msg_id.startswith("unsendable-id:")
    assert shown(value) in result.headers["Cdc-Error"]
    assert "cannot be sent as Nats-Msg-Id" in result.headers["Cdc-Error"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_header_value_that_cannot_be_sent_is_dead_lettered(value: str) -> None:
    result = dead_letter_of(
        router().route("public.outbox", row(aggregate_type="header", aggregate_id=value))
    )
    assert "unsafe value for {aggregate_id} in header 'X-Agg'" in result.headers["Cdc-Error"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_subject_token_that_cannot_be_sent_is_dead_lettered(value: str) -> None:
    result = dead_letter_of(
        router().route("public.outbox", row(aggregate_type="subject", event_type=value))
    )
    assert "unsafe value for {event_type} in subject" in result.headers["Cdc-Error"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_headers_column_value_that_cannot_be_sent_is_dead_lettered(value: str) -> None:
    # json (not jsonb) keeps "\ud800" as written: json.loads makes a lone surrogate.
    column = json.dumps({"X-App": value})
    result = dead_letter_of(
        router().route("public.outbox", row(aggregate_type="subject", headers=column))
    )
    assert "unsafe value for header 'X-App'" in result.headers["Cdc-Error"]


@pytest.mark.parametrize("value", AWKWARD)
def test_awkward_but_sendable_values_arrive_unchanged(value: str) -> None:
    r = router()
    outbound, headers = sent(
        r.route("public.outbox", row(aggregate_type="by_id", aggregate_id=value))
    )
    assert outbound.route == "by_aggregate_id"
    assert headers["Nats-Msg-Id"] == value
    outbound, headers = sent(
        r.route("public.outbox", row(aggregate_type="header", aggregate_id=value))
    )
    assert headers["X-Agg"] == value.strip()  # nats-py strips a value's outer whitespace


def test_a_subject_longer_than_a_control_line_is_dead_lettered() -> None:
    token = "t" * (subject_limit() + 1)
    result = dead_letter_of(
        router().route("public.outbox", row(aggregate_type="subject", event_type=token))
    )
    assert "longer than the" in result.headers["Cdc-Error"]
    assert "control line" in result.headers["Cdc-Error"]
    # Cdc-Subject says where it was meant to go, clipped to something sendable.
    assert result.headers["Cdc-Subject"].startswith("events.ttt")
    assert len(result.headers["Cdc-Subject"]) <= 1024


def test_headers_over_the_servers_header_block_are_dead_lettered() -> None:
    column = json.dumps({"X-Big": "y" * MAX_HEADER_BLOCK})
    result = dead_letter_of(
        router().route("public.outbox", row(aggregate_type="subject", headers=column))
    )
    assert f"exceed the server's {MAX_HEADER_BLOCK}" in result.headers["Cdc-Error"]


def test_an_id_over_the_limit_is_dead_lettered() -> None:
    value = "i" * 5000
    assert id_problem(value) is not None
    result = dead_letter_of(
        router().route("public.outbox", row(aggregate_type="by_id", aggregate_id=value))
    )
    assert "longer than the 4096 bytes allowed" in result.headers["Cdc-Error"]


def test_the_bridges_header_names_in_the_headers_column_are_left_out_once_each_told() -> None:
    told: list[str] = []
    column = json.dumps(
        {"Cdc-Replay": "true", "Cdc-Error": "x", "Cdc-Subject": "y", "cdc-lsn": "0/0",
         "CDC-SOURCE": "z", "Cdc-Body-Dropped": "1", "X-Kept": "k"}
    )  # fmt: skip
    outbound, headers = sent(
        router(told).route("public.outbox", row(aggregate_type="subject", headers=column))
    )
    assert outbound.headers == {"X-Kept": "k"}
    assert headers["Cdc-Source"] == "app/slot"
    assert sorted(told) == sorted(
        ["Cdc-Replay", "Cdc-Error", "Cdc-Subject", "cdc-lsn", "CDC-SOURCE", "Cdc-Body-Dropped"]
    )


ENVELOPE = EnvelopeColumns()


@pytest.mark.parametrize("value", HOSTILE)
def test_a_logical_message_with_a_hostile_id_is_dead_lettered(value: str) -> None:
    content = json.dumps(
        {
            "id": value,
            "aggregate_type": "by_id",
            "aggregate_id": "A",
            "event_type": "e",
            "payload": {},
        }
    ).encode()
    event = message_event("orders", content, default_id="0/1-0", columns=ENVELOPE)
    r = Router(
        config(
            ROUTES.replace("aggregate_id\n", "id\n"), extra="outbox: {message_prefixes: [orders]}\n"
        )
    )
    row_values: dict[str, ColumnValue] = dict(event.row)
    result = dead_letter_of(r.route(event.table, row_values))
    assert result.msg_id == sendable_id(value)


def test_a_payload_with_a_lone_surrogate_is_dead_lettered_not_a_crash() -> None:
    r = Router(config("  - {subject: events.x, payload: row}\n"))
    result = dead_letter_of(r.route("public.outbox", row(event_type="bad \ud800")))
    assert "not valid Unicode" in result.headers["Cdc-Error"]


def test_without_a_dead_letter_an_unsendable_id_is_poison_shown_escaped() -> None:
    r = Router(config(ROUTES, dead_letter=False))
    outcome = r.route("public.outbox", row(aggregate_type="by_id", aggregate_id="a\r\nb\ud800"))
    assert isinstance(outcome, Poison)
    assert outcome.row_id == "a\\r\\nb\\ud800"
    assert "'a\\r\\nb\\ud800'" in outcome.reason
