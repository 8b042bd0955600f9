"""The inbox's statements (sql/inbox.sql's tables), on the consumer's connection."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from cdc_bridge.inbox._events import Event

LOCK_NAMESPACE = "cdc_bridge.inbox/"


def inbox_sql() -> str:
    """sql/inbox.sql, as installed with the package."""
    return resources.files("cdc_bridge").joinpath("sql/inbox.sql").read_text(encoding="utf-8")


async def create_inbox_tables(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the inbox tables if they are not there (sql/inbox.sql), and commit."""
    async with conn.transaction():
        await conn.execute(inbox_sql().encode())


def create_inbox_tables_sync(conn: psycopg.Connection[Any]) -> None:
    """``create_inbox_tables`` for a sync connection."""
    with conn.transaction():
        conn.execute(inbox_sql().encode())


async def try_lock(conn: psycopg.AsyncConnection[Any], consumer: str) -> bool:
    """Take the session lock that makes this process the consumer's only applier."""
    cursor = await conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (LOCK_NAMESPACE + consumer,)
    )
    row = await cursor.fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class Position:
    stream: str
    stream_created: datetime.datetime | None
    stream_seq: int


async def read_position(conn: psycopg.AsyncConnection[Any], consumer: str) -> Position | None:
    cursor = await conn.execute(
        "SELECT stream, stream_created, stream_seq FROM public.cdc_inbox_position"
        " WHERE consumer = %s",
        (consumer,),
    )
    row = await cursor.fetchone()
    return None if row is None else Position(row[0], row[1], row[2])


async def save_position(
    conn: psycopg.AsyncConnection[Any], consumer: str, position: Position
) -> None:
    await conn.execute(
        "INSERT INTO public.cdc_inbox_position AS p"
        " (consumer, stream, stream_created, stream_seq) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (consumer) DO UPDATE SET stream = excluded.stream,"
        " stream_created = excluded.stream_created, stream_seq = excluded.stream_seq,"
        " updated_at = now()",
        (consumer, position.stream, position.stream_created, position.stream_seq),
    )


async def record(
    conn: psycopg.AsyncConnection[Any],
    consumer: str,
    events: Sequence[Event],
    *,
    outcome: str = "applied",
) -> set[str]:
    """Record the events' ids; the ids recorded now (the others were recorded before).

    A concurrent transaction recording the same id makes this one wait for it, then
    see it as recorded (or fail, if it was a unique violation): never both apply it.
    """
    cursor = await conn.execute(
        "INSERT INTO public.cdc_inbox (consumer, msg_id, stream_seq, cdc_lsn, outcome)"
        " SELECT %s, m.msg_id, m.stream_seq, m.cdc_lsn, %s"
        " FROM unnest(%s::text[], %s::bigint[], %s::pg_lsn[]) AS m(msg_id, stream_seq, cdc_lsn)"
        " ON CONFLICT (consumer, msg_id) DO NOTHING RETURNING msg_id",
        (
            consumer,
            outcome,
            [e.msg_id for e in events],
            [e.stream_seq for e in events],
            [e.cdc_lsn for e in events],
        ),
    )
    return {row[0] for row in await cursor.fetchall()}


async def park(
    conn: psycopg.AsyncConnection[Any],
    consumer: str,
    stream: str,
    events: Sequence[Event],
    *,
    error: str,
    attempts: int,
) -> None:
    """Keep a group the handler keeps failing on (its messages count as settled)."""
    await conn.execute(
        "INSERT INTO public.cdc_inbox_parked (consumer, stream, first_stream_seq,"
        " last_stream_seq, cdc_lsn, msg_ids, subjects, error, attempts)"
        " VALUES (%s, %s, %s, %s, %s::pg_lsn, %s, %s, %s, %s)",
        (
            consumer,
            stream,
            events[0].stream_seq,
            events[-1].stream_seq,
            events[0].cdc_lsn,
            [e.msg_id for e in events],
            [e.subject for e in events],
            error,
            attempts,
        ),
    )
    await record(conn, consumer, events, outcome="parked")
