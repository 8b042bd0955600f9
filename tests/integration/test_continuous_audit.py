"""The continuous audit (audit.interval) of a streaming bridge, against real servers: a
clean stream reads 0, a message deleted from it is found within a few intervals (the
gauge, the warning naming the id and the repair), and publishing goes on meanwhile."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import nats
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from support.bridge import BridgeProcess, MakeBridge, log_event, start_bridge
from support.outbox import Event, bridge_config, insert_events, stream_messages, wait_for_ids
from support.waiting import wait_until

AUDITED = {"interval": "1s", "window": "1h", "settle": "300ms"}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def gauges(bridge: BridgeProcess) -> dict[str, float]:
    with _OPENER.open(f"{bridge.http_url()}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("cdc_bridge_audit_")
    }


def audit_records(bridge: BridgeProcess, event: str, since: int) -> list[dict[str, Any]]:
    lines = bridge.lines[since:]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [record for record in records if record.get("event") == event]


async def _delete(url: str, stream: str, seq: int) -> None:
    client = await nats.connect(url)
    try:
        await client.jetstream().delete_msg(stream, seq)
    finally:
        await client.close()


def test_the_leader_audits_while_streaming_and_names_a_deleted_message(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(
        pg_dsn, nats_url, unique_name, audit=AUDITED, http={"listen": "127.0.0.1:0"}
    )
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    ids = insert_events(
        pg_dsn, [Event(aggregate_id=f"A-{n}") for n in range(5)], in_one_transaction=False
    )
    wait_for_ids(nats_url, stream, ids)

    # Nothing wrong: a run that saw the five rows reads 0 and warns of nothing.
    since = bridge.mark()
    clean = bridge.wait_for_log(log_event("audit", rows=5), timeout=20, since=since)
    assert json.loads(clean)["missing"] == 0 and json.loads(clean)["duplicated"] == 0
    found = gauges(bridge)
    assert (found["cdc_bridge_audit_missing"], found["cdc_bridge_audit_duplicated"]) == (0, 0)
    assert found["cdc_bridge_audit_last_run_timestamp_seconds"] > 0
    assert audit_records(bridge, "audit_found_gaps", 0) == []

    lost = ids[2]
    [message] = [m for m in stream_messages(nats_url, stream) if m.headers["Nats-Msg-Id"] == lost]
    asyncio.run(_delete(nats_url, stream, message.seq))

    warning = json.loads(
        bridge.wait_for_log(log_event("audit_found_gaps"), timeout=20, since=bridge.mark())
    )
    assert warning["level"] == "warning"
    assert (warning["missing"], warning["missing_ids"]) == (1, [lost])
    assert warning["repair"] == "cdc-bridge outbox replay --config FILE --missing"
    wait_until(
        lambda: gauges(bridge)["cdc_bridge_audit_missing"] == 1,
        timeout=10,
        message="cdc_bridge_audit_missing never 1",
    )

    # The pipeline went on publishing beside the audit.
    later = insert_events(pg_dsn, [Event(aggregate_id="after")])
    wait_for_ids(nats_url, stream, later)
    assert bridge.running
    assert audit_records(bridge, "audit_failed", 0) == []


def test_an_audit_that_fails_is_a_warning_and_the_bridge_streams_on(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    # An outbox table without created_at: the audit's window cannot be read, every run.
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "CREATE TABLE public.bare_outbox (id uuid PRIMARY KEY, aggregate_type text,"
            " aggregate_id text, event_type text, payload jsonb, headers jsonb)"
        )
    config = bridge_config(
        pg_dsn,
        nats_url,
        unique_name,
        audit=AUDITED,
        outbox={"table": "public.bare_outbox"},
        http={"listen": "127.0.0.1:0"},
    )
    stream = config["nats"]["stream"]["name"]
    bridge = start_bridge(make_bridge, config)
    since = bridge.mark()
    for _ in range(2):  # and again the next interval
        line = bridge.wait_for_log(log_event("audit_failed"), timeout=20, since=since)
        since = bridge.lines.index(line, since) + 1
    failed = json.loads(line)
    assert failed["level"] == "warning" and "created_at" in failed["error"]
    assert failed["retry_in"] == 1.0

    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "INSERT INTO public.bare_outbox VALUES"
            " (gen_random_uuid(), 'ticket', 'T-1', 'created', '{}', NULL)"
        )
    wait_until(lambda: stream_messages(nats_url, stream), message="nothing published")
    assert bridge.running
    assert audit_records(bridge, "session_failed", 0) == []
