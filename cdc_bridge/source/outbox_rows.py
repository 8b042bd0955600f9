"""Reading retained outbox rows for `audit` and `outbox replay` (read-only queries).

Rows come from server-side cursors in one READ ONLY, REPEATABLE READ transaction, so
memory is one fetch however big the tables are, and every query of a run sees the same
rows. Ids come ordered by their text in the "C" collation: byte order of UTF-8, which is
Python's order of the same strings, so the caller can merge them with sorted ids from
elsewhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from cdc_bridge.source.catalog import AsyncConn
from cdc_bridge.source.tables import table_identifier

AGE_COLUMN = "created_at"  # sql/outbox.sql's: the window is on the insert time
FETCH = 10_000  # rows per round trip of a server-side cursor


@dataclass(frozen=True, slots=True)
class Window:
    """Rows created in [start, end); None: unbounded on that side.

    ``retained_from`` does not narrow the window: ``ids_in_order`` flags the rows created
    before it, whose messages the stream's own limits may have removed (see
    bridge/audit.py)."""

    start: datetime | None = None
    end: datetime | None = None
    retained_from: datetime | None = None


def _window_clause(window: Window) -> tuple[sql.Composable, list[object]]:
    parts: list[sql.Composable] = []
    params: list[object] = []
    if window.start is not None:
        parts.append(sql.SQL("{} >= %s").format(sql.Identifier(AGE_COLUMN)))
        params.append(window.start)
    if window.end is not None:
        parts.append(sql.SQL("{} < %s").format(sql.Identifier(AGE_COLUMN)))
        params.append(window.end)
    if not parts:
        return sql.SQL(""), params
    return sql.SQL(" AND ") + sql.SQL(" AND ").join(parts), params


async def begin_snapshot(conn: AsyncConn) -> None:
    """Start the run's read-only snapshot (the connection is in autocommit mode)."""
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")


async def server_now(conn: AsyncConn) -> datetime:
    cur = await conn.execute("SELECT now()")
    row = await cur.fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


async def ids_in_order(
    conn: AsyncConn,
    tables: Sequence[str],
    id_column: str,
    window: Window,
    only_ids: Sequence[str] | None = None,
) -> AsyncIterator[list[tuple[str, str, bool]]]:
    """Batches of (id, table, early) of every row in the window (of ``only_ids``, if
    given), sorted, NULL ids left out; ``early``: created before the window's
    ``retained_from``."""
    where, params = _window_clause(window)
    if only_ids is not None:
        where = where + sql.SQL(" AND {}::text = ANY(%s)").format(sql.Identifier(id_column))
        params.append(list(only_ids))
    early: sql.Composable = sql.SQL("false")
    if window.retained_from is not None:
        early = sql.SQL("{} < %s").format(sql.Identifier(AGE_COLUMN))
        params.insert(0, window.retained_from)  # the select list comes before WHERE
    selects = []
    all_params: list[object] = []
    for table in tables:
        selects.append(
            sql.SQL(
                'SELECT {id}::text COLLATE "C" AS id, {name}::text COLLATE "C" AS tbl,'
                " {early} AS early FROM {table} WHERE {id} IS NOT NULL{where}"
            ).format(
                id=sql.Identifier(id_column),
                name=sql.Literal(table),
                early=early,
                table=table_identifier(table),
                where=where,
            )
        )
        all_params.extend(params)
    query = sql.SQL(" UNION ALL ").join(selects) + sql.SQL(" ORDER BY 1, 2")
    async with conn.cursor(name="cdc_bridge_audit_ids") as cur:
        await cur.execute(query, all_params)
        while rows := await cur.fetchmany(FETCH):
            yield [(str(row[0]), str(row[1]), bool(row[2])) for row in rows]


async def existing_ids(conn: AsyncConn, table: str, id_column: str, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` still have a row in ``table`` (in any window)."""
    return {str(row[0]) for row in await _rows_by_id(conn, table, id_column, ids, ())}


async def created_times(
    conn: AsyncConn, id_column: str, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], datetime]:
    """The created_at of each (id, table) of ``keys`` that still has a row."""
    by_table: dict[str, list[str]] = {}
    for row_id, table in keys:
        by_table.setdefault(table, []).append(row_id)
    found: dict[tuple[str, str], datetime] = {}
    for table, ids in by_table.items():
        for row in await _rows_by_id(conn, table, id_column, ids, (AGE_COLUMN,)):
            if isinstance(row[1], datetime):
                found[(str(row[0]), table)] = row[1]
    return found


async def _rows_by_id(
    conn: AsyncConn, table: str, id_column: str, ids: Sequence[str], columns: Sequence[str]
) -> list[tuple[object, ...]]:
    """(id as text, *columns) of the rows of ``table`` with one of ``ids``."""
    if not ids:
        return []
    selected = sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(c)) for c in columns)
    as_text = sql.SQL("SELECT {id}::text{cols} FROM {table} WHERE {id}::text = ANY(%s)").format(
        id=sql.Identifier(id_column), cols=selected, table=table_identifier(table)
    )
    query = as_text
    typed = await _id_type(conn, table, id_column)
    if typed is not None:
        # The column's own type, so its index answers; an id that is not valid text
        # for the type cannot be a row of it.
        query = sql.SQL("SELECT {id}::text{cols} FROM {table} WHERE {id} = ANY(%s::{t}[])").format(
            id=sql.Identifier(id_column),
            cols=selected,
            table=table_identifier(table),
            t=sql.SQL(typed),
        )
    try:
        async with conn.transaction():  # a savepoint: a failed cast must not end the snapshot
            cur = await conn.execute(query, (list(ids),))
            return [tuple(row) for row in await cur.fetchall()]
    except psycopg.errors.DataError:
        cur = await conn.execute(as_text, (list(ids),))
        return [tuple(row) for row in await cur.fetchall()]


async def _id_type(conn: AsyncConn, table: str, id_column: str) -> str | None:
    cur = await conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attname = %s AND NOT attisdropped",
        (table, id_column),
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def track_commit_timestamp(conn: AsyncConn) -> bool:
    cur = await conn.execute("SELECT current_setting('track_commit_timestamp')")
    row = await cur.fetchone()
    return row is not None and row[0] == "on"


async def rows_in_commit_order(
    conn: AsyncConn,
    table: str,
    id_column: str,
    column_names: Sequence[str],
    window: Window,
    *,
    by_commit_timestamp: bool,
    only_ids: Sequence[str] | None = None,
) -> AsyncIterator[list[dict[str, str | None]]]:
    """Batches of whole rows (every column as text, as the WAL decoders give them), in
    commit order as far as it can be told: the commit timestamp of the row's inserting
    transaction when ``track_commit_timestamp`` is on, else created_at; then id."""
    where, params = _window_clause(window)
    if only_ids is not None:
        where = where + sql.SQL(" AND {}::text = ANY(%s)").format(sql.Identifier(id_column))
        params.append(list(only_ids))
    order = (
        sql.SQL("pg_xact_commit_timestamp(xmin) NULLS FIRST, {age}, {id}")
        if by_commit_timestamp
        else sql.SQL("{age}, {id}")
    ).format(age=sql.Identifier(AGE_COLUMN), id=sql.Identifier(id_column))
    columns = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(name)) for name in column_names
    )
    query = sql.SQL(
        "SELECT {columns} FROM {table} WHERE {id} IS NOT NULL{where} ORDER BY {order}"
    ).format(
        columns=columns,
        table=table_identifier(table),
        id=sql.Identifier(id_column),
        where=where,
        order=order,
    )
    async with conn.cursor(name="cdc_bridge_replay_rows") as cur:
        await cur.execute(query, params)
        while rows := await cur.fetchmany(FETCH):
            yield [dict(zip(column_names, row, strict=True)) for row in rows]
