"""The catalog facts a streaming session's events depend on, read again while it runs.

pgoutput decodes a table's changes only while the publication includes it. A publication
dropped, a table taken out of it, or a table dropped and created again under the same
name (the new one is outside a ``FOR TABLE`` publication until it is added) makes
PostgreSQL skip the rows with nothing but a line in its own log, and a bridge that only
reads the WAL would confirm the slot past them. A renamed column makes every later row
a dead letter. Start-up checks all of this (setup.py); a running session checks it again
every status interval (bridge/catalog_watch.py), comparing object identities (OIDs) with
those it started with, so a drop and re-create between two checks is seen too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import TupleRow

from cdc_bridge.source.setup import (
    REPAIR_AFTER_A_GAP,
    outbox_problems,
    publication_plan,
    publication_problem,
)

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

__all__ = ["REPAIR_AFTER_A_GAP", "CatalogIdentity", "catalog_problem", "read_identity"]

AsyncConn = psycopg.AsyncConnection[TupleRow]


@dataclass(frozen=True, slots=True)
class CatalogIdentity:
    """The OIDs of the publication and of the tables it must include (pgoutput only)."""

    publication: int | None  # None: no such publication
    tables: tuple[tuple[str, int | None], ...]  # (schema.table, OID or None: no table)


def identity_change(started: CatalogIdentity, now: CatalogIdentity, publication: str) -> str | None:
    """What changed between two readings, as the start of a fatal line; None: nothing."""
    if started.publication is not None and now.publication != started.publication:
        if now.publication is None:
            return f"publication {publication} was dropped"
        return f"publication {publication} was dropped and created again"
    now_tables = dict(now.tables)
    for table, oid in started.tables:
        if oid is None:
            continue
        current = now_tables.get(table)
        if current is None:
            return f"table {table} was dropped"
        if current != oid:
            return f"table {table} was dropped and created again"
    return None


async def read_identity(conn: AsyncConn, config: BridgeConfig) -> CatalogIdentity:
    tables, _ = publication_plan(config)
    cur = await conn.execute(
        "SELECT oid FROM pg_publication WHERE pubname = %s", (config.postgres.publication,)
    )
    found = await cur.fetchone()
    oids: list[tuple[str, int | None]] = []
    for table in tables:
        schema, _, name = table.partition(".")
        cur = await conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        )
        row = await cur.fetchone()
        oids.append((table, int(row[0]) if row is not None else None))
    return CatalogIdentity(int(found[0]) if found is not None else None, tuple(oids))


async def catalog_problem(
    conn: AsyncConn, config: BridgeConfig, started: CatalogIdentity | None
) -> str | None:
    """What start-up would refuse now, or what changed since ``started``; None: all is
    as the session found it. ``started`` is None for wal2json, which names its tables
    itself (add-tables) and needs no publication."""
    problem = await _identity_problem(conn, config, started)
    if problem is None:
        problems = await outbox_problems(conn, config)
        problem = problems[0].line() if problems else None
    if problem is None and started is not None:
        problem = await publication_problem(conn, config)
    if problem is not None and started is not None:
        # The checks are several queries: a drop between the first and the last shows
        # first as what it left behind ("does not include"). Say what happened instead.
        problem = await _identity_problem(conn, config, started) or problem
    return problem


async def _identity_problem(
    conn: AsyncConn, config: BridgeConfig, started: CatalogIdentity | None
) -> str | None:
    if started is None:
        return None
    now = await read_identity(conn, config)
    return identity_change(started, now, config.postgres.publication)
