"""What the bridge logs at --log-level debug, against real servers."""

from __future__ import annotations

from typing import Any

from support.bridge import BridgeProcess, MakeBridge, log_event, parse_json_line, start_bridge
from support.outbox import Event, bridge_config, insert_events, wait_for_ids
from support.waiting import wait_until

from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import PostgresServer


def test_debug_logs_each_published_event_and_each_ack_in_the_same_format(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    bridge = make_bridge(config, extra_args=["--log-level", "debug"])
    bridge.wait_for_log(log_event("streaming"), timeout=30)
    ids = insert_events(pg_dsn, [Event(event_type="created"), Event(event_type="closed")])
    messages = wait_for_ids(nats_url, unique_name.upper(), ids)
    lsn = messages[0].headers["Cdc-Lsn"]

    def records(event: str) -> list[dict[str, Any]]:
        return [r for r in bridge.json_records() if r.get("event") == event]

    def acked_by_lines() -> int:
        return sum(r["acked"] for r in records("acked") if r.get("lsn") == lsn)

    wait_until(lambda: acked_by_lines() == 2, timeout=10, message="no ack lines for both")

    published = [r for r in records("published") if r["msg_id"] in ids]
    assert [(r["msg_id"], r["subject"], r["lsn"], r["index"], r["route"]) for r in published] == [
        (ids[0], f"{unique_name}.ticket.created", lsn, 0, "routes[0]"),
        (ids[1], f"{unique_name}.ticket.closed", lsn, 1, "routes[0]"),
    ]
    assert all(r["level"] == "debug" and "timestamp" in r for r in published)
    [last_ack] = [r for r in records("acked") if r.get("lsn") == lsn and r["msg_id"] == ids[1]]
    assert last_ack["seq"] == 2 and last_ack["duplicate"] is False

    # Every line, the libraries' included (asyncio's selector line), is structlog's JSON.
    for line in bridge.stderr_lines:
        record = parse_json_line(line)
        assert record is not None and "level" in record, f"not a structlog line: {line!r}"
    assert any(r.get("logger") == "asyncio" for r in bridge.json_records())


def test_info_level_logs_no_line_per_event(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    ids = insert_events(pg_dsn, [Event(), Event()])
    wait_for_ids(nats_url, unique_name.upper(), ids)
    events = {r.get("event") for r in bridge.json_records()}
    assert not events & {"published", "acked"}
    assert all(r.get("level") != "debug" for r in bridge.json_records())


# --- every clean exit logs `stopped`, with the reason (issue 29, item 7) ----------------------


def last_record(bridge: BridgeProcess) -> dict[str, Any]:
    records = bridge.json_records()
    assert records, "\n".join(bridge.lines)
    return records[-1]


def test_sigterm_while_reconnecting_logs_stopped(
    pg_dsn: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    config = bridge_config(pg_dsn, isolated_nats_server.url, unique_name)
    bridge = start_bridge(make_bridge, config)
    mark = bridge.mark()
    isolated_nats_server.stop()
    bridge.wait_for_log(log_event("session_failed"), timeout=30, since=mark)
    assert bridge.terminate() == 0
    stopped = last_record(bridge)
    assert (stopped["event"], stopped["reason"]) == ("stopped", "signal while reconnecting")
    assert stopped["level"] == "info"


def test_sigterm_while_streaming_or_standing_by_logs_stopped_with_the_reason(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    leader = start_bridge(make_bridge, config)
    standby = make_bridge(config)
    standby.wait_for_log(log_event("standby"), timeout=30)
    assert standby.terminate() == 0
    stopped = last_record(standby)
    assert (stopped["event"], stopped["reason"]) == ("stopped", "signal while standby")
    assert leader.terminate() == 0
    stopped = last_record(leader)
    assert (stopped["event"], stopped["reason"]) == ("stopped", "signal while streaming")
    assert "lsn" in stopped


# --- one order after any outage: `streaming`, then `recovered` (issue 29, item 8) --------------


def events_since(bridge: BridgeProcess, mark: int) -> list[str]:
    records = (parse_json_line(line) for line in bridge.lines[mark:])
    return [str(record["event"]) for record in records if record is not None]


def test_after_a_postgresql_or_nats_outage_streaming_comes_before_recovered(
    isolated_pg_server: PostgresServer,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    dsn = isolated_pg_server.create_database(f"db_{unique_name}")
    bridge = start_bridge(make_bridge, bridge_config(dsn, isolated_nats_server.url, unique_name))
    for outage in (isolated_pg_server, isolated_nats_server):
        mark = bridge.mark()
        outage.stop()
        bridge.wait_for_log(log_event("session_failed"), timeout=30, since=mark)
        if outage is isolated_pg_server:  # the lock went with the server: won again
            lost = bridge.wait_for_log(log_event("leadership_lost"), timeout=30, since=mark)
            bridge.wait_for_log(
                log_event("session_failed"), timeout=30, since=bridge.lines.index(lost)
            )
        outage.start()
        bridge.wait_for_log(log_event("recovered"), timeout=60, since=mark)
        events = events_since(bridge, mark)
        assert events.count("recovered") == 1, events
        assert events.index("streaming") < events.index("recovered"), events
    assert bridge.terminate() == 0
