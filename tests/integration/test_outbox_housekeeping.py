"""Outbox housekeeping: rows deleted in the transaction that wrote them (the trigger and
the manual way of sql/outbox_delete_in_tx.sql), the retention job (`cdc-bridge outbox
prune`, sql/prune.sql), and what the bridge makes of all those deletes: nothing. Every
event still arrives exactly once, and no delete ever becomes a message.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from support.bridge import (
    REPO_ROOT,
    MakeBridge,
    start_bridge,
)
from support.outbox import bridge_config, duplicated_ids, message_ids, wait_for_ids

from cdc_bridge.cli import json_keys
from cdc_bridge.dev.pginstall import find_pg_bindir
from cdc_bridge.outbox import Event, emit, emit_many

SQL_DIR = REPO_ROOT / "sql"


def run_psql(dsn: str, sql_file: Path) -> subprocess.CompletedProcess[str]:
    psql = find_pg_bindir() / "psql"
    result = subprocess.run(
        [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(sql_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def run_prune(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cdc_bridge",
            "outbox",
            "prune",
            "--config",
            str(config_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def insert_aged(dsn: str, count: int, age: str, table: str = "public.outbox") -> None:
    """``count`` committed outbox rows whose created_at is ``age`` (an interval) ago."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            f"INSERT INTO {table} (aggregate_type, aggregate_id, event_type, payload, created_at)"
            " SELECT 'ticket', 'aged-' || n, 'created', '{}', now() - %s::interval"
            " FROM generate_series(1, %s) n",
            (age, count),
        )


def count_rows(dsn: str, table: str = "public.outbox") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


# --- cdc-bridge outbox prune ----------------------------------------------------------------


def test_prune_deletes_old_rows_in_batches_and_keeps_young_ones(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    insert_aged(pg_dsn, 25, "10 days")
    insert_aged(pg_dsn, 4, "6 days")
    insert_aged(pg_dsn, 3, "1 minute")
    config = write_config(tmp_path, bridge_config(pg_dsn, nats_url, unique_name))

    dry = run_prune(config, "--older-than", "7d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("public.outbox: would delete 25 rows created before ")
    assert count_rows(pg_dsn) == 32

    pruned = run_prune(config, "--older-than", "7d", "--batch-size", "10")
    assert pruned.returncode == 0, pruned.stderr
    [line] = pruned.stdout.splitlines()
    assert line.startswith("public.outbox: deleted 25 rows created before ")
    assert line.endswith(" in 3 batches")
    assert count_rows(pg_dsn) == 7

    again = run_prune(config, "--older-than", "1h")
    assert again.stdout.startswith("public.outbox: deleted 4 rows created before ")
    assert count_rows(pg_dsn) == 3


def test_prune_covers_every_outbox_table_of_the_config(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.outbox_b (LIKE public.outbox INCLUDING ALL)")
    insert_aged(pg_dsn, 2, "2 days")
    insert_aged(pg_dsn, 3, "2 days", table="public.outbox_b")
    config = write_config(
        tmp_path,
        bridge_config(
            pg_dsn, nats_url, unique_name, outbox={"table": ["public.outbox", "public.outbox_b"]}
        ),
    )
    pruned = run_prune(config, "--older-than", "1d")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines()[-1] == "total: deleted 5 rows"
    assert (count_rows(pg_dsn), count_rows(pg_dsn, "public.outbox_b")) == (0, 0)


def test_prune_refuses_a_table_without_created_at_before_deleting_anything(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.events (id uuid PRIMARY KEY, aggregate_type text,"
            " aggregate_id text, event_type text, payload jsonb)"
        )
    insert_aged(pg_dsn, 2, "2 days")
    config = write_config(
        tmp_path,
        bridge_config(
            pg_dsn, nats_url, unique_name, outbox={"table": ["public.outbox", "public.events"]}
        ),
    )
    refused = run_prune(config, "--older-than", "1d")
    assert refused.returncode == 1
    assert refused.stderr.startswith("cdc-bridge: table public.events has no created_at column")
    assert len(refused.stderr.splitlines()) == 1
    assert count_rows(pg_dsn) == 2


def test_prune_with_a_messages_only_config_has_nothing_to_do(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        bridge_config(
            pg_dsn, nats_url, unique_name, outbox={"table": [], "message_prefixes": ["outbox"]}
        ),
    )
    result = run_prune(config, "--older-than", "7d")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nothing to prune")


# --- sql/prune.sql --------------------------------------------------------------------------


def test_prune_sql_procedure_deletes_old_rows_in_batches(pg_dsn: str) -> None:
    installed = run_psql(pg_dsn, SQL_DIR / "prune.sql")
    assert "pg_cron is not installed" in installed.stderr  # a notice, not an error
    insert_aged(pg_dsn, 7, "8 days")
    insert_aged(pg_dsn, 2, "1 day")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # CALL may commit: no tx block
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("CALL public.outbox_prune('7 days', 3)")
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'outbox_created_at_idx'"
        ).fetchone()
    assert count_rows(pg_dsn) == 2
    assert notices and notices[-1].startswith("outbox_prune: deleted 7 rows created before ")
    assert index is not None and "(created_at)" in index[0]
    run_psql(pg_dsn, SQL_DIR / "prune.sql")  # running it again changes nothing, fails nothing


# --- the bridge and the deletes -------------------------------------------------------------


def test_rows_deleted_in_their_own_transaction_still_arrive(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    """sql/outbox_delete_in_tx.sql as shipped, then emit() with the trigger and by hand."""
    start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    run_psql(pg_dsn, SQL_DIR / "outbox_delete_in_tx.sql")  # trigger + one example event

    big = secrets.token_hex(60_000)  # 120 kB of incompressible text: stored out of line
    with psycopg.connect(pg_dsn) as conn:  # the trigger deletes these
        ids = emit_many(
            conn,
            [
                Event("ticket", "T-2", "created", {"big": big}),
                Event("ticket", "T-2", "updated", {"n": 2}),
            ],
        )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER outbox_delete_inserted ON public.outbox")
    with psycopg.connect(pg_dsn) as conn:  # by hand, as the SQL file shows for Python
        manual = emit(
            conn,
            aggregate_type="ticket",
            aggregate_id="T-3",
            event_type="created",
            payload={"n": 3},
        )
        conn.execute("DELETE FROM public.outbox WHERE id = %s", (manual,))
    with psycopg.connect(pg_dsn) as conn:  # the last one is kept: it closes the test
        last = emit(
            conn, aggregate_type="ticket", aggregate_id="T-4", event_type="created", payload={}
        )

    expected = [*map(str, ids), str(manual), str(last)]
    messages = wait_for_ids(nats_url, unique_name.upper(), expected)
    # The SQL file's own event came first; then ours, in commit order, and nothing else
    assert len(messages) == 1 + len(expected)
    assert messages[0].subject == f"{unique_name}.ticket.created"
    assert message_ids(messages)[1:] == expected
    assert messages[1].data == f'{{"big": "{big}"}}'.encode()
    assert count_rows(pg_dsn) == 1  # only the last row was kept


def test_pruning_while_the_bridge_runs_or_is_down_loses_and_adds_nothing(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge, tmp_path: Path
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    config_path = write_config(tmp_path, config)
    bridge = start_bridge(make_bridge, config)
    with psycopg.connect(pg_dsn) as conn:
        first = emit_many(conn, [Event("ticket", f"T-{n}", "created", {"n": n}) for n in range(20)])
    wait_for_ids(nats_url, unique_name.upper(), list(map(str, first)))
    while_running = run_prune(config_path, "--older-than", "0s", "--batch-size", "7")
    assert while_running.returncode == 0, while_running.stderr
    assert "deleted 20 rows" in while_running.stdout

    # Down: these rows are deleted before the bridge ever read them
    assert bridge.terminate() == 0
    with psycopg.connect(pg_dsn) as conn:
        unread = emit_many(
            conn, [Event("ticket", f"U-{n}", "created", {"n": n}) for n in range(10)]
        )
    while_down = run_prune(config_path, "--older-than", "0s")
    assert "deleted 10 rows" in while_down.stdout
    assert count_rows(pg_dsn) == 0

    start_bridge(make_bridge, config)
    with psycopg.connect(pg_dsn) as conn:
        last = emit(
            conn, aggregate_type="ticket", aggregate_id="L", event_type="closed", payload={}
        )
    expected = [str(i) for i in [*first, *unread, last]]
    messages = wait_for_ids(nats_url, unique_name.upper(), expected)
    assert message_ids(messages) == expected  # no delete became a message, none was lost
    assert duplicated_ids(messages) == {}


# --- prune and the least-privilege role (sql/role.sql) ---------------------------------------


def bridge_role_dsn(admin_dsn: str) -> str:
    """The same database as sql/role.sql's role (trust auth on the test server)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute((SQL_DIR / "role.sql").read_text().encode())
    return admin_dsn.replace("postgres@", "cdc_bridge@", 1)


def test_prune_as_the_bridges_role_says_in_one_line_what_it_needs_and_deletes_nothing(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    insert_aged(pg_dsn, 3, "2 days")
    role_dsn = bridge_role_dsn(pg_dsn)
    config = write_config(tmp_path, bridge_config(role_dsn, nats_url, unique_name))

    refused = run_prune(config, "--older-than", "1d")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "cdc-bridge: role cdc_bridge may not delete from public.outbox: prune needs "
        "UPDATE, DELETE on it (the bridge's own role, sql/role.sql, has SELECT only). "
        "Run it with --dsn as a role that may (e.g. the table's owner), or "
        "GRANT SELECT, UPDATE, DELETE ON public.outbox TO <a housekeeping role>"
    ]
    assert count_rows(pg_dsn) == 3

    counted = run_prune(config, "--older-than", "1d", "--dry-run", "--json")  # SELECT is enough
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["total_rows"] == 3

    # The documented fix: a role that has exactly what the line names.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'housekeeping')"
            " THEN CREATE ROLE housekeeping LOGIN; END IF; END $$"
        )
        conn.execute("GRANT USAGE ON SCHEMA public TO housekeeping")
        conn.execute("GRANT SELECT, UPDATE, DELETE ON public.outbox TO housekeeping")
    housekeeping = pg_dsn.replace("postgres@", "housekeeping@", 1)
    pruned = run_prune(config, "--older-than", "1d", "--dsn", housekeeping)
    assert pruned.returncode == 0, pruned.stderr
    assert count_rows(pg_dsn) == 0


def test_prune_json_has_the_documented_keys(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    insert_aged(pg_dsn, 5, "2 days")
    insert_aged(pg_dsn, 1, "1 minute")
    config = write_config(tmp_path, bridge_config(pg_dsn, nats_url, unique_name))
    pruned = run_prune(config, "--older-than", "1d", "--batch-size", "2", "--json")
    assert pruned.returncode == 0, pruned.stderr
    document = json.loads(pruned.stdout)
    assert tuple(document) == json_keys.PRUNE_KEYS
    assert document["dry_run"] is False and document["total_rows"] == 5
    [table] = document["tables"]
    assert tuple(table) == json_keys.PRUNE_TABLE_KEYS
    assert table == {"table": "public.outbox", "rows": 5, "batches": 3}
    assert datetime.fromisoformat(document["cutoff"]) < datetime.now(UTC)
    assert count_rows(pg_dsn) == 1
