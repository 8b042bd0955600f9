"""What a slot holds that nobody has confirmed yet, decoded WITHOUT consuming it.

Read with ``pg_logical_slot_peek_*_changes``: PostgreSQL decodes the slot's WAL from
its confirmed_flush_lsn as a walsender would, but the slot does not move. Only one
process can decode a slot at a time, so this is impossible while a bridge streams.

pgoutput and wal2json output is decoded by the daemon's own decoders and routed by its
own Router, so the route and subject shown are the ones the bridge would use. Output
of any other plugin is shown raw, one line per change.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

from cdc_bridge.cli.errors import OpsError, UsageError
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.changes import Begin, Change, ColumnValue, Commit, Insert, LogicalMessage
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.wire_text import printable
from cdc_bridge.routing.messages import EnvelopeColumns, default_message_id, message_event
from cdc_bridge.routing.router import DEAD_LETTER_ROUTE, Outbound, Poison, Router
from cdc_bridge.source.catalog import RawChange, SlotInfo, peek_changes
from cdc_bridge.source.decoding import DecodeError, Decoder, pgoutput, wal2json
from cdc_bridge.source.plugins import decoder_for
from cdc_bridge.source.tables import publication_names

DEFAULT_ID_COLUMN = "id"  # the outbox.sql column, when no config says otherwise
ALL_TABLES = "*.*"  # wal2json's add-tables pattern for every table


@dataclass(frozen=True, slots=True)
class PendingRow:
    xid: int
    lsn: int  # the change's own position
    table: str | None  # "schema.table", or "message:<prefix>"; None for raw output
    action: str  # "insert" | "message" | "raw"
    row_id: str | None  # the outbox id (a message envelope's id)
    route: str | None  # the route's name, "dead_letter", or None (no config, poison, ignored)
    subject: str | None
    note: str | None  # why it is not simply routed: dead letter, poison, ignored
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
    """An outbox row or message -> what the bridge would do with it (pure).

    Without a config there is no routing: rows are shown with their ``id`` column.
    """

    def __init__(self, config: BridgeConfig | None) -> None:
        self._config = config
        self._router = Router(config) if config is not None else None
        self._tables = frozenset(config.outbox.tables) if config is not None else None
        self._id_column = config.outbox.id_column if config is not None else DEFAULT_ID_COLUMN
        self._prefixes = frozenset(config.outbox.message_prefixes) if config else frozenset()

    def insert(self, xid: int, lsn: int, table: str, row: dict[str, ColumnValue]) -> PendingRow:
        row_id = _text(row.get(self._id_column))
        if self._router is None or self._tables is None:
            return PendingRow(xid, lsn, table, "insert", row_id, None, None, None)
        if table not in self._tables:
            ignored = "not an outbox table: the bridge ignores it"
            return PendingRow(xid, lsn, table, "insert", row_id, None, None, ignored)
        return self._routed(xid, lsn, table, "insert", row_id, self._router.route(table, row))

    def is_outbox_table(self, table: str) -> bool:
        return self._tables is not None and table in self._tables

    def is_event(self, message: LogicalMessage) -> bool:
        return message.transactional and message.prefix in self._prefixes

    def message(
        self, xid: int, lsn: int, message: LogicalMessage, commit_lsn: int, index: int
    ) -> PendingRow:
        """A logical message; ``index`` is its place among the transaction's events,
        which gives an envelope without an id the id the bridge would give it."""
        config = self._config
        if config is None or self._router is None or not self.is_event(message):
            why = (
                "not an outbox event (prefix not in outbox.message_prefixes, or not transactional)"
            )
            note = why if config is not None else f"prefix {message.prefix!r}"
            return PendingRow(xid, lsn, None, "message", None, None, None, note)
        outbox = config.outbox
        columns = EnvelopeColumns(outbox.id_column, outbox.payload_column, outbox.headers_column)
        event = message_event(
            message.prefix,
            message.content,
            default_id=default_message_id(commit_lsn, index),
            columns=columns,
        )
        if event.problem is not None:
            route = DEAD_LETTER_ROUTE if config.dead_letter is not None else None
            subject = config.dead_letter.subject if config.dead_letter is not None else None
            note = f"invalid message envelope: {event.problem}"
            shown_id = printable(event.msg_id)
            return PendingRow(xid, lsn, event.table, "message", shown_id, route, subject, note)
        outcome = self._router.route(event.table, event.row)
        return self._routed(xid, lsn, event.table, "message", printable(event.msg_id), outcome)

    @staticmethod
    def _routed(
        xid: int,
        lsn: int,
        table: str,
        action: str,
        row_id: str | None,
        outcome: Outbound | Poison,
    ) -> PendingRow:
        if isinstance(outcome, Outbound):
            note = None
            if outcome.route == DEAD_LETTER_ROUTE:
                note = f"dead letter: {outcome.dead_letter_reason}"
            return PendingRow(xid, lsn, table, action, row_id, outcome.route, outcome.subject, note)
        poison = f"poison: {outcome.reason} (no dead_letter: the bridge stops here)"
        return PendingRow(xid, lsn, table, action, row_id, None, None, poison)


def _text(value: ColumnValue) -> str | None:
    """An id as shown: control characters and lone surrogates escaped (a row's id may
    hold them; it is dead-lettered, and must still print)."""
    if isinstance(value, bytes):
        return value.hex()
    return None if value is None else printable(value)


def decode_transactions(
    changes: Sequence[RawChange], decoder: Decoder, describer: RowDescriber
) -> list[PendingTransaction]:
    """A plugin's messages -> transactions with their rows (pure)."""
    transactions: list[PendingTransaction] = []
    rows: list[PendingRow] = []
    begin: Begin | None = None
    events = 0  # the transaction's events so far: a message's default id needs its index
    for change in changes:
        event = _decode(decoder, change)
        if isinstance(event, Begin):
            begin, rows, events = event, [], 0
        elif isinstance(event, Insert):
            rows.append(describer.insert(change.xid, change.lsn, event.table, event.row))
            events += describer.is_outbox_table(event.table)
        elif isinstance(event, LogicalMessage):
            commit_lsn = begin.final_lsn if begin is not None else change.lsn
            row = describer.message(change.xid, change.lsn, event, commit_lsn, events)
            events += describer.is_event(event)
            if event.transactional:
                rows.append(row)
            else:  # outside any transaction: it stands alone
                transactions.append(PendingTransaction(change.xid, None, (row,)))
        elif isinstance(event, Commit):
            xid = begin.xid if begin is not None else change.xid
            transactions.append(PendingTransaction(xid, event.end_lsn, tuple(rows)))
            begin, rows = None, []
    return transactions


def _decode(decoder: Decoder, change: RawChange) -> Change | None:
    try:
        return decoder.decode(change.data)
    except DecodeError as exc:  # either plugin's (cdc_bridge.source.decoding.DecodeError)
        raise OpsError(f"cannot decode the change at {format_lsn(change.lsn)}: {exc}") from None


def group_raw(changes: Sequence[RawChange]) -> list[PendingTransaction]:
    """A text plugin's output, undecoded: one row per output line, grouped by xid.

    A transaction's last line (its commit, for the usual plugins) sits at its end LSN.
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
            "then `cdc-bridge outbox replay --missing` (docs/operating.md, 'slot lost')"
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


def _options_without_config(slot: SlotInfo, publication: str | None) -> list[tuple[str, str]]:
    """Options for a slot no config describes: every table, no messages."""
    if slot.plugin == "pgoutput":
        return [("proto_version", "1"), ("publication_names", publication or "")]
    return wal2json.wal2json_options((ALL_TABLES,), ())


async def _apply_session_options(conn: psycopg.AsyncConnection[TupleRow], options: str) -> None:
    """``-c name=value`` options (as a replication DSN carries them) for this session:
    decoding runs in our backend, so the plugin sees our settings."""
    words = shlex.split(options)
    for flag, assignment in zip(words[::2], words[1::2], strict=True):
        if flag == "-c":
            name, _, value = assignment.partition("=")
            await conn.execute("SELECT set_config(%s, %s, false)", (name, value))


async def _reader_for(
    conn: psycopg.AsyncConnection[TupleRow],
    slot: SlotInfo,
    config: BridgeConfig | None,
    publication: str | None,
) -> tuple[bool, list[tuple[str, str]], Decoder | None]:
    """(binary output?, plugin options, decoder or None for raw output) for the slot."""
    if slot.plugin not in ("pgoutput", "wal2json"):
        return False, [], None
    if slot.plugin == "pgoutput" and publication is None:
        raise UsageError(
            f"slot {slot.name} uses pgoutput, which decodes through a publication: "
            "pass --publication NAME or --config FILE"
        )
    if slot.plugin == "wal2json":
        await _apply_session_options(conn, wal2json.SESSION_OPTIONS)
    same_setup = (
        config is not None
        and config.postgres.plugin == slot.plugin
        and (slot.plugin != "pgoutput" or publication == config.postgres.publication)
    )
    if same_setup:
        assert config is not None
        decoder, options = decoder_for(config)  # exactly what the bridge streams with
        return slot.plugin == "pgoutput", options, decoder
    if slot.plugin == "pgoutput":
        return True, _options_without_config(slot, publication), pgoutput.PgoutputDecoder()
    return False, _options_without_config(slot, publication), wal2json.Wal2jsonDecoder()


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
    binary, options, decoder = await _reader_for(conn, slot, config, publication)
    changes = await peek_changes(
        conn, slot.name, binary=binary, options=options, upto_lsn=upto_lsn, upto_nchanges=limit
    )
    if decoder is None:
        transactions = group_raw(changes)
    else:
        transactions = decode_transactions(changes, decoder, RowDescriber(config))
    maybe_more = limit is not None and len(changes) >= limit
    return Pending(tuple(transactions), maybe_more)
