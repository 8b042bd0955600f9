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
import pytest
import yaml
from support.bridge import REPO_ROOT, MakeBridge, run_cli, start_bridge
from support.nats_helpers import StreamMessage
from support.outbox import (
    Event,
    bridge_config,
    insert_events,
    stream_messages,
    wait_for_ids,
)
from support.waiting import wait_until

from cdc_bridge.cli.audit import AUDIT_KEYS
from cdc_bridge.cli.outbox_replay import REPLAY_KEYS


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


def test_audit_leaves_out_rows_whose_messages_the_stream_limits_removed(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    path = write_config(tmp_path, config)
    stream = config["nats"]["stream"]["name"]

    async def limited_stream() -> None:  # made before the bridge, which keeps it as it is
        client = await nats.connect(nats_url)
        try:
            await client.jetstream().add_stream(
                name=stream, subjects=[f"{unique_name}.>"], max_msgs=5
            )
        finally:
            await client.close()

    asyncio.run(limited_stream())
    bridge = start_bridge(make_bridge, config)
    early = insert_events(pg_dsn, [Event(aggregate_id="early") for _ in range(3)])
    wait_until(lambda: len(stream_messages(nats_url, stream)) == 3, timeout=20)
    time.sleep(0.05)  # the rest are created, and stored, measurably later
    late = insert_events(
        pg_dsn, [Event(aggregate_id=f"late-{n}") for n in range(5)], in_one_transaction=False
    )
    wait_for_ids(nats_url, stream, late)
    bridge.terminate()

    code, found = audit(path)
    assert code == 0, found
    assert found["stream_expired_before"] is not None
    assert (found["missing"], found["rows"], found["outside_retention"]) == (0, 5, 3)
    assert not set(early) & set(found["missing_ids"])


def test_audit_checks_every_row_the_limited_stream_still_holds(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    """discard: old with max_msgs below the rows published in one backlog: the rows of the
    removed messages are expected to be missing, the ones the stream holds are checked
    (every row was created before any message was stored: a cut by time checked none)."""
    held, total = 4, 10
    config = bridge_config(pg_dsn, nats_url, unique_name)
    path = write_config(tmp_path, config)
    stream = config["nats"]["stream"]["name"]

    async def limited_stream() -> None:  # made before the bridge, which keeps it as it is
        client = await nats.connect(nats_url)
        try:
            await client.jetstream().add_stream(
                name=stream, subjects=[f"{unique_name}.>"], max_msgs=held, discard="old"
            )
        finally:
            await client.close()

    asyncio.run(limited_stream())
    start_bridge(make_bridge, config).terminate()  # the slot exists: the rows wait in it
    ids = insert_events(
        pg_dsn, [Event(aggregate_id=f"T-{n}") for n in range(total)], in_one_transaction=False
    )
    bridge = start_bridge(make_bridge, config)
    kept = wait_for_ids(nats_url, stream, ids[-held:])
    bridge.terminate()
    assert [m.headers["Nats-Msg-Id"] for m in kept] == ids[-held:]

    code, found = audit(path)
    assert code == 0, found
    assert (found["rows"], found["missing"], found["outside_retention"]) == (held, 0, total - held)
    assert (found["order_checked"], found["duplicated"]) == (held, 0)

    lost = ids[-2]  # a message the stream still holds, deleted by someone
    asyncio.run(_tamper(nats_url, stream, [by_id(kept)[lost].seq], []))
    code, found = audit(path)
    assert code == 1
    assert (found["missing"], found["missing_ids"]) == (1, [lost])
    assert (found["rows"], found["outside_retention"]) == (held, total - held)


# --- a long stream: bounded memory ------------------------------------------------------------

MILLION = 1_000_000
RSS_LIMIT_MB = 250  # a set of a million ids alone would be ~100 MB on top of the imports


async def _publish_as_the_bridge(url: str, subject: str, source: str, ids: list[str]) -> None:
    """Stored messages shaped like the bridge's, published fast (core publish, no acks)."""
    client = await nats.connect(url, pending_size=64 * 1024 * 1024)
    try:
        for n, msg_id in enumerate(ids):
            headers = {
                "Nats-Msg-Id": msg_id,
                "Cdc-Lsn": f"0/{n + 1:X}",
                "Cdc-Index": "0",
                "Cdc-Table": "public.outbox",
                "Cdc-Source": source,
            }
            await client.publish(subject, b"{}", headers=headers)
            if n % 10_000 == 0:
                await client.flush()
        await client.flush()
    finally:
        await client.close()


def peak_rss_of(command: list[str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``command``; its result and its peak RSS in KiB (from a fresh parent, so no
    other child's figure can be mixed in)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(r.returncode)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", wrapper, *command],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )
    return result, int(result.stderr.strip().splitlines()[-1])


@pytest.mark.slow
def test_audit_of_a_million_messages_runs_in_bounded_memory(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    path = write_config(tmp_path, config)
    stream = config["nats"]["stream"]["name"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload)"
            " SELECT 'ticket', 'T-' || n, 'created', '{}' FROM generate_series(1, %s) n",
            (MILLION,),
        )
        ids = [str(row[0]) for row in conn.execute("SELECT id FROM public.outbox")]
        row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    assert row is not None
    source = f"{row[0]}/{config['postgres']['slot']}"
    subject = f"{unique_name}.ticket.created"

    async def fill(ids: list[str]) -> None:
        client = await nats.connect(nats_url)
        try:
            await client.jetstream().add_stream(name=stream, subjects=[f"{unique_name}.>"])
        finally:
            await client.close()
        await _publish_as_the_bridge(nats_url, subject, source, ids)

    asyncio.run(fill(ids))
    del ids
    started = time.monotonic()
    command = [sys.executable, "-m", "cdc_bridge", "audit", "--json", "--config", str(path)]
    result, peak_kib = peak_rss_of(command)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert (found["rows"], found["messages"], found["missing"]) == (MILLION, MILLION, 0)
    assert (found["duplicated"], found["out_of_order"]) == (0, 0)
    print(f"audit of {MILLION:,} messages: {elapsed:.1f}s, peak RSS {peak_kib / 1024:.0f} MiB")
    assert peak_kib / 1024 < RSS_LIMIT_MB


# --- cdc-bridge outbox replay -----------------------------------------------------------------


def replay(config_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(config_path, "outbox", "replay", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_replay_missing_publishes_exactly_what_audit_reports_and_the_bridge_carries_on(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    # A deleted message's id stays in the duplicate window: keep it short here.
    config = bridge_config(
        pg_dsn, nats_url, unique_name, nats={"stream": {"duplicate_window": "1s"}}
    )
    path = write_config(tmp_path, config)
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    ids = insert_events(
        pg_dsn, [Event(aggregate_id=f"T-{n}") for n in range(10)], in_one_transaction=False
    )
    stored = by_id(wait_for_ids(nats_url, stream, ids))
    bridge.terminate()
    lost = [ids[2], ids[6]]
    asyncio.run(_tamper(nats_url, stream, [stored[i].seq for i in lost], []))
    # committed while the bridge is down: still in the slot, the bridge's to publish
    pending = insert_events(pg_dsn, [Event(aggregate_id="pending")])

    code, shown = replay(path, "--missing")
    assert code == 1  # without --yes: shown, not published
    assert (shown["would_publish"], shown["ids"], shown["pending_in_slot"]) == (2, lost, 1)
    assert shown["order"] == "created_at"
    assert (shown["in_stream"], shown["not_found"]) == (8, 0)
    assert list(shown) == list(REPLAY_KEYS)
    assert len(stream_messages(nats_url, stream)) == 8

    time.sleep(1.2)  # past the duplicate window
    code, done = replay(path, "--missing", "--yes")
    assert code == 0
    assert (done["published"], done["dedup_refused"], done["ids"]) == (2, 0, lost)
    messages = stream_messages(nats_url, stream)
    replayed = [m for m in messages if m.headers.get("Cdc-Replay") == "true"]
    assert [m.headers["Nats-Msg-Id"] for m in replayed] == lost
    assert all("Cdc-Lsn" not in m.headers for m in replayed)
    assert replayed[0].subject == stored[lost[0]].subject
    assert replayed[0].data == stored[lost[0]].data

    code, again = replay(path, "--missing", "--yes")  # checked, not assumed: nothing left
    assert (code, again["published"], again["would_publish"]) == (0, 0, 0)
    code, chosen = replay(path, "--ids", lost[0], ids[0], "no-such-id", "--yes")
    assert (chosen["published"], chosen["in_stream"], chosen["not_found"]) == (0, 2, 1)

    # The bridge reads past the replays in its stream tail and publishes what it holds.
    bridge = start_bridge(make_bridge, config)
    later = insert_events(pg_dsn, [Event(aggregate_id="later")])
    wait_for_ids(nats_url, stream, pending + later)
    code, found = audit(path)
    assert (code, found["missing"], found["duplicated"], found["replayed"]) == (0, 0, 0, 2)
    assert found["rows"] == 12

    refused = run_cli(path, "outbox", "replay", "--missing", "--yes")
    assert refused.returncode == 1
    assert "holds the leadership lock" in refused.stderr
    bridge.terminate()


def test_replay_dry_run_shows_beside_a_streaming_bridge_and_yes_still_refuses(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    path = write_config(tmp_path, config)
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    ids = insert_events(
        pg_dsn, [Event(aggregate_id=f"T-{n}") for n in range(4)], in_one_transaction=False
    )
    stored = by_id(wait_for_ids(nats_url, stream, ids))
    asyncio.run(_tamper(nats_url, stream, [stored[ids[1]].seq], []))

    # A dry run writes nothing: no lock, and the busy slot is not read.
    code, shown = replay(path, "--missing", "--dry-run")
    assert code == 0
    assert (shown["would_publish"], shown["ids"], shown["slot_in_use"]) == (1, [ids[1]], True)
    text = run_cli(path, "outbox", "replay", "--missing", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert f"would publish 1 rows: {ids[1]}" in text.stdout
    assert "a bridge is streaming from the slot" in text.stdout

    refused = run_cli(path, "outbox", "replay", "--missing", "--yes")
    assert refused.returncode == 1
    assert "holds the leadership lock" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(stream_messages(nats_url, stream)) == 3
    bridge.terminate()
