"""Catalog queries about slots, publications and outbox tables (daemon and ops CLI)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from cdc_bridge.lsn import parse_lsn


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str
    database: str
    active: bool
    active_pid: int | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    wal_status: str | None  # reserved | extended | unreserved | lost


_SLOT_QUERY = """
SELECT slot_name, plugin, database, active, active_pid,
       restart_lsn::text, confirmed_flush_lsn::text, wal_status
FROM pg_replication_slots WHERE slot_type = 'logical' AND slot_name = %s
"""


def _lsn_or_none(text: str | None) -> int | None:
    return parse_lsn(text) if text else None


async def get_slot(conn: psycopg.AsyncConnection[TupleRow], name: str) -> SlotInfo | None:
    cur = await conn.execute(_SLOT_QUERY, (name,))
    row = await cur.fetchone()
    if row is None:
        return None
    values = row
    return SlotInfo(
        name=values[0],
        plugin=values[1],
        database=values[2],
        active=bool(values[3]),
        active_pid=values[4],
        restart_lsn=_lsn_or_none(values[5]),
        confirmed_flush_lsn=_lsn_or_none(values[6]),
        wal_status=values[7],
    )


async def create_slot(conn: psycopg.AsyncConnection[TupleRow], name: str, plugin: str) -> None:
    await conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (name, plugin))


async def publication_exists(conn: psycopg.AsyncConnection[TupleRow], name: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
    return await cur.fetchone() is not None


async def publication_tables(conn: psycopg.AsyncConnection[TupleRow], name: str) -> set[str]:
    cur = await conn.execute(
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
        (name,),
    )
    return {row[0] for row in await cur.fetchall()}


async def create_publication(
    conn: psycopg.AsyncConnection[TupleRow], name: str, tables: tuple[str, ...]
) -> None:
    table_list = sql.SQL(", ").join(_table_identifier(table) for table in tables)
    await conn.execute(
        sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert')").format(
            sql.Identifier(name), table_list
        )
    )


async def table_columns(conn: psycopg.AsyncConnection[TupleRow], table: str) -> list[str] | None:
    """Column names of ``schema.table`` in order, or None when there is no such table."""
    schema, _, name = table.partition(".")
    cur = await conn.execute(
        """
        SELECT a.attname FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (schema, name),
    )
    rows = await cur.fetchall()
    if not rows:
        return None
    return [row[0] for row in rows]


def _table_identifier(table: str) -> sql.Identifier:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name)


async def current_wal_lsn(conn: psycopg.AsyncConnection[TupleRow]) -> int:
    cur = await conn.execute("SELECT pg_current_wal_lsn()::text")
    row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0])
