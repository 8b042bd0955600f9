"""Writing outbox events and reading replication state, for the integration tests.

Everything here is synchronous on purpose: the integration tests drive the bridge as a
subprocess and talk to PostgreSQL and NATS from plain test functions.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
import psycopg
from nats.js.errors import NotFoundError

from cdc_bridge.core.lsn import parse_lsn
from support.nats_helpers import BATCH_HEADER_PREFIX, StreamMessage, fetch_stream_messages
from support.waiting import wait_until

INSERT_EVENT = (
    "INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload, headers)"
    " VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb)"
)


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox row as the tests write it; ``id`` is chosen here so tests know it."""

    aggregate_type: str = "ticket"
    aggregate_id: str = "T-1"
    event_type: str = "created"
    payload: Any = field(default_factory=dict)  # any JSON value
    headers: Mapping[str, Any] | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def params(self) -> tuple[str, str, str, str, str, str | None]:
        return (
            self.id,
            self.aggregate_type,
            self.aggregate_id,
            self.event_type,
            json.dumps(self.payload, ensure_ascii=False),
            None if self.headers is None else json.dumps(self.headers, ensure_ascii=False),
        )


def insert_event(conn: psycopg.Connection[Any], event: Event) -> str:
    """Insert one event on ``conn`` (inside whatever transaction it has open); its id."""
    conn.execute(INSERT_EVENT, event.params())
    return event.id


def insert_events(dsn: str, rows: Iterable[Event], *, in_one_transaction: bool = True) -> list[str]:
    """Insert and commit the events (one transaction, or one each); their ids in order."""
    ids: list[str] = []
    with psycopg.connect(dsn, autocommit=not in_one_transaction) as conn:
        for event in rows:
            ids.append(insert_event(conn, event))
    return ids  # leaving the block commits the transaction


def current_wal_lsn(dsn: str) -> int:
    """pg_current_wal_lsn(): read right after a commit, an upper bound of its end."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


def slot_confirmed_flush_lsn(dsn: str, slot: str) -> int | None:
    """The slot's confirmed_flush_lsn, or None when there is no such slot (or no value)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    if row is None or row[0] is None:
        return None
    return parse_lsn(row[0])


def slot_write_lsn(dsn: str, slot: str) -> int | None:
    """The "write" position the slot's active client last reported: what it has received.

    The bridge reports everything it has read as written and only what JetStream acked
    as flushed, so write past an event with flush behind it means "read, not yet acked".
    None while no client streams from the slot.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT r.write_lsn::text FROM pg_replication_slots s"
            " JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = %s",
            (slot,),
        ).fetchone()
    if row is None or row[0] is None:
        return None
    return parse_lsn(row[0])


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` on top of ``base``: nested mappings merge, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def bridge_config(pg_dsn: str, nats_url: str, unique_name: str, **overrides: Any) -> dict[str, Any]:
    """A config for one test: its own slot, publication and stream (``unique_name``),
    subjects ``<unique_name>.<aggregate_type>.<event_type>``, fast status updates.

    Keyword overrides are merged section by section: ``postgres={"plugin": "x"}`` keeps
    the other postgres keys; ``routes=[...]`` replaces the routes.
    """
    base: dict[str, Any] = {
        "postgres": {
            "dsn": pg_dsn,
            # Scenario tests run on both plugins (test_pipeline's both_plugins fixture).
            "plugin": os.environ.get("CDC_BRIDGE_TEST_PLUGIN", "pgoutput"),
            "slot": unique_name,
            "publication": unique_name,
            "status_interval": "200ms",
            "connect_timeout": "5s",
        },
        "nats": {
            "servers": [nats_url],
            "ack_timeout": "2s",
            "stream": {"name": unique_name.upper(), "subjects": [f"{unique_name}.>"]},
        },
        "outbox": {"table": "public.outbox"},
        "routes": [{"subject": f"{unique_name}.{{aggregate_type}}.{{event_type}}"}],
        "logging": {"format": "json", "level": "info"},
        "shutdown_timeout": "5s",
    }
    return _merge(base, overrides)


# --- reading what arrived -------------------------------------------------------------------


def stream_messages(nats_url: str, stream: str) -> list[StreamMessage]:
    """Every message the stream holds now; empty while the stream does not exist yet."""
    try:
        return asyncio.run(fetch_stream_messages(nats_url, stream))
    except NotFoundError:
        return []


def wait_for_messages(
    nats_url: str, stream: str, count: int, timeout: float = 20.0
) -> list[StreamMessage]:
    """Wait until the stream holds at least ``count`` (>= 1) messages; all of them."""
    if count < 1:
        raise ValueError("wait for at least one message")

    def enough() -> list[StreamMessage]:
        messages = stream_messages(nats_url, stream)
        return messages if len(messages) >= count else []  # [] is falsy: keep waiting

    return wait_until(
        enough, timeout=timeout, interval=0.1, message=f"{stream} never held {count} messages"
    )


def wait_for_ids(
    nats_url: str, stream: str, ids: Sequence[str], timeout: float = 20.0
) -> list[StreamMessage]:
    """Wait until every id in ``ids`` (not empty) is in the stream (by Nats-Msg-Id);
    all messages."""
    wanted = set(ids)
    if not wanted:
        raise ValueError("wait for at least one id")

    def arrived() -> list[StreamMessage]:
        messages = stream_messages(nats_url, stream)
        return messages if wanted <= set(message_ids(messages)) else []  # falsy: wait on

    return wait_until(
        arrived,
        timeout=timeout,
        interval=0.1,
        message=f"{stream} never held all {len(wanted)} ids",
    )


def raw_stored_headers(nats_url: str, stream: str, seq: int, timeout: float = 5.0) -> bytes:
    """The header block of message ``seq`` exactly as the server stores it.

    ``fetch_stream_messages`` goes through nats-py's ``get_msg``, which parses headers
    with the e-mail parser and turns non-ASCII values into U+FFFD; this asks the
    JetStream API directly and decodes nothing but the base64.
    """

    async def fetch() -> bytes:
        client = await nats.connect(nats_url, connect_timeout=timeout, allow_reconnect=False)
        try:
            reply = await client.request(
                f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout
            )
        finally:
            await client.close()
        stored = json.loads(reply.data)["message"]
        block = base64.b64decode(stored.get("hdrs", ""))
        # As fetch_stream_messages: without JetStream's atomic-batch bookkeeping.
        prefix = BATCH_HEADER_PREFIX.encode()
        lines = block.splitlines(keepends=True)
        return b"".join(line for line in lines if not line.startswith(prefix))

    return asyncio.run(fetch())


def message_ids(messages: Iterable[StreamMessage]) -> list[str]:
    return [message.headers.get("Nats-Msg-Id", "") for message in messages]


def duplicated_ids(messages: Iterable[StreamMessage]) -> dict[str, int]:
    """Ids stored more than once, with their counts (empty when every id is unique)."""
    return {i: n for i, n in Counter(message_ids(messages)).items() if n > 1}


def wait_for_slot_past(dsn: str, slot: str, lsn: int, timeout: float = 10.0) -> int:
    """Wait until the slot's confirmed_flush_lsn is beyond ``lsn``; that position."""

    def confirmed_past() -> int:
        confirmed = slot_confirmed_flush_lsn(dsn, slot)
        return confirmed if confirmed is not None and confirmed > lsn else 0  # 0: wait on

    return wait_until(
        confirmed_past,
        timeout=timeout,
        interval=0.05,
        message=f"slot {slot} never confirmed past {lsn:X}",
    )


# --- a steady producer ----------------------------------------------------------------------


class EventProducer:
    """A thread committing small transactions of outbox events until stopped.

    ``ids`` lists every committed id in commit order (one connection, commits in
    sequence), so it is exactly the order the stream must end up in. The pause between
    transactions keeps the load modest on a shared machine.
    """

    def __init__(self, dsn: str, *, rows_per_transaction: int = 3, pause: float = 0.01) -> None:
        self._dsn = dsn
        self._rows = rows_per_transaction
        self._pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="event-producer", daemon=True)

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return list(self._ids)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[str]:
        """Stop after the transaction in progress; every committed id."""
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise AssertionError(f"the producer failed: {self._error!r}") from self._error
        return self.ids

    def _run(self) -> None:
        try:
            with psycopg.connect(self._dsn) as conn:
                number = 0
                while not self._stop.is_set():
                    batch = []
                    for _ in range(self._rows):
                        number += 1
                        event = Event(aggregate_id=f"P-{number}", payload={"n": number})
                        batch.append(insert_event(conn, event))
                    conn.commit()
                    with self._lock:
                        self._ids.extend(batch)
                    self._stop.wait(self._pause)
        except Exception as exc:  # reported by stop(), in the test's thread
            self._error = exc


def commit_lsn(message: StreamMessage) -> int:
    """The commit LSN a stored event carries (its Cdc-Lsn header)."""
    return parse_lsn(message.headers["Cdc-Lsn"])
