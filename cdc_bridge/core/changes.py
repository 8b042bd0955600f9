"""The decoders' output: plugin-neutral change events.

pgoutput and wal2json both decode into these, so everything downstream (outbox
filtering, routing, publishing, confirmation) cannot tell the plugins apart.
Column values are ``str`` (PostgreSQL's text form), ``bytes`` (bytea only) or
``None`` (SQL NULL).

Begin, Insert and Commit are made once per WAL message on the hot path, so they are
plain (not frozen) dataclasses: a frozen one costs a ``object.__setattr__`` call per
field. Nothing changes them after the decoder made them. They, and the other classes
made once per event or column (RowChange, ChangeColumn, EventPosition, router.Outbound,
batches.Pending, ...), write their ``__init__``
out (``init=False``): mypyc compiles a hand-written one, while the one ``dataclass``
generates stays interpreted Python, about five times slower to call.

Outbox tables and logical messages need only Insert and LogicalMessage. Tables listed in
``outbox.change_tables`` come as RowChange instead: inserts, updates and deletes with the
column types and the old key, which is what a wal2json-shaped change event needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ColumnValue = str | bytes | None


@dataclass(slots=True, init=False)
class Begin:
    xid: int
    final_lsn: int  # the commit record's LSN: known up front, so events can carry it
    commit_time: int  # microseconds since 2000-01-01 UTC; 0 when the plugin omits it

    def __init__(self, xid: int, final_lsn: int, commit_time: int = 0) -> None:
        self.xid = xid
        self.final_lsn = final_lsn
        self.commit_time = commit_time


# Type OIDs of json and jsonb: PostgreSQL checked their text is JSON on the way in.
JSON_TYPE_OIDS = frozenset((114, 3802))
NO_COLUMNS: frozenset[str] = frozenset()


@dataclass(slots=True, init=False)
class Insert:
    table: str  # "schema.table", unquoted
    row: dict[str, ColumnValue]
    # The row's json and jsonb columns (one set per table, shared): their values need no
    # parse to be known JSON (CloudEvents' datacontenttype). Not part of equality.
    json_columns: frozenset[str] = field(compare=False, repr=False)

    def __init__(
        self, table: str, row: dict[str, ColumnValue], json_columns: frozenset[str] = NO_COLUMNS
    ) -> None:
        self.table = table
        self.row = row
        self.json_columns = json_columns


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A ``pg_logical_emit_message`` record."""

    transactional: bool
    prefix: str
    content: bytes
    lsn: int


@dataclass(slots=True, init=False)
class Commit:
    commit_lsn: int
    end_lsn: int  # the position to confirm once everything in this transaction is acked

    def __init__(self, commit_lsn: int, end_lsn: int) -> None:
        self.commit_lsn = commit_lsn
        self.end_lsn = end_lsn


# Not frozen, __init__ written out: one per column of each change (see the top).
@dataclass(slots=True, init=False)
class ChangeColumn:
    """One column of a RowChange, described the way wal2json format-version 2 does."""

    name: str
    type: str  # the type as format_type() prints it: "character varying(20)", "app.mood"
    type_oid: int  # decides how the value is written in JSON (numbers, booleans, bytea)
    value: ColumnValue  # as wal2json reports it: NaN and +-Infinity in number columns are None

    def __init__(self, name: str, type: str, type_oid: int, value: ColumnValue) -> None:
        self.name = name
        self.type = type
        self.type_oid = type_oid
        self.value = value


@dataclass(slots=True, init=False)  # one per change: see the top
class RowChange:
    """An insert, update or delete of a change table (``outbox.change_tables``).

    ``columns`` is the new row (I and U) in table order, without the columns of an update
    whose TOASTed value did not change: the server does not send those, and wal2json
    leaves them out too. ``identity`` is the old row's replica identity (U and D): the
    key columns, or every column under REPLICA IDENTITY FULL.
    """

    action: str  # "I", "U" or "D", as wal2json writes it; "R" for a snapshot row
    schema: str
    name: str
    columns: tuple[ChangeColumn, ...]
    identity: tuple[ChangeColumn, ...]

    def __init__(
        self,
        action: str,
        schema: str,
        name: str,
        columns: tuple[ChangeColumn, ...],
        identity: tuple[ChangeColumn, ...],
    ) -> None:
        self.action = action
        self.schema = schema
        self.name = name
        self.columns = columns
        self.identity = identity

    @property
    def table(self) -> str:
        """The table as "schema.table", unquoted, as Insert.table and the routes name it."""
        return f"{self.schema}.{self.name}"


Change = Begin | Insert | LogicalMessage | Commit | RowChange


@dataclass(slots=True, init=False)  # one per event in those formats: see the top
class EventPosition:
    """Where an event sits in the WAL: what the pipeline knows and the router does not.

    Only events in a format that carries their position in the body or its attributes
    (CloudEvents, the Debezium envelope) are handed one; plain messages get the same
    facts as the pipeline's Cdc-Lsn and Cdc-Index headers.
    """

    lsn: int  # the commit record's LSN (the transaction's, shared by its events)
    lsn_text: str  # the same as Cdc-Lsn shows it: "0/16B3748"
    index: int  # the event's place in its transaction: Cdc-Index
    commit_time: int  # microseconds since 2000-01-01 UTC; 0 when the plugin omits it
    xid: int  # the transaction id; 0 when the plugin omits it

    def __init__(self, lsn: int, lsn_text: str, index: int, commit_time: int, xid: int) -> None:
        self.lsn = lsn
        self.lsn_text = lsn_text
        self.index = index
        self.commit_time = commit_time
        self.xid = xid
