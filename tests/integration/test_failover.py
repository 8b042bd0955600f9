"""Failover slots on a primary and a standby (PostgreSQL 17+): the bridge makes its slot
a failover slot, and ``cdc-bridge check`` reports each readiness setting missing in turn
(one line per problem, with its fix). The failovers themselves are in
tests/chaos/test_chaos_failover.py."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support.bridge import MakeBridge, log_event, start_bridge
from support.ha import (
    STANDBY,
    Pair,
    primary_and_standby,
    set_and_reload,
    slot_on,
    wait_until_synchronized,
)
from support.outbox import Event, bridge_config, insert_events, wait_for_ids
from support.waiting import wait_until

from cdc_bridge.cli import json_keys
from cdc_bridge.cli.main import main
from cdc_bridge.dev.pginstall import PgInstall
from cdc_bridge.dev.postgres_server import PostgresServer

pytestmark = pytest.mark.needs_failover_slots


@pytest.fixture
def pair(devstack_tmp: Path, pg_install: PgInstall, unique_name: str) -> Iterator[Pair]:
    with primary_and_standby(devstack_tmp, pg_install, f"db_{unique_name}") as both:
        yield both


def failover_lines(
    capsys: pytest.CaptureFixture[str], folder: Path, config: dict[str, Any]
) -> list[dict[str, Any]]:
    path = folder / "check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    main(["check", "--config", str(path), "--json"])
    results: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return [r for r in results if r["check"] == "postgres.failover"]


def create_failover_slot(pair: Pair, name: str) -> None:
    with psycopg.connect(pair.primary.dsn(pair.database), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', false, false, true)",
            (name,),
        )


def test_check_reports_each_missing_readiness_setting_with_its_fix(
    pair: Pair,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = bridge_config(pair.dsn(), nats_url, unique_name)
    create_failover_slot(pair, unique_name)
    wait_until_synchronized(pair, unique_name)
    [ready] = failover_lines(capsys, tmp_path, config)
    assert ready["status"] == "ok" and "synchronized to every standby" in ready["detail"]

    def one_warning(about: str, fix: str) -> None:
        lines = failover_lines(capsys, tmp_path, config)
        assert [line["status"] for line in lines] == ["warn"], lines
        assert about in lines[0]["detail"] and fix in lines[0]["fix"], lines

    set_and_reload(pair.primary, "synchronized_standby_slots", "")
    one_warning("synchronized_standby_slots is empty", f"= '{STANDBY}'")
    set_and_reload(pair.primary, "synchronized_standby_slots", STANDBY)

    for name in ("hot_standby_feedback", "sync_replication_slots"):
        set_and_reload(pair.standby, name, "off")
        one_warning(f"{name} is off", f"ALTER SYSTEM SET {name} = on")
        set_and_reload(pair.standby, name, "on")

    conninfo = f"host=127.0.0.1 port={pair.primary.port} user=postgres application_name={STANDBY}"
    set_and_reload(pair.standby, "primary_conninfo", conninfo)
    one_warning("primary_conninfo has no dbname", "add dbname=")

    # A failover slot the standby has not synchronized (it cannot while dbname is missing)
    late = f"{unique_name}_late"
    create_failover_slot(pair, late)
    unsynced = {**config, "postgres": {**config["postgres"], "slot": late}}
    lines = failover_lines(capsys, tmp_path, unsynced)
    assert any("is not synchronized there" in line["detail"] for line in lines), lines

    # A slot that is not a failover slot, and a DSN that names only the primary
    with psycopg.connect(pair.primary.dsn(pair.database), autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"{late}_x",))
    plain = {**config, "postgres": {**config["postgres"], "slot": f"{late}_x"}}
    [line] = failover_lines(capsys, tmp_path, plain)
    assert "is not a failover slot" in line["detail"] and "ALTER_REPLICATION_SLOT" in line["fix"]
    alone = {**config, "postgres": {**config["postgres"], "dsn": pair.primary.dsn(pair.database)}}
    lines = failover_lines(capsys, tmp_path, alone)
    assert any("names one host" in line["detail"] for line in lines), lines


def make_a_temporary_copy(pair: Pair, slot: str) -> None:
    """The standby's copy of ``slot`` made while the primary's slot is behind the
    oldest WAL the standby still has: the sync worker reserves from there, finds the
    primary's slot "precedes local slot", and keeps its copy temporary."""
    set_and_reload(pair.standby, "sync_replication_slots", "off")
    create_failover_slot(pair, slot)
    with psycopg.connect(pair.primary.dsn(pair.database), autocommit=True) as conn:
        for _ in range(3):  # the segment of the slot's restart_lsn falls behind
            conn.execute("CREATE TEMPORARY TABLE IF NOT EXISTS filler (x int)")
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        head = row[0]
    with psycopg.connect(pair.standby.dsn(pair.database), autocommit=True) as conn:
        replayed = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
        wait_until(
            lambda: conn.execute(replayed, (head,)).fetchone() == (True,),
            timeout=30,
            message="the standby did not replay the checkpoint",
        )
        conn.execute("CHECKPOINT")  # a restartpoint: the standby removes the old segments
    set_and_reload(pair.standby, "sync_replication_slots", "on")
    row = wait_until(
        lambda: (found := slot_on(pair.standby, pair.database, slot)) and found[1] and found,
        timeout=60,
        message=f"no synced copy of {slot} on the standby",
    )
    assert row[2] is True, row  # synced, and temporary


def advance_and_look(pair: Pair, slot: str) -> bool:
    """Move the primary's slot to the WAL head (its restart_lsn and catalog_xmin follow
    the running-transactions records it passes); whether the standby's copy is ready."""
    with psycopg.connect(pair.primary.dsn(pair.database), autocommit=True) as conn:
        conn.execute("SELECT pg_log_standby_snapshot()")
        conn.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", (slot,))
    row = slot_on(pair.standby, pair.database, slot)
    return row is not None and bool(row[1]) and not row[2] and row[4] is None


def test_a_temporary_copy_is_not_ready_yet_until_it_is_persisted(
    pair: Pair,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 29 item 3: a copy the standby has synced but not persisted is dropped at
    promotion; check and slots show call it not ready yet, with the reason."""
    config = bridge_config(pair.dsn(), nats_url, unique_name)
    make_a_temporary_copy(pair, unique_name)
    server = f"127.0.0.1:{pair.standby.port}"

    [line] = failover_lines(capsys, tmp_path, config)
    assert line["status"] == "warn", line
    assert f"standby {server}: slot {unique_name}: its copy is still temporary" in line["detail"]
    assert "dropped at promotion" in line["detail"] and "let the bridge stream" in line["fix"]
    path = tmp_path / "check.yaml"  # written by failover_lines
    capsys.readouterr()
    assert main(["slots", "show", unique_name, "--config", str(path), "--json"]) == 0
    [standby] = json.loads(capsys.readouterr().out)["standbys"]
    assert (standby["synchronized"], standby["temporary"]) == (False, True), standby
    assert "still temporary" in standby["not_ready"]
    assert main(["slots", "show", unique_name, "--config", str(path)]) == 0
    assert "NOT synchronized: its copy is still temporary" in capsys.readouterr().out

    # Once the primary's slot has caught up with what the standby reserved, it persists.
    wait_until(
        lambda: advance_and_look(pair, unique_name),
        timeout=90,
        interval=1,
        message="the standby's copy never became persistent",
    )
    [ready] = failover_lines(capsys, tmp_path, config)
    assert ready["status"] == "ok", ready


# --- the bridge and its slot ------------------------------------------------------------


def slot_failover(dsn: str, slot: str) -> bool | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return None if row is None else bool(row[0])


def test_the_bridge_creates_a_failover_slot_and_makes_an_existing_one_a_failover_slot(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    assert slot_failover(pg_dsn, unique_name) is True
    bridge.terminate()
    older = f"{unique_name}_old"  # as an older bridge (or PostgreSQL 16) made it
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (older,))
    config = bridge_config(pg_dsn, nats_url, unique_name, postgres={"slot": older})
    bridge = start_bridge(make_bridge, config)
    assert any(log_event("slot_failover_enabled", slot=older)(line) for line in bridge.lines)
    assert slot_failover(pg_dsn, older) is True
    bridge.terminate()
    kept = f"{unique_name}_kept"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (kept,))
    off = {"slot": kept, "failover": False}
    config = bridge_config(pg_dsn, nats_url, unique_name, postgres=off)
    start_bridge(make_bridge, config).terminate()
    assert slot_failover(pg_dsn, kept) is False


def test_init_and_slots_create_make_the_slot_as_run_would(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 29 item 4: with postgres.failover: auto on 17+, every command that creates
    the bridge's slot makes it a failover slot; with false, none does."""
    path = tmp_path / "init.yaml"

    def cli(config: dict[str, Any], *args: str) -> str:
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        capsys.readouterr()
        code = main([*args, "--config", str(path)])
        out = capsys.readouterr().out
        assert code == 0, out
        return out

    config = bridge_config(pg_dsn, nats_url, unique_name)
    said = cli(config, "init")
    assert slot_failover(pg_dsn, unique_name) is True
    assert "(a failover slot)" in said
    made = f"{unique_name}_made"
    created = json.loads(cli(config, "slots", "create", made, "--json"))
    assert created["failover"] is True and slot_failover(pg_dsn, made) is True
    off = bridge_config(pg_dsn, nats_url, unique_name, postgres={"failover": False})
    plain = f"{unique_name}_plain"
    assert "failover" not in cli(off, "slots", "create", plain)
    assert slot_failover(pg_dsn, plain) is False
    cli(off, "slots", "drop", unique_name, "--yes")
    assert "failover" not in cli(off, "init")
    assert slot_failover(pg_dsn, unique_name) is False


def test_a_slot_missing_on_another_system_is_a_failover_line_not_a_new_slot(
    pg_dsn: str,
    isolated_pg_server: PostgresServer,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    """The stream's events came from one cluster; the DSN now reaches another (a restored
    or rebuilt primary) without the slot: creating one there would skip events."""
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    wait_for_ids(nats_url, unique_name.upper(), insert_events(pg_dsn, [Event()]))
    bridge.terminate()
    other = isolated_pg_server.create_database(f"db_{unique_name}")
    bridge = make_bridge(bridge_config(other, nats_url, unique_name))
    assert bridge.wait_for_exit(30) == 1
    fatal = [line for line in bridge.lines if log_event("fatal")(line)]
    assert len(fatal) == 1 and "failover without a synchronized slot" in fatal[0], bridge.lines
    assert f"127.0.0.1:{isolated_pg_server.port}" in fatal[0]
    assert slot_failover(other, unique_name) is None  # no slot was created


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def test_slots_show_status_and_metrics_show_the_standbys_copy_of_the_slot(
    pair: Pair,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = bridge_config(pair.dsn(), nats_url, unique_name)
    bridge = start_bridge(make_bridge, config)
    wait_until_synchronized(pair, unique_name)
    server = f"127.0.0.1:{pair.standby.port}"
    path = tmp_path / "show.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    assert main(["slots", "show", unique_name, "--config", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert tuple(shown) == json_keys.SLOT_KEYS + json_keys.SHOW_EXTRA_KEYS
    assert shown["failover"] is True
    [standby] = shown["standbys"]
    assert tuple(standby) == json_keys.STANDBY_KEYS
    assert standby["server"] == server and standby["synchronized"] is True
    assert isinstance(standby["behind_bytes"], int) and standby["error"] is None
    assert main(["slots", "show", unique_name, "--config", str(path)]) == 0
    assert f"standby {server}" in capsys.readouterr().out
    # The bridge looked at the standby when its session began (the copy may not have
    # been synchronized yet then): /status and the metrics name it
    base = bridge.http_url()
    status = json.loads(get_text(f"{base}/status"))
    assert status["failover"] is True
    assert [s["server"] for s in status["standbys"]] == [server]
    metrics = get_text(f"{base}/metrics")
    assert f'cdc_bridge_failover_slot_synchronized{{standby="{server}"}}' in metrics


# --- postgres.source: standby -----------------------------------------------------------


def test_check_of_a_standby_source(
    pair: Pair,
    nats_url: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = {
        "dsn": pair.standby.dsn(pair.database),
        "source": "standby",
        "primary_dsn": pair.primary.dsn(pair.database),
    }
    config = bridge_config(pair.dsn(), nats_url, unique_name, postgres=source)

    def results() -> dict[str, list[dict[str, Any]]]:
        path = tmp_path / "standby.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        capsys.readouterr()
        main(["check", "--config", str(path), "--json"])
        by_name: dict[str, list[dict[str, Any]]] = {}
        for result in json.loads(capsys.readouterr().out):
            by_name.setdefault(result["check"], []).append(result)
        return by_name

    ready = results()
    assert [r["status"] for r in ready["postgres.server"]] == ["ok"]
    assert "hot standby" in ready["postgres.server"][0]["detail"]
    assert [r["status"] for r in ready["postgres.source"]] == ["ok"]
    assert [r["status"] for r in ready["postgres.failover"]] == ["skip"]
    set_and_reload(pair.standby, "hot_standby_feedback", "off")
    [line] = results()["postgres.source"]
    assert line["status"] == "FAIL" and "hot_standby_feedback is off" in line["detail"]
    assert "ALTER SYSTEM SET hot_standby_feedback = on" in line["fix"]
    set_and_reload(pair.standby, "hot_standby_feedback", "on")
    config["postgres"]["dsn"] = pair.primary.dsn(pair.database)  # not a standby
    [line] = results()["postgres.server"]
    assert line["status"] == "FAIL" and "postgres.source is standby" in line["detail"]
