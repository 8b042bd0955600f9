"""A new logical slot with an exported snapshot: what recovering a lost slot starts from.

``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`` returns the slot's consistent point
and the name of a snapshot in which exactly the transactions committed before that
point are visible: read the table in it, and every row is either there or comes
through the slot, never both, never neither. The snapshot lives while the replication
connection that made it runs no other command: import it before that connection ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg import sql

from cdc_bridge.core.lsn import parse_lsn
from cdc_bridge.source.catalog import AsyncConn
from cdc_bridge.source.replication import connection_string, quote_name


@asynccontextmanager
async def slot_with_snapshot(
    dsn: str, slot: str, plugin: str, *, connect_timeout: float, password: str | None
) -> AsyncIterator[tuple[int, str]]:
    """Create ``slot``; yield (consistent point, snapshot name) while the snapshot lives."""
    conn = await psycopg.AsyncConnection.connect(
        connection_string(dsn, connect_timeout),
        replication="database",
        autocommit=True,
        password=password,
    )
    try:
        plugin_name = quote_name(plugin)
        cur = await conn.execute(
            f"CREATE_REPLICATION_SLOT {quote_name(slot)} LOGICAL {plugin_name} (SNAPSHOT 'export')"
        )
        row = await cur.fetchone()
        assert row is not None
        yield parse_lsn(str(row[1])), str(row[2])
    finally:
        await conn.close()


async def import_snapshot(conn: AsyncConn, snapshot: str) -> None:
    """Start a read-only transaction on ``conn`` that sees exactly ``snapshot``."""
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))


async def copy_slot(conn: AsyncConn, source: str, target: str) -> None:
    """``target`` becomes a copy of ``source``: same plugin, same confirmed position."""
    await conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", (source, target))
