"""The whole pipeline against a real PostgreSQL and a real nats-server.

Every test runs the daemon as a subprocess (``python -m cdc_bridge run``) on a fresh
database with its own slot, publication and stream, then checks what JetStream stored
and where the slot's ``confirmed_flush_lsn`` went.

A transaction's events are decoded only when it commits, in commit order. So once the
events of the last committed transaction have arrived, everything committed before it
has been processed too: that is how these tests know "nothing else will arrive"
without waiting and hoping.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from nats.js.api import StorageType, StreamConfig
from support.bridge import (
    STARTUP_TIMEOUT,
    BridgeProcess,
    MakeBridge,
    log_event,
    parse_json_line,
    start_bridge,
)
from support.nats_helpers import stream_info
from support.outbox import (
    Event,
    EventProducer,
    bridge_config,
    commit_lsn,
    current_wal_lsn,
    duplicated_ids,
    insert_event,
    insert_events,
    message_ids,
    raw_stored_headers,
    slot_confirmed_flush_lsn,
    slot_write_lsn,
    stream_messages,
    wait_for_ids,
    wait_for_messages,
    wait_for_slot_past,
)
from support.waiting import wait_until

from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.pginstall import PgInstall
from cdc_bridge.dev.postgres_server import PostgresServer

# Run on every PostgreSQL major version installed (embedded 18, system 15)
pytestmark = pytest.mark.both_postgres

STATUS_INTERVAL = 0.2  # bridge_config's postgres.status_interval
SHUTDOWN_TIMEOUT = 5.0  # bridge_config's shutdown_timeout


def assert_holds(predicate: Callable[[], bool], seconds: float, message: str) -> None:
    """Check ``predicate`` over a whole window: for "X must NOT happen" there is no
    condition to wait for, only a period to watch. Fails at the first violation."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), message
        time.sleep(0.05)
    assert predicate(), message


def assert_every_stderr_line_is_json(bridge: BridgeProcess) -> None:
    for line in bridge.stderr_lines:
        record = parse_json_line(line)
        assert record is not None, f"stderr line is not a JSON object: {line!r}"
        assert "event" in record and "level" in record, f"no event/level: {line!r}"


# --- 1. committed versus rolled back --------------------------------------------------------


class _Abort(Exception):
    """Raised inside a transaction block to roll it back."""


@pytest.fixture(params=["pgoutput", "wal2json"])
def both_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The scenario runs once per output plugin: downstream cannot tell them apart."""
    plugin: str = request.param
    monkeypatch.setenv("CDC_BRIDGE_TEST_PLUGIN", plugin)
    return plugin


@pytest.mark.usefixtures("both_plugins")
def test_only_committed_transactions_arrive(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    committed = insert_events(pg_dsn, [Event(event_type="created"), Event(event_type="updated")])

    with psycopg.connect(pg_dsn) as conn:  # rolled back explicitly
        insert_event(conn, Event(event_type="rolled_back"))
        insert_event(conn, Event(event_type="rolled_back"))
        conn.rollback()

    committed += insert_events(pg_dsn, [Event(event_type="closed")])

    with (
        psycopg.connect(pg_dsn, autocommit=True) as conn,
        pytest.raises(_Abort),
        conn.transaction(),
    ):  # rolled back by an error
        insert_event(conn, Event(event_type="rolled_back"))
        raise _Abort

    with psycopg.connect(pg_dsn) as conn:  # committed, with a savepoint rolled back inside
        committed.append(insert_event(conn, Event(event_type="before_savepoint")))
        with conn.transaction(force_rollback=True):  # a savepoint, rolled back
            insert_event(conn, Event(event_type="rolled_back"))
            insert_event(conn, Event(event_type="rolled_back"))
        committed.append(insert_event(conn, Event(event_type="after_savepoint")))

    messages = wait_for_ids(nats_url, unique_name.upper(), committed)
    assert message_ids(messages) == committed
    assert [m.subject for m in messages] == [
        f"{unique_name}.ticket.{kind}"
        for kind in ("created", "updated", "closed", "before_savepoint", "after_savepoint")
    ]
    # The savepoint's rows left no gap in the transaction's numbering
    assert [m.headers["Cdc-Index"] for m in messages[-2:]] == ["0", "1"]


# --- 2. other tables in the same transactions -----------------------------------------------


@pytest.mark.usefixtures("both_plugins")
def test_only_outbox_rows_arrive_from_mixed_transactions(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.tickets (id serial PRIMARY KEY, title text NOT NULL)")
    start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    expected: list[str] = []

    with psycopg.connect(pg_dsn) as conn:  # business write + its event
        conn.execute("INSERT INTO tickets (title) VALUES ('printer on fire')")
        expected.append(insert_event(conn, Event(event_type="created")))
        conn.execute("UPDATE tickets SET title = 'printer still on fire'")

    with psycopg.connect(pg_dsn) as conn:  # tickets only
        conn.execute(
            "INSERT INTO tickets (title) SELECT 'bulk ' || n FROM generate_series(1, 50) n"
        )
        conn.execute("DELETE FROM tickets WHERE title LIKE 'bulk 1%'")

    with psycopg.connect(pg_dsn) as conn:  # tickets around two events, one deleted again
        conn.execute("INSERT INTO tickets (title) VALUES ('paper jam')")
        expected.append(insert_event(conn, Event(event_type="created")))
        conn.execute("UPDATE tickets SET title = 'paper jam, again' WHERE title = 'paper jam'")
        deleted = insert_event(conn, Event(event_type="assigned"))
        expected.append(deleted)
        # An outbox row may be deleted in the transaction that wrote it: its insert is
        # still in the WAL, and it is still an event
        conn.execute("DELETE FROM public.outbox WHERE id = %s", (deleted,))
        conn.execute("DELETE FROM tickets WHERE title LIKE 'bulk%'")

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # tickets only, then outbox only
        conn.execute("UPDATE tickets SET title = upper(title)")
        conn.execute("TRUNCATE tickets")
    expected += insert_events(pg_dsn, [Event(event_type="closed")])

    messages = wait_for_ids(nats_url, unique_name.upper(), expected)
    assert message_ids(messages) == expected
    assert {m.headers["Cdc-Table"] for m in messages} == {"public.outbox"}
    # Cdc-Index counts outbox rows only: the tickets rows around them take no numbers
    assert [m.headers["Cdc-Index"] for m in messages] == ["0", "0", "1", "0"]


# --- 3. concurrent transactions: commit order, headers --------------------------------------


@pytest.mark.usefixtures("both_plugins")
def test_interleaved_transactions_arrive_in_commit_order_with_headers(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    writers = [psycopg.connect(pg_dsn) for _ in range(3)]
    rows: dict[int, list[Event]] = {k: [] for k in range(len(writers))}
    try:
        for round_no in range(4):  # the writers take turns: their WAL records interleave
            for k, conn in enumerate(writers):
                event = Event(
                    aggregate_id=f"W{k}-{round_no}",
                    event_type=f"step{round_no}",
                    payload={"writer": k, "round": round_no},
                    headers={
                        "Trace-Id": f"trace-{k}-{round_no}",
                        "Tenant": "acme.eu",  # dots are fine in header values
                        "Attempt": 2,  # not a string: skipped
                        "Nested": {"a": "b"},  # skipped
                        "Flag": True,  # skipped
                        "Nothing": None,  # skipped
                        "Nats-Msg-Id": "spoofed",  # the id column decides, not the row
                        "Cdc-Lsn": "9/9",  # the bridge's own headers win
                        "Cdc-Table": "spoofed",
                    },
                )
                insert_event(conn, event)
                rows[k].append(event)
        writers[1].commit()
        single = Event(aggregate_id="solo", event_type="solo", headers={"Trace-Id": "solo"})
        insert_events(pg_dsn, [single])  # a one-row transaction committed in between
        writers[2].commit()
        writers[0].commit()
    finally:
        for conn in writers:
            conn.close()

    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    assert row is not None
    system_id = row[0]
    transactions = [rows[1], [single], rows[2], rows[0]]  # commit order
    expected = [event for tx in transactions for event in tx]
    messages = wait_for_ids(nats_url, unique_name.upper(), [e.id for e in expected])
    assert message_ids(messages) == [e.id for e in expected]

    position = 0
    tx_lsns: list[int] = []
    for tx in transactions:
        tx_messages = messages[position : position + len(tx)]
        position += len(tx)
        assert len({m.headers["Cdc-Lsn"] for m in tx_messages}) == 1, "one LSN per transaction"
        tx_lsns.append(commit_lsn(tx_messages[0]))
        for index, (message, event) in enumerate(zip(tx_messages, tx, strict=True)):
            expected_headers = {
                "Nats-Msg-Id": event.id,
                "Cdc-Lsn": tx_messages[0].headers["Cdc-Lsn"],
                "Cdc-Table": "public.outbox",
                "Cdc-Index": str(index),
                "Cdc-Source": f"{system_id}/{unique_name}",
            }
            if index == len(tx) - 1:
                expected_headers["Cdc-Tx-Last"] = "true"
            if event.headers is not None:
                expected_headers = {
                    name: value
                    for name, value in event.headers.items()
                    if isinstance(value, str) and name not in expected_headers
                } | expected_headers
            # The ordering guard's expectation (Nats-Expected-Last-*) is the bridge's
            # business (cdc_bridge/sink/ordering.py); every other header is checked exactly
            headers = {
                name: value
                for name, value in message.headers.items()
                if not name.startswith("Nats-Expected-Last-")
            }
            assert headers == expected_headers
            raw = raw_stored_headers(nats_url, unique_name.upper(), message.seq)
            assert raw.count(b"\r\nCdc-Lsn: ") == raw.count(b"\r\nCdc-Table: ") == 1
            assert message.subject == f"{unique_name}.ticket.{event.event_type}"
            assert json.loads(message.data) == event.payload
    assert tx_lsns == sorted(tx_lsns) and len(set(tx_lsns)) == len(tx_lsns)
    for message in messages:  # PostgreSQL's own X/X form, upper-case hex
        assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", message.headers["Cdc-Lsn"])


# --- 4. unicode and bytes -------------------------------------------------------------------

UNICODE_PAYLOADS: list[Any] = [
    {"text": "🎫🚀 👩‍💻 🇳🇴 🏳️‍🌈"},  # astral plane, ZWJ sequences, flags
    {"text": "工单已创建 チケット 티켓"},  # CJK
    {"ar": "تذكرة جديدة", "he": "כרטיס חדש", "mixed": "abc \u202eevil\u202c def"},  # RTL
    {"text": "e\u0301 A\u030a Z\u0351\u0358 \u1100\u1161\u11a8"},  # combining, unnormalised
    {"ключ": "значение", "🔑": ["ω", "Ω", "\u00a0", "\u2028"]},  # non-ASCII keys
    "ünïcödé as a top-level JSON string",
]


@pytest.mark.usefixtures("both_plugins")
def test_unicode_payloads_and_bytea_arrive_byte_for_byte(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.blobs (id text PRIMARY KEY, kind text NOT NULL, payload bytea)"
        )
    config = bridge_config(
        pg_dsn,
        nats_url,
        unique_name,
        outbox={"table": ["public.outbox", "public.blobs"]},
        routes=[
            {
                "name": "blobs",
                "when": {"table": "public.blobs"},
                "subject": f"{unique_name}.blob.{{kind}}",
            },
            {"subject": f"{unique_name}.{{aggregate_type}}.{{event_type}}"},
        ],
    )
    start_bridge(make_bridge, config)

    texts = [
        Event(aggregate_id=f"U-{n}", payload=payload, headers={"Title": "工单 🎫 ✓"})
        for n, payload in enumerate(UNICODE_PAYLOADS)
    ]
    text_ids = insert_events(pg_dsn, texts)
    blobs: list[tuple[str, str, bytes | None]] = [
        ("b-all", "allbytes", bytes(range(256))),
        ("b-nul", "nuls", b"\x00" * 16),
        ("b-big", "random", os.urandom(64 * 1024)),
        ("b-empty", "empty", b""),
        ("b-null", "null", None),
    ]
    with psycopg.connect(pg_dsn) as conn:
        for blob in blobs:
            conn.execute("INSERT INTO public.blobs (id, kind, payload) VALUES (%s, %s, %s)", blob)

    messages = wait_for_ids(nats_url, unique_name.upper(), [b[0] for b in blobs])
    assert message_ids(messages) == text_ids + [b[0] for b in blobs]

    with psycopg.connect(pg_dsn) as conn:
        stored: dict[str, str] = dict(
            conn.execute(
                "SELECT id::text, payload::text FROM public.outbox WHERE id = ANY(%s::uuid[])",
                (text_ids,),
            ).fetchall()
        )
    for message, event in zip(messages[: len(texts)], texts, strict=True):
        # Exactly PostgreSQL's text of the jsonb value, as UTF-8, and the same JSON value
        assert message.data == stored[event.id].encode("utf-8")
        assert json.loads(message.data) == event.payload
        # Header values are UTF-8 on the wire (read raw: the stream reader mangles them)
        stored_headers = raw_stored_headers(nats_url, unique_name.upper(), message.seq)
        assert "\r\nTitle: 工单 🎫 ✓\r\n".encode() in stored_headers
    for message, (blob_id, kind, payload) in zip(messages[len(texts) :], blobs, strict=True):
        assert message.headers["Nats-Msg-Id"] == blob_id
        assert message.headers["Cdc-Table"] == "public.blobs"
        assert message.subject == f"{unique_name}.blob.{kind}"
        assert message.data == (payload or b"")  # NULL is published as an empty body


# --- 5. the slot follows the acks -----------------------------------------------------------


@pytest.mark.usefixtures("both_plugins")
def test_slot_is_confirmed_past_the_last_commit(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    sent: list[str] = []
    for round_no in range(2):  # and again: the slot keeps following
        sent += insert_events(pg_dsn, [Event(aggregate_id=f"R{round_no}-{n}") for n in range(3)])
        wal_after_commit = current_wal_lsn(pg_dsn)
        messages = wait_for_ids(nats_url, unique_name.upper(), sent)
        last_commit = commit_lsn(messages[-1])
        assert last_commit < wal_after_commit  # the Cdc-Lsn is that commit's record
        confirmed = wait_for_slot_past(pg_dsn, unique_name, last_commit)
        assert confirmed > last_commit


def test_an_id_used_twice_is_stored_once_and_nothing_after_it_is_lost(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    """An application that reuses an event id within the duplicate window: JetStream
    drops the second copy. The first session streams without a careful start (nothing
    to replay), so the drop surfaces as a failed order expectation; the sessions after
    it must learn the duplicate and deliver everything else, in order."""
    start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    stream = unique_name.upper()
    first = Event(aggregate_id="A")
    wait_for_ids(nats_url, stream, insert_events(pg_dsn, [first]))
    with psycopg.connect(pg_dsn) as conn:  # housekeeping freed the id: it can come again
        conn.execute("DELETE FROM public.outbox WHERE id = %s", (first.id,))
    before, reused, after = Event(aggregate_id="B"), Event(id=first.id), Event(aggregate_id="D")
    insert_events(pg_dsn, [before, reused, after])
    messages = wait_for_ids(nats_url, stream, [first.id, before.id, after.id], timeout=30)
    assert message_ids(messages) == [first.id, before.id, after.id]
    assert [m.headers["Cdc-Table"] for m in messages] == ["public.outbox"] * 3
    wait_for_slot_past(pg_dsn, unique_name, commit_lsn(messages[-1]))


# --- 6. NATS down ---------------------------------------------------------------------------


@pytest.mark.usefixtures("both_plugins")
def test_slot_holds_while_nats_is_down_and_everything_arrives_after(
    pg_dsn: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    nats = isolated_nats_server
    stream = unique_name.upper()
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats.url, unique_name))
    first = insert_events(pg_dsn, [Event(aggregate_id="before-outage")])
    wait_for_slot_past(pg_dsn, unique_name, commit_lsn(wait_for_ids(nats.url, stream, first)[-1]))

    mark = bridge.mark()
    nats.stop()
    # Everything committed from here on lies beyond this position
    outage_start = current_wal_lsn(pg_dsn)
    during: list[str] = []
    for n in range(5):
        during += insert_events(pg_dsn, [Event(aggregate_id=f"O-{n}-{k}") for k in range(2)])
    bridge.wait_for_log(log_event("session_failed"), since=mark, timeout=15)

    def slot_not_past_outage() -> bool:
        confirmed = slot_confirmed_flush_lsn(pg_dsn, unique_name)
        return confirmed is not None and confirmed <= outage_start

    assert_holds(
        slot_not_past_outage,
        5 * STATUS_INTERVAL,
        "the slot was confirmed past events that NATS never acked",
    )

    nats.start()  # same port, same store
    messages = wait_for_ids(nats.url, stream, during, timeout=45)
    assert duplicated_ids(messages) == {}
    assert message_ids(messages) == first + during
    wait_for_slot_past(pg_dsn, unique_name, commit_lsn(messages[-1]))
    assert_every_stderr_line_is_json(bridge)  # the failure and the retries included


@pytest.mark.usefixtures("both_plugins")
def test_events_read_but_not_acked_are_not_confirmed(
    pg_dsn: str,
    isolated_nats_server: NatsServer,
    unique_name: str,
    make_bridge: MakeBridge,
) -> None:
    """NATS frozen (SIGSTOP): the connection stays up, publishes go out, no ack comes back.

    The bridge keeps reading and reporting, so this shows that what it confirms follows
    the acks and not what it has read: write_lsn moves past the events, flush must not.
    """
    nats = isolated_nats_server
    stream = unique_name.upper()
    # An ack timeout longer than the freeze: the session must simply wait for the acks
    config = bridge_config(pg_dsn, nats.url, unique_name, nats={"ack_timeout": "30s"})
    start_bridge(make_bridge, config)
    first = insert_events(pg_dsn, [Event(aggregate_id="before-freeze")])
    wait_for_slot_past(pg_dsn, unique_name, commit_lsn(wait_for_ids(nats.url, stream, first)[-1]))

    assert nats.pid is not None
    os.kill(nats.pid, signal.SIGSTOP)
    try:
        freeze_start = current_wal_lsn(pg_dsn)
        frozen = insert_events(pg_dsn, [Event(aggregate_id=f"F-{n}") for n in range(3)])
        after_commit = current_wal_lsn(pg_dsn)

        def bridge_has_read_them() -> bool:
            written = slot_write_lsn(pg_dsn, unique_name)
            return written is not None and written >= after_commit

        wait_until(bridge_has_read_them, message="the bridge never reported reading the events")

        def slot_not_past_freeze() -> bool:
            confirmed = slot_confirmed_flush_lsn(pg_dsn, unique_name)
            return confirmed is not None and confirmed <= freeze_start

        assert_holds(
            slot_not_past_freeze,
            5 * STATUS_INTERVAL,
            "the slot was confirmed past events JetStream had not acked",
        )
    finally:
        os.kill(nats.pid, signal.SIGCONT)

    messages = wait_for_ids(nats.url, stream, frozen)
    assert message_ids(messages) == first + frozen
    wait_for_slot_past(pg_dsn, unique_name, commit_lsn(messages[-1]))


# --- 7, 8, 9: stopping and restarting the bridge ---------------------------------------------


@pytest.mark.usefixtures("both_plugins")
def test_sigterm_stops_cleanly_and_a_restart_loses_and_repeats_nothing(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    stream = unique_name.upper()
    bridge = start_bridge(make_bridge, config)
    producer = EventProducer(pg_dsn)
    producer.start()
    try:
        wait_for_messages(nats_url, stream, 30)  # events are flowing
        mark = bridge.mark()
        signalled = time.monotonic()
        assert bridge.terminate(timeout=SHUTDOWN_TIMEOUT + 10) == 0
        assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT
        stopped = parse_json_line(bridge.wait_for_log(log_event("stopped"), since=mark))
        assert stopped is not None
        # The final status update went out before the copy ended
        assert slot_confirmed_flush_lsn(pg_dsn, unique_name) == parse_lsn(stopped["lsn"])
        committed_at_stop = len(producer.ids)
        wait_until(lambda: len(producer.ids) >= committed_at_stop + 9)  # more while it is down
    finally:
        ids = producer.stop()

    start_bridge(make_bridge, config)
    messages = wait_for_ids(nats_url, stream, ids, timeout=45)
    assert duplicated_ids(messages) == {}
    assert message_ids(messages) == ids


@pytest.mark.usefixtures("both_plugins")
def test_restart_resumes_from_the_confirmed_position(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    stream = unique_name.upper()
    bridge = start_bridge(make_bridge, config)
    first = insert_events(pg_dsn, [Event(aggregate_id="first")])
    wait_for_slot_past(pg_dsn, unique_name, commit_lsn(wait_for_ids(nats_url, stream, first)[-1]))
    assert bridge.terminate() == 0
    confirmed_at_stop = slot_confirmed_flush_lsn(pg_dsn, unique_name)
    assert confirmed_at_stop is not None

    while_down: list[str] = []
    for n in range(4):
        while_down += insert_events(pg_dsn, [Event(aggregate_id=f"D-{n}-{k}") for k in range(3)])
    assert current_wal_lsn(pg_dsn) > confirmed_at_stop

    again = make_bridge(config)
    streaming = parse_json_line(again.wait_for_log(log_event("streaming"), timeout=30))
    assert streaming is not None and parse_lsn(streaming["lsn"]) == confirmed_at_stop
    messages = wait_for_ids(nats_url, stream, while_down)
    assert message_ids(messages) == first + while_down
    # The publication and slot of the first run are reused, not made again
    events = {record["event"] for record in again.json_records()}
    assert not events & {"slot_created", "publication_created", "stream_created"}


@pytest.mark.usefixtures("both_plugins")
def test_kill_9_mid_stream_then_restart_loses_and_repeats_nothing(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name)
    stream = unique_name.upper()
    bridge = start_bridge(make_bridge, config)
    producer = EventProducer(pg_dsn, pause=0.002)
    producer.start()
    try:
        wait_for_messages(nats_url, stream, 60)
        assert bridge.kill() == -9
        committed_at_kill = len(producer.ids)
        wait_until(lambda: len(producer.ids) >= committed_at_kill + 9)
    finally:
        ids = producer.stop()

    start_bridge(make_bridge, config)  # waits while the dead session's slot is released
    messages = wait_for_ids(nats_url, stream, ids, timeout=45)
    assert duplicated_ids(messages) == {}
    assert message_ids(messages) == ids


# --- 10. the stream -------------------------------------------------------------------------


def test_missing_stream_is_created_with_the_configured_settings(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    stream = unique_name.upper()
    subjects = [f"{unique_name}.>", f"{unique_name}-audit.*"]
    config = bridge_config(
        pg_dsn,
        nats_url,
        unique_name,
        nats={
            "stream": {
                "subjects": subjects,
                "duplicate_window": "45s",
                "max_age": "1h",
                "storage": "memory",
            }
        },
    )
    bridge = start_bridge(make_bridge, config)
    bridge.wait_for_log(log_event("stream_created", stream=stream))
    info = asyncio.run(stream_info(nats_url, stream))
    assert info.config.subjects == subjects
    assert info.config.duplicate_window == 45
    assert info.config.max_age == 3600
    assert info.config.storage is not None
    assert StorageType(info.config.storage) is StorageType.MEMORY
    ids = insert_events(pg_dsn, [Event()])
    assert message_ids(wait_for_ids(nats_url, stream, ids)) == ids


def test_existing_stream_is_used_as_it_is(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    stream = unique_name.upper()
    theirs = StreamConfig(
        name=stream,
        subjects=[f"{unique_name}.>", f"{unique_name}-theirs.>"],
        storage=StorageType.MEMORY,
        duplicate_window=7,
        max_msgs=1000,
        description="made by someone else",
    )

    async def create() -> None:
        client = await nats.connect(nats_url)
        try:
            await client.jsm().add_stream(theirs)
        finally:
            await client.close()

    asyncio.run(create())
    before = asyncio.run(stream_info(nats_url, stream)).config
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    ids = insert_events(pg_dsn, [Event()])
    assert message_ids(wait_for_ids(nats_url, stream, ids)) == ids
    after = asyncio.run(stream_info(nats_url, stream)).config
    assert after == before
    assert after.description == "made by someone else" and after.duplicate_window == 7
    assert "stream_created" not in {record["event"] for record in bridge.json_records()}


# --- 11, 12: refusing to start ---------------------------------------------------------------


def assert_one_line_about(bridge: BridgeProcess, needle: str) -> str:
    """The process failed with exactly one output line naming ``needle``, no traceback."""
    assert bridge.wait_for_exit(STARTUP_TIMEOUT) == 1
    lines = bridge.lines
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    naming = [line for line in lines if needle in line]
    assert len(naming) == 1, "\n".join(lines)
    return naming[0]


def test_route_naming_a_missing_column_is_one_fatal_line(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(
        pg_dsn,
        nats_url,
        unique_name,
        routes=[{"subject": f"{unique_name}.{{aggregate_type}}.{{no_such_column}}"}],
    )
    line = assert_one_line_about(make_bridge(config), "no_such_column")
    record = parse_json_line(line)
    assert record is not None and record["event"] == "fatal" and record["level"] == "error"
    assert "public.outbox" in record["error"]


def test_unknown_config_key_is_one_line_without_traceback(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    config = bridge_config(pg_dsn, nats_url, unique_name, postgres={"slott": "typo"})
    line = assert_one_line_about(make_bridge(config), "slott")
    assert "postgres.slott" in line and "unknown key" in line


def test_publication_and_slot_are_created_when_missing(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    bridge.wait_for_log(log_event("publication_created", publication=unique_name))
    bridge.wait_for_log(log_event("slot_created", slot=unique_name))
    with psycopg.connect(pg_dsn) as conn:
        publication = conn.execute(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication"
            " WHERE pubname = %s",
            (unique_name,),
        ).fetchone()
        tables = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
            (unique_name,),
        ).fetchall()
        slot = conn.execute(
            "SELECT plugin, slot_type, database FROM pg_replication_slots WHERE slot_name = %s",
            (unique_name,),
        ).fetchone()
    assert publication == (True, False, False, False)  # inserts only
    assert tables == [("public.outbox",)]
    assert slot == ("pgoutput", "logical", pg_dsn.rsplit("/", 1)[1])


@pytest.mark.needs_wal2json
def test_existing_slot_with_another_plugin_is_one_fatal_line(
    devstack_tmp: Path,
    nats_url: str,
    unique_name: str,
    make_bridge: MakeBridge,
    pg_install: PgInstall,
) -> None:
    # A server of our own (the devstack lets it load wal2json, also on builds with an
    # output_plugin_libraries allow-list), rather than a slot on the shared one.
    with PostgresServer(devstack_tmp / "postgres", install=pg_install) as server:
        dsn = server.create_database("plugin_mismatch")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (unique_name,)
            )
        bridge = make_bridge(bridge_config(dsn, nats_url, unique_name))
        line = assert_one_line_about(bridge, "wal2json")
        record = parse_json_line(line)
        assert record is not None and record["event"] == "fatal" and record["level"] == "error"
        assert unique_name in record["error"] and "pgoutput" in record["error"]
        with psycopg.connect(dsn) as conn:  # the bridge left the slot alone
            plugin = conn.execute(
                "SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (unique_name,)
            ).fetchone()
        assert plugin == ("wal2json",)


# --- 13. logs -------------------------------------------------------------------------------


def test_every_log_line_of_a_normal_run_is_json(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    bridge = start_bridge(make_bridge, bridge_config(pg_dsn, nats_url, unique_name))
    ids = insert_events(pg_dsn, [Event(payload={"text": "🎫"}), Event()])
    wait_for_ids(nats_url, unique_name.upper(), ids)
    assert bridge.terminate() == 0
    assert bridge.stdout_lines == []
    assert bridge.stderr_lines, "the bridge logged nothing"
    assert_every_stderr_line_is_json(bridge)
    events = [record["event"] for record in bridge.json_records()]
    assert events[0] == "starting" and events[-1] == "stopped" and "streaming" in events


def test_stream_messages_is_empty_for_a_missing_stream(nats_url: str, unique_name: str) -> None:
    # The waiting helpers poll before the bridge has made its stream: that must not fail
    assert stream_messages(nats_url, unique_name.upper()) == []
