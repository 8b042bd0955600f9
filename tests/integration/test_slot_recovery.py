"""`postgres.on_slot_lost`: a slot invalidated while the bridge is down, on a PostgreSQL
of the test's own with a tiny max_slot_wal_keep_size. With `recover` every retained row
reaches the stream exactly once, the gap before the rows after; with `fail` the bridge
stops and `audit` names exactly the rows that are missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support.bridge import REPO_ROOT, BridgeProcess, MakeBridge, log_event, start_bridge
from support.outbox import (
    Event,
    bridge_config,
    insert_events,
    stream_messages,
    wait_for_ids,
)
from support.waiting import wait_until

from cdc_bridge.dev.postgres_server import PostgresServer


@pytest.fixture
def small_wal_dsn(devstack_tmp: Path, unique_name: str) -> Iterator[str]:
    settings = {"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0"}
    with PostgresServer(devstack_tmp / "postgres", settings=settings) as server:
        yield server.create_database(f"db_{unique_name}")


def lose_slot(dsn: str, slot: str) -> None:
    """Write and checkpoint until PostgreSQL removes WAL the slot needs (wal_status lost)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (x text)")

        def lost() -> bool:
            conn.execute("INSERT INTO filler SELECT repeat('x', 500) FROM generate_series(1, 2000)")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            row = conn.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            return row is not None and row[0] == "lost"

        wait_until(lost, timeout=60, interval=0.05, message=f"slot {slot} never got lost")


def audit(config_path: Path) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "cdc_bridge", "audit", "--json", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _setup(
    dsn: str,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
    on_slot_lost: str,
    gap: int,
    lose: Callable[[str, str], None] = lose_slot,
) -> tuple[dict[str, Any], list[str], list[str]]:
    config = bridge_config(
        dsn,
        nats_url,
        unique_name,
        postgres={"on_slot_lost": on_slot_lost},
        http={"listen": "127.0.0.1:0"},
    )
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    before = insert_events(
        dsn, [Event(aggregate_id=f"A-{n}") for n in range(3)], in_one_transaction=False
    )
    wait_for_ids(nats_url, stream, before)
    bridge.terminate()
    # committed while the bridge is down, then their WAL is removed
    in_gap = insert_events(dsn, [Event(aggregate_id=f"B-{n}") for n in range(gap)])
    lose(dsn, config["postgres"]["slot"])
    return config, before, in_gap


def drop_slot(dsn: str, slot: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def metrics_text(bridge: BridgeProcess) -> str:
    with urllib.request.urlopen(f"{bridge.http_url()}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def test_recover_republishes_the_gap_before_streaming_from_a_new_slot(
    small_wal_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    config, before, in_gap = _setup(small_wal_dsn, nats_url, unique_name, make_bridge, "recover", 4)
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    line = bridge.wait_for_log(log_event("slot_recovered"))
    record = json.loads(line)
    assert (record["republished"], record["already_in_stream"], record["level"]) == (
        4,
        3,
        "warning",
    )
    after = insert_events(small_wal_dsn, [Event(aggregate_id=f"C-{n}") for n in range(3)])
    messages = wait_for_ids(nats_url, stream, before + in_gap + after)
    counts = Counter(m.headers["Nats-Msg-Id"] for m in messages)
    assert set(counts.values()) == {1} and len(counts) == 10
    seq = {m.headers["Nats-Msg-Id"]: m.seq for m in messages}
    assert max(seq[i] for i in in_gap) < min(seq[i] for i in after)
    replayed = {m.headers["Nats-Msg-Id"] for m in messages if "Cdc-Replay" in m.headers}
    assert replayed == set(in_gap)
    code, found = audit(write_config(tmp_path, config))
    assert (code, found["missing"], found["duplicated"], found["rows"]) == (0, 0, 0, 10)
    text = metrics_text(bridge)
    assert "cdc_bridge_slot_recoveries_total 1.0" in text
    assert "cdc_bridge_rows_recovered_total 4.0" in text
    bridge.terminate()


def test_recover_also_replaces_a_dropped_slot(
    pg_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    config, before, in_gap = _setup(
        pg_dsn, nats_url, unique_name, make_bridge, "recover", 2, lose=drop_slot
    )
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    record = json.loads(bridge.wait_for_log(log_event("slot_recovered")))
    assert record["republished"] == 2
    assert "missing (dropped, or not on this server after a failover)" in record["error"]
    after = insert_events(pg_dsn, [Event(aggregate_id="C")])
    messages = wait_for_ids(nats_url, stream, before + in_gap + after)
    assert len(messages) == 6
    code, _ = audit(write_config(tmp_path, config))
    assert code == 0
    bridge.terminate()


def test_fail_stops_and_audit_names_exactly_the_missing_rows(
    small_wal_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    config, _, in_gap = _setup(small_wal_dsn, nats_url, unique_name, make_bridge, "fail", 4)
    bridge = make_bridge(config)
    line = bridge.wait_for_log(log_event("fatal"), timeout=30)
    assert "wal_status = lost" in line and "on_slot_lost: recover" in line
    assert bridge.wait_for_exit() == 1
    code, found = audit(write_config(tmp_path, config))
    assert (code, found["missing"], sorted(found["missing_ids"])) == (1, 4, sorted(in_gap))


def test_a_recovery_killed_midway_ends_exact_after_a_restart(
    small_wal_dsn: str, nats_url: str, unique_name: str, tmp_path: Path, make_bridge: MakeBridge
) -> None:
    config, before, in_gap = _setup(
        small_wal_dsn, nats_url, unique_name, make_bridge, "recover", 3000
    )
    stream = config["nats"]["stream"]["name"]
    bridge = make_bridge(config)
    bridge.wait_for_log(log_event("slot_recovering"), timeout=30)
    wait_until(
        lambda: len(stream_messages(nats_url, stream)) > 3 + 20,
        timeout=60,
        interval=0.05,
        message="the recovery never published",
    )
    bridge.send_signal(signal.SIGKILL)
    bridge.wait_for_exit()
    partial = len(stream_messages(nats_url, stream))
    assert partial < 3 + 3000, "killed too late to test anything"

    bridge = start_bridge(make_bridge, config)
    record = json.loads(bridge.wait_for_log(log_event("slot_recovered"), timeout=120))
    assert record["republished"] + record["already_in_stream"] == 3003
    after = insert_events(small_wal_dsn, [Event(aggregate_id="C")])
    messages = wait_for_ids(nats_url, stream, before + in_gap + after, timeout=60)
    counts = Counter(m.headers["Nats-Msg-Id"] for m in messages)
    assert len(counts) == 3004 and set(counts.values()) == {1}
    code, found = audit(write_config(tmp_path, config))
    assert (code, found["missing"], found["duplicated"]) == (0, 0, 0)
    bridge.terminate()
    print(
        f"killed after {partial - 3} of 3000 republished; the restart republished "
        f"{record['republished']}"
    )


@pytest.fixture
def commit_ts_dsn(devstack_tmp: Path, unique_name: str) -> Iterator[str]:
    settings = {
        "max_slot_wal_keep_size": "1MB",
        "wal_keep_size": "0",
        "track_commit_timestamp": "on",
    }
    with PostgresServer(devstack_tmp / "postgres", settings=settings) as server:
        yield server.create_database(f"db_{unique_name}")


def test_recovery_publishes_in_commit_order_when_commit_timestamps_are_tracked(
    commit_ts_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    dsn = commit_ts_dsn
    config = bridge_config(dsn, nats_url, unique_name, postgres={"on_slot_lost": "recover"})
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    first = insert_events(dsn, [Event(aggregate_id="A")])
    wait_for_ids(nats_url, stream, first)
    bridge.terminate()
    # Committed one after the other, each with an earlier created_at than the one before:
    # created_at order is the reverse of commit order.
    gap = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(4):
            event = Event(aggregate_id=f"B-{n}")
            conn.execute(
                "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type,"
                " payload, created_at) VALUES (%s, 'ticket', %s, 'created', '{}',"
                " now() - make_interval(mins => %s))",
                (event.id, event.aggregate_id, n),
            )
            gap.append(event.id)
    lose_slot(dsn, config["postgres"]["slot"])
    bridge = start_bridge(make_bridge, config)
    bridge.wait_for_log(log_event("slot_recovered"))
    messages = wait_for_ids(nats_url, stream, first + gap)
    replayed = [m.headers["Nats-Msg-Id"] for m in messages if "Cdc-Replay" in m.headers]
    assert replayed == gap
    bridge.terminate()
