"""The ops CLI (`slots`, `check`, `init`, `status`) against real PostgreSQL and NATS.

Commands run in-process through ``cli.main`` (fast, output captured by capsys), except
where the process boundary itself is the point: exit codes and what reaches the
terminal when a server is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
import yaml
from support.bridge import (
    REPO_ROOT,
    STARTUP_TIMEOUT,
    MakeBridge,
    start_bridge,
)
from support.nats_helpers import fetch_stream_messages
from support.waiting import wait_until

from cdc_bridge.cli import json_keys
from cdc_bridge.cli.check_nats import NATS_CHECKS
from cdc_bridge.cli.check_postgres import POSTGRES_CHECKS
from cdc_bridge.cli.main import main
from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.dev.pginstall import PgInstall
from cdc_bridge.dev.postgres_server import PostgresServer
from cdc_bridge.dev.processes import free_port
from cdc_bridge.sink import reconcile

# Run on every PostgreSQL major version installed (embedded 18, system 15)
pytestmark = pytest.mark.both_postgres

INSERT = (
    "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload)"
    " VALUES (%s, %s, %s, '{}') RETURNING id::text"
)


# --- helpers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    capsys.readouterr()  # drop anything printed before
    code = main(list(args))
    out, err = capsys.readouterr()
    return Run(code, out, err)


def bridge_config(dsn: str, nats_url: str, name: str) -> dict[str, Any]:
    """A config of this test's own: slot, publication and stream named after ``name``."""
    return {
        "postgres": {
            "dsn": dsn,
            "slot": name,
            "publication": name,
            "status_interval": "200ms",
            "connect_timeout": "5s",
        },
        "nats": {
            "servers": [nats_url],
            "ack_timeout": "2s",
            "stream": {"name": name.upper(), "subjects": [f"{name}.>"]},
        },
        "outbox": {"table": "public.outbox"},
        "routes": [{"name": "events", "subject": f"{name}.{{aggregate_type}}.{{event_type}}"}],
        "logging": {"format": "json", "level": "info"},
        "http": {"listen": "127.0.0.1:0"},
    }


def write_config(folder: Path, config: dict[str, Any]) -> str:
    path = folder / "ops.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def insert_transaction(dsn: str, events: Sequence[tuple[str, str]]) -> tuple[int, list[str]]:
    """Commit one transaction of (aggregate_type, event_type) rows: its xid8 and the ids."""
    with psycopg.connect(dsn) as conn:
        xid_row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert xid_row is not None
        ids = []
        for aggregate_type, event_type in events:
            row = conn.execute(INSERT, (aggregate_type, "A-1", event_type)).fetchone()
            assert row is not None
            ids.append(row[0])
    return int(xid_row[0]), ids


def confirmed_flush_lsn(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    assert row is not None and row[0] is not None
    return parse_lsn(row[0])


def slot_exists(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return row.fetchone() is not None


def stream_ids(nats_url: str, stream: str) -> list[str]:
    messages = asyncio.run(fetch_stream_messages(nats_url, stream))
    return [message.headers.get("Nats-Msg-Id", "") for message in messages]


def slot_entry(capsys: pytest.CaptureFixture[str], config: str, slot: str) -> dict[str, Any]:
    run = cli(capsys, "slots", "list", "--config", config, "--json")
    assert run.code == 0, run.err
    [entry] = [item for item in run.json() if item["slot_name"] == slot]
    assert isinstance(entry, dict)
    return entry


@pytest.fixture
def config_path(pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path) -> str:
    """A config for the test's database, initialised (publication, slot, stream)."""
    path = write_config(tmp_path, bridge_config(pg_dsn, nats_url, unique_name))
    assert main(["init", "--config", path]) == 0
    return path


# --- init --------------------------------------------------------------------------------------


def test_init_creates_what_is_missing_and_the_second_run_is_a_no_op(
    pg_server: PostgresServer,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = f"bare_{unique_name}"
    dsn = pg_server.create_database(database, outbox_schema=False)
    try:
        config = write_config(tmp_path, bridge_config(dsn, nats_url, unique_name))

        dry = cli(capsys, "init", "--config", config, "--dry-run")
        assert dry.code == 0, dry.err
        assert "CREATE TABLE IF NOT EXISTS public.outbox" in dry.out
        assert f'CREATE PUBLICATION "{unique_name}" FOR TABLE "public"."outbox"' in dry.out
        # and on 17+ as a failover slot (postgres.failover: auto), as `run` creates it
        assert f"pg_create_logical_replication_slot('{unique_name}', 'pgoutput'" in dry.out
        assert f'"name": "{unique_name.upper()}"' in dry.out
        assert not slot_exists(dsn, unique_name)  # a dry run changes nothing

        first = cli(capsys, "init", "--config", config, "--json")
        assert first.code == 0, first.err
        steps = first.json()
        assert all(tuple(step) == json_keys.STEP_KEYS for step in steps)
        assert [(s["kind"], s["action"]) for s in steps] == [
            ("table", "created"),
            ("publication", "created"),
            ("slot", "created"),
            ("stream", "created"),
        ]
        assert slot_exists(dsn, unique_name)

        second = cli(capsys, "init", "--config", config, "--json")
        assert second.code == 0, second.err
        assert [(s["kind"], s["action"]) for s in second.json()] == [
            ("table", "exists"),
            ("publication", "exists"),
            ("slot", "exists"),
            ("stream", "exists"),
        ]
        human = cli(capsys, "init", "--config", config)
        assert human.code == 0 and "nothing to do: everything exists" in human.out
    finally:
        pg_server.drop_database(database)


def test_init_does_not_recreate_a_dropped_slot_whose_events_the_stream_holds(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    config_path: str,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    _, ids = insert_transaction(pg_dsn, [("ticket", "created")])
    wait_until(lambda: stream_ids(nats_url, unique_name.upper()) == ids, timeout=20,
               message="the event never arrived")  # fmt: skip
    assert bridge.terminate() == 0
    assert cli(capsys, "slots", "drop", unique_name, "--config", config_path, "--yes").code == 0

    refused = cli(capsys, "init", "--config", config_path, "--json")
    assert refused.code == 1
    [slot_step] = [step for step in refused.json() if step["kind"] == "slot"]
    assert slot_step["action"] == "problem"
    assert f"stream {unique_name.upper()} holds its events" in slot_step["detail"]
    assert not slot_exists(pg_dsn, unique_name)

    # Accepting the loss is explicit; then init is content again.
    assert cli(capsys, "slots", "create", unique_name, "--config", config_path).code == 0
    assert cli(capsys, "init", "--config", config_path).code == 0


async def _publish_events(url: str, subject: str, source: str, count: int) -> None:
    """``count`` messages with the headers a bridge of ``source`` writes."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for n in range(count):
            headers = {
                "Nats-Msg-Id": f"{source}-{n}",
                "Cdc-Source": source,
                "Cdc-Lsn": f"0/{0x1000 + n * 0x10:X}",
                "Cdc-Index": "0",
            }
            await js.publish(subject, b"{}", headers=headers)
    finally:
        await nc.close()


def test_init_reads_the_stream_within_its_subject_space_like_the_session(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two bridges share one stream, each in its own subject space. The other bridge's
    messages, however many, must not hide this one's from init's dropped-slot rule:
    init reads the tail within the space, as `run` does (issue 29, left from the last
    round). The walk's limit is lowered so that "many" stays small here."""
    name = unique_name
    configs = {}
    for side in ("a", "b"):
        config = bridge_config(pg_dsn, nats_url, f"{name}{side}")
        config["nats"]["stream"] = {"name": name.upper(), "subjects": [f"{name}.>"]}
        config["nats"]["subject_space"] = f"{name}.{side}.>"
        config["routes"] = [{"name": "events", "subject": f"{name}.{side}.{{aggregate_type}}"}]
        config["dead_letter"] = {"subject": f"{name}.{side}.dead"}
        folder = tmp_path / side
        folder.mkdir()
        configs[side] = write_config(folder, config)
    assert cli(capsys, "init", "--config", configs["a"]).code == 0
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    ours = f"{row[0]}/{name}a"
    asyncio.run(_publish_events(nats_url, f"{name}.a.ticket", ours, 3))
    # then the other bridge (another system) writes far more, in its own space
    asyncio.run(_publish_events(nats_url, f"{name}.b.ticket", "7301/other", 300))
    assert cli(capsys, "slots", "drop", f"{name}a", "--config", configs["a"], "--yes").code == 0

    monkeypatch.setattr(reconcile, "MAX_SCANNED", 100)  # a stream-wide walk gives up
    refused = cli(capsys, "init", "--config", configs["a"], "--json")
    assert refused.code == 1, refused.out
    [slot_step] = [step for step in refused.json() if step["kind"] == "slot"]
    assert slot_step["action"] == "problem"
    assert f"stream {name.upper()} holds its events up to LSN 0/1020" in slot_step["detail"]
    assert not slot_exists(pg_dsn, f"{name}a")


# --- slots list / show -------------------------------------------------------------------------


def test_list_and_show_reflect_lag_that_grows_while_stopped_and_shrinks_after_a_bridge_ran(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    config_path: str,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    insert_transaction(pg_dsn, [("ticket", "created")])
    first = slot_entry(capsys, config_path, unique_name)
    assert tuple(first) == json_keys.SLOT_KEYS
    assert (first["plugin"], first["active"], first["wal_status"]) == (
        "pgoutput",
        False,
        "reserved",
    )
    insert_transaction(pg_dsn, [("ticket", "updated"), ("ticket", "closed")])
    grown = slot_entry(capsys, config_path, unique_name)
    assert grown["lag_bytes"] > first["lag_bytes"] > 0
    assert grown["retained_bytes"] >= grown["lag_bytes"]

    table = cli(capsys, "slots", "list", "--config", config_path)
    assert table.code == 0
    assert table.out.splitlines()[0].split()[:3] == ["SLOT", "PLUGIN", "DATABASE"]
    assert any(line.startswith(unique_name) for line in table.out.splitlines())

    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    shown = wait_until(
        lambda: (
            run.json()
            if (
                run := cli(capsys, "slots", "show", unique_name, "--config", config_path, "--json")
            ).json()["walsender"]
            else None
        ),
        timeout=STARTUP_TIMEOUT,
        message="show never reported the bridge's walsender",
    )
    assert shown is not None
    assert tuple(shown) == json_keys.SLOT_KEYS + json_keys.SHOW_EXTRA_KEYS
    assert tuple(shown["walsender"]) == json_keys.WALSENDER_KEYS
    assert shown["active"] is True and shown["walsender"]["pid"] == shown["active_pid"]
    assert shown["publication"] == {
        "name": unique_name,
        "exists": True,
        "tables": ["public.outbox"],
        "operations": ["insert"],
    }
    wait_until(
        lambda: slot_entry(capsys, config_path, unique_name)["lag_bytes"] < first["lag_bytes"],
        timeout=20,
        message="the lag never shrank while the bridge ran",
    )
    assert bridge.terminate() == 0
    # What the bridge confirmed stays: the slot's position is past the rows it published.
    # (Comparing lag instead would count the WAL the server writes on its own meanwhile:
    # checkpoints, standby snapshots, more than the two rows' worth on PostgreSQL 18.)
    stopped = slot_entry(capsys, config_path, unique_name)
    assert parse_lsn(stopped["confirmed_flush_lsn"]) > parse_lsn(grown["confirmed_flush_lsn"])

    human = cli(capsys, "slots", "show", unique_name, "--config", config_path)
    assert human.code == 0
    assert f"publication          {unique_name}: public.outbox (insert)" in human.out
    # The session's server keeps WAL for slots without limit (max_slot_wal_keep_size -1).
    assert "safe_wal_size        unlimited (max_slot_wal_keep_size = -1)" in human.out


def test_show_of_a_missing_slot_is_one_line_and_exit_1(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "slots", "show", "no_such_slot", "--dsn", pg_dsn)
    assert run.code == 1 and run.out == ""
    assert run.err == (
        "cdc-bridge: no logical replication slot named no_such_slot (see `cdc-bridge slots list`)\n"
    )


def test_a_lost_slot_is_reported_loudly_everywhere(
    devstack_tmp: Path,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A server that invalidates a slot as soon as it holds back more than 1 MB of WAL.
    settings = {"max_slot_wal_keep_size": "1MB"}
    with PostgresServer(devstack_tmp / "postgres", settings=settings) as server:
        dsn = server.create_database("lossy")
        config = write_config(tmp_path, bridge_config(dsn, nats_url, unique_name))
        assert cli(capsys, "init", "--config", config).code == 0
        healthy = cli(capsys, "slots", "show", unique_name, "--config", config)
        [safe] = [line for line in healthy.out.splitlines() if line.startswith("safe_wal_size")]
        assert safe.endswith(" bytes)") and "unlimited" not in safe and "lost" not in safe
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(3):  # WAL segments past the limit, then a checkpoint removes them
                conn.execute("SELECT pg_switch_wal()")
                insert_transaction(dsn, [("ticket", "created")])
            conn.execute("CHECKPOINT")

        entry = slot_entry(capsys, config, unique_name)
        assert (entry["wal_status"], entry["restart_lsn"], entry["retained_bytes"]) == (
            "lost", None, None,
        )  # fmt: skip
        listed = cli(capsys, "slots", "list", "--config", config)
        assert f"WARNING: slot {unique_name} is LOST" in listed.out
        shown = cli(capsys, "slots", "show", unique_name, "--config", config)
        assert "safe_wal_size        none: the slot is lost" in shown.out

        checked = cli(capsys, "check", "--config", config)
        assert checked.code == 1
        [line] = [line for line in checked.out.splitlines() if "postgres.slot" in line]
        assert line.startswith("FAIL") and "is LOST" in line

        peek = cli(capsys, "slots", "peek", unique_name, "--config", config)
        assert peek.code == 1 and "is lost (wal_status = lost)" in peek.err
        init = cli(capsys, "init", "--config", config)
        assert init.code == 1 and "LOST" in init.out

        dropped = cli(capsys, "slots", "drop", unique_name, "--config", config, "--yes")
        assert dropped.code == 0 and "pending rows not counted" in dropped.out
        assert cli(capsys, "init", "--config", config).code == 0  # the stream is still empty


# --- slots peek --------------------------------------------------------------------------------


def test_peek_shows_the_pending_outbox_ids_and_consumes_nothing(
    pg_dsn: str, unique_name: str, config_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = confirmed_flush_lsn(pg_dsn, unique_name)
    _, first_ids = insert_transaction(pg_dsn, [("ticket", "created"), ("user", "invited")])
    _, second_ids = insert_transaction(pg_dsn, [("ticket", "closed")])

    run = cli(capsys, "slots", "peek", unique_name, "--config", config_path, "--json")
    assert run.code == 0, run.err
    peek = run.json()
    assert tuple(peek) == json_keys.PEEK_KEYS
    assert (peek["transactions"], peek["rows"], peek["maybe_more"]) == (2, 3, False)
    changes = peek["changes"]
    assert all(tuple(change) == json_keys.CHANGE_KEYS for change in changes)
    assert [c["id"] for c in changes] == first_ids + second_ids
    assert [c["subject"] for c in changes] == [
        f"{unique_name}.ticket.created",
        f"{unique_name}.user.invited",
        f"{unique_name}.ticket.closed",
    ]
    assert {c["route"] for c in changes} == {"events"}
    assert changes[0]["end_lsn"] == changes[1]["end_lsn"] != changes[2]["end_lsn"]
    assert confirmed_flush_lsn(pg_dsn, unique_name) == before

    again = cli(capsys, "slots", "peek", unique_name, "--dsn", pg_dsn)  # no config: no routes
    assert again.code == 0
    assert "3 rows pending" in again.out and "nothing was consumed" in again.out
    assert all(row_id in again.out for row_id in first_ids + second_ids)
    assert confirmed_flush_lsn(pg_dsn, unique_name) == before


@pytest.mark.needs_wal2json
def test_peek_decodes_a_wal2json_slot(
    pg_install: PgInstall,
    devstack_tmp: Path,
    unique_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A server of our own: the devstack lets it load wal2json (on builds with an
    # output_plugin_libraries allow-list too)
    with PostgresServer(devstack_tmp / "postgres", install=pg_install) as server:
        dsn = server.create_database("w2j")
        created = cli(
            capsys, "slots", "create", unique_name, "--dsn", dsn, "--plugin", "wal2json", "--json"
        )
        assert created.code == 0, created.err
        assert tuple(created.json()) == json_keys.CREATE_KEYS
        _, ids = insert_transaction(dsn, [("ticket", "created")])
        run = cli(capsys, "slots", "peek", unique_name, "--dsn", dsn, "--json")
        assert run.code == 0, run.err
        assert [(c["table"], c["action"], c["id"]) for c in run.json()["changes"]] == [
            ("public.outbox", "insert", ids[0])
        ]


# --- an active slot ----------------------------------------------------------------------------


def test_peek_drop_and_advance_refuse_a_slot_a_bridge_streams_from(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    config_path: str,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    peek = cli(capsys, "slots", "peek", unique_name, "--config", config_path)
    assert peek.code == 1
    assert f"slot {unique_name} is in use by process" in peek.err
    assert "peeked at or advanced while it streams" in peek.err

    drop = cli(capsys, "slots", "drop", unique_name, "--config", config_path, "--yes")
    assert drop.code == 1
    assert f"refusing to drop slot {unique_name}: it is in use" in drop.err
    assert slot_exists(pg_dsn, unique_name)

    advance = cli(capsys, "slots", "advance", unique_name, "--config", config_path, "--to", "0/1")
    assert advance.code == 1 and "in use" in advance.err
    assert bridge.running
    assert bridge.terminate() == 0


# --- slots drop / create -----------------------------------------------------------------------


def test_drop_says_what_is_lost_and_needs_yes_or_a_confirmation(
    pg_dsn: str,
    unique_name: str,
    config_path: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    insert_transaction(pg_dsn, [("ticket", "created"), ("ticket", "closed")])

    refused = cli(capsys, "slots", "drop", unique_name, "--config", config_path)
    assert refused.code == 1
    assert "2 pending rows in 1 transaction:" in refused.out
    assert "pass --yes" in refused.err and "no terminal" in refused.err
    assert slot_exists(pg_dsn, unique_name)

    # On a terminal it asks for the slot's name; anything else keeps the slot.
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    declined = cli(capsys, "slots", "drop", unique_name, "--config", config_path)
    assert declined.code == 1 and "not dropped" in declined.out
    assert slot_exists(pg_dsn, unique_name)
    monkeypatch.setattr("builtins.input", lambda prompt: unique_name)
    confirmed = cli(capsys, "slots", "drop", unique_name, "--config", config_path)
    assert confirmed.code == 0 and f"dropped slot {unique_name}" in confirmed.out
    assert not slot_exists(pg_dsn, unique_name)

    recreated = cli(capsys, "slots", "create", unique_name, "--config", config_path)
    assert recreated.code == 0 and "changes committed from now on" in recreated.out
    again = cli(capsys, "slots", "create", unique_name, "--config", config_path)
    assert again.code == 1 and "already exists" in again.err
    dropped = cli(capsys, "slots", "drop", unique_name, "--dsn", pg_dsn, "--yes")
    assert dropped.code == 0
    assert not slot_exists(pg_dsn, unique_name)


# --- slots advance -----------------------------------------------------------------------------


def test_advance_past_xid_skips_exactly_that_transaction(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    config_path: str,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = confirmed_flush_lsn(pg_dsn, unique_name)
    poison_xid, poison_ids = insert_transaction(pg_dsn, [("ticket", "bad"), ("ticket", "worse")])
    _, good_ids = insert_transaction(pg_dsn, [("ticket", "good")])
    xid = str(poison_xid)  # an xid8, as pg_current_xact_id() gives it: accepted as well

    backwards = cli(capsys, "slots", "advance", unique_name, "--config", config_path, "--to", "0/1")
    assert backwards.code == 1 and "never moves back" in backwards.err

    preview = cli(
        capsys,
        "slots",
        "advance",
        unique_name,
        "--config",
        config_path,
        "--past-xid",
        xid,
        "--json",
    )
    assert preview.code == 1  # shown, not done: --yes is required
    shown = preview.json()
    assert tuple(shown) == json_keys.ADVANCE_KEYS
    assert (shown["advanced"], shown["skipped_transactions"], shown["skipped_rows"]) == (
        False, 1, 2,
    )  # fmt: skip
    assert [c["id"] for c in shown["changes"]] == poison_ids
    assert confirmed_flush_lsn(pg_dsn, unique_name) == before

    done = cli(
        capsys, "slots", "advance", unique_name, "--config", config_path, "--past-xid", xid, "--yes"
    )
    assert done.code == 0, done.err
    assert "skips 1 transaction (2 rows); it will never" in done.out and "advanced:" in done.out
    assert confirmed_flush_lsn(pg_dsn, unique_name) == parse_lsn(shown["to_lsn"]) > before

    peek = cli(capsys, "slots", "peek", unique_name, "--config", config_path, "--json")
    assert [c["id"] for c in peek.json()["changes"]] == good_ids

    # The bridge resumes after the skipped transaction: only the good one is published.
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    stream = unique_name.upper()
    wait_until(lambda: stream_ids(nats_url, stream) == good_ids, timeout=20,
               message="the stream never held exactly the good transaction")  # fmt: skip
    assert bridge.terminate() == 0

    gone = cli(capsys, "slots", "advance", unique_name, "--config", config_path, "--past-xid", xid)
    assert gone.code == 1 and "not among the 0 transactions pending" in gone.err


def test_advance_to_an_end_lsn_skips_what_commits_before_it_and_the_lag_shrinks(
    pg_dsn: str, unique_name: str, config_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, skipped_ids = insert_transaction(pg_dsn, [("ticket", "created")])
    _, kept_ids = insert_transaction(pg_dsn, [("ticket", "closed")])
    changes = cli(capsys, "slots", "peek", unique_name, "--config", config_path, "--json")
    first_end = changes.json()["changes"][0]["end_lsn"]
    lag_before = slot_entry(capsys, config_path, unique_name)["lag_bytes"]

    run = cli(
        capsys, "slots", "advance", unique_name, "--config", config_path, "--to", first_end, "--yes"
    )
    assert run.code == 0, run.err
    assert "skips 1 transaction (1 row); it will never" in run.out and skipped_ids[0] in run.out
    assert slot_entry(capsys, config_path, unique_name)["lag_bytes"] < lag_before
    after = cli(capsys, "slots", "peek", unique_name, "--config", config_path, "--json")
    assert [c["id"] for c in after.json()["changes"]] == kept_ids


# --- check -------------------------------------------------------------------------------------


def test_check_passes_once_everything_is_in_place(
    config_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "check", "--config", config_path, "--json")
    results = run.json()
    assert all(tuple(result) == json_keys.CHECK_KEYS for result in results)
    # postgres.failover gives one line per problem (a lone server on 17+ has two)
    names = list(dict.fromkeys(r["check"] for r in results))
    assert names == [*POSTGRES_CHECKS, *NATS_CHECKS]
    assert [r for r in results if r["status"] == "FAIL"] == []
    assert run.code == 0
    role = next(r for r in results if r["check"] == "postgres.role")
    assert role["status"] == "warn" and "least-privilege" in role["fix"]  # tests run as postgres


def test_check_fails_with_a_clear_line_on_a_missing_publication(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, bridge_config(pg_dsn, nats_url, unique_name))
    run = cli(capsys, "check", "--config", config)
    assert run.code == 1
    [line] = [line for line in run.out.splitlines() if "postgres.publication" in line]
    assert line.startswith("FAIL  postgres.publication")
    assert f"publication {unique_name} does not exist -- fix: cdc-bridge init" in line
    assert run.out.splitlines()[-1].startswith("1 FAIL")


def test_check_fails_with_a_clear_line_when_wal_level_is_replica(
    devstack_tmp: Path,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with PostgresServer(devstack_tmp / "postgres", settings={"wal_level": "replica"}) as server:
        dsn = server.create_database("replica_only")
        config = write_config(tmp_path, bridge_config(dsn, nats_url, unique_name))
        run = cli(capsys, "check", "--config", config)
        init = cli(capsys, "init", "--config", config)
    # init says the problem and the fix check knows (issue 29, item 14)
    assert init.code == 1
    [problem] = [line for line in init.out.splitlines() if line.startswith("problem")]
    assert "slot" in problem and "wal_level" in problem, init.out
    assert "  fix: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL" in init.out
    assert run.code == 1
    [line] = [line for line in run.out.splitlines() if "postgres.wal_level" in line]
    assert line.startswith("FAIL  postgres.wal_level")
    assert "wal_level = replica, but logical decoding needs logical" in line
    assert "ALTER SYSTEM SET wal_level = logical" in line


# --- status ------------------------------------------------------------------------------------


def test_status_of_a_running_bridge(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    config_path: str,
    make_bridge: MakeBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    url = f"{bridge.http_url()}/status"
    status = wait_until(
        lambda: (
            (run := cli(capsys, "status", "--url", url, "--json")).code == 0
            and run.json()["role"] == "streaming"
            and run.json()
        ),
        timeout=STARTUP_TIMEOUT,
        message="status never said streaming",
    )
    assert isinstance(status, dict)
    assert status["slot"] == unique_name
    # The base URL, as the http_listening line gives it: /status is added.
    human = cli(capsys, "status", "--url", bridge.http_url())
    assert human.code == 0 and human.out.splitlines()[0].split() == ["role", "streaming"]
    # Its config says port 0 (a free port): the config cannot tell which, the log can.
    refused = cli(capsys, "status", "--config", str(bridge.config_path))
    assert (refused.code, refused.out, refused.err.count("\n")) == (2, "", 1)
    assert "pass --url" in refused.err and "http_listening" in refused.err
    assert bridge.terminate() == 0


# --- the process boundary: exit codes, one line, no password -----------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cdc_bridge", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
    )


def test_unreachable_servers_give_one_line_without_the_password(tmp_path: Path) -> None:
    secret = "s3cr3t-pw"
    dsn = f"postgresql://app:{secret}@127.0.0.1:{free_port()}/app"
    listed = run_cli("slots", "list", "--dsn", dsn)
    assert listed.returncode == 1 and listed.stdout == ""
    assert listed.stderr.count("\n") == 1 and listed.stderr.startswith("cdc-bridge: PostgreSQL:")
    assert secret not in listed.stderr and "Traceback" not in listed.stderr

    nats_url = f"nats://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, bridge_config(dsn, nats_url, "unreachable"))
    checked = run_cli("check", "--config", config)
    assert checked.returncode == 1
    assert secret not in checked.stdout + checked.stderr
    assert "Traceback" not in checked.stdout + checked.stderr
    statuses = {line.split()[1]: line.split()[0] for line in checked.stdout.splitlines()[:-1]}
    assert statuses["postgres.server"] == "FAIL" and statuses["nats.server"] == "FAIL"
    assert statuses["postgres.wal_level"] == "skip" and statuses["nats.stream"] == "skip"

    bad_dsn = run_cli("slots", "list", "--dsn", f"host=127.0.0.1 password={secret} dbname")
    assert bad_dsn.returncode == 1 and secret not in bad_dsn.stderr


def test_usage_errors_exit_2() -> None:
    missing_target = run_cli("slots", "list")
    assert missing_target.returncode == 2
    assert missing_target.stderr == "cdc-bridge: give --config FILE or --dsn DSN\n"
    bad_lsn = run_cli("slots", "advance", "s", "--dsn", "x", "--to", "nonsense")
    assert bad_lsn.returncode == 2 and "not an LSN" in bad_lsn.stderr


# --- the least-privilege role of sql/role.sql --------------------------------------------------

ROLE_SQL = REPO_ROOT / "sql" / "role.sql"


def apply_role_sql(admin_dsn: str) -> str:
    """Run sql/role.sql with psql as an administrator; the role's DSN (trust auth here)."""
    result = psql_file(admin_dsn)
    assert result.returncode == 0 and "ERROR" not in result.stderr, result.stderr
    return admin_dsn.replace("postgres@", "cdc_bridge@", 1)


def psql_file(dsn: str) -> subprocess.CompletedProcess[str]:
    from cdc_bridge.dev.pginstall import find_pg_bindir

    return subprocess.run(
        [str(find_pg_bindir() / "psql"), "-X", "-q", "-d", dsn, "-f", str(ROLE_SQL)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_role_sql_on_a_fresh_database_says_first_what_must_exist(
    pg_server: PostgresServer, unique_name: str
) -> None:
    name = f"fresh_{unique_name}"
    dsn = pg_server.create_database(name, outbox_schema=False)
    try:
        result = psql_file(dsn)
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1, result.stderr  # one statement: nothing half done
        assert "public.outbox does not exist yet" in errors[0]
        assert "cdc-bridge init --config FILE --dsn <admin DSN>` first" in result.stderr
        assert (
            ROLE_SQL.read_text()
            .splitlines()[0]
            .startswith("-- Run AFTER `cdc-bridge init --config FILE --dsn <admin DSN>`")
        )
    finally:
        pg_server.drop_database(name)


def test_role_sql_grants_pg_log_standby_snapshot_where_the_server_has_it(
    pg_dsn: str,
) -> None:
    """A standby source's bridge calls it on the primary (issue 29, left from the last
    round); before 16 the function does not exist and the file still applies."""
    role_dsn = apply_role_sql(pg_dsn)
    with psycopg.connect(role_dsn, autocommit=True) as conn:
        if conn.info.server_version < 160000:
            absent = conn.execute("SELECT to_regproc('pg_catalog.pg_log_standby_snapshot')")
            assert absent.fetchone() == (None,)
            return
        row = conn.execute("SELECT pg_log_standby_snapshot()::text").fetchone()
    assert row is not None and parse_lsn(row[0]) > 0


def init_rows(out: str) -> dict[str, tuple[str, str]]:
    return {step["kind"]: (step["action"], step["detail"]) for step in json.loads(out)}


def test_init_as_the_role_names_what_each_object_needs_then_the_documented_order_works(
    capsys: pytest.CaptureFixture[str],
    pg_server: PostgresServer,
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    role_dsn = apply_role_sql(pg_dsn)  # the role exists cluster-wide from here on
    fresh = f"fresh_{unique_name}"
    fresh_dsn = pg_server.create_database(fresh, outbox_schema=False)
    try:
        config = write_config(
            tmp_path, bridge_config(fresh_dsn.replace("postgres@", "cdc_bridge@"), nats_url,
                                    unique_name),
        )  # fmt: skip
        run = cli(capsys, "init", "--config", config, "--json")
        assert run.code == 1, run.err
        steps = init_rows(run.out)
        assert set(steps) == {"table", "publication", "slot", "stream"}  # nothing skipped
        assert steps["table"][0] == "problem"
        assert (
            "role cdc_bridge may not create it (permission denied for schema public)"
            in (steps["table"][1])
        )
        assert "CREATE on schema public" in steps["table"][1]
        assert "cdc-bridge init --config FILE --dsn <admin DSN>" in steps["table"][1]
        assert steps["publication"][0] == "problem"
        assert steps["publication"][1].startswith("not created: it needs the outbox tables")
        assert steps["slot"][0] == "problem"
        assert steps["slot"][1].startswith("not created: a pgoutput slot must be created after")
        assert steps["stream"][0] == "created"
    finally:
        pg_server.drop_database(fresh)

    # The outbox exists (pg_dsn's database): the publication is what the role lacks.
    config = write_config(tmp_path, bridge_config(role_dsn, nats_url, unique_name))
    run = cli(capsys, "init", "--config", config)
    assert run.code == 1
    assert "None" not in run.out
    [publication] = [line for line in run.out.splitlines() if "publication" in line.split()[:2]]
    assert f"CREATE on database db_{unique_name} and ownership of public.outbox" in publication
    assert "fix: CREATE PUBLICATION" in run.out
    assert not slot_exists(pg_dsn, unique_name)  # never before its publication

    # The documented order: an administrator once, then the role has all it needs.
    assert cli(capsys, "init", "--config", config, "--dsn", pg_dsn).code == 0
    again = cli(capsys, "init", "--config", config, "--json")
    assert again.code == 0, again.out
    assert {action for action, _ in init_rows(again.out).values()} == {"exists"}


def test_show_as_the_role_says_which_walsender_fields_it_cannot_see_and_never_none(
    capsys: pytest.CaptureFixture[str],
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    make_bridge: MakeBridge,
) -> None:
    role_dsn = apply_role_sql(pg_dsn)
    config_dict = bridge_config(role_dsn, nats_url, unique_name)
    config = write_config(tmp_path, config_dict)
    assert cli(capsys, "init", "--config", config, "--dsn", pg_dsn).code == 0
    start_bridge(make_bridge, config_dict)  # streams as cdc_bridge
    insert_transaction(pg_dsn, [("ticket", "created")])

    def walsender(dsn: str, *, replied: bool = False) -> dict[str, Any] | None:
        """The walsender as ``dsn``'s role sees it (once it has replied, if asked)."""
        run = cli(capsys, "slots", "show", unique_name, "--config", config, "--dsn", dsn,
                  "--json")  # fmt: skip
        assert run.code == 0, run.err
        sender: dict[str, Any] | None = run.json()["walsender"]
        if sender is None or (replied and sender["reply_time"] is None):
            return None
        return sender

    seen = wait_until(lambda: walsender(role_dsn), timeout=STARTUP_TIMEOUT,
                      message="no walsender")  # fmt: skip
    assert tuple(seen) == json_keys.WALSENDER_KEYS
    # PostgreSQL hides these even from the walsender's own role; pid and client it shows.
    assert seen["role"] == "cdc_bridge" and seen["details_visible"] is False
    assert seen["application_name"] is not None
    assert [seen[k] for k in ("state", "sent_lsn", "flush_lsn", "reply_time")] == [None] * 4

    human = cli(capsys, "slots", "show", unique_name, "--config", config)
    assert human.code == 0, human.err
    assert "None" not in human.out
    assert f"pid {seen['pid']} (role cdc_bridge)" in human.out
    assert "hidden from role cdc_bridge: state, sent/write/flush/replay and reply_time need " \
        "pg_read_all_stats (pg_monitor includes it). Run with --dsn as a role that has it" \
        in human.out  # fmt: skip
    assert "ALTER ROLE cdc_bridge INHERIT" in human.out or "WITH INHERIT TRUE" in human.out

    admin = wait_until(lambda: walsender(pg_dsn, replied=True), timeout=STARTUP_TIMEOUT,
                       message="the admin never saw the walsender's reply")  # fmt: skip
    assert admin["details_visible"] is True and admin["state"] == "streaming"
    shown = cli(capsys, "slots", "show", unique_name, "--config", config, "--dsn", pg_dsn)
    assert "None" not in shown.out and "hidden" not in shown.out
    assert "  state" in shown.out and "streaming" in shown.out
