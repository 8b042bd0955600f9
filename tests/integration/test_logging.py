"""What the bridge logs at --log-level debug, against real servers."""

from __future__ import annotations

from typing import Any

from support.bridge import MakeBridge, log_event, parse_json_line, start_bridge
from support.outbox import Event, bridge_config, insert_events, wait_for_ids
from support.waiting import wait_until


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
