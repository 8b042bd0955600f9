"""Routing on payload fields through real PostgreSQL and NATS (issue 20, part 3).

Templates and `when` read inside the jsonb payload: a row whose path is missing does not
match a `when`, and a subject that needs it dead-letters the row with the path named,
between good rows that keep their order. A path into a column that is not json or jsonb
stops `run` at start-up and fails `check`, with the key and the fix.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support.bridge import STARTUP_TIMEOUT, MakeBridge, parse_json_line, start_bridge
from support.outbox import bridge_config, duplicated_ids, wait_for_ids

from cdc_bridge.cli.main import main as cli_main


def routes(u: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "urgent",
            "when": {"payload.priority": "high", "payload.flags.vip": True},
            "subject": f"{u}.urgent.{{payload.customer.region}}",
            "headers": {"Customer": "{payload.customer.id}"},
        },
        {"name": "regional", "subject": f"{u}.region.{{payload.customer.region}}"},
    ]


def commit(dsn: str, payloads: list[Any]) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in payloads]
    with psycopg.connect(dsn) as conn:
        for row_id, payload in zip(ids, payloads, strict=True):
            conn.execute(
                "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload)"
                " VALUES (%s, 'order', 'O-1', 'placed', %s::jsonb)",
                (row_id, json.dumps(payload)),
            )
    return ids


def test_routes_read_payload_fields_and_dead_letter_missing_paths(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    u, dlq = unique_name, f"{unique_name}.dlq"
    config = bridge_config(pg_dsn, nats_url, u, routes=routes(u), dead_letter={"subject": dlq})
    start_bridge(make_bridge, config)
    payloads = [
        {"priority": "high", "flags": {"vip": True}, "customer": {"region": "eu", "id": 7}},
        {"priority": "high", "customer": {"region": "us"}},  # no flags.vip: not urgent
        {"priority": "high", "flags": {"vip": True}, "customer": {}},  # no region
        {"customer": {"region": None}},  # JSON null
        {"customer": {"region": "apac"}},
    ]
    ids = commit(pg_dsn, payloads)
    messages = wait_for_ids(nats_url, u.upper(), ids, timeout=30)
    assert duplicated_ids(messages) == {}
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ids  # commit order kept
    assert [m.subject for m in messages] == [
        f"{u}.urgent.eu", f"{u}.region.us", dlq, dlq, f"{u}.region.apac",
    ]  # fmt: skip
    assert messages[0].headers["Customer"] == "7"
    assert json.loads(messages[0].data) == payloads[0]  # the payload column, unchanged
    missing, null = messages[2], messages[3]
    assert missing.headers["Cdc-Error"] == (
        "no value at {payload.customer.region} for the subject: the JSON has no such path"
    )
    assert missing.headers["Cdc-Subject"] == f"{u}.urgent.{{payload.customer.region}}"
    assert null.headers["Cdc-Error"] == "JSON null at {payload.customer.region} in subject"


def test_a_path_into_a_text_column_stops_run_and_fails_check(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    u = unique_name
    route = {"when": {"event_type.kind": "x"}, "subject": f"{u}.{{aggregate_type}}"}
    config = bridge_config(pg_dsn, nats_url, u, routes=[route])
    expected = (
        "routes[0].when: {event_type.kind} reads inside column 'event_type' of "
        "public.outbox, which is text, not json or jsonb (fix: make it jsonb"
    )

    bridge = make_bridge(config)
    assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
    records = [parse_json_line(line) for line in bridge.lines]
    assert None not in records, "\n".join(bridge.lines)  # no traceback
    [fatal] = [r for r in records if r and r["event"] == "fatal"]
    assert str(fatal["error"]).startswith(expected), fatal

    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    assert cli_main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "{event_type.kind} reads inside column 'event_type' of public.outbox" in out, out
