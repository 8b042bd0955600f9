"""``cdc-bridge snapshot``'s SQL: a table's rows into the WAL, chunk by chunk.

Each chunk is one READ COMMITTED transaction on the command's connection:

1. one statement reads the next ``chunk`` rows after the last key, in key order, locking
   them against writers (``FOR SHARE``), and writes each as a transactional logical
   decoding message (``core/snapshots.py``: the message and its JSON) in key order;
2. the progress row (``outbox.snapshot_table``) moves to the chunk's last key.

So a chunk's messages and its progress commit together or not at all: a run killed
mid-chunk leaves neither, and the next run reads where to go on from the progress row.

The composition is pure (``chunk_statement``, ``count_statement``: tested without a
server); the rest are thin async helpers over an open connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from cdc_bridge.core.snapshots import SNAPSHOT_FORMAT_VERSION, SNAPSHOT_PREFIX
from cdc_bridge.source.catalog import AsyncConn
from cdc_bridge.source.tables import table_identifier

# Rows per chunk by default: a chunk is one transaction, which the bridge publishes as
# one atomic batch when it holds at most nats.batch_max_messages events.
DEFAULT_CHUNK = 1000


def default_chunk(batch_max_messages: int) -> int:
    return min(DEFAULT_CHUNK, batch_max_messages)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_name: str  # format_type(atttypid, atttypmod): valid SQL, quoted where needed
    type_oid: int


@dataclass(frozen=True, slots=True)
class TableShape:
    table: str  # schema.table
    columns: tuple[Column, ...]  # table order, no dropped or generated columns
    key: tuple[Column, ...]  # the primary key's columns, in key order; () without one

    @property
    def schema_name(self) -> str:
        return self.table.partition(".")[0]

    @property
    def table_name(self) -> str:
        return self.table.partition(".")[2]


@dataclass(frozen=True, slots=True)
class Progress:
    """One row of the progress table: what a snapshot of a table has committed."""

    snapshot_id: str
    table: str
    where_clause: str | None
    chunk_size: int
    last_key: tuple[str, ...] | None  # None: no chunk committed yet
    rows: int
    chunks: int
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Chunk:
    rows: int
    # Where the next chunk starts (the range's upper bound, which the range's last row
    # may no longer hold); None: this was the last chunk.
    last_key: tuple[str, ...] | None

    @property
    def last(self) -> bool:
        return self.last_key is None


_PROGRESS_COLUMNS = (
    "snapshot_id, table_name, where_clause, chunk_size, last_key, rows, chunks, "
    "started_at, updated_at, finished_at"
)


def progress_table_ddl(progress_table: str) -> sql.Composed:
    """The progress table (sql/role.sql creates the same one)."""
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {} (
    snapshot_id text NOT NULL,
    table_name text NOT NULL,
    where_clause text,
    chunk_size integer NOT NULL,
    last_key text[],
    rows bigint NOT NULL DEFAULT 0,
    chunks bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (snapshot_id, table_name)
)"""
    ).format(table_identifier(progress_table))


def lock_key(table: str) -> int:
    """The session advisory lock key of ``table``'s snapshots (signed 64 bits)."""
    digest = hashlib.sha256(f"cdc-bridge-snapshot:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _user_where(where: str | None) -> sql.Composable:
    """The user's --where as SQL text, on lines of its own (a trailing ``--`` comment
    ends there) and with ``%`` doubled (psycopg would read it as a placeholder)."""
    if where is None:
        return sql.SQL("true")
    return sql.SQL("(\n" + where.replace("%", "%%") + "\n)")


def _key_compared(shape: TableShape, operator: str) -> sql.Composable:
    """``(k1, k2) > (CAST(%s AS t1), CAST(%s AS t2))``: a row comparison, which the
    primary key's index answers."""
    names = sql.SQL(", ").join(sql.Identifier(column.name) for column in shape.key)
    values = sql.SQL(", ").join(
        sql.SQL("CAST(%s AS {})").format(sql.SQL(column.type_name)) for column in shape.key
    )
    return sql.SQL("({}) {} ({})").format(names, sql.SQL(operator), values)


def _after_key(shape: TableShape, after: bool) -> sql.Composable:
    """Rows after the last key written; ``true`` for the first chunk."""
    return _key_compared(shape, ">") if after else sql.SQL("true")


def _order(shape: TableShape) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(column.name) for column in shape.key)


def message_expression(shape: TableShape, snapshot_id: str) -> sql.Composed:
    """The message's JSON text (core/snapshots.py), built by the server from the row.

    A value is its type's output text, as pgoutput sends it: ``format('%s', col)``,
    not ``col::text`` (a boolean casts to 'true', its output is 't'); ``num_nulls``
    tells a NULL from a composite value whose fields are all NULL (``IS NULL`` holds
    for both).

    ``columns`` is an ARRAY[] of json_build_array()s, not one json_build_array call:
    functions take at most 100 arguments, and tables can have more columns."""
    columns = sql.SQL(", ").join(
        sql.SQL(
            "json_build_array({}, {}, {}, "
            "CASE WHEN num_nulls({col}) = 1 THEN NULL ELSE format('%%s', {col}) END)"
        ).format(
            sql.Literal(column.name),
            sql.Literal(column.type_name),
            sql.Literal(column.type_oid),
            col=sql.Identifier(column.name),
        )
        for column in shape.columns
    )
    key_names = sql.SQL(", ").join(sql.Literal(column.name) for column in shape.key)
    return sql.SQL(
        "json_build_object('v', {version}, 'snapshot', {snapshot}, 'schema', {schema}, "
        "'table', {table}, 'key', json_build_array({key}), "
        "'columns', array_to_json(ARRAY[{columns}]::json[]))::text"
    ).format(
        version=sql.Literal(SNAPSHOT_FORMAT_VERSION),
        snapshot=sql.Literal(snapshot_id),
        schema=sql.Literal(shape.schema_name),
        table=sql.Literal(shape.table_name),
        key=key_names,
        columns=columns,
    )


def bound_statement(shape: TableShape, where: str | None, after: bool) -> sql.Composed:
    """The key of the chunk's last row, read without locking; parameters: the last key's
    values (when ``after``), then the chunk size minus one. No row: the chunk is the last.

    The chunk then locks the key range (last key, this key]: a LIMIT under FOR SHARE
    would end the chunk at whatever key a concurrently updated row was given, and a
    primary key moved forward would make the next chunk skip the rows in between."""
    keys = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(column.name)) for column in shape.key
    )
    return sql.SQL(
        "SELECT ARRAY[{keys}] FROM {table}\nWHERE {where} AND {after}\n"
        "ORDER BY {order} OFFSET %s LIMIT 1"
    ).format(
        keys=keys,
        table=table_identifier(shape.table),
        where=_user_where(where),
        after=_after_key(shape, after),
        order=_order(shape),
    )


def chunk_statement(
    shape: TableShape, snapshot_id: str, where: str | None, after: bool, bounded: bool
) -> sql.Composed:
    """Lock and write the rows of one key range; parameters: the last key's values
    (when ``after``), then the range's upper key values (when ``bounded``: the last
    chunk has no upper bound). Returns each row's key as text[], in key order.

    The locking SELECT is a MATERIALIZED CTE, so every row is locked (and, if a writer
    changed it meanwhile, re-read and checked again) before its message is written,
    and the messages follow the CTE's key order."""
    keys = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(column.name)) for column in shape.key
    )
    upper = _key_compared(shape, "<=") if bounded else sql.SQL("true")
    return sql.SQL(
        "WITH chunk AS MATERIALIZED (\n"
        "SELECT ARRAY[{keys}] AS cdc_key, {message} AS cdc_message FROM {table}\n"
        "WHERE {where} AND {after} AND {upper}\n"
        "ORDER BY {order} FOR SHARE\n"
        ")\n"
        "SELECT cdc_key, pg_logical_emit_message(true, {prefix}, cdc_message) FROM chunk"
    ).format(
        keys=keys,
        message=message_expression(shape, snapshot_id),
        table=table_identifier(shape.table),
        where=_user_where(where),
        after=_after_key(shape, after),
        upper=upper,
        order=_order(shape),
        prefix=sql.Literal(SNAPSHOT_PREFIX),
    )


def count_statement(shape: TableShape, where: str | None, after: bool) -> sql.Composed:
    """How many rows the snapshot covers (after the last key, when ``after``)."""
    return sql.SQL("SELECT count(*) FROM {table} WHERE {where} AND {after}").format(
        table=table_identifier(shape.table),
        where=_user_where(where),
        after=_after_key(shape, after),
    )


# --- catalog ---------------------------------------------------------------------------


async def table_shape(conn: AsyncConn, table: str) -> TableShape | None:
    """The columns and primary key of ``table`` (schema.table); None: no such table."""
    schema, _, name = table.partition(".")
    cur = await conn.execute(
        """
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
        """,
        (schema, name),
    )
    found = await cur.fetchone()
    if found is None:
        return None
    oid = found[0]
    # attgenerated is '' for ordinary columns (PostgreSQL 12+: the bridge's floor).
    cur = await conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid::bigint
        FROM pg_attribute a
        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
          AND a.attgenerated = ''
        ORDER BY a.attnum
        """,
        (oid,),
    )
    columns = tuple(Column(str(r[0]), str(r[1]), int(r[2])) for r in await cur.fetchall())
    cur = await conn.execute(
        """
        SELECT a.attname FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = %s AND i.indisprimary
        ORDER BY k.position
        """,
        (oid,),
    )
    by_name = {column.name: column for column in columns}
    key = tuple(by_name[str(r[0])] for r in await cur.fetchall() if str(r[0]) in by_name)
    return TableShape(table=table, columns=columns, key=key)


async def missing_privileges(conn: AsyncConn, table: str, progress_table: str) -> list[str]:
    """What the current role lacks for a snapshot of ``table``, as readable items."""
    cur = await conn.execute(
        """
        SELECT has_table_privilege(%(t)s, 'SELECT'),
               has_any_column_privilege(%(t)s, 'UPDATE'),
               (SELECT bool_or(has_function_privilege(p.oid, 'EXECUTE')) FROM pg_proc p
                WHERE p.proname = 'pg_logical_emit_message'
                  AND p.pronamespace = 'pg_catalog'::regnamespace
                  AND p.proargtypes[2] = 'text'::regtype),
               CASE WHEN to_regclass(%(p)s) IS NULL THEN NULL
                    ELSE has_table_privilege(%(p)s, 'SELECT, INSERT, UPDATE') END
        """,
        {"t": table, "p": progress_table},
    )
    row = await cur.fetchone()
    assert row is not None
    missing = []
    if not row[0]:
        missing.append(f"SELECT on {table}")
    if not row[1]:
        missing.append(f"UPDATE on {table} (or one of its columns: FOR SHARE needs it)")
    if not row[2]:
        missing.append("EXECUTE on pg_logical_emit_message (the text variant)")
    if row[3] is False:
        missing.append(f"SELECT, INSERT, UPDATE on {progress_table}")
    return missing


async def current_role(conn: AsyncConn) -> str:
    cur = await conn.execute("SELECT current_user")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


# --- the lock --------------------------------------------------------------------------


async def try_lock(conn: AsyncConn, table: str) -> bool:
    """The table's snapshot lock, held by ``conn``'s session until it ends."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(table),))
    row = await cur.fetchone()
    return bool(row and row[0])


async def unlock(conn: AsyncConn, table: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(table),))


async def lock_holder(conn: AsyncConn, table: str) -> int | None:
    """The backend pid holding the table's snapshot lock (pg_locks shows a bigint key
    as its high and low 32 bits in classid and objid)."""
    key = lock_key(table) & 0xFFFF_FFFF_FFFF_FFFF
    cur = await conn.execute(
        """
        SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
          AND d.datname = current_database()
        """,
        (key >> 32, key & 0xFFFF_FFFF),
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


# --- progress --------------------------------------------------------------------------


async def progress_table_exists(conn: AsyncConn, progress_table: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (progress_table,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def create_progress_table(conn: AsyncConn, progress_table: str) -> None:
    await conn.execute(progress_table_ddl(progress_table))


async def progress_of(conn: AsyncConn, progress_table: str, table: str) -> list[Progress]:
    """Every snapshot of ``table`` the progress table holds, oldest first."""
    if not await progress_table_exists(conn, progress_table):
        return []
    cur = await conn.execute(
        sql.SQL("SELECT {} FROM {} WHERE table_name = %s ORDER BY started_at").format(
            sql.SQL(_PROGRESS_COLUMNS), table_identifier(progress_table)
        ),
        (table,),
    )
    return [
        Progress(
            snapshot_id=r[0],
            table=r[1],
            where_clause=r[2],
            chunk_size=int(r[3]),
            last_key=None if r[4] is None else tuple(r[4]),
            rows=int(r[5]),
            chunks=int(r[6]),
            started_at=r[7],
            updated_at=r[8],
            finished_at=r[9],
        )
        for r in await cur.fetchall()
    ]


async def start_progress(
    conn: AsyncConn,
    progress_table: str,
    snapshot_id: str,
    table: str,
    where: str | None,
    chunk_size: int,
) -> None:
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (snapshot_id, table_name, where_clause, chunk_size) "
            "VALUES (%s, %s, %s, %s)"
        ).format(table_identifier(progress_table)),
        (snapshot_id, table, where, chunk_size),
    )


async def count_rows(
    conn: AsyncConn, shape: TableShape, where: str | None, after_key: Sequence[str] | None
) -> int:
    cur = await conn.execute(
        count_statement(shape, where, after_key is not None), list(after_key or ())
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def write_chunk(
    conn: AsyncConn,
    shape: TableShape,
    progress_table: str,
    snapshot_id: str,
    where: str | None,
    chunk_size: int,
    after_key: Sequence[str] | None,
) -> Chunk:
    """One chunk in one transaction: the next ``chunk_size`` keys' range locked and
    written, progress moved to its upper bound. The last chunk (fewer keys left) has no
    upper bound, and finishes the progress row in the same transaction."""
    after = list(after_key or ())
    async with conn.transaction():
        cur = await conn.execute(
            bound_statement(shape, where, after_key is not None), [*after, chunk_size - 1]
        )
        found = await cur.fetchone()
        upper = None if found is None else tuple(str(v) for v in found[0])
        cur = await conn.execute(
            chunk_statement(shape, snapshot_id, where, after_key is not None, upper is not None),
            [*after, *(upper or ())],
        )
        written = await cur.fetchall()
        rows = len(written)
        # the last chunk records the last key it wrote: what the progress row shows
        recorded = upper or (tuple(str(v) for v in written[-1][0]) if written else None)
        cur = await conn.execute(
            sql.SQL(
                "UPDATE {} SET last_key = coalesce(%s::text[], last_key), rows = rows + %s, "
                "chunks = chunks + %s, updated_at = now(), "
                "finished_at = CASE WHEN %s THEN now() END "
                "WHERE snapshot_id = %s AND table_name = %s"
            ).format(table_identifier(progress_table)),
            (
                list(recorded) if recorded else None,
                rows,
                1 if rows else 0,
                upper is None,
                snapshot_id,
                shape.table,
            ),
        )
        if cur.rowcount != 1:
            raise LookupError(
                f"the progress row of snapshot {snapshot_id} of {shape.table} is gone from "
                f"{progress_table}"
            )
    return Chunk(rows=rows, last_key=upper)


async def write_chunks(
    conn: AsyncConn,
    shape: TableShape,
    progress_table: str,
    snapshot_id: str,
    where: str | None,
    chunk_size: int,
    after_key: Sequence[str] | None,
    *,
    stopping: Callable[[], bool],
    on_chunk: Callable[[int, Chunk], None],
) -> tuple[int, int, bool]:
    """Chunk after chunk from ``after_key`` until the last one, or until ``stopping()``
    says so at a chunk boundary; ``on_chunk(rows so far, chunk)`` after each commit.
    Returns (rows, chunks, finished)."""
    rows = chunks = 0
    after = after_key
    while not stopping():
        chunk = await write_chunk(
            conn, shape, progress_table, snapshot_id, where, chunk_size, after
        )
        rows += chunk.rows
        chunks += 1 if chunk.rows else 0
        after = chunk.last_key
        on_chunk(rows, chunk)
        if chunk.last:
            return rows, chunks, True
    return rows, chunks, False
