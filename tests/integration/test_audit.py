"""`cdc-bridge audit` against real servers: a stream that disagrees with its outbox table
in every way the audit tells apart, each reported in its own count."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import psycopg
import yaml
from support.bridge import REPO_ROOT, MakeBridge, start_bridge
from support.nats_helpers import StreamMessage
from support.outbox import (
    Event,
    bridge_config,
    insert_events,
    stream_messages,
    wait_for_ids,
)

from cdc_bridge.cli.audit import AUDIT_KEYS


def run_cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cdc_bridge", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )


def audit(config_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(config_path, "audit", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def _tamper(url: str, stream: str, delete: list[int], republish: list[StreamMessage]) -> None:
    """What another client might do: delete messages, publish copies of others."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for seq in delete:
            await js.delete_msg(stream, seq)
        for message in republish:
            # Without the order guard's expectations: they name the original's predecessor.
            headers = {
                k: v for k, v in message.headers.items() if not k.startswith("Nats-Expected")
            }
            await js.publish(message.subject, message.data, headers=headers)
    finally:
        await client.close()


def by_id(messages: list[StreamMessage]) -> dict[str, StreamMessage]:
    return {m.headers["Nats-Msg-Id"]: m for m in messages}


def test_audit_reports_missing_duplicated_reordered_and_unretained_apart(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    # A 1s duplicate window, so that a copy published a little later is stored again.
    config = bridge_config(
        pg_dsn, nats_url, unique_name, nats={"stream": {"duplicate_window": "1s"}}
    )
    path = write_config(tmp_path, config)
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    ids = insert_events(
        pg_dsn, [Event(aggregate_id=f"T-{n}") for n in range(12)], in_one_transaction=False
    )
    stored = by_id(wait_for_ids(nats_url, stream, ids))
    bridge.terminate()

    code, clean = audit(path)
    assert code == 0, clean
    assert list(clean) == list(AUDIT_KEYS)
    assert (clean["rows"], clean["missing"], clean["duplicated"]) == (12, 0, 0)
    assert (clean["out_of_order"], clean["order_checked"], clean["unretained"]) == (0, 12, 0)

    lost, twice, late, pruned = ids[3], ids[5], ids[2], ids[7]
    time.sleep(1.2)  # past the duplicate window: the copy is stored
    asyncio.run(
        _tamper(
            nats_url,
            stream,
            delete=[stored[lost].seq, stored[late].seq],
            republish=[stored[twice], stored[late]],  # `late` now after later commits
        )
    )
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM public.outbox WHERE id = %s", (pruned,))

    code, found = audit(path)
    assert code == 1
    assert (found["missing"], found["missing_ids"]) == (1, [lost])
    assert (found["duplicated"], found["duplicated_ids"], found["extra_copies"]) == (1, [twice], 1)
    assert (found["out_of_order"], found["out_of_order_ids"]) == (1, [late])
    assert (found["unretained"], found["rows"]) == (1, 11)

    text = run_cli(path, "audit")
    assert text.returncode == 1
    assert f"missing ids: {lost}" in text.stdout
    assert text.stdout.splitlines()[-1] == (
        "FAIL: 1 missing, 1 duplicated -- fix: cdc-bridge outbox replay --config FILE --missing"
    )


def test_audit_window_leaves_older_rows_and_their_messages_out(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    path = write_config(tmp_path, config)
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    old = insert_events(pg_dsn, [Event(aggregate_id="old")])
    with psycopg.connect(pg_dsn) as conn:  # created long ago, published now
        conn.execute("UPDATE public.outbox SET created_at = now() - interval '3 days'")
    young = insert_events(pg_dsn, [Event(aggregate_id="young") for _ in range(3)])
    wait_for_ids(nats_url, stream, old + young)
    bridge.terminate()
    asyncio.run(
        _tamper(nats_url, stream, [by_id(stream_messages(nats_url, stream))[young[0]].seq], [])
    )

    code, found = audit(path, "--since", "1d")
    assert code == 1
    assert (found["rows"], found["missing_ids"]) == (3, [young[0]])
    # the old row's message was stored within the window: its row exists, outside it
    assert (found["outside_window"], found["unretained"]) == (1, 0)
    assert found["from"] is not None and found["until"] is None

    code, everything = audit(path, "--until", "2d")
    assert (code, everything["rows"], everything["missing"]) == (0, 1, 0)


def test_audit_refuses_a_config_without_outbox_rows(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    config = bridge_config(
        pg_dsn, nats_url, unique_name, outbox={"table": [], "message_prefixes": ["outbox"]}
    )
    result = run_cli(write_config(tmp_path, config), "audit")
    assert result.returncode == 1
    assert result.stderr.startswith("cdc-bridge: nothing to audit: the config names no outbox")
