"""Per-message mode through fast-ingest batches end to end (issue 31): a real bridge, a
real PostgreSQL, nats-server 2.15.

Which settings and streams turn fast ingest on (the ``streaming`` line's
``fast_ingest``), events once each and in commit order, a backlog drained beside another
writer of the same stream, and a kill -9 after stored batches before the slot's
confirmation that replays nothing twice once the duplicate window has passed (the
reconcile at start-up skips by position: fast batches skip duplicates silently, and
only inside the window).
"""

from __future__ import annotations

import asyncio
import json
import threading

import nats
import pytest
from integration.test_atomic_bridge import (
    add_stream,
    kill_once_stored,
    read_stored,
    restart_after_the_kill,
    small_transactions,
    streaming_record,
)
from nats.js.errors import NotFoundError
from support.bridge import STARTUP_TIMEOUT, MakeBridge, parse_json_line, start_bridge
from support.outbox import (
    Event,
    bridge_config,
    insert_events,
    wait_for_ids,
)
from support.waiting import wait_until

# (nats.fast_ingest, nats.atomic_transactions, the existing stream's allow_batched or
# None: the bridge creates it with allow_batched) -> fast ingest on
MODES = [
    (False, False, None, False),
    ("auto", False, None, True),
    ("auto", False, False, False),
    (True, False, True, True),
    ("auto", "auto", None, False),  # atomic mode wins: fast batches serve per-message mode
]


@pytest.mark.parametrize(("setting", "atomic", "existing", "fast"), MODES)
def test_fast_ingest_follows_the_setting_and_the_stream(
    make_bridge: MakeBridge,
    pg_dsn: str,
    nats_url: str,
    unique_name: str,
    setting: str | bool,
    atomic: str | bool,
    existing: bool | None,
    fast: bool,
) -> None:
    stream = unique_name.upper()
    if existing is not None:
        add_stream(nats_url, stream, f"{unique_name}.>", allow_batched=existing)
    nats_section = {"fast_ingest": setting, "atomic_transactions": atomic}
    config = bridge_config(pg_dsn, nats_url, unique_name, nats=nats_section)
    bridge = make_bridge(config)
    record = streaming_record(bridge)
    assert record["fast_ingest"] is fast, record
    ids = small_transactions(pg_dsn, [3, 1, 2])
    ids += insert_events(pg_dsn, [Event(payload={"alone": i}) for i in range(3)],
                         in_one_transaction=False)  # fmt: skip
    wait_for_ids(nats_url, stream, ids)
    assert [m.msg_id for m in read_stored(nats_url, stream)] == ids  # once each, in order
    assert bridge.terminate() == 0


def test_fast_ingest_true_on_a_stream_without_allow_batched_stops_the_bridge(
    make_bridge: MakeBridge, pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    stream = unique_name.upper()
    add_stream(nats_url, stream, f"{unique_name}.>", allow_batched=False)
    nats_section = {"fast_ingest": True, "atomic_transactions": False}
    bridge = make_bridge(bridge_config(pg_dsn, nats_url, unique_name, nats=nats_section))
    assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
    records = [parse_json_line(line) for line in bridge.lines]
    fatal = [r for r in records if r and r["event"] == "fatal"]
    assert len(fatal) == 1, "\n".join(bridge.lines)
    assert f"stream {stream} has allow_batched off" in str(fatal[0]["error"])


def test_events_stream_in_order_beside_another_writer(
    make_bridge: MakeBridge, pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    """Another client writes the stream outside the bridge's subject space (about 2k
    messages/s; test_fast_publisher.py has one at full speed) while events stream: every
    event once, in commit order, no session failed."""
    stream = unique_name.upper()
    add_stream(nats_url, stream, f"{unique_name}.>", allow_batched=True)
    stop = threading.Event()
    written: list[int] = []

    def write_beside() -> None:
        async def main() -> None:
            nc = await nats.connect(nats_url)
            js, sent = nc.jetstream(), 0
            while not stop.is_set():
                await asyncio.gather(
                    *(js.publish(f"{unique_name}.other.x", b"o") for _ in range(20))
                )
                sent += 20
                await asyncio.sleep(0.01)  # ~2k msgs/s: the stream stays quick to read
            written.append(sent)
            await nc.close()

        asyncio.run(main())

    beside = threading.Thread(target=write_beside)
    beside.start()
    try:
        nats_section = {
            "fast_ingest": True,
            "atomic_transactions": False,
            "subject_space": f"{unique_name}.ticket.>",
        }
        routes = [{"subject": f"{unique_name}.ticket.{{event_type}}"}]
        config = bridge_config(pg_dsn, nats_url, unique_name, nats=nats_section, routes=routes)
        bridge = make_bridge(config)
        assert streaming_record(bridge)["fast_ingest"] is True
        ids = small_transactions(pg_dsn, [1] * 300 + [50] * 20 + [3] * 200)
        wait_until(
            lambda: space_count(nats_url, stream, f"{unique_name}.ticket.>") >= len(ids),
            timeout=60,
            message="the bridge never stored every event",
        )
    finally:
        stop.set()
        beside.join()
    assert written and written[0] > 0
    ours = read_space(nats_url, stream, f"{unique_name}.ticket.>")
    assert [msg_id for _, msg_id in ours] == ids  # once each, in commit order
    # Interleaved for real: the other writer's messages sit between ours.
    assert ours[-1][0] - ours[0][0] + 1 > len(ids)
    failed = [r for r in bridge.json_records() if r.get("event") == "session_failed"]
    assert failed == [], failed
    assert bridge.terminate() == 0


def space_count(nats_url: str, stream: str, space: str) -> int:
    """Messages of ``stream`` within ``space`` (the server counts them: no read)."""

    async def main() -> int:
        nc = await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            request = json.dumps({"subjects_filter": space}).encode()
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", request, timeout=5)
            return sum((json.loads(reply.data)["state"].get("subjects") or {}).values())
        finally:
            await nc.close()

    return asyncio.run(main())


def read_space(nats_url: str, stream: str, space: str) -> list[tuple[int, str]]:
    """(stream sequence, Nats-Msg-Id) of every message within ``space``, in order: read
    by "the next message at or after N within the space" (the other writer's many
    messages cost nothing)."""

    async def main() -> list[tuple[int, str]]:
        nc = await nats.connect(nats_url, allow_reconnect=False, max_reconnect_attempts=0)
        try:
            jsm, seq = nc.jsm(timeout=10), 1
            found: list[tuple[int, str]] = []
            while True:
                try:
                    raw = await jsm.get_msg(stream, seq=seq, subject=space, next=True)
                except NotFoundError:
                    return found
                assert raw.seq is not None
                found.append((raw.seq, (raw.headers or {}).get("Nats-Msg-Id", "")))
                seq = raw.seq + 1
        finally:
            await nc.close()

    return asyncio.run(main())


def test_a_kill_after_stored_batches_before_the_confirm_stores_nothing_twice(
    make_bridge: MakeBridge, pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    stream = unique_name.upper()
    window = 1.0
    add_stream(nats_url, stream, f"{unique_name}.>", allow_batched=True, duplicate_window=window)
    nats_section = {"fast_ingest": True, "atomic_transactions": False}
    held = bridge_config(
        pg_dsn, nats_url, unique_name, postgres={"status_interval": "60s"}, nats=nats_section
    )
    bridge = start_bridge(make_bridge, held)
    assert streaming_record(bridge)["fast_ingest"] is True
    ids = small_transactions(pg_dsn, [3, 2, 4, 40, 1])
    kill_once_stored(bridge, nats_url, stream, len(ids))
    stored = read_stored(nats_url, stream)
    assert [m.msg_id for m in stored] == ids
    config = bridge_config(pg_dsn, nats_url, unique_name, nats=nats_section)
    restart_after_the_kill(
        make_bridge, config, "fast_ingest", pg_dsn, nats_url, stored, ids, window
    )
