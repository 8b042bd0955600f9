"""The decoders' output: plugin-neutral change events.

pgoutput and wal2json both decode into these, so everything downstream (outbox
filtering, routing, publishing, confirmation) cannot tell the plugins apart.
Column values are ``str`` (PostgreSQL's text form), ``bytes`` (bytea only) or
``None`` (SQL NULL).
"""

from __future__ import annotations

from dataclasses import dataclass

ColumnValue = str | bytes | None


@dataclass(frozen=True, slots=True)
class Begin:
    xid: int
    final_lsn: int  # the commit record's LSN: known up front, so events can carry it
    commit_time: int = 0  # microseconds since 2000-01-01 UTC; 0 when the plugin omits it


@dataclass(frozen=True, slots=True)
class Insert:
    table: str  # "schema.table", unquoted
    row: dict[str, ColumnValue]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A ``pg_logical_emit_message`` record."""

    transactional: bool
    prefix: str
    content: bytes
    lsn: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int  # the position to confirm once everything in this transaction is acked


Change = Begin | Insert | LogicalMessage | Commit
