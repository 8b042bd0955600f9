"""A snapshot beside writers (issue 32): 500 existing rows published once as R while
inserts, updates and deletes of the same table stream alongside.

The stream is replayed in order into a copy of the table, starting from the rows as they
were: I and U set a key's row, D removes it, and every R must equal the copy's row at
that point (so it is never older than a change already seen, and never hides a change
not yet seen). At the end the copy equals the table (nothing lost), no key has two R,
and every original row the writers left alone has its R.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import psycopg
import yaml
from support.bridge import MakeBridge, run_cli, start_bridge
from support.outbox import Event, bridge_config, insert_event, wait_for_ids
from support.plugins import run_statements

ROWS = 500

ACCOUNTS = """
CREATE TABLE public.accounts (id int PRIMARY KEY, balance int NOT NULL, note text);
INSERT INTO public.accounts SELECT g, g * 10, 'original ' || g FROM generate_series(1, 500) g;
"""

Row = tuple[int, str | None]


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
                    action = chooser.random()
                    if action < 0.5:
                        conn.execute(
                            "UPDATE accounts SET balance = balance + 1, note = %s WHERE id = %s",
                            [f"updated {chooser.random():.6f}", key],
                        )
                    elif action < 0.75:
                        conn.execute("DELETE FROM accounts WHERE id = %s", [key])
                    else:
                        conn.execute(
                            "INSERT INTO accounts VALUES (%s, %s, 'inserted')"
                            " ON CONFLICT (id) DO UPDATE SET note = 'reinserted'",
                            [key, key],
                        )


def row_of(columns: list[dict[str, Any]]) -> tuple[int, Row]:
    values = {c["name"]: c["value"] for c in columns}
    return values["id"], (values["balance"], values["note"])


def test_every_row_once_as_r_never_older_than_a_change_already_seen(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge, tmp_path: Path
) -> None:
    run_statements(pg_dsn, ACCOUNTS)
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
    with psycopg.connect(pg_dsn) as conn:
        before = {k: (b, n) for k, b, n in conn.execute("SELECT id, balance, note FROM accounts")}

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

    copy = dict(before)
    reads: dict[int, int] = {}
    for message in messages:
        if not message.subject.startswith(f"{unique_name}.accounts."):
            continue
        change = json.loads(message.data)
        if change["action"] == "D":
            [key_column] = change["identity"]
            copy.pop(key_column["value"], None)
            continue
        key, row = row_of(change["columns"])
        if change["action"] == "R":
            assert copy.get(key) == row, f"the R of {key} is not the row as the stream had it"
            reads[key] = reads.get(key, 0) + 1
        else:
            copy[key] = row
    with psycopg.connect(pg_dsn) as conn:
        now = {k: (b, n) for k, b, n in conn.execute("SELECT id, balance, note FROM accounts")}
    changes = sum(m.subject.startswith(f"{unique_name}.accounts.") for m in messages)
    print(f"{len(reads)} rows read (R), {changes - len(reads)} changes beside them")
    assert copy == now  # every change arrived, in order
    assert all(count == 1 for count in reads.values())  # no key twice
    untouched = set(before) - touched
    assert set(range(3, ROWS + 1, 3)) <= untouched <= set(reads)  # rows the writer left alone
