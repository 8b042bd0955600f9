"""Writing outbox events from an application: ``emit`` in the caller's transaction.

The whole pattern, with psycopg 3::

    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO tickets (id, title) VALUES (%s, %s)", (ticket_id, title))
        emit(conn, aggregate_type="ticket", aggregate_id=ticket_id,
             event_type="created", payload={"id": ticket_id, "title": title})
    # leaving the block commits both rows, or neither

``emit`` only adds a statement to the transaction the connection has open (psycopg opens
one on the first statement unless the connection is in autocommit mode); it never
commits or rolls back. On an autocommit connection outside ``conn.transaction()`` it
refuses, because the event would be committed on its own, apart from the change it
describes, which is the very thing the outbox pattern exists to prevent.

Two ways to carry the event, chosen by ``via``:

- ``"table"`` (default): ``INSERT INTO public.outbox (id, aggregate_type, aggregate_id,
  event_type, payload[, headers])`` (sql/outbox.sql). The headers column is named only
  when some event has headers, so a table without one works for events without headers.
- ``"message"``: ``SELECT pg_logical_emit_message(true, prefix, envelope)``, a
  transactional logical decoding message (cdc_bridge/routing/messages.py describes the
  envelope); nothing is stored, and the bridge needs ``outbox.message_prefixes``.

Every event gets its id here (a UUID, or the caller's), and the id is returned: it is the
message's ``Nats-Msg-Id`` either way, so the caller knows what consumers will see.

Trace propagation: a W3C ``traceparent`` (the argument, or else the current OpenTelemetry
context when that package is installed) goes into the event's headers as "traceparent"
(with "tracestate" when OpenTelemetry has one); the bridge copies string entries of the
headers to the NATS message. Headers the caller gives win over both.

This module needs psycopg only: it is imported by applications, which should not pull in
the bridge's own dependencies (nats, structlog, pydantic). OpenTelemetry is imported
lazily, at emit time, and only if it is installed.
"""

from __future__ import annotations

import importlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from cdc_bridge.core.headers import controls_jetstream

__all__ = [
    "DEFAULT_MESSAGE_PREFIX",
    "DEFAULT_TABLE",
    "Event",
    "OutboxUsageError",
    "Via",
    "emit",
    "emit_async",
    "emit_many",
    "emit_many_async",
]

DEFAULT_TABLE = "public.outbox"
DEFAULT_MESSAGE_PREFIX = "outbox"
Via = Literal["table", "message"]

# version-traceid-parentid-flags, lower-case hex (W3C Trace Context). A malformed value
# would become a header the bridge refuses (a poison row), so it is refused here instead.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACE_KEYS = ("traceparent", "tracestate")

SyncTarget = psycopg.Connection[Any] | psycopg.Cursor[Any]
AsyncTarget = psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any]


class OutboxUsageError(Exception):
    """``emit`` was called in a way that would break the pattern (e.g. no transaction)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event for ``emit_many``; a mapping with these keys works as well."""

    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: object  # any JSON-serialisable value; bytes for a bytea payload column
    headers: Mapping[str, str] | None = None
    id: uuid.UUID | str | None = None  # None: a new random UUID


@dataclass(frozen=True, slots=True)
class _Batch:
    """The statement for a batch of events, one parameter tuple per event, and the ids."""

    query: sql.Composed
    params: list[tuple[object, ...]]
    ids: list[uuid.UUID]


# --- the public API ---------------------------------------------------------------------------


def emit(
    conn_or_cursor: SyncTarget,
    *,
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: object,
    headers: Mapping[str, str] | None = None,
    id: uuid.UUID | str | None = None,
    table: str = DEFAULT_TABLE,
    via: Via = "table",
    prefix: str = DEFAULT_MESSAGE_PREFIX,
    traceparent: str | None = None,
) -> uuid.UUID:
    """Add one event to the transaction open on ``conn_or_cursor``; its id.

    A cursor is used for its connection only: its own results are left alone.
    """
    event = Event(aggregate_type, aggregate_id, event_type, payload, headers, id)
    return emit_many(
        conn_or_cursor, [event], table=table, via=via, prefix=prefix, traceparent=traceparent
    )[0]


def emit_many(
    conn_or_cursor: SyncTarget,
    events: Iterable[Event | Mapping[str, Any]],
    *,
    table: str = DEFAULT_TABLE,
    via: Via = "table",
    prefix: str = DEFAULT_MESSAGE_PREFIX,
    traceparent: str | None = None,
) -> list[uuid.UUID]:
    """Add several events in one round trip (a pipelined ``executemany``); their ids in
    order. The events keep this order in the stream."""
    conn = _sync_connection(conn_or_cursor)
    batch = _batch(events, table=table, via=via, prefix=prefix, traceparent=traceparent)
    if batch.params:
        _require_transaction(conn.autocommit, conn.info.transaction_status)
        with conn.cursor() as cursor:
            cursor.executemany(batch.query, batch.params)
    return batch.ids


async def emit_async(
    conn_or_cursor: AsyncTarget,
    *,
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: object,
    headers: Mapping[str, str] | None = None,
    id: uuid.UUID | str | None = None,
    table: str = DEFAULT_TABLE,
    via: Via = "table",
    prefix: str = DEFAULT_MESSAGE_PREFIX,
    traceparent: str | None = None,
) -> uuid.UUID:
    """``emit`` for ``psycopg.AsyncConnection`` and ``AsyncCursor``."""
    event = Event(aggregate_type, aggregate_id, event_type, payload, headers, id)
    ids = await emit_many_async(
        conn_or_cursor, [event], table=table, via=via, prefix=prefix, traceparent=traceparent
    )
    return ids[0]


async def emit_many_async(
    conn_or_cursor: AsyncTarget,
    events: Iterable[Event | Mapping[str, Any]],
    *,
    table: str = DEFAULT_TABLE,
    via: Via = "table",
    prefix: str = DEFAULT_MESSAGE_PREFIX,
    traceparent: str | None = None,
) -> list[uuid.UUID]:
    """``emit_many`` for ``psycopg.AsyncConnection`` and ``AsyncCursor``."""
    conn = _async_connection(conn_or_cursor)
    batch = _batch(events, table=table, via=via, prefix=prefix, traceparent=traceparent)
    if batch.params:
        _require_transaction(conn.autocommit, conn.info.transaction_status)
        async with conn.cursor() as cursor:
            await cursor.executemany(batch.query, batch.params)
    return batch.ids


# --- building the statement (no I/O) -----------------------------------------------------------


def _batch(
    events: Iterable[Event | Mapping[str, Any]],
    *,
    table: str,
    via: Via,
    prefix: str,
    traceparent: str | None,
) -> _Batch:
    trace_headers = _trace_headers(traceparent)
    prepared = [_with_trace(_as_event(event), trace_headers) for event in events]
    ids = [_event_id(event.id) for event in prepared]
    if via == "table":
        # One statement for the whole batch: name the headers column if any event needs it.
        with_headers = any(event.headers is not None for event in prepared)
        query = _insert_query(table, with_headers=with_headers)
        params = [
            _row_params(event, event_id, with_headers=with_headers)
            for event, event_id in zip(prepared, ids, strict=True)
        ]
    elif via == "message":
        if not prefix:
            raise ValueError("prefix must not be empty (it names the bridge's message prefix)")
        query = sql.SQL("SELECT pg_logical_emit_message(true, %s, %s::text)").format()
        params = [
            (prefix, _envelope(event, event_id))
            for event, event_id in zip(prepared, ids, strict=True)
        ]
    else:
        raise ValueError(f"via must be 'table' or 'message', not {via!r}")
    return _Batch(query, params, ids)


def _as_event(event: Event | Mapping[str, Any]) -> Event:
    if isinstance(event, Event):
        built = event
    elif isinstance(event, Mapping):
        built = Event(**event)  # an unknown key is a TypeError naming it
    else:
        raise TypeError(f"an event is an Event or a mapping, not {type(event).__name__}")
    for name in ("aggregate_type", "aggregate_id", "event_type"):
        value = getattr(built, name)
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    for header in built.headers or ():
        # The bridge would dead-letter the row (JetStream acts on Nats-* headers): say so now.
        if controls_jetstream(header) and header.lower() != "nats-msg-id":
            raise ValueError(f"header {header!r}: Nats-* headers are reserved for JetStream")
    return built


def _event_id(given: uuid.UUID | str | None) -> uuid.UUID:
    if given is None:
        return uuid.uuid4()
    if isinstance(given, uuid.UUID):
        return given
    try:
        return uuid.UUID(given)
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"id must be a UUID, not {given!r}") from None


def _table_identifier(table: str) -> sql.Identifier:
    schema, dot, name = table.partition(".")
    if not table or (dot and (not schema or not name or "." in name)):
        raise ValueError(f"table must be 'schema.table' or 'table', not {table!r}")
    return sql.Identifier(schema, name) if dot else sql.Identifier(table)


def _insert_query(table: str, *, with_headers: bool) -> sql.Composed:
    columns = ["id", "aggregate_type", "aggregate_id", "event_type", "payload"]
    if with_headers:
        columns.append("headers")
    return sql.SQL("INSERT INTO {table} ({columns}) VALUES ({values})").format(
        table=_table_identifier(table),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )


def _row_params(event: Event, event_id: uuid.UUID, *, with_headers: bool) -> tuple[object, ...]:
    payload: object
    if isinstance(event.payload, bytes | bytearray | memoryview):
        payload = bytes(event.payload)  # for a bytea payload column, stored as given
    else:
        payload = Jsonb(event.payload, dumps=_json_text)
    params: tuple[object, ...] = (
        event_id,
        event.aggregate_type,
        event.aggregate_id,
        event.event_type,
        payload,
    )
    if with_headers:
        headers = None if event.headers is None else Jsonb(dict(event.headers), dumps=_json_text)
        params += (headers,)
    return params


def _envelope(event: Event, event_id: uuid.UUID) -> str:
    if isinstance(event.payload, bytes | bytearray | memoryview):
        raise TypeError("a logical message's payload is JSON: bytes need via='table'")
    envelope: dict[str, object] = {
        "id": str(event_id),
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "event_type": event.event_type,
        "payload": event.payload,
    }
    if event.headers is not None:
        envelope["headers"] = dict(event.headers)
    return _json_text(envelope)


def _json_text(value: object) -> str:
    # NaN and Infinity are not JSON: PostgreSQL's jsonb refuses them and so does the
    # bridge's envelope reader, so fail in the application, where the caller can see why.
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None


# --- trace propagation ----------------------------------------------------------------------


def _trace_headers(traceparent: str | None) -> dict[str, str]:
    if traceparent is not None:
        if not _TRACEPARENT.fullmatch(traceparent) or traceparent.startswith("ff"):
            raise ValueError(f"not a W3C traceparent: {traceparent!r}")
        return {"traceparent": traceparent}
    return _opentelemetry_headers()


def _opentelemetry_headers() -> dict[str, str]:
    """traceparent (and tracestate) of the current OpenTelemetry context, if any."""
    # Looked up at run time, not imported at the top: OpenTelemetry is the application's
    # choice, never a dependency of this package (or of the bridge's image).
    try:
        propagate = importlib.import_module("opentelemetry.propagate")
    except ImportError:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)  # whatever propagators the application configured
    found = {key: carrier[key] for key in _TRACE_KEYS if isinstance(carrier.get(key), str)}
    # Only a well-formed traceparent travels: a bad header value makes a poison row.
    if "traceparent" not in found or not _TRACEPARENT.fullmatch(found["traceparent"]):
        return {}
    return found


def _with_trace(event: Event, trace_headers: Mapping[str, str]) -> Event:
    if not trace_headers:
        return event
    merged = {**trace_headers, **(event.headers or {})}  # the caller's own headers win
    return Event(
        event.aggregate_type,
        event.aggregate_id,
        event.event_type,
        event.payload,
        merged,
        event.id,
    )


# --- connections -----------------------------------------------------------------------------


def _sync_connection(target: SyncTarget) -> psycopg.Connection[Any]:
    if isinstance(target, psycopg.Connection):
        return target
    if isinstance(target, psycopg.Cursor):
        return target.connection
    hint = " (use emit_async)" if _is_async(target) else ""
    raise TypeError(f"emit needs a psycopg Connection or Cursor, not {type(target).__name__}{hint}")


def _async_connection(target: AsyncTarget) -> psycopg.AsyncConnection[Any]:
    if isinstance(target, psycopg.AsyncConnection):
        return target
    if isinstance(target, psycopg.AsyncCursor):
        return target.connection
    hint = " (use emit)" if isinstance(target, psycopg.Connection | psycopg.Cursor) else ""
    raise TypeError(
        "emit_async needs a psycopg AsyncConnection or AsyncCursor, "
        f"not {type(target).__name__}{hint}"
    )


def _is_async(target: object) -> bool:
    return isinstance(target, psycopg.AsyncConnection | psycopg.AsyncCursor)


def _require_transaction(autocommit: bool, status: TransactionStatus) -> None:
    # Without autocommit psycopg opens a transaction on the first statement: joining it is
    # the point. With autocommit and no transaction block, the event would commit alone.
    if autocommit and status == TransactionStatus.IDLE:
        raise OutboxUsageError(
            "the connection is in autocommit mode with no transaction open: the event "
            "would be committed on its own; emit inside `with conn.transaction():`"
        )
