"""outbox.snapshot_on_create (issue 32): a bridge that creates its slot publishes the
change tables' rows first, as R events, once, through restarts and kill -9."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support.bridge import STARTUP_TIMEOUT, MakeBridge, log_event, start_bridge
from support.nats_helpers import fetch_stream_messages, stream_info
from support.outbox import (
    Event,
    bridge_config,
    duplicated_ids,
    insert_event,
    wait_for_ids,
)
from support.plugins import run_statements
from support.waiting import wait_until

from cdc_bridge.bridge.initial_snapshot import is_initial_snapshot
from cdc_bridge.cli.main import main as cli_main


def accounts(rows: int) -> str:
    return (
        "CREATE TABLE public.accounts (id int PRIMARY KEY, balance int NOT NULL);"
        f" INSERT INTO public.accounts SELECT g, g * 10 FROM generate_series(1, {rows}) g"
    )


def snapshot_config(pg_dsn: str, nats_url: str, name: str, **outbox: Any) -> dict[str, Any]:
    return bridge_config(
        pg_dsn,
        nats_url,
        name,
        outbox={
            "table": "public.outbox",
            "change_tables": ["public.accounts"],
            "snapshot_on_create": True,
            **outbox,
        },
        routes=[
            {
                "when": {"table": "public.accounts"},
                "subject": f"{name}.accounts.{{action}}",
                "payload": "change",
            },
            {"subject": f"{name}.{{aggregate_type}}.{{event_type}}"},
        ],
    )


def reads(messages: list[Any], name: str) -> list[Any]:
    return [m for m in messages if m.subject == f"{name}.accounts.R"]


def test_a_new_slot_publishes_the_rows_that_were_there_once(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    run_statements(pg_dsn, accounts(300))
    config = snapshot_config(pg_dsn, nats_url, unique_name)
    bridge = start_bridge(make_bridge, config)
    bridge.wait_for_log(log_event("initial_snapshot_finished", rows=300), timeout=60)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE accounts SET balance = 0 WHERE id = 7")
        first = insert_event(conn, Event(aggregate_id="A-1", event_type="after"))
    stream = unique_name.upper()
    messages = wait_for_ids(nats_url, stream, [first], timeout=30)
    read = reads(messages, unique_name)
    assert len(read) == 300 and not duplicated_ids(messages)
    assert all(
        is_initial_snapshot(unique_name, m.headers["Nats-Msg-Id"].split(":")[0]) for m in read
    )
    rows = [json.loads(m.data)["columns"] for m in read]
    assert [r[0]["value"] for r in rows] == list(range(1, 301))  # key order
    assert messages[-2].subject == f"{unique_name}.accounts.U"  # after every R of id 7

    # a restart finds its snapshot finished, and the slot there: nothing again
    assert bridge.terminate() == 0
    bridge = start_bridge(make_bridge, config)
    with psycopg.connect(pg_dsn) as conn:
        last = insert_event(conn, Event(aggregate_id="A-1", event_type="later"))
    messages = wait_for_ids(nats_url, stream, [last], timeout=30)
    assert len(reads(messages, unique_name)) == 300 and not duplicated_ids(messages)
    assert not any(r.get("event") == "initial_snapshot_started" for r in bridge.json_records())


def test_kill_9_in_the_middle_then_every_row_once(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    rows = 10_000
    run_statements(pg_dsn, accounts(rows))
    config = snapshot_config(pg_dsn, nats_url, unique_name)
    config["nats"] = {**config["nats"], "batch_max_messages": 200}  # chunks of 200
    stream = unique_name.upper()
    bridge = start_bridge(make_bridge, config)
    wait_until(
        lambda: asyncio.run(stream_info(nats_url, stream)).state.messages >= 1_000,
        timeout=60,
        message="no 1,000 rows published",
    )
    bridge.kill()
    with psycopg.connect(pg_dsn) as conn:
        done = conn.execute("SELECT rows FROM public.cdc_bridge_snapshots").fetchone()
    assert done is not None and done[0] < rows, "the kill came after the snapshot finished"
    bridge = start_bridge(make_bridge, config)
    bridge.wait_for_log(log_event("initial_snapshot_finished"), timeout=120)
    # (read in one go once all are there: polling the whole stream would take longer)
    wait_until(
        lambda: asyncio.run(stream_info(nats_url, stream)).state.messages >= rows,
        timeout=60,
        message=f"the stream never held {rows} rows",
    )
    messages = asyncio.run(fetch_stream_messages(nats_url, stream, timeout=120))
    read = reads(messages, unique_name)
    assert not duplicated_ids(messages)
    assert sorted(json.loads(m.data)["columns"][0]["value"] for m in read) == list(
        range(1, rows + 1)
    )


def test_a_slot_that_exists_starts_no_snapshot(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    run_statements(pg_dsn, accounts(10))
    without = snapshot_config(pg_dsn, nats_url, unique_name, snapshot_on_create=False)
    start_bridge(make_bridge, without).terminate()
    bridge = start_bridge(make_bridge, snapshot_config(pg_dsn, nats_url, unique_name))
    with psycopg.connect(pg_dsn) as conn:
        last = insert_event(conn, Event(aggregate_id="A-1", event_type="after"))
    messages = wait_for_ids(nats_url, unique_name.upper(), [last], timeout=30)
    assert not reads(messages, unique_name)
    assert not any(r.get("event", "").startswith("initial_snapshot") for r in bridge.json_records())


def test_a_change_table_without_a_primary_key_is_one_fatal_line(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    run_statements(
        pg_dsn,
        "CREATE TABLE public.accounts (id int, balance int)",
        "ALTER TABLE public.accounts REPLICA IDENTITY FULL",  # changes decode: no PK still
    )
    bridge = make_bridge(snapshot_config(pg_dsn, nats_url, unique_name))
    assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
    fatal = [r for r in bridge.json_records() if r.get("event") == "fatal"]
    assert len(fatal) == 1, bridge.lines
    assert fatal[0]["error"].startswith(
        "outbox.snapshot_on_create: public.accounts has no primary key"
    )


def check_result(capsys: pytest.CaptureFixture[str], config: dict[str, Any], path: Path) -> Any:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    capsys.readouterr()
    cli_main(["check", "--config", str(path), "--json"])
    results = json.loads(capsys.readouterr().out)
    return next(r for r in results if r["check"] == "outbox.snapshot_on_create")


def test_check_applies_the_rules_run_applies(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_statements(
        pg_dsn,
        "CREATE TABLE public.accounts (id int, balance int)",
        "ALTER TABLE public.accounts REPLICA IDENTITY FULL",
    )
    config = snapshot_config(pg_dsn, nats_url, unique_name)
    refused = check_result(capsys, config, tmp_path / "c.yaml")
    assert refused["status"] == "FAIL"
    assert refused["detail"] == "public.accounts has no primary key, which a snapshot reads it by"
    run_statements(pg_dsn, "ALTER TABLE public.accounts ADD PRIMARY KEY (id)")
    ready = check_result(capsys, config, tmp_path / "c.yaml")
    assert ready["status"] == "ok", ready
