"""Catalog queries about the outbox's tables and the publication: columns and their
types, replica identity, partitions, privileges (daemon and ops CLI).

Plain SQL helpers, like catalog.py's for slots: each takes an open connection and
returns values; what the answers mean is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from cdc_bridge.source.catalog import AsyncConn


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
    conn: psycopg.AsyncConnection[TupleRow],
    name: str,
    tables: tuple[str, ...],
    operations: tuple[str, ...] = ("insert",),
) -> None:
    """``operations`` are publish actions (insert, update, delete), trusted: not user text.

    With a partitioned table among ``tables`` the publication publishes via the root
    (PostgreSQL 13+): changes arrive named as the root, and partitions attached later
    are covered without touching the publication."""
    table_list = sql.SQL(", ").join(table_identifier(table) for table in tables)
    options = sql.SQL("publish = {}").format(sql.Literal(", ".join(operations)))
    if await partitioned_tables(conn, tables):
        options = sql.SQL("{}, publish_via_partition_root = true").format(options)
    await conn.execute(
        sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH ({})").format(
            sql.Identifier(name), table_list, options
        )
    )


async def partitioned_tables(conn: AsyncConn, tables: Sequence[str]) -> list[str]:
    """Those of ``tables`` ("schema.table") that are partitioned tables, in order."""
    cur = await conn.execute(
        """
        SELECT n.nspname || '.' || c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'p' AND n.nspname || '.' || c.relname = ANY(%s)
        """,
        (list(tables),),
    )
    found = {str(row[0]) for row in await cur.fetchall()}
    return [table for table in tables if table in found]


async def publication_via_root(conn: AsyncConn, name: str) -> bool | None:
    """pg_publication.pubviaroot; None without such a publication, or before PostgreSQL
    13 (which has no such setting: it cannot publish partitioned tables at all)."""
    cur = await conn.execute(
        "SELECT (to_jsonb(p) ->> 'pubviaroot')::boolean FROM pg_publication p WHERE pubname = %s",
        (name,),
    )
    row = await cur.fetchone()
    return None if row is None or row[0] is None else bool(row[0])


@dataclass(frozen=True, slots=True)
class ReplicaIdentity:
    """A table's REPLICA IDENTITY: what the WAL keeps of an updated or deleted row."""

    setting: str  # "default", "full", "index" or "nothing"
    has_index: bool  # default: a primary key exists; index: the chosen index exists

    @property
    def identifies_rows(self) -> bool:
        """Whether updates and deletes carry an identity (PostgreSQL refuses them on a
        table without one that a publication publishes them for)."""
        return self.setting == "full" or (self.setting != "nothing" and self.has_index)


_REPLICA_IDENTITY_SETTINGS = {"d": "default", "f": "full", "i": "index", "n": "nothing"}


async def replica_identity(conn: AsyncConn, table: str) -> ReplicaIdentity | None:
    """``schema.table``'s replica identity; None when there is no such table."""
    schema, _, name = table.partition(".")
    cur = await conn.execute(
        """
        SELECT c.relreplident::text, EXISTS (
            SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
            AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                    WHEN 'i' THEN i.indisreplident ELSE false END)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s
        """,
        (schema, name),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    setting = str(row[0])
    return ReplicaIdentity(_REPLICA_IDENTITY_SETTINGS.get(setting, setting), bool(row[1]))


async def column_type_names(conn: AsyncConn, tables: Sequence[str]) -> dict[tuple[int, int], str]:
    """(type oid, typmod) -> format_type(oid, typmod) for the columns of ``tables`` and
    for every built-in type without a typmod: the names wal2json writes, for pgoutput.

    format_type() qualifies a type whose schema is not on the search path, as it does
    inside wal2json, so the DSN should not change search_path.
    """
    cur = await conn.execute(
        """
        SELECT a.atttypid::int8, a.atttypmod, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a
        WHERE a.attrelid IN (
            SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname || '.' || c.relname = ANY(%s))
          AND a.attnum > 0 AND NOT a.attisdropped
        UNION
        SELECT t.oid::int8, -1, format_type(t.oid, -1) FROM pg_type t
        WHERE t.oid < 16384 -- FirstNormalObjectId: the built-in types
        """,
        (list(tables),),
    )
    return {(int(row[0]), int(row[1])): str(row[2]) for row in await cur.fetchall()}


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


async def table_column_types(conn: AsyncConn, table: str) -> dict[str, str]:
    """Column name -> its type's name (a domain's base type: a domain over jsonb is
    jsonb) for ``schema.table``; empty when there is no such table."""
    schema, _, name = table.partition(".")
    cur = await conn.execute(
        """
        SELECT a.attname, format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype
                                           ELSE a.atttypid END, NULL)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (schema, name),
    )
    return {str(row[0]): str(row[1]) for row in await cur.fetchall()}


@dataclass(frozen=True, slots=True)
class PublicationInfo:
    name: str
    all_tables: bool
    tables: tuple[str, ...]  # "schema.table", sorted
    operations: tuple[str, ...]  # of insert, update, delete, truncate


async def publication_info(conn: AsyncConn, name: str) -> PublicationInfo | None:
    cur = await conn.execute(
        "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate"
        " FROM pg_publication WHERE pubname = %s",
        (name,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    flags = zip(("insert", "update", "delete", "truncate"), row[1:], strict=True)
    return PublicationInfo(
        name=name,
        all_tables=bool(row[0]),
        tables=tuple(sorted(await publication_tables(conn, name))),
        operations=tuple(operation for operation, enabled in flags if enabled),
    )


async def publication_names(conn: AsyncConn) -> list[str]:
    cur = await conn.execute("SELECT pubname FROM pg_publication ORDER BY pubname")
    return [row[0] for row in await cur.fetchall()]


@dataclass(frozen=True, slots=True)
class RoleInfo:
    name: str
    superuser: bool
    replication: bool
    inherit: bool = True  # NOINHERIT: privileges of granted roles need SET ROLE


async def current_role(conn: AsyncConn) -> RoleInfo:
    cur = await conn.execute(
        "SELECT rolname, rolsuper, rolreplication, rolinherit FROM pg_roles"
        " WHERE rolname = current_user"
    )
    row = await cur.fetchone()
    assert row is not None
    return RoleInfo(
        name=row[0], superuser=bool(row[1]), replication=bool(row[2]), inherit=bool(row[3])
    )


async def can_select(conn: AsyncConn, table: str) -> bool:
    """Whether the current role may SELECT from ``schema.table`` (which must exist)."""
    schema, _, name = table.partition(".")
    qualified = sql.Identifier(schema, name).as_string(conn)
    cur = await conn.execute("SELECT has_table_privilege(%s, 'SELECT')", (qualified,))
    row = await cur.fetchone()
    return bool(row and row[0])


def table_identifier(table: str) -> sql.Identifier:
    """``schema.table`` as a quoted SQL identifier."""
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name)
