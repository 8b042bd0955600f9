"""Read-only checks of the outbox tables against the config.

The daemon's ``prepare_outbox`` does the same checks at start-up but also creates the
publication; ``check`` and ``init`` need the checks alone, with the fix for each.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdc_bridge.config import BridgeConfig
from cdc_bridge.messages import EnvelopeColumns
from cdc_bridge.slots import AsyncConn, table_columns


@dataclass(frozen=True, slots=True)
class OutboxProblem:
    problem: str
    fix: str


async def outbox_problems(conn: AsyncConn, config: BridgeConfig) -> list[OutboxProblem]:
    """Missing tables, and columns the routes or the outbox section need but no table has."""
    problems: list[OutboxProblem] = []
    outbox = config.outbox
    # Message events are rows of the envelope's columns (messages.py), as in the daemon.
    known_columns: set[str] = (
        set(EnvelopeColumns(outbox.id_column, outbox.payload_column, outbox.headers_column).names())
        if outbox.message_prefixes
        else set()
    )
    for table in config.outbox.tables:
        columns = await table_columns(conn, table)
        if columns is None:
            problems.append(
                OutboxProblem(
                    f"table {table} does not exist",
                    "cdc-bridge init (creates it from sql/outbox.sql)",
                )
            )
        else:
            known_columns.update(columns)
    if problems:
        return problems
    needed = config.template_columns()
    if outbox.headers_column is not None and outbox.tables:
        needed.add(outbox.headers_column)
    tables = ", ".join(outbox.tables) or "the message envelope"
    for column in sorted(needed - known_columns - {"table"}):
        problems.append(
            OutboxProblem(
                f"column {column!r} is used by the config but is not a column of {tables} "
                f"(columns: {', '.join(sorted(known_columns))})",
                f"add the column, or change the routes/outbox section that names {column!r}",
            )
        )
    return problems
