"""One streaming session: WAL messages in, JetStream messages out, the slot confirmed.

Data flows one way: replication stream -> protocol -> decoder -> router -> publisher,
and the tracker records what was sent and acked. The status timer only READS the
tracker. Backpressure is the publisher's in-flight window: while it is full the reader
stops reading (and the server's sends back up in TCP), but the status timer keeps
sending, so ``wal_sender_timeout`` never ends the connection.

Each event is held back until the next event of its transaction, or its Commit, is
read: only then is it known whether it is the transaction's last (``Cdc-Tx-Last``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from cdc_bridge.core.changes import (
    Begin,
    Change,
    Commit,
    EventPosition,
    Insert,
    LogicalMessage,
    RowChange,
)
from cdc_bridge.core.headers import (
    BRIDGE_HEADERS,
    EXPECTED_LAST_MSG_ID,
    EXPECTED_LAST_SEQUENCE,
    TX_LAST_HEADER,
    header_lines,
)
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.snapshots import SNAPSHOT_PREFIX
from cdc_bridge.core.tracker import LsnTracker, Transaction
from cdc_bridge.routing.dead_letters import POISON_FIX, PoisonRowError
from cdc_bridge.routing.messages import (
    EnvelopeColumns,
    MessageEvent,
    default_message_id,
    message_event,
    message_table,
)
from cdc_bridge.routing.router import Outbound, Poison, Router
from cdc_bridge.sink.publisher import Publisher, PublishError
from cdc_bridge.sink.reconcile import Position
from cdc_bridge.source.decoding import DecodeError, Decoder
from cdc_bridge.source.decoding.snapshot_rows import snapshot_row
from cdc_bridge.source.protocol import (
    XLOG_DATA_KIND,
    XLOG_PAYLOAD_START,
    Keepalive,
    XLogData,
    parse_copy_data,
    xlog_wal_end,
)
from cdc_bridge.source.replication import ReplicationStream

log = structlog.get_logger("cdc_bridge.bridge.pipeline")

# Headers the pipeline and the order guard set on messages: theirs win over a row's.
_OWN_HEADERS = frozenset(
    (*BRIDGE_HEADERS, TX_LAST_HEADER, EXPECTED_LAST_SEQUENCE, EXPECTED_LAST_MSG_ID)
)
# Added to the last event of a transaction, once its Commit shows that it is the last.
_TX_LAST_LINE = f"{TX_LAST_HEADER}: true\r\n"

# An event held back until the next one (or the Commit) says whether it is its
# transaction's last: publish's arguments, in publish's order.
_Held = tuple[str, bytes, str, Transaction, str, str]

# Seconds between confirmations while the confirmed position moves.
_CONFIRM_AT_MOST_EVERY = 0.5


class UndecodableChange(Exception):
    """The plugin sent something we cannot read: retrying would read it again."""


@dataclass
class SessionStats:
    """Counters that outlive a session (the daemon keeps one for the process)."""

    rows: int = 0  # outbox rows seen
    acked: int = 0  # messages JetStream acked (dead letters included)
    dead_lettered: int = 0
    skipped: int = 0  # replayed rows the stream already held
    transactions: int = 0
    # The position confirmed last when a session stopped cleanly: the `stopped` line's
    # lsn (the supervisor logs it last, once everything is closed).
    stopped_at: int | None = None


class Pipeline:
    def __init__(
        self,
        *,
        stream: ReplicationStream,
        decoder: Decoder,
        router: Router,
        publisher: Publisher,
        tracker: LsnTracker,
        tables: frozenset[str],
        status_interval: float,
        stats: SessionStats,
        source: str,
        stored_through: Position | None,
        known_duplicates: set[Position],
        in_stream: Callable[[str], bool],
        on_dead_letter: Callable[[str], None] | None = None,
        message_prefixes: frozenset[str] = frozenset(),
        on_message_ignored: Callable[[str], None] | None = None,
        envelope_columns: EnvelopeColumns | None = None,
        change_tables: frozenset[str] = frozenset(),
    ) -> None:
        self._stream = stream
        self._decoder = decoder
        self._router = router
        self._tracker = tracker
        self._tables = tables
        self._message_prefixes = message_prefixes  # logical messages that are events
        # A transactional message of any other prefix: told (once per prefix), counted
        self._on_message_ignored = on_message_ignored
        self._envelope_columns = envelope_columns or EnvelopeColumns()
        self._change_tables = change_tables  # snapshot rows of these become R events
        self._status_interval = status_interval
        self.stats = stats
        self._source = source  # Cdc-Source: which database and slot an event came from
        # What JetStream already holds (see reconcile.py): replays of it are skipped, so
        # no event is stored twice even after the stream's duplicate window has passed.
        self._stored_through = stored_through
        self._known_duplicates = known_duplicates
        self._in_stream = in_stream
        self._on_dead_letter = on_dead_letter
        self.publisher = publisher
        self.tracker = tracker  # read (and held at a ceiling) by the catalog watch
        # Awaited at a clean stop, after the last ack and before the final confirmation
        # (the catalog watch's last check: see catalog_watch.py).
        self.final_check: Callable[[], Awaitable[None]] | None = None
        self._tx: Transaction | None = None
        self._tx_lsn = ""
        self._tx_index = 0
        self._tx_xid = 0
        # The open transaction's latest event, not sent yet. Each change applied still
        # publishes at most one message (the one held before it), so the reader's check
        # of publisher.full after each change keeps the window bounded as before.
        self._held: _Held | None = None
        self._table_lines: dict[str, str] = {}  # Cdc-Table and Cdc-Source, by table
        self._halt: asyncio.Future[None] | None = None  # see run
        # Checked once per session, not per event: with debug off, the per-event line
        # costs one attribute test.
        self._debug = log.is_enabled_for(logging.DEBUG)

    async def run(
        self,
        stop: asyncio.Event,
        *,
        shutdown_timeout: float,
        halt: asyncio.Future[None] | None = None,
    ) -> None:
        """Stream until ``stop`` is set (clean end) or something fails (raises).

        ``halt`` ends the session when it fails, and from that moment nothing more is
        confirmed, not even what is acked: it fails when the stream lost what it acked
        (stream_watch.py), and a confirmation would move the slot past events that
        nobody holds any more.
        """
        self._halt = halt
        await self.publisher.start()
        status = asyncio.create_task(self._send_status_periodically(), name="status")
        reader = asyncio.create_task(self._read_forever(), name="reader")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            watched: set[asyncio.Future[Any]] = {reader, stopping, self.publisher.failed}
            if halt is not None:
                watched.add(halt)
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if halt is not None and self._halted():
                halt.result()  # raises why
            if stopping in done:
                await self._shut_down(reader, shutdown_timeout)
                if halt is not None and self._halted():
                    halt.result()
                return
            failed = reader if reader in done else self.publisher.failed
            failed.result()  # raises the reader's or the publisher's error
            raise RuntimeError("the reader ended without an error")  # cannot happen
        finally:
            for task in (status, reader, stopping):
                task.cancel()
            await self.publisher.close()
            # Confirming what is acked is safe after any other failure.
            with contextlib.suppress(Exception):
                self._confirm()
            await self._stream.close()

    async def _shut_down(self, reader: asyncio.Task[None], timeout: float) -> None:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        with contextlib.suppress(PublishError):
            await self.publisher.flush()  # what the reader queued before it stopped
        drained = await self.publisher.wait_empty(timeout)
        if not drained:
            log.warning(
                "shutdown_acks_missing",
                in_flight=self.publisher.in_flight,
                error=f"not every in-flight event was acked within {timeout:g}s; "
                "they are sent again on the next start",
            )
        if self._halted():
            return  # run raises why, and confirms nothing more
        if self.final_check is not None:
            await self.final_check()
        tracker = self._tracker
        await self._stream.finish(tracker.received, tracker.confirmable)
        self.stats.stopped_at = tracker.confirmable

    def _confirm(self) -> None:
        """A standby status update confirming what is acked (as far as the catalog watch
        vouches for), unless halted (see run)."""
        if not self._halted():
            self._stream.send_status(self._tracker.received, self._tracker.confirmable)

    def _halted(self) -> bool:
        halt = self._halt
        if halt is None or not halt.done() or halt.cancelled():
            return False
        return halt.exception() is not None

    async def _send_status_periodically(self) -> None:
        """Confirm progress soon after it happens, and at least every status interval.

        Prompt confirmation keeps the window of stored-but-unconfirmed events small, so
        a restart has little to replay; the interval keeps wal_sender_timeout at bay.
        """
        loop = asyncio.get_running_loop()
        tracker = self._tracker
        tick = min(self._status_interval, _CONFIRM_AT_MOST_EVERY)
        sent_confirmed = -1
        sent_at = 0.0
        while True:
            now = loop.time()
            confirmable = tracker.confirmable
            if confirmable != sent_confirmed or now - sent_at >= self._status_interval:
                self._confirm()
                sent_confirmed = confirmable
                sent_at = now
            await asyncio.sleep(tick)

    async def _read_forever(self) -> None:
        stream = self._stream
        tracker = self._tracker
        decode = self._decoder.decode
        publisher = self.publisher
        apply = self._apply
        while True:
            last_xlog: bytes | None = None
            for message in await stream.read_batch():
                # XLogData inline (nearly every message): no parsed object per change.
                if message[0] == XLOG_DATA_KIND and len(message) >= XLOG_PAYLOAD_START:
                    try:
                        change = decode(message[XLOG_PAYLOAD_START:])
                    except DecodeError as exc:
                        raise UndecodableChange(_undecodable(message, exc)) from None
                    if change is not None:
                        apply(change)
                        if publisher.full:  # backpressure: the only place the reader waits
                            await publisher.wait_for_room()
                    last_xlog = message
                    continue
                parsed = parse_copy_data(message)  # a keepalive (or a ProtocolError)
                if type(parsed) is Keepalive:
                    tracker.keepalive(parsed.wal_end)
                    if parsed.reply_requested:
                        self._confirm()
            if last_xlog is not None:
                tracker.saw(xlog_wal_end(last_xlog))
            await publisher.flush()  # one write for the whole batch read

    def _apply(self, change: Change) -> None:
        """One change in (no waiting: the caller waits when the window is full)."""
        if type(change) is Insert:
            if change.table in self._tables and self._tx is not None:
                outcome = self._router.route(change.table, change.row, change.json_columns)
                self._publish(self._tx, change.table, outcome)
        elif type(change) is Begin:
            self._tx = self._tracker.begin(change.final_lsn, change.commit_time)
            self._tx_lsn = format_lsn(change.final_lsn)
            self._tx_index = 0
            self._tx_xid = change.xid
        elif type(change) is Commit:
            if self._tx is not None:
                held = self._held
                if held is not None:
                    # Sent (so counted by the tracker) before the tracker sees the commit.
                    self._held = None
                    subject, data, lines, tx, route, msg_id = held
                    self.publisher.publish(subject, data, lines + _TX_LAST_LINE, tx, route, msg_id)
                self._tracker.commit(self._tx, change.end_lsn)
                self.publisher.committed(self._tx)
                self.stats.transactions += 1
            self._tx = None
        elif type(change) is LogicalMessage:
            if change.prefix == SNAPSHOT_PREFIX:
                self._snapshot_row(change)
            elif change.prefix not in self._message_prefixes:
                if change.transactional and self._on_message_ignored is not None:
                    self._on_message_ignored(change.prefix)
                elif self._debug:
                    log.debug("logical_message_ignored", prefix=change.prefix, reason="prefix")
            elif not change.transactional or self._tx is None:
                # Emitted outside any transaction's atomicity: not an outbox event.
                log.debug("logical_message_ignored", prefix=change.prefix, reason="transactional")
            else:
                event = message_event(
                    change.prefix,
                    change.content,
                    default_id=default_message_id(self._tx.final_lsn, self._tx_index),
                    columns=self._envelope_columns,
                )
                self._publish(self._tx, event.table, self._route_message(event))
        elif type(change) is RowChange and self._tx is not None:
            # The decoder makes these for outbox.change_tables only. Like a message
            # without an id, a change's id is its place in the transaction.
            default_id = default_message_id(self._tx.final_lsn, self._tx_index)
            outcome = self._router.route_change(change, default_id)
            self._publish(self._tx, change.table, outcome)

    def _snapshot_row(self, message: LogicalMessage) -> None:
        """A row written by ``cdc-bridge snapshot``: an R change of its table, published at
        its transaction's commit position like the table's other changes."""
        if not message.transactional or self._tx is None or not self._change_tables:
            return  # not ours: a bridge without change tables serves no snapshot
        try:
            row = snapshot_row(message.content)
        except DecodeError as exc:
            # Ours (the prefix is reserved) but unreadable: dead-lettered, never dropped.
            msg_id = default_message_id(self._tx.final_lsn, self._tx_index)
            unreadable = Outbound(subject="", data=message.content, headers={}, msg_id="", route="")
            table = message_table(message.prefix)
            self._publish(self._tx, table, self._router.dead_letter(unreadable, str(exc), msg_id))
            return
        if row.change.table not in self._change_tables:
            # Another bridge's table (messages are not filtered by publication).
            if self._debug:
                log.debug("snapshot_row_ignored", table=row.change.table, msg_id=row.msg_id)
            return
        self._publish(self._tx, row.change.table, self._router.route_change(row.change, row.msg_id))

    def _route_message(self, event: MessageEvent) -> Outbound | Poison:
        if event.problem is None:
            return self._router.route(event.table, event.row)
        # Not an envelope: the raw content goes to the dead letter, as a bad row would.
        reason = f"invalid message envelope: {event.problem}"
        unrouted = Outbound(subject="", data=event.content, headers={}, msg_id="", route="")
        # No subject: Cdc-Subject says no route was applied.
        return self._router.dead_letter(unrouted, reason, event.msg_id)

    def _publish(self, tx: Transaction, table: str, outcome: Outbound | Poison) -> None:
        """Publish one event (an outbox row, a message or a change) as the next of its
        transaction."""
        index = self._tx_index
        self._tx_index += 1
        self.stats.rows += 1
        replaying = self._stored_through is not None or self._known_duplicates
        if replaying and self._already_stored((tx.final_lsn, index), outcome):
            held = self._held
            if held is not None:  # not the last: this one came after it
                self._held = None
                self.publisher.publish(*held)
            self._tracker.sent(tx)
            self._tracker.acked(tx)
            self.stats.skipped += 1
            if self._debug:
                log.debug("already_stored", lsn=self._tx_lsn, index=index, table=table)
            return
        if type(outcome) is Poison:
            raise PoisonRowError(
                f"row id={outcome.row_id} of {table} at LSN {self._tx_lsn}: "
                f"{outcome.reason}; no dead_letter is configured, so the bridge stops "
                f"here without confirming past it ({POISON_FIX})"
            )
        assert type(outcome) is Outbound
        lines = self._table_lines.get(table)
        if lines is None:
            lines = f"Cdc-Table: {table}\r\nCdc-Source: {self._source}\r\n"
            self._table_lines[table] = lines
        msg_id = outcome.msg_id
        route_headers = outcome.headers
        if route_headers:
            # The bridge's own headers win over same-named ones from the row.
            own = _OWN_HEADERS
            route_lines = header_lines({k: v for k, v in route_headers.items() if k not in own})
        else:
            route_lines = ""
        data = outcome.data
        event = outcome.event
        if event is not None:
            # A CloudEvent or Debezium envelope: only here is its position known.
            at = EventPosition(tx.final_lsn, self._tx_lsn, index, tx.commit_time, self._tx_xid)
            data, event_lines = event.finish(at)
            route_lines += event_lines
        lines = (
            f"{route_lines}Nats-Msg-Id: {msg_id}\r\n"
            f"Cdc-Lsn: {self._tx_lsn}\r\nCdc-Index: {index}\r\n{lines}"
        )
        if outcome.dead_letter_reason is not None:
            self._count_dead_letter(msg_id, outcome.dead_letter_reason)
        held = self._held
        if held is not None:  # not the last: this one came after it
            self.publisher.publish(*held)
        # Held, not sent: only the next event or the Commit tells whether it is the last.
        self._held = (outcome.subject, data, lines, tx, outcome.route, msg_id)
        if self._debug:
            log.debug(
                "published",
                subject=outcome.subject,
                msg_id=msg_id,
                lsn=self._tx_lsn,
                index=index,
                route=outcome.route,
                table=table,
            )

    def _already_stored(self, position: Position, outcome: Outbound | Poison) -> bool:
        if position in self._known_duplicates:
            return True
        stored_through = self._stored_through
        if stored_through is None or position > stored_through:
            self._stored_through = None  # past the replayed part: stop checking
            return False
        # Only the bridge's own stream is known gap-free; elsewhere dedup must do.
        return type(outcome) is Outbound and self._in_stream(outcome.subject)

    def _count_dead_letter(self, msg_id: str, reason: str) -> None:
        self.stats.dead_lettered += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter(reason)
        log.warning("dead_lettered", msg_id=msg_id, error=reason)


def _undecodable(message: bytes, error: DecodeError) -> str:
    parsed = parse_copy_data(message)
    assert type(parsed) is XLogData
    return (
        f"cannot decode the change at LSN {format_lsn(parsed.data_start)}: {error}. "
        "Inspect it with `cdc-bridge slots peek`; skip its transaction deliberately "
        "with `cdc-bridge slots advance`"
    )
