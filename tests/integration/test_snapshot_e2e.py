"""`cdc-bridge snapshot` beside a streaming bridge: the command's messages come out of
the stream as the table's R events (the command's side and the bridge's, together).

tests/integration/test_snapshot_cli.py pins what the command writes into the WAL;
test_snapshot_rows.py pins what the bridge makes of such messages; this runs both.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
import yaml
from support.bridge import MakeBridge, run_cli, start_bridge
from support.change_tables import BIG, TICKETS, change_config
from support.outbox import Event, insert_event, wait_for_ids
from support.plugins import PLUGINS, run_statements

from cdc_bridge.core.snapshots import snapshot_msg_id


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_snapshot_beside_a_streaming_bridge_publishes_each_row_as_its_insert_with_action_r(
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
    tmp_path: Path,
    plugin: str,
) -> None:
    run_statements(pg_dsn, TICKETS)
    config = change_config(pg_dsn, nats_url, unique_name, plugin)
    config_path = tmp_path / "bridge.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    start_bridge(make_bridge, config)
    with psycopg.connect(pg_dsn) as conn:  # one transaction: three I events
        conn.execute(
            "INSERT INTO tickets VALUES (1, 'Printer jam', 'open', 2, 12.5, false, '\\x00ff',"
            f" {BIG})"
        )
        conn.execute("INSERT INTO tickets (id, title, estimate) VALUES (3, 'Café ☕', 'NaN')")
        conn.execute("INSERT INTO tickets (id, title, done) VALUES (20, 'Toner', true)")

    run = run_cli(config_path, "snapshot", "--table", "tickets", "--chunk", "2", "--id", "e2e",
                  "--yes", "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["rows"] == 3
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")
        final = insert_event(conn, Event(aggregate_id="T-1", event_type="after"))

    stored = wait_for_ids(nats_url, unique_name.upper(), [final], timeout=30)
    subjects = [m.subject.removeprefix(f"{unique_name}.") for m in stored]
    assert subjects == ["tickets.I"] * 3 + ["tickets.R"] * 3 + ["tickets.U", "ticket.after"]
    inserts, reads = stored[:3], stored[3:6]
    for inserted, read in zip(inserts, reads, strict=True):
        assert json.loads(read.data) == {**json.loads(inserted.data), "action": "R"}
    assert [m.headers["Nats-Msg-Id"] for m in reads] == [
        snapshot_msg_id("e2e", "public.tickets", (key,)) for key in ("1", "3", "20")
    ]
    # two chunks: two source transactions
    assert len({m.headers["Cdc-Lsn"] for m in reads}) == 2

    again = run_cli(config_path, "snapshot", "--table", "tickets", "--id", "e2e", "--yes")
    assert again.returncode == 1
    assert again.stderr.startswith("cdc-bridge: snapshot e2e of public.tickets finished at ")
