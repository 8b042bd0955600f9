"""Routing through real PostgreSQL and NATS: poison rows between good rows.

Each poison row must land once on the dead-letter subject, with its reason, while the
good rows around it keep flowing in order and the slot keeps advancing. Without a
dead_letter subject the bridge must stop at the poison row without confirming past it,
and resume from that very row once the config is fixed.

The nats-server here is the test's own, started with ``max_payload: 4096`` so that a
"too large" row needs only a few kilobytes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.bridge import MakeBridge, start_bridge
from support.nats_helpers import StreamMessage, nats_with_max_payload
from support.outbox import (
    bridge_config,
    current_wal_lsn,
    duplicated_ids,
    slot_confirmed_flush_lsn,
    stream_messages,
    wait_for_ids,
    wait_for_slot_past,
)

from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.dev.nats_server import NatsServer

MAX_PAYLOAD = 4096
STATUS_INTERVAL = 0.2  # bridge_config's postgres.status_interval


@dataclass(frozen=True, slots=True)
class Row:
    """One outbox row; ``tenant`` is a nullable column this test adds to the table."""

    aggregate_type: str = "ticket"
    event_type: str = "created"
    payload: Any = field(default_factory=dict)
    tenant: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def payload_text(self) -> str:
        """The payload as PostgreSQL sends a jsonb value (": " and ", " separators)."""
        return json.dumps(self.payload, ensure_ascii=False)


@pytest.fixture
def small_nats(devstack_tmp: Path) -> Iterator[NatsServer]:
    with nats_with_max_payload(devstack_tmp, MAX_PAYLOAD) as server:
        yield server


@pytest.fixture
def outbox_dsn(pg_dsn: str) -> str:
    """The test database, its outbox with a nullable column for a template to need."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.outbox ADD COLUMN tenant text")
    return pg_dsn


def commit(dsn: str, rows: Sequence[Row]) -> None:
    with psycopg.connect(dsn) as conn:
        for row in rows:
            conn.execute(
                "INSERT INTO public.outbox"
                " (id, aggregate_type, aggregate_id, event_type, payload, tenant)"
                " VALUES (%s, %s, 'A-1', %s, %s::jsonb, %s)",
                (row.id, row.aggregate_type, row.event_type, row.payload_text, row.tenant),
            )


def routes(u: str) -> list[dict[str, Any]]:
    def route(name: str, aggregate_type: str, subject: str) -> dict[str, Any]:
        return {"name": name, "when": {"aggregate_type": aggregate_type}, "subject": subject}

    # No catch-all: an unknown aggregate_type matches no route.
    return [
        route("tickets", "ticket", f"{u}.ticket.{{event_type}}"),
        route("tenants", "tenanted", f"{u}.tenant.{{tenant}}"),
        # Outside every stream: the publish gets "no responders".
        route("stray", "stray", f"other{u}.{{aggregate_type}}"),
    ]


def config_for(dsn: str, nats_url: str, u: str, *, dead_letter: bool = True) -> dict[str, Any]:
    config = bridge_config(dsn, nats_url, u, routes=routes(u))
    if dead_letter:
        config["dead_letter"] = {"subject": f"{u}.dlq"}
    return config


def by_id(messages: Sequence[StreamMessage]) -> dict[str, list[StreamMessage]]:
    found: dict[str, list[StreamMessage]] = {}
    for message in messages:
        found.setdefault(message.headers.get("Nats-Msg-Id", ""), []).append(message)
    return found


def assert_dead_lettered(
    messages: Sequence[StreamMessage],
    row: Row,
    dlq: str,
    reason: str,
    intended_subject: str,
    *,
    data: bytes | None = None,
) -> None:
    [message] = by_id(messages)[row.id]  # exactly once, and only on the dead-letter subject
    assert message.subject == dlq
    assert reason in message.headers["Cdc-Error"], message.headers
    assert message.headers.get("Cdc-Subject") == intended_subject
    expected = row.payload_text.encode() if data is None else data
    assert message.data == expected


def test_poison_rows_between_good_rows_are_dead_lettered(
    outbox_dsn: str, small_nats: NatsServer, unique_name: str, make_bridge: MakeBridge
) -> None:
    u, stream, dlq = unique_name, unique_name.upper(), f"{unique_name}.dlq"
    start_bridge(make_bridge, config_for(outbox_dsn, small_nats.url, u))

    good = [Row(event_type=f"e{n}", payload={"n": n}) for n in range(8)]
    acme = Row(aggregate_type="tenanted", tenant="acme", payload={"t": "acme"})
    no_route = Row(aggregate_type="unknown", payload={"p": "no route"})
    unsafe = {
        value: Row(event_type=value, payload={"v": value}) for value in ("x.>", "a b", "", "a*")
    }
    null_tenant = Row(aggregate_type="tenanted", tenant=None, payload={"p": "null"})
    too_large = Row(event_type="big", payload="x" * (MAX_PAYLOAD + 100))
    stray = Row(aggregate_type="stray", payload={"p": "stray"})
    transactions = [
        [good[0], no_route, good[1]],
        [unsafe["x.>"], acme, unsafe["a b"]],
        [unsafe[""], unsafe["a*"], good[2]],
        [null_tenant, good[3]],
        [too_large, good[4]],
        [stray, good[5], good[6]],
        [good[7]],
    ]  # fmt: skip
    for rows in transactions:
        commit(outbox_dsn, rows)

    every_id = [row.id for rows in transactions for row in rows]
    messages = wait_for_ids(small_nats.url, stream, every_id, timeout=30)

    # Good rows: in commit order, each on its own subject.
    routed = [m for m in messages if m.subject != dlq]
    expected_good = [*good[:2], acme, *good[2:]]
    assert [m.headers["Nats-Msg-Id"] for m in routed] == [row.id for row in expected_good]
    assert [m.subject for m in routed] == [
        f"{u}.ticket.e0", f"{u}.ticket.e1", f"{u}.tenant.acme",
        *(f"{u}.ticket.e{n}" for n in range(2, 8)),
    ]  # fmt: skip
    assert [m.data for m in routed] == [row.payload_text.encode() for row in expected_good]

    # Poison rows: each once on the dead-letter subject, with the reason.
    assert len(messages) == len(every_id), duplicated_ids(messages)
    # Every dead letter names its intended subject, the offending value shown in place.
    assert_dead_lettered(messages, no_route, dlq, "no route matches", "(no route)")
    for value, row in unsafe.items():
        assert_dead_lettered(
            messages, row, dlq, f"unsafe value for {{event_type}} in subject: {value!r}",
            f"{u}.ticket.{{event_type={value!r}}}",
        )  # fmt: skip
    assert_dead_lettered(
        messages, null_tenant, dlq, "NULL value for {tenant}", f"{u}.tenant.{{tenant=NULL}}"
    )
    assert_dead_lettered(
        messages, too_large, dlq, f"exceeds the server's max_payload {MAX_PAYLOAD}",
        f"{u}.ticket.big", data=b"",
    )  # fmt: skip
    assert_dead_lettered(
        messages, stray, dlq, f"no stream captures subject other{u}.stray", f"other{u}.stray"
    )

    # The slot moves past the last transaction, poison rows and all.
    last = next(m for m in messages if m.headers["Nats-Msg-Id"] == good[7].id)
    wait_for_slot_past(outbox_dsn, u, parse_lsn(last.headers["Cdc-Lsn"]), timeout=10)


@pytest.mark.parametrize(
    ("poison", "reason"),
    [
        (Row(event_type="x.>"), "unsafe value for {event_type} in subject: 'x.>'"),
        (Row(aggregate_type="stray"), "no stream captures subject other{u}.stray"),
    ],
    ids=["unsafe-value", "no-stream"],
)
def test_without_dead_letter_the_bridge_stops_at_the_row_and_resumes_from_it(
    outbox_dsn: str,
    small_nats: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
    poison: Row,
    reason: str,
) -> None:
    u, stream, dlq = unique_name, unique_name.upper(), f"{unique_name}.dlq"
    reason = reason.replace("{u}", u)
    bridge = start_bridge(make_bridge, config_for(outbox_dsn, small_nats.url, u, dead_letter=False))

    before = [Row(event_type="before1"), Row(event_type="before2")]
    after = Row(event_type="after")
    commit(outbox_dsn, before)
    before_poison = current_wal_lsn(outbox_dsn)  # at or after the end of that commit
    commit(outbox_dsn, [poison])
    commit(outbox_dsn, [after])

    code = bridge.wait_for_exit(timeout=30)
    assert code != 0
    naming = [line for line in bridge.lines if poison.id in line and reason in line]
    assert len(naming) == 1, bridge.lines[-10:]
    # Nothing past the poison row is confirmed, however long we look.
    confirmed = slot_confirmed_flush_lsn(outbox_dsn, u)
    assert confirmed is not None and confirmed <= before_poison
    stored = stream_messages(small_nats.url, stream)
    assert {row.id for row in before} <= {m.headers["Nats-Msg-Id"] for m in stored}

    # Fixed config: the same slot resumes from the poison row.
    start_bridge(make_bridge, config_for(outbox_dsn, small_nats.url, u, dead_letter=True))
    every_id = [row.id for row in [*before, poison, after]]
    messages = wait_for_ids(small_nats.url, stream, every_id, timeout=30)
    assert duplicated_ids(messages) == {}
    assert [m.headers["Nats-Msg-Id"] for m in messages if m.subject != dlq] == [
        before[0].id, before[1].id, after.id,
    ]  # fmt: skip
    [dead] = [m for m in messages if m.subject == dlq]
    assert dead.headers["Nats-Msg-Id"] == poison.id
    assert reason in dead.headers["Cdc-Error"]
    last = next(m for m in messages if m.headers["Nats-Msg-Id"] == after.id)
    wait_for_slot_past(outbox_dsn, u, parse_lsn(last.headers["Cdc-Lsn"]), timeout=10)


def test_a_row_just_under_the_limit_whose_headers_push_it_over_is_dead_lettered(
    outbox_dsn: str, small_nats: NatsServer, unique_name: str, make_bridge: MakeBridge
) -> None:
    """max_payload counts headers and data together. A payload that fits with the
    route's own headers, but not with the Cdc-* headers the bridge adds, must still be
    dead-lettered rather than sent: the server would close the connection on it, and
    the replay after the reconnect would do the same, for ever."""
    u, stream, dlq = unique_name, unique_name.upper(), f"{unique_name}.dlq"
    start_bridge(make_bridge, config_for(outbox_dsn, small_nats.url, u))
    # The router's own estimate: data + "NATS/1.0\r\n\r\n" + "Nats-Msg-Id: <36>\r\n".
    edge = Row(event_type="edge")
    room = MAX_PAYLOAD - len("NATS/1.0\r\n\r\n") - len(f"Nats-Msg-Id: {edge.id}\r\n")
    edge = Row(event_type="edge", payload="x" * (room - 2), id=edge.id)  # '"' x... '"'
    assert len(edge.payload_text) == room
    after = Row(event_type="after")
    commit(outbox_dsn, [edge])
    commit(outbox_dsn, [after])

    messages = wait_for_ids(small_nats.url, stream, [edge.id, after.id], timeout=15)
    [dead] = by_id(messages)[edge.id]
    assert dead.subject == dlq
    assert "max_payload" in dead.headers["Cdc-Error"]
    last = by_id(messages)[after.id][0]
    wait_for_slot_past(outbox_dsn, u, parse_lsn(last.headers["Cdc-Lsn"]), timeout=10)
