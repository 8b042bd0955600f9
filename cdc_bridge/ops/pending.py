"""What a slot holds that nobody has confirmed yet, decoded WITHOUT consuming it.

Read with ``pg_logical_slot_peek_*_changes``: PostgreSQL decodes the slot's WAL from
its confirmed_flush_lsn as a walsender would, but the slot does not move. Only one
process can decode a slot at a time, so this is impossible while a bridge streams.

pgoutput output is decoded by the daemon's own decoder and routed by its own Router,
so the route and subject shown are the ones the bridge would use. wal2json output is
shown raw, one JSON line per change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

from cdc_bridge.changes import Begin, ColumnValue, Commit, Insert, LogicalMessage
from cdc_bridge.config import BridgeConfig
from cdc_bridge.decoding.pgoutput import DecodeError, PgoutputDecoder
from cdc_bridge.lsn import format_lsn
from cdc_bridge.ops.errors import OpsError, UsageError
from cdc_bridge.routing import DEAD_LETTER_ROUTE, Outbound, Router
from cdc_bridge.slots import RawChange, SlotInfo, peek_changes, publication_names

DEFAULT_ID_COLUMN = "id"  # the outbox.sql column, when no config says otherwise


@dataclass(frozen=True, slots=True)
class PendingRow:
    xid: int
    lsn: int  # the change's own position
    table: str | None  # "schema.table"; None for a logical message or raw output
    action: str  # "insert" | "message" | "raw"
    row_id: str | None  # the outbox id column's value
    route: str | None  # the route's name, "dead_letter", or None (no config, poison, ignored)
    subject: str | None
    note: str | None  # why it is not simply routed: dead letter, poison, not an outbox table
    data: str | None = None  # the plugin's raw output, when it is not decoded


@dataclass(frozen=True, slots=True)
class PendingTransaction:
    xid: int
    end_lsn: int | None  # its commit's end: `slots advance --to` this skips it
    rows: tuple[PendingRow, ...]


@dataclass(frozen=True, slots=True)
class Pending:
    transactions: tuple[PendingTransaction, ...]
    maybe_more: bool  # the read stopped at its limit: more may be pending

    @property
    def row_count(self) -> int:
        return sum(len(tx.rows) for tx in self.transactions)


class RowDescriber:
    """An outbox row -> its id, route and subject, as the bridge's Router sees it."""

    def __init__(self, config: BridgeConfig | None) -> None:
        self._router = Router(config) if config is not None else None
        self._tables = frozenset(config.outbox.tables) if config is not None else None
        self._id_column = config.outbox.id_column if config is not None else DEFAULT_ID_COLUMN

    def describe(self, xid: int, lsn: int, table: str, row: dict[str, ColumnValue]) -> PendingRow:
        row_id = _text(row.get(self._id_column))
        if self._router is None or self._tables is None:
            return PendingRow(xid, lsn, table, "insert", row_id, None, None, None)
        if table not in self._tables:
            ignored = "not an outbox table: the bridge ignores it"
            return PendingRow(xid, lsn, table, "insert", row_id, None, None, ignored)
        outcome = self._router.route(table, row)
        if isinstance(outcome, Outbound):
            note = None
            if outcome.route == DEAD_LETTER_ROUTE:
                note = f"dead letter: {outcome.dead_letter_reason}"
            route, subject = outcome.route, outcome.subject
            return PendingRow(xid, lsn, table, "insert", row_id, route, subject, note)
        poison = f"poison: {outcome.reason} (no dead_letter: the bridge stops at this row)"
        return PendingRow(xid, lsn, table, "insert", row_id, None, None, poison)


def _text(value: ColumnValue) -> str | None:
    if isinstance(value, bytes):
        return value.hex()
    return value


def decode_pgoutput(
    changes: Sequence[RawChange], describer: RowDescriber
) -> list[PendingTransaction]:
    """pgoutput messages -> transactions with their outbox rows (pure)."""
    decoder = PgoutputDecoder()
    transactions: list[PendingTransaction] = []
    rows: list[PendingRow] = []
    xid: int | None = None
    for change in changes:
        try:
            event = decoder.decode(change.data)
        except DecodeError as exc:
            raise OpsError(f"cannot decode the change at {format_lsn(change.lsn)}: {exc}") from None
        if isinstance(event, Begin):
            xid, rows = event.xid, []
        elif isinstance(event, Insert):
            rows.append(describer.describe(change.xid, change.lsn, event.table, event.row))
        elif isinstance(event, LogicalMessage):
            note = f"prefix {event.prefix!r}, {len(event.content)} bytes"
            message = PendingRow(change.xid, change.lsn, None, "message", None, None, None, note)
            if event.transactional:
                rows.append(message)
            else:  # outside any transaction: it stands alone
                transactions.append(PendingTransaction(change.xid, None, (message,)))
        elif isinstance(event, Commit):
            own_xid = xid if xid is not None else change.xid
            transactions.append(PendingTransaction(own_xid, event.end_lsn, tuple(rows)))
            xid, rows = None, []
    return transactions


def group_raw(changes: Sequence[RawChange]) -> list[PendingTransaction]:
    """A text plugin's output, undecoded: one row per output line, grouped by xid.

    The last line of a transaction (wal2json's commit) sits at its end LSN.
    """
    transactions: list[PendingTransaction] = []
    rows: list[PendingRow] = []
    for index, change in enumerate(changes):
        text = change.data.decode("utf-8", "replace")
        rows.append(PendingRow(change.xid, change.lsn, None, "raw", None, None, None, None, text))
        following = changes[index + 1] if index + 1 < len(changes) else None
        if following is None or following.xid != change.xid:
            transactions.append(PendingTransaction(change.xid, change.lsn, tuple(rows)))
            rows = []
    return transactions


def check_decodable(slot: SlotInfo, dbname: str) -> None:
    """Refuse, in words an operator can act on, what PostgreSQL would refuse."""
    if slot.active:
        raise OpsError(
            f"slot {slot.name} is in use by process {slot.active_pid} (a bridge is streaming "
            "from it): PostgreSQL lets one process at a time decode a slot, so it cannot be "
            f"peeked at or advanced while it streams. Stop the bridge, or watch it with "
            f"`cdc-bridge slots show {slot.name}` and `cdc-bridge status`"
        )
    if slot.wal_status == "lost":
        raise OpsError(
            f"slot {slot.name} is lost (wal_status = lost): PostgreSQL already removed WAL it "
            "needed, so its pending changes cannot be read any more. Drop and recreate it, "
            "and reconcile the outbox by hand (docs/operating.md, 'slot lost')"
        )
    if slot.database != dbname:
        raise OpsError(
            f"slot {slot.name} belongs to database {slot.database}; this connection is to "
            f"{dbname}. Connect to {slot.database} (--dsn) to read it"
        )


async def choose_publication(
    conn: psycopg.AsyncConnection[TupleRow], slot: SlotInfo, given: str | None
) -> str | None:
    """The publication a pgoutput slot is decoded through: the one given (--publication
    or the config's), else the database's only one. None for other plugins."""
    if slot.plugin != "pgoutput":
        return None
    if given is not None:
        return given
    names = await publication_names(conn)
    if len(names) == 1:
        return names[0]
    listed = ", ".join(names) if names else "none exist"
    raise UsageError(
        f"slot {slot.name} uses pgoutput, which decodes through a publication: pass "
        f"--publication NAME or --config FILE (publications here: {listed})"
    )


def pgoutput_options(publication: str) -> list[tuple[str, str]]:
    return [("proto_version", "1"), ("publication_names", publication)]


def wal2json_options(config: BridgeConfig | None) -> list[tuple[str, str]]:
    options = [("format-version", "2"), ("include-xids", "1")]
    if config is not None:
        options.append(("add-tables", ",".join(config.outbox.tables)))
    return options


async def read_pending(
    conn: psycopg.AsyncConnection[TupleRow],
    slot: SlotInfo,
    *,
    config: BridgeConfig | None,
    publication: str | None,
    limit: int | None,
    upto_lsn: int | None = None,
) -> Pending:
    """Peek at up to about ``limit`` changes (whole transactions) from the slot.

    Raises psycopg.errors.ObjectInUse when a bridge started streaming meanwhile.
    """
    if slot.plugin == "pgoutput":
        if publication is None:
            raise UsageError(
                f"slot {slot.name} uses pgoutput, which decodes through a publication: "
                "pass --publication NAME or --config FILE"
            )
        changes = await peek_changes(
            conn,
            slot.name,
            binary=True,
            options=pgoutput_options(publication),
            upto_lsn=upto_lsn,
            upto_nchanges=limit,
        )
        transactions = decode_pgoutput(changes, RowDescriber(config))
    else:
        options = wal2json_options(config) if slot.plugin == "wal2json" else []
        changes = await peek_changes(
            conn,
            slot.name,
            binary=False,
            options=options,
            upto_lsn=upto_lsn,
            upto_nchanges=limit,
        )
        transactions = group_raw(changes)
    maybe_more = limit is not None and len(changes) >= limit
    return Pending(tuple(transactions), maybe_more)
