"""Hostile rows between good rows, through real PostgreSQL and NATS (issue 27, items 1-6, 13).

Ids with CR/LF (header injection), lone surrogates in a json headers column and in a
logical message's id, the bridge's own header names in a row's headers, a subject token
over a control line, a header block over 64 KB, and a payload that the bridge's headers
push over max_payload. Each must be dead-lettered once, with its reason, with no retry
(the session never fails), and the good rows after it must flow, in order, with exactly
the headers the bridge meant: no injected header anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.bridge import REPO_ROOT, MakeBridge, start_bridge
from support.hostile import ALLOWED_HEADERS, MAX_PAYLOAD
from support.nats_helpers import StreamMessage, nats_with_max_payload
from support.outbox import bridge_config, wait_for_ids, wait_for_slot_past

from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.core.wire_text import sendable_id, subject_limit
from cdc_bridge.dev.nats_server import NatsServer

INJECTED = "x\r\nInjected-Hdr: yes\r\n\r\nNats-Expected-Last-Sequence: 1"


@pytest.fixture
def roomy_nats(devstack_tmp: Path) -> Iterator[NatsServer]:
    with nats_with_max_payload(devstack_tmp, MAX_PAYLOAD) as server:
        yield server


@pytest.fixture
def outbox_dsn(pg_dsn: str) -> str:
    """The test database, its outbox with a json (not jsonb) headers column: json keeps
    "\\ud800" as written, so the bridge's JSON parser makes a lone surrogate of it."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.outbox ADD COLUMN hdrs json")
    return pg_dsn


def insert(
    conn: psycopg.Connection[Any],
    *,
    aggregate_type: str = "ticket",
    aggregate_id: str = "A-1",
    event_type: str = "created",
    payload: str = "{}",
    hdrs: str | None = None,
) -> str:
    row_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload, hdrs)"
        " VALUES (%s, %s, %s, %s, %s::jsonb, %s::json)",
        (row_id, aggregate_type, aggregate_id, event_type, payload, hdrs),
    )
    return row_id


def emit(conn: psycopg.Connection[Any], envelope_text: str) -> None:
    conn.execute("SELECT pg_logical_emit_message(true, 'hostile', %s)", (envelope_text,))


def config_for(dsn: str, nats_url: str, u: str) -> dict[str, Any]:
    outbox = {"table": "public.outbox", "headers_column": "hdrs", "message_prefixes": ["hostile"]}
    by_id = {"name": "by_id", "when": {"aggregate_type": "by_id"}, "subject": f"{u}.x"}
    envelopes = {"name": "envelopes", "when": {"table": "message:hostile"}, "subject": f"{u}.m"}
    routes = [
        {**by_id, "id": "aggregate_id"},
        {**envelopes, "id": "id"},
        {"subject": f"{u}.{{aggregate_type}}.{{event_type}}"},
    ]
    return bridge_config(
        dsn, nats_url, u, outbox=outbox, routes=routes, dead_letter={"subject": f"{u}.dlq"}
    )


def by_id(messages: list[StreamMessage]) -> dict[str, list[StreamMessage]]:
    found: dict[str, list[StreamMessage]] = {}
    for message in messages:
        found.setdefault(message.headers.get("Nats-Msg-Id", ""), []).append(message)
    return found


def test_hostile_rows_are_dead_lettered_and_the_rows_after_them_flow(
    outbox_dsn: str, roomy_nats: NatsServer, unique_name: str, make_bridge: MakeBridge
) -> None:
    u, stream, dlq = unique_name, unique_name.upper(), f"{unique_name}.dlq"
    bridge = start_bridge(make_bridge, config_for(outbox_dsn, roomy_nats.url, u))
    good: list[str] = []
    dead: dict[str, str] = {}  # the dead letter's id -> part of its reason
    with psycopg.connect(outbox_dsn, autocommit=True) as conn:
        good.append(insert(conn, event_type="g0"))
        insert(conn, aggregate_type="by_id", aggregate_id=INJECTED)
        dead[sendable_id(INJECTED)] = "cannot be sent as Nats-Msg-Id"
        good.append(insert(conn, event_type="g1"))
        dead[insert(conn, hdrs='{"X-A": "bad \\ud800 text"}')] = "unsafe value for header 'X-A'"
        forged = insert(conn, hdrs='{"Cdc-Error": "forged", "cdc-lsn": "0/0", "X-Ok": "1"}')
        good.append(forged)
        envelope = {"aggregate_type": "t", "aggregate_id": "A", "event_type": "e", "payload": {}}
        emit(conn, json.dumps({**envelope, "id": "lone \ud800"}, ensure_ascii=True))
        dead[sendable_id("lone \ud800")] = "cannot be sent as Nats-Msg-Id"
        emit(conn, json.dumps({**envelope, "id": "a\r\nInjected-Hdr: yes"}))
        dead[sendable_id("a\r\nInjected-Hdr: yes")] = "cannot be sent as Nats-Msg-Id"
        good.append(insert(conn, event_type="g2"))
        long_token = "t" * (subject_limit() + 100)
        dead[insert(conn, event_type=long_token)] = "control line leaves for it"
        huge = json.dumps({"X-Big": "y" * 70_000})
        dead[insert(conn, hdrs=huge)] = "exceed the server's 65535"
        # Fits the router's estimate, not with the Cdc-* headers the bridge adds.
        edge_id = str(uuid.uuid4())
        room = MAX_PAYLOAD - len("NATS/1.0\r\n\r\n") - len(f"Nats-Msg-Id: {edge_id}\r\n")
        conn.execute(
            "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload)"
            " VALUES (%s, 'ticket', 'A-1', 'edge', %s::jsonb)",
            (edge_id, json.dumps("x" * (room - 2))),
        )
        dead[edge_id] = "exceeds the server's max_payload"
        good.append(insert(conn, event_type="g3"))

    messages = wait_for_ids(roomy_nats.url, stream, [*good, *dead], timeout=30)
    found = by_id(messages)
    # The good rows: once each, in commit order, on their own subjects.
    assert [found[g][0].seq for g in good] == sorted(found[g][0].seq for g in good)
    for row_id in good:
        [message] = found[row_id]
        assert message.subject.startswith(f"{u}.ticket."), message
    # The bridge's names from the headers column are left out; the others stay.
    [kept] = found[forged]
    assert kept.headers["X-Ok"] == "1"
    assert "Cdc-Error" not in kept.headers and kept.headers["Cdc-Lsn"] != "0/0"
    # Every hostile row: once, on the dead-letter subject, with its reason.
    for msg_id, reason in dead.items():
        [message] = found[msg_id]
        assert message.subject == dlq
        assert reason in message.headers["Cdc-Error"], message.headers
    [edge] = found[edge_id]
    assert edge.data == b""
    assert edge.headers["Cdc-Body-Dropped"].endswith(" bytes")
    # No message anywhere got a header the bridge did not mean.
    for message in messages:
        assert set(message.headers) <= ALLOWED_HEADERS, message.headers
    assert len(messages) == len(good) + len(dead)
    # Dead-lettered without a single retry, and the slot confirmed past the last row.
    last = found[good[-1]][0]
    wait_for_slot_past(outbox_dsn, u, parse_lsn(last.headers["Cdc-Lsn"]), timeout=10)
    events = [record.get("event") for record in bridge.json_records()]
    assert "session_failed" not in events
    assert "fatal" not in events
    # One warning per reserved name the headers column set.
    warned = [r for r in bridge.json_records() if r.get("event") == "reserved_header_dropped"]
    assert sorted(r["header"] for r in warned) == ["'Cdc-Error'", "'cdc-lsn'"]


def test_slots_peek_shows_hostile_rows_escaped_instead_of_crashing(
    outbox_dsn: str, roomy_nats: NatsServer, unique_name: str, make_bridge: MakeBridge
) -> None:
    u = unique_name
    bridge = start_bridge(make_bridge, config_for(outbox_dsn, roomy_nats.url, u))
    assert bridge.terminate() == 0  # the slot stays, and what follows waits in it
    with psycopg.connect(outbox_dsn, autocommit=True) as conn:
        insert(conn, aggregate_type="by_id", aggregate_id=INJECTED)
        insert(conn, hdrs='{"X-A": "bad \\ud800 text"}')
        emit(conn, json.dumps({"id": "lone \ud800", "aggregate_type": "t", "aggregate_id": "A",
                               "event_type": "e", "payload": {}}, ensure_ascii=True))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONIOENCODING": "utf-8"}
    peek = subprocess.run(
        [sys.executable, "-m", "cdc_bridge", "slots", "peek", u, "--config",
         str(bridge.config_path), "--json"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env, check=False,
    )  # fmt: skip
    assert peek.returncode == 0, peek.stderr
    assert "Traceback" not in peek.stderr
    shown = peek.stdout
    assert "x\\\\r\\\\nInjected-Hdr" in shown  # the id, escaped (and JSON-escaped again)
    assert "lone \\\\ud800" in shown
    assert shown.count('"route": "dead_letter"') == 3, shown
