"""A snapshot beside writers (issue 32): 500 existing rows published once as R while
inserts, updates and deletes of the same table stream alongside.

The stream is replayed in order into a copy of the table, starting from the rows as they
were: I and U set a key's row, D removes it, and every R must equal the copy's row at
that point (so it is never older than a change already seen, and never hides a change
not yet seen). At the end the copy equals the table (nothing lost), no key has two R,
and every original row the writers left alone has its R.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import psycopg
import yaml
from support.bridge import MakeBridge, run_cli, start_bridge
from support.outbox import Event, bridge_config, insert_event, wait_for_ids
from support.snapshots import Replay, Seen, change_a_row, create_accounts, table_rows

ROWS = 500


def write_alongside(dsn: str, stop: threading.Event, touched: set[int]) -> None:
    """Small transactions of inserts, updates and deletes of keys 1-700 but the multiples
    of 3 up to 500 (left alone, so that some rows surely have an R), until stopped."""
    chooser = random.Random(32)
    keys = [k for k in range(1, ROWS + 201) if k > ROWS or k % 3]
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            with conn.transaction():
                for _ in range(chooser.randint(1, 4)):
                    key = chooser.choice(keys)
                    touched.add(key)
                    change_a_row(conn, chooser, key)


def test_every_row_once_as_r_never_older_than_a_change_already_seen(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge, tmp_path: Path
) -> None:
    create_accounts(pg_dsn, ROWS)
    config = bridge_config(
        pg_dsn,
        nats_url,
        unique_name,
        outbox={"table": "public.outbox", "change_tables": ["public.accounts"]},
        routes=[
            {
                "when": {"table": "public.accounts"},
                "subject": f"{unique_name}.accounts.{{action}}",
                "payload": "change",
            },
            {"subject": f"{unique_name}.{{aggregate_type}}.{{event_type}}"},
        ],
    )
    start_bridge(make_bridge, config)
    config_path = tmp_path / "snapshot.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    before = table_rows(pg_dsn)

    stop, touched = threading.Event(), set[int]()
    writer = threading.Thread(target=write_alongside, args=(pg_dsn, stop, touched))
    writer.start()
    try:
        result = run_cli(
            config_path, "snapshot", "--table", "public.accounts", "--chunk", "25", "--yes"
        )
    finally:
        stop.set()
        writer.join()
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(pg_dsn) as conn:
        final_id = insert_event(conn, Event(aggregate_id="A-1", event_type="done"))
    messages = wait_for_ids(nats_url, unique_name.upper(), [final_id], timeout=60)

    replay = Replay(dict(before), f"{unique_name}.accounts.")
    for message in messages:
        replay.see(Seen(message.headers["Nats-Msg-Id"], message.subject, message.data))
    print(f"{len(replay.reads)} rows read (R), {replay.changes} changes beside them")
    assert not replay.faults  # each R is the row as the stream had it at that point
    assert replay.copy == table_rows(pg_dsn)  # every change arrived, in order
    assert all(count == 1 for count in replay.reads.values())  # no key twice
    untouched = set(before) - touched
    assert set(range(3, ROWS + 1, 3)) <= untouched <= set(replay.reads)  # left alone
