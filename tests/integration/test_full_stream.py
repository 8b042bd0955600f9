"""A stream full with discard: new, against a real bridge, PostgreSQL and nats-server:
the failure names the stream, the limit and its value (log line and /readyz), the slot
holds everything meanwhile, and raising the limit delivers it all exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.error
import urllib.request
from collections import Counter

import nats
from nats.js.api import DiscardPolicy, StreamConfig
from support.bridge import MakeBridge, log_event, parse_json_line, start_bridge
from support.outbox import (
    Event,
    bridge_config,
    insert_events,
    message_ids,
    stream_messages,
    wait_for_ids,
)
from support.waiting import wait_until

LIMIT = 3
ROWS = 7

# No proxies from the environment: loopback only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def readyz_reason(base: str) -> str | None:
    """/readyz's reason when it answers 503; None when ready."""
    try:
        with _OPENER.open(f"{base}/readyz", timeout=5) as response:
            response.read()
            return None
    except urllib.error.HTTPError as error:
        with error:
            reason = json.loads(error.read())["reason"]
            return str(reason)


async def _edit_stream(url: str, config: StreamConfig, *, create: bool) -> None:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await (js.add_stream(config) if create else js.update_stream(config))
    finally:
        await client.close()


def test_a_full_stream_is_named_with_its_limit_and_everything_arrives_once_it_is_raised(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    stream = config["nats"]["stream"]["name"]
    limited = StreamConfig(
        name=stream,
        subjects=[f"{unique_name}.>"],
        max_msgs=LIMIT,
        discard=DiscardPolicy.NEW,
        duplicate_window=120,
    )
    # Made before the bridge, which leaves an existing stream as it is.
    asyncio.run(_edit_stream(nats_url, limited, create=True))
    bridge = start_bridge(make_bridge, config)
    base = bridge.http_url()
    ids = insert_events(
        pg_dsn, [Event(aggregate_id=f"T-{n}") for n in range(ROWS)], in_one_transaction=False
    )

    def names_the_limit(text: str) -> bool:
        return f"stream {stream} is full: max_msgs {LIMIT} is reached" in text

    line = bridge.wait_for_log(
        lambda text: (
            (record := parse_json_line(text)) is not None
            and record.get("event") == "session_failed"
            and names_the_limit(str(record.get("error")))
        ),
        timeout=30,
    )
    error = str(json.loads(line)["error"])
    assert f"`nats stream edit {stream} --max-msgs <more>`" in error
    assert "discard: old" in error and "nothing is lost" in error

    def full_reason() -> str | None:
        reason = readyz_reason(base)
        return reason if reason is not None and names_the_limit(reason) else None

    reason = wait_until(
        full_reason,
        timeout=30,
        interval=0.1,
        message="/readyz never named the full stream",
    )
    assert reason.startswith("not streaming (reconnecting): ")
    assert len(stream_messages(nats_url, stream)) == LIMIT  # the rest wait in the slot

    since = bridge.mark()
    raised = dataclasses.replace(limited, max_msgs=10 * ROWS)
    asyncio.run(_edit_stream(nats_url, raised, create=False))
    messages = wait_for_ids(nats_url, stream, ids, timeout=60)
    bridge.wait_for_log(log_event("streaming"), since=since, timeout=30)
    counts = Counter(message_ids(messages))
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}, counts  # exactly once: none twice
    wait_until(lambda: readyz_reason(base) is None, timeout=30, message="never ready again")
    bridge.terminate()
