"""Change events of an ordinary ``tickets`` table through both plugins, end to end.

One database and one workload: inserts, updates (one leaving a TOASTed column unchanged,
one changing the key), deletes, outbox rows in the same transactions and an outbox
cleanup, first under REPLICA IDENTITY DEFAULT and then FULL. Two bridges stream it, one
per plugin, each to its own nats-server; every stored message must be identical (subject,
body, header block; not Cdc-Source, which names the slot), and every body must be the
object wal2json itself writes for that change (read from a third slot through SQL), less
the fields of options the bridge sets for its own use (xid, timestamp, lsn, typeoid).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
import yaml
from support.bridge import STARTUP_TIMEOUT, MakeBridge, log_event, parse_json_line
from support.change_tables import BIG, TICKETS, change_config, debezium_config
from support.outbox import Event, insert_event, wait_for_ids
from support.plugins import PLUGINS, comparable, run_statements, stream_through_both_plugins

from cdc_bridge.cli.main import main as cli_main
from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.source.decoding.wal2json import wal2json_options

_OPTION_FIELDS = re.compile(r',"(?:xid|typeoid)":\d+|,"(?:timestamp|lsn)":"[^"]*"')


def run_workload(dsn: str) -> str:
    """Changes under REPLICA IDENTITY DEFAULT, then FULL; the id of the last outbox row."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO tickets VALUES (1, 'Printer jam', 'open', 2, 12.5, false, '\\x00ff',"
            f" {BIG})"
        )
        insert_event(conn, Event(aggregate_id="T-1", event_type="opened"))
        conn.execute("INSERT INTO tickets (id, title, estimate) VALUES (3, 'Café ☕', 'NaN')")
    with psycopg.connect(dsn) as conn:  # body unchanged: not sent, left out
        conn.execute("UPDATE tickets SET status = 'closed', done = true WHERE id = 1")
    with psycopg.connect(dsn) as conn:  # a new key: the identity has the old one
        conn.execute("UPDATE tickets SET id = 2 WHERE id = 1")
    with psycopg.connect(dsn) as conn:  # an outbox cleanup is no event
        conn.execute("DELETE FROM outbox")
        conn.execute("DELETE FROM tickets WHERE id = 3")
    run_statements(dsn, "ALTER TABLE tickets REPLICA IDENTITY FULL")
    with psycopg.connect(dsn) as conn:  # the whole old row, TOASTed body and NULLs too
        conn.execute("UPDATE tickets SET status = 'reopened' WHERE id = 2")
        conn.execute("DELETE FROM tickets WHERE id = 2")
    with psycopg.connect(dsn) as conn:
        return insert_event(conn, Event(aggregate_id="T-1", event_type="final"))


def wal2json_own_objects(dsn: str, slot: str) -> list[bytes]:
    """What wal2json writes for the tickets' changes, less the bridge's option fields."""
    options = wal2json_options(("public.outbox",), (), ("public.tickets",))
    flat = [value for pair in options for value in pair]
    placeholders = ", ".join(["%s"] * len(flat))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET bytea_output = hex")
        rows = conn.execute(
            f"SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL, {placeholders})",
            [slot, *flat],
        ).fetchall()
    return [
        _OPTION_FIELDS.sub("", str(data)).encode()
        for (data,) in rows
        if '"table":"tickets"' in str(data)
    ]


@pytest.mark.needs_wal2json
def test_both_plugins_publish_the_changes_wal2json_writes(
    pg_dsn: str,
    nats_url: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    run_statements(pg_dsn, TICKETS)
    reference_slot = f"{unique_name}_reference"
    run_statements(
        pg_dsn, f"SELECT pg_create_logical_replication_slot('{reference_slot}', 'wal2json')"
    )
    servers = {"pgoutput": nats_url, "wal2json": isolated_nats_server.url}
    stream = unique_name.upper()
    stored = stream_through_both_plugins(
        make_bridge,
        lambda url, plugin: change_config(pg_dsn, url, unique_name, plugin),
        servers,
        stream,
        lambda: run_workload(pg_dsn),
    )
    pgoutput, wal2json = stored["pgoutput"], stored["wal2json"]
    assert [comparable(nats_url, stream, m) for m in pgoutput] == [
        comparable(isolated_nats_server.url, stream, m) for m in wal2json
    ]

    subjects = [m.subject.removeprefix(f"{unique_name}.") for m in pgoutput]
    assert subjects == [
        "tickets.I",
        "ticket.opened",
        "tickets.I",
        "tickets.U",
        "tickets.U",
        "tickets.deleted",
        "tickets.U",
        "tickets.deleted",
        "ticket.final",
    ]
    changes = [m for m in pgoutput if m.subject.startswith(f"{unique_name}.tickets.")]
    assert [m.data for m in changes] == wal2json_own_objects(pg_dsn, reference_slot)
    for message in changes:  # "<commit LSN>-<index>", the index being Cdc-Index
        headers = message.headers
        assert headers["Nats-Msg-Id"] == f"{headers['Cdc-Lsn']}-{headers['Cdc-Index']}"
        assert headers["Cdc-Table"] == "public.tickets"
    check_identities([json.loads(m.data) for m in changes])
    assert [changes[4].headers["Ticket"], changes[6].headers["Ticket"]] == ["3", "2"]


def check_identities(changes: list[dict[str, Any]]) -> None:
    """DEFAULT: the key only; FULL: the whole old row. Unchanged TOAST: left out."""

    def names(columns: list[dict[str, Any]]) -> list[str]:
        return [c["name"] for c in columns]

    def values(columns: list[dict[str, Any]]) -> dict[str, Any]:
        return {c["name"]: c["value"] for c in columns}

    every = ["id", "title", "status", "priority", "estimate", "done", "attachment", "body"]
    inserted, inserted_nan, closed, rekeyed, deleted, reopened, deleted_full = changes
    assert list(inserted) == ["action", "schema", "table", "columns"]
    assert names(inserted["columns"]) == every
    assert values(inserted["columns"])["priority"] == 2
    assert values(inserted["columns"])["estimate"] == 12.5
    assert values(inserted["columns"])["attachment"] == "00ff"
    assert inserted["columns"][1] == {
        "name": "title",
        "type": "character varying(200)",
        "value": "Printer jam",
    }
    assert values(inserted_nan["columns"])["estimate"] is None  # NaN: not JSON
    # DEFAULT: the key of the new row (unchanged) or the old key (changed)
    assert names(closed["columns"]) == every[:-1]  # body: unchanged TOAST, left out
    assert closed["identity"] == [{"name": "id", "type": "integer", "value": 1}]
    assert values(rekeyed["identity"]) == {"id": 1} and values(rekeyed["columns"])["id"] == 2
    assert list(deleted) == ["action", "schema", "table", "identity"]
    assert values(deleted["identity"]) == {"id": 3}
    # FULL: every old column, NULLs and the TOASTed body included
    assert names(reopened["identity"]) == every
    assert values(reopened["identity"])["status"] == "closed"
    assert len(values(reopened["identity"])["body"]) == 8000
    assert "body" not in names(reopened["columns"])
    assert names(deleted_full["identity"]) == every
    assert values(deleted_full["identity"])["status"] == "reopened"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_change_table_without_replica_identity(
    plugin: str, pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    """pgoutput: refused at start, since PostgreSQL would then refuse the application's
    UPDATE and DELETE on the table. wal2json: a warning, and inserts still arrive."""
    run_statements(pg_dsn, "CREATE TABLE public.tickets (id int, title text)")
    bridge = make_bridge(change_config(pg_dsn, nats_url, unique_name, plugin))
    if plugin == "pgoutput":
        assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
        fatal = [r for r in bridge.json_records() if r.get("event") == "fatal"]
        assert len(fatal) == 1 and "REPLICA IDENTITY FULL" in fatal[0]["error"]
        assert not any("Traceback" in line for line in bridge.lines)
        with psycopg.connect(pg_dsn) as conn:  # and the application is not broken
            conn.execute("INSERT INTO tickets VALUES (1, 'a')")
            conn.execute("UPDATE tickets SET title = 'b'")
            conn.execute("DELETE FROM tickets")
        return
    line = bridge.wait_for_log(log_event("change_table_without_identity"), timeout=STARTUP_TIMEOUT)
    record = parse_json_line(line)
    assert (
        record is not None and "REPLICA IDENTITY DEFAULT without a primary key" in (record["error"])
    )
    bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO tickets VALUES (1, 'a')")
        conn.execute("UPDATE tickets SET title = 'b'")
        conn.execute("DELETE FROM tickets")
        final = insert_event(conn, Event(event_type="final"))
    messages = wait_for_ids(nats_url, unique_name.upper(), [final])
    assert [m.subject.removeprefix(f"{unique_name}.") for m in messages] == [
        "tickets.I",
        "ticket.final",
    ]


def test_an_existing_publication_without_updates_and_deletes_is_one_fatal_line(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    """Made by an older bridge or by hand: the fix is named, nothing is changed for us."""
    publication = f"{unique_name}_pgoutput"
    run_statements(
        pg_dsn,
        TICKETS,
        f"CREATE PUBLICATION {publication} FOR TABLE public.outbox, public.tickets"
        " WITH (publish = 'insert')",
    )
    bridge = make_bridge(change_config(pg_dsn, nats_url, unique_name, "pgoutput"))
    assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
    fatal = [r for r in bridge.json_records() if r.get("event") == "fatal"]
    assert len(fatal) == 1, bridge.lines
    assert fatal[0]["error"].endswith(
        f"(fix: ALTER PUBLICATION {publication} SET (publish = 'insert, update, delete'))"
    )


def check_publication(
    capsys: pytest.CaptureFixture[str], path: Path
) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """``cdc-bridge check --json``: its exit code, the publication's result, all FAILs."""
    capsys.readouterr()
    code = cli_main(["check", "--config", str(path), "--json"])
    results = json.loads(capsys.readouterr().out)
    [publication] = [r for r in results if r["check"] == "postgres.publication"]
    return code, publication, [r for r in results if r["status"] == "FAIL"]


def test_check_suggests_the_publication_run_accepts(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 29 item 2: check applies start-up's rules to the publication, so running
    exactly the statement it suggests makes check green and the bridge stream."""
    run_statements(pg_dsn, TICKETS)
    config = change_config(pg_dsn, nats_url, unique_name, "pgoutput")
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    publication = config["postgres"]["publication"]

    code, result, _ = check_publication(capsys, path)
    assert code == 1 and result["status"] == "FAIL", result
    assert result["detail"] == f"publication {publication} does not exist"
    prefix = "cdc-bridge init, or "
    assert result["fix"].startswith(prefix), result
    statement = result["fix"].removeprefix(prefix)
    assert statement == (
        f'CREATE PUBLICATION "{publication}" FOR TABLE "public"."outbox", "public"."tickets"'
        " WITH (publish = 'insert, update, delete');"
    )
    run_statements(pg_dsn, statement)

    code, result, fails = check_publication(capsys, path)
    assert (code, fails) == (0, []), fails
    assert result["status"] == "ok", result
    bridge = make_bridge(config)
    bridge.wait_for_log(log_event("streaming"), timeout=STARTUP_TIMEOUT)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO tickets (id, title) VALUES (1, 'a')")
        conn.execute("UPDATE tickets SET title = 'b'")
        conn.execute("DELETE FROM tickets")
        final = insert_event(conn, Event(event_type="final"))
    messages = wait_for_ids(nats_url, unique_name.upper(), [final])
    assert [m.subject.removeprefix(f"{unique_name}.") for m in messages] == [
        "tickets.I",
        "tickets.U",
        "tickets.deleted",
        "ticket.final",
    ]
    assert bridge.running


def test_check_names_what_run_would_refuse_in_an_existing_publication(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's path: the outbox's publication of old, then the table added, then the
    operations; check fails with start-up's own fix at each step until run would start."""
    run_statements(pg_dsn, TICKETS)
    config = change_config(pg_dsn, nats_url, unique_name, "pgoutput")
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    publication = config["postgres"]["publication"]
    run_statements(
        pg_dsn,
        f"CREATE PUBLICATION {publication} FOR TABLE public.outbox WITH (publish = 'insert')",
    )
    fixes = [
        f"ALTER PUBLICATION {publication} ADD TABLE public.tickets",
        f"ALTER PUBLICATION {publication} SET (publish = 'insert, update, delete')",
    ]
    for fix in fixes:
        code, result, _ = check_publication(capsys, path)
        assert (code, result["status"], result["fix"]) == (1, "FAIL", fix), result
        run_statements(pg_dsn, fix)
    code, result, _ = check_publication(capsys, path)
    assert result["status"] == "ok", result
    assert result["detail"] == (
        f"{publication} publishes insert, update, delete of public.outbox, public.tickets"
    )


@pytest.mark.needs_wal2json
def test_debezium_envelopes_under_default_and_full_on_both_plugins(
    pg_dsn: str,
    nats_url: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    """The same workload as above (DEFAULT, then FULL) with `payload: debezium`: both
    plugins publish identical envelopes, each with what Debezium's connector writes."""
    run_statements(pg_dsn, TICKETS)
    servers = {"pgoutput": nats_url, "wal2json": isolated_nats_server.url}
    stream = unique_name.upper()
    stored = stream_through_both_plugins(
        make_bridge,
        lambda url, plugin: debezium_config(pg_dsn, url, unique_name, plugin),
        servers,
        stream,
        lambda: run_workload(pg_dsn),
    )
    pgoutput, wal2json = stored["pgoutput"], stored["wal2json"]
    assert [comparable(nats_url, stream, m) for m in pgoutput] == [
        comparable(isolated_nats_server.url, stream, m) for m in wal2json
    ]
    changes = [m for m in pgoutput if m.subject.startswith(f"{unique_name}.tickets.")]
    envelopes = [json.loads(m.data) for m in changes]
    database = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    for message, envelope in zip(changes, envelopes, strict=True):
        assert list(envelope) == ["before", "after", "source", "op", "ts_ms"]
        source = envelope["source"]
        assert (source["db"], source["schema"], source["table"]) == (database, "public", "tickets")
        assert source["connector"] == "postgresql" and source["snapshot"] == "false"
        high, low = message.headers["Cdc-Lsn"].split("/")
        assert source["lsn"] == (int(high, 16) << 32) + int(low, 16)  # the commit LSN
        assert isinstance(source["txId"], int) and source["txId"] > 0
        assert abs(source["ts_ms"] - time.time() * 1000) < 600_000
        assert envelope["ts_ms"] == source["ts_ms"]
        assert (
            message.headers["Nats-Msg-Id"]
            == f"{message.headers['Cdc-Lsn']}-" + (message.headers["Cdc-Index"])
        )
    check_debezium(envelopes)


def check_debezium(envelopes: list[dict[str, Any]]) -> None:
    inserted, inserted_nan, closed, rekeyed, deleted, reopened, deleted_full = envelopes
    assert [e["op"] for e in envelopes] == ["c", "c", "u", "u", "d", "u", "d"]
    # one transaction: one txId; the next: another
    assert inserted["source"]["txId"] == inserted_nan["source"]["txId"]
    assert inserted["source"]["txId"] != closed["source"]["txId"]
    every = ["id", "title", "status", "priority", "estimate", "done", "attachment", "body"]
    assert inserted["before"] is None and list(inserted["after"]) == every
    after = inserted["after"]
    assert (after["id"], after["title"], after["priority"], after["estimate"]) == (
        1, "Printer jam", 2, 12.5
    )  # fmt: skip
    assert after["done"] is False and after["attachment"] == "AP8="  # bytea: base64
    assert len(after["body"]) == 8000
    assert inserted_nan["after"]["estimate"] is None and inserted_nan["after"]["status"] is None
    # DEFAULT: no old row in the WAL, so no `before` (as Debezium); unchanged TOAST left out
    assert closed["before"] is None and list(closed["after"]) == every[:-1]
    assert closed["after"]["status"] == "closed" and closed["after"]["done"] is True
    assert rekeyed["before"] is None and rekeyed["after"]["id"] == 2
    assert deleted["before"] == {"id": 3} and deleted["after"] is None
    # FULL: the whole old row, TOASTed body included
    assert list(reopened["before"]) == every
    assert reopened["before"]["status"] == "closed" and len(reopened["before"]["body"]) == 8000
    assert reopened["after"]["status"] == "reopened" and "body" not in reopened["after"]
    assert list(deleted_full["before"]) == every and deleted_full["after"] is None
    assert deleted_full["before"]["status"] == "reopened"
