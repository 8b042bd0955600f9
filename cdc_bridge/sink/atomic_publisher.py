"""Publishing in atomic mode: each batch of whole transactions stored whole or not at all.

JetStream (2.12+, a stream with ``allow_atomic``) stores an atomic batch at consecutive
sequences or not at all, and answers it with one ack. So consumers never see part of a
transaction (only a transaction larger than one batch is cut, at the limit), and the
order guard needs one expectation per batch: its first message names the subject
space's last sequence (the stream's without a space), known from the previous batch's
ack. Other writers outside the space cannot break that, so the bridge keeps its speed
beside them. Batches form in batches.py; one is in flight at a time. A batch of one
message is whole by itself and goes out as a plain publish with the same guard: the
server's staging of an atomic batch costs milliseconds on a file-stored stream, which
at low load (a batch per transaction) would be most of the latency. So do the
messages of a batch of a few one-message transactions, one after the other.

What a refusal means here:
- 10201 (the batch holds an id JetStream has stored already), 10176 (incomplete: one
  message was refused on its way in) and the permanent refusals of acks.py are about
  one message, but the batch is refused as a whole and the answer does not say which:
  the batch is sent again one message at a time (each a batch of
  one), so the stored one is known as stored and the bad one is dead-lettered. Those
  transactions reach the stream one message at a time.
- anything else (a stale order guard, a full stream, no leader, no ack within
  ``ack_timeout``) fails the session, which starts over from the slot: reconcile finds
  the space's tail at a batch boundary (reconcile.py) and nothing is skipped.

Messages outside the space (dead letters in their own stream, routes to another
stream) cannot be in the batch: the per-message publisher sends them once the batch of
their transaction is acked, and the transaction is confirmed when they are acked too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Protocol

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.nuid import NUID

from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.headers import BODY_DROPPED, header_lines, parse_header_lines
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.subjects import subject_matches
from cdc_bridge.core.tracker import LsnTracker, Transaction
from cdc_bridge.core.wire_text import MAX_HEADER_BLOCK, frame_problem, subject_limit
from cdc_bridge.routing.dead_letters import DeadLetterPolicy, unsendable_dead_letter
from cdc_bridge.routing.router import DEAD_LETTER_ROUTE
from cdc_bridge.sink.ack_book import NO_REPLY
from cdc_bridge.sink.acks import AckKind, classify
from cdc_bridge.sink.batches import (
    BATCH_HEADER_ROOM,
    BATCH_ID,
    BATCH_SEQUENCE,
    COMMIT_LINE,
    Batch,
    BatchForming,
    Pending,
)
from cdc_bridge.sink.ordering import OrderGuard
from cdc_bridge.sink.publisher import (
    JetStreamPublisher,
    PublishError,
    PublishObserver,
    limit_error,
)
from cdc_bridge.sink.wire import BLOCK_START, Frames

log = structlog.get_logger("cdc_bridge.sink.atomic_publisher")


class BatchObserver(PublishObserver, Protocol):
    """A PublishObserver told of batches too (metrics)."""

    def batch_stored(self, messages: int) -> None: ...

    def batch_split(self) -> None: ...


_CACHE_LIMIT = 10_000
# A batch of at most this many transactions of one message each goes out message by
# message (plain publishes, each with the order guard): n of them take about n x 0.4 ms,
# a staged atomic batch about 3 ms on a file-stored stream. At low load that keeps the
# batches from growing while a staged one is in flight: at 1,000 one-event
# transactions/s they held 3-4 messages every 3 ms (COMMIT to subscriber p50 3-4 ms).
SINGLES_UP_TO = 16
_BLOCK_START_SIZE = len(BLOCK_START)
# A batch refused whole for one of its messages: sent again one message at a time.
_FOR_ONE_MESSAGE = frozenset((AckKind.BATCH_DUPLICATE, AckKind.BATCH_INCOMPLETE, AckKind.PERMANENT))


class AtomicPublisher:
    """The pipeline's publisher in atomic mode (same calls as JetStreamPublisher)."""

    def __init__(
        self,
        nc: NatsClient,
        tracker: LsnTracker,
        *,
        max_messages: int,
        ack_timeout: float,
        dead_letters: DeadLetterPolicy,
        guard: OrderGuard,
        outside: JetStreamPublisher,
        observer: BatchObserver | None = None,
    ) -> None:
        self._nc = nc
        self._tracker = tracker
        self._ack_timeout = ack_timeout
        self._dead_letters = dead_letters
        self._guard = guard
        self._outside = outside  # publishes what the batches cannot carry
        self._observer = observer
        self._forming = self._new_forming(max_messages)
        self._sending: Batch | None = None  # the batch in flight (one at a time)
        self._inbox = nc.new_inbox()
        self._prefix_len = len(self._inbox) + 1
        self._frames = Frames(nc, self._inbox)
        self._batch_prefix = NUID().next().decode()  # + a counter: ids unique per session
        self._batches = 0
        self._inside: dict[str, bool] = {}
        self._max_subject = subject_limit()
        self._already_stored: list[dict[str, str]] = []
        self._progress = asyncio.Event()  # set whenever a batch settles (or all fails)
        self.last_ack_at = time.monotonic()
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        outside.failed.add_done_callback(self._outside_failed)
        self._watchdog: asyncio.Task[None] | None = None
        # Checked once per session: a debug line per ack, or nothing per ack at all.
        self._debug = log.is_enabled_for(logging.DEBUG)

    def _new_forming(self, max_messages: int) -> BatchForming:
        """Where published messages wait for their batch: whole transactions."""
        return BatchForming(max_messages)

    async def start(self) -> None:
        await self._nc.subscribe(self._inbox + ".*", cb=self._on_ack)
        await self._outside.start()
        self._watchdog = asyncio.create_task(self._watch_ack_timeout())

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._outside.close()
        if not self.failed.done():
            self.failed.cancel()

    @property
    def in_flight(self) -> int:
        sending = self._sending
        return (len(sending.inside) if sending else 0) + self._outside.in_flight

    @property
    def full(self) -> bool:
        """The forming batch is full (or the per-message side's window is)."""
        return self._forming.full or self._outside.full

    @property
    def already_stored(self) -> list[dict[str, str]]:
        return self._already_stored + self._outside.already_stored

    def in_batch(self, subject: str) -> bool:
        """Does an atomic batch carry messages on ``subject``? Those within the subject
        space (the stream, without one). Only these are known gap-free in commit order
        in the stream, so only these may be skipped on replay by position."""
        known = self._inside.get(subject)
        if known is None:
            if len(self._inside) >= _CACHE_LIMIT:
                self._inside.clear()
            space = self._guard.space
            known = self._guard.covers(subject) and (
                space is None or subject_matches(space, subject)
            )
            self._inside[subject] = known
        return known

    def publish(
        self,
        subject: str,
        data: bytes,
        header_lines: str,
        tx: Transaction,
        route: str,
        msg_id: str,
        *,
        counted: bool = False,
    ) -> None:
        """Add one message to the forming batch (never waits: check ``full``).
        ``counted``: it replaces one already counted as sent (a dead letter)."""
        del msg_id  # in the header lines already; batches need no chain of ids
        if not counted:
            if not self._tracker.in_flight:
                self.last_ack_at = time.monotonic()  # stall detection measures from here
            self._tracker.sent(tx)
        pending = self._prepare(subject, data, header_lines, tx, route)
        if pending is not None:
            self._forming.add(pending)

    def _prepare(
        self, subject: str, data: bytes, lines: str, tx: Transaction, route: str
    ) -> Pending | None:
        """The message as its batch needs it, or the dead letter that takes its place
        when JetStream could never store it; None when the publisher failed instead."""
        inside = self._inside.get(subject)  # in_batch's cache, read here: once per message
        if not (self.in_batch(subject) if inside is None else inside):
            # Checked by the per-message publisher when it is sent.
            return Pending(subject, data, lines, 0, tx, route, False)
        try:
            # isascii is O(1): only other text is encoded to be measured (and checked).
            lines_size = len(lines) if lines.isascii() else len(lines.encode())
        except UnicodeEncodeError:  # the router refuses such text: the last line of defence
            problem: str | None = "headers hold text that is not valid Unicode (a lone surrogate)"
        else:
            block_size = _BLOCK_START_SIZE + lines_size + BATCH_HEADER_ROOM
            max_payload = self._nc.max_payload
            size = block_size + len(data)
            subject_max = self._max_subject
            problem = None
            # The full check only near a limit (as the per-message publisher does).
            if (
                size > max_payload
                or block_size > MAX_HEADER_BLOCK
                or len(subject) * 4 > subject_max
            ):
                problem = frame_problem(subject, block_size, size, max_payload, subject_max)
        if problem is None:
            return Pending(subject, data, lines, lines_size, tx, route, True)
        if route == DEAD_LETTER_ROUTE:
            return self._shed_body(subject, data, lines, tx, problem)
        return self._replace(subject, data, lines, tx, problem)

    def _shed_body(
        self, subject: str, data: bytes, lines: str, tx: Transaction, problem: str
    ) -> Pending | None:
        """A dead letter that does not fit goes without its body (the row keeps it)."""
        if data:
            lines = f"{lines}{BODY_DROPPED}: {len(data)} bytes\r\n"
            return self._prepare(subject, b"", lines, tx, DEAD_LETTER_ROUTE)
        msg_id = parse_header_lines(lines).get("Nats-Msg-Id", "")
        self.fail(unsendable_dead_letter(msg_id, problem))
        return None

    def _replace(
        self, subject: str, data: bytes, lines: str, tx: Transaction, reason: str
    ) -> Pending | None:
        """The dead letter for a message JetStream can never store (None when the
        policy says stop: the publisher has failed)."""
        try:
            subject, data, replacement = self._dead_letters.replacement(
                subject, data, parse_header_lines(lines), reason
            )
        except Exception as exc:  # the policy says stop (e.g. no dead letter)
            self.fail(exc)
            return None
        if self._observer is not None:
            self._observer.dead_lettered(replacement["Nats-Msg-Id"], reason)
        return self._prepare(subject, data, header_lines(replacement), tx, DEAD_LETTER_ROUTE)

    def committed(self, tx: Transaction) -> None:
        """The pipeline saw the commit: the forming batch ends a whole transaction here."""
        self._forming.transaction_ended()
        if tx.outstanding == 0 and tx.published and self._observer is not None:
            self._observer.transaction_acked(tx)

    async def flush(self) -> None:
        """Send the next batch if none is in flight, and what the per-message side has."""
        if self._sending is None:
            await self._send_next()
        await self._outside.flush()

    async def wait_for_room(self) -> None:
        await self.flush()
        while self._forming.full and not self.failed.done():
            self._progress.clear()
            await self._progress.wait()
        if self.failed.done():
            self._raise_failure()
        if self._outside.full:
            await self._outside.wait_for_room()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until every whole transaction is acked (a transaction still open when the
        reader stopped is never sent: it is not confirmed either)."""
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._batches_drained(), timeout)
        except (TimeoutError, PublishError):
            return False
        return await self._outside.wait_empty(max(deadline - time.monotonic(), 0.0))

    async def _batches_drained(self) -> None:
        await self.flush()
        while self._sending is not None or self._forming.sendable:
            if self.failed.done():
                self._raise_failure()
            self._progress.clear()
            await self._progress.wait()
        await self._outside.flush()

    def fail(self, error: Exception) -> None:
        if not self.failed.done():
            self.failed.set_exception(error)
        self._progress.set()  # wake waiters so they see it

    def _raise_failure(self) -> None:
        if not self.failed.cancelled() and (exc := self.failed.exception()) is not None:
            raise exc

    def _outside_failed(self, failed: asyncio.Future[None]) -> None:
        if not failed.cancelled() and isinstance(exc := failed.exception(), Exception):
            self.fail(exc)

    async def _send_next(self) -> None:
        """Take the next batch and write it (its outside-only parts go straight on)."""
        while self._sending is None and not self.failed.done():
            batch = self._forming.take()
            if batch is None:
                break
            if batch.inside:
                self._sending = batch
                if self._singly(batch):
                    batch.one_by_one = True
                self._queue(batch)
            else:
                self._release(batch)
        if self._frames.parts:
            if self._nc.is_closed:
                self.fail(PublishError("NATS connection lost"))
                return
            await self._frames.write()

    def _singly(self, batch: Batch) -> bool:
        """Is ``batch`` a few transactions of one message each (see SINGLES_UP_TO)?"""
        inside = batch.inside
        if len(inside) > SINGLES_UP_TO or len(inside) == 1:
            return False  # one message goes out plainly anyway (_queue)
        if len(inside) + len(batch.outside) >= self._forming.max_messages:
            return False  # a batch at the limit may end inside a transaction
        tx: Transaction | None = None
        for message in inside:
            if message.tx is tx:
                return False  # a transaction of several messages: stored whole
            tx = message.tx
        return True

    def _queue(self, batch: Batch) -> None:
        """The frames of ``batch`` (its first message alone when sent one by one)."""
        self._batches += 1
        messages = batch.inside[:1] if batch.one_by_one else batch.inside
        last = len(messages)
        token = self._batches
        batch.token = token
        batch.sent_at = time.monotonic()
        add = self._frames.add_lines
        # Per message: the batch's lines (the id, the sequence, the commit on the last),
        # and the order guard's expectation on the first; the HPUB line and the header
        # block are one text, encoded once (wire.Frames.add_lines).
        expectation = self._guard.expectation(True)
        if last == 1:
            # One message is whole by itself: published plainly (with the order guard),
            # JetStream stores it without staging a batch, which costs about 3 ms per
            # batch on a file-stored stream (nats-server 2.15.1: p50 3.75 against 0.42 ms).
            message = messages[0]
            size = message.lines_size + len(expectation)
            add(message.subject, token, message.header_lines, expectation, size, message.data)
            return
        id_line = f"{BATCH_ID}: {self._batch_prefix}.{token}\r\n{BATCH_SEQUENCE}: "
        for sequence, message in enumerate(messages, 1):
            more = f"{id_line}{sequence}\r\n"
            if sequence == last:
                more += COMMIT_LINE
                reply = token
            else:
                reply = NO_REPLY
            if sequence == 1:
                more += expectation
            size = message.lines_size + len(more)
            add(message.subject, reply, message.header_lines, more, size, message.data)

    def _release(self, batch: Batch) -> None:
        """The batch is stored: what it could not carry goes out now, in order."""
        outside = self._outside
        for message in batch.outside:
            outside.publish(
                message.subject,
                message.data,
                message.header_lines,
                message.tx,
                message.route,
                "",
                counted=True,  # when the pipeline published it
            )

    async def _on_ack(self, msg: Msg) -> None:
        try:
            await self._settle_ack(msg)
        except Exception as exc:  # nats-py would only log it, and the batch would hang
            self.fail(exc)

    async def _settle_ack(self, msg: Msg) -> None:
        batch = self._sending
        try:
            token = int(msg.subject[self._prefix_len :])
        except ValueError:
            return
        if batch is None or token != batch.token:
            return  # a previous session's, or after a timeout: ignore
        batch.token = -1
        ack = classify(msg.data, msg.headers)
        sent = batch.inside[:1] if batch.one_by_one else batch.inside
        kind = ack.kind
        if kind is AckKind.STORED:
            seq = int(json.loads(msg.data)["seq"])
            self._guard.stored(seq, len(sent))
            self._settle(sent)
            if self._observer is not None:
                self._observer.batch_stored(len(sent))
            if self._debug:
                _log_batch_ack(sent, seq, self.in_flight)
            self._next_of(batch, len(sent))
        elif kind in _FOR_ONE_MESSAGE and len(sent) > 1:
            self._split(batch, ack.reason)
        elif kind is AckKind.BATCH_DUPLICATE or kind is AckKind.DUPLICATE:
            # A batch of one (sent plainly: "duplicate"): that one is stored already.
            self._already_stored.append(parse_header_lines(sent[0].header_lines))
            self._settle(sent)
            self._next_of(batch, 1)
        elif kind is AckKind.PERMANENT:
            self._replace_refused(batch, ack.reason)
        elif kind is AckKind.BATCH_TOO_LARGE:
            # The server's limit is below nats.batch_max_messages: every retry would
            # send the same batch again.
            self.fail(
                FatalError(
                    f"JetStream refused an atomic batch of {len(sent)} messages on "
                    f"{sent[0].subject}: {ack.reason}: the server allows fewer messages per "
                    f"batch than nats.batch_max_messages ({self._forming.max_messages}) "
                    "(fix: set nats.batch_max_messages to the server's "
                    "jetstream.limits.batch.max_msgs, or raise that limit)"
                )
            )
        elif ack.limit is not None:
            nc, timeout, subject = self._nc, self._ack_timeout, sent[0].subject
            self.fail(await limit_error(nc, timeout, ack.stream, ack.limit, subject))
        else:
            self.fail(
                PublishError(
                    f"JetStream refused an atomic batch of {len(sent)} messages on "
                    f"{sent[0].subject}: {ack.reason}"
                )
            )
        await self._send_next()  # the next single, or the next batch
        self._progress.set()
        await self._outside.flush()

    def _next_of(self, batch: Batch, done: int) -> None:
        """``done`` messages of ``batch`` are settled: its next single, or the next batch."""
        if batch.one_by_one:
            del batch.inside[:done]
            if batch.inside:
                self._queue(batch)
                return
        self._sending = None
        self._release(batch)

    def _split(self, batch: Batch, reason: str) -> None:
        log.warning(
            "atomic_batch_split",
            messages=len(batch.inside),
            subject=batch.inside[0].subject,
            error=f"JetStream refused an atomic batch for one of its messages ({reason}); "
            "sending its messages one at a time to find it (their transactions reach the "
            "stream message by message)",
        )
        if self._observer is not None:
            self._observer.batch_split()
        batch.one_by_one = True
        self._queue(batch)

    def _replace_refused(self, batch: Batch, reason: str) -> None:
        """A single message JetStream refuses for good: its dead letter takes its place."""
        refused = batch.inside.pop(0)
        pending = self._replace(
            refused.subject, refused.data, refused.header_lines, refused.tx, reason
        )
        if pending is not None:
            if pending.inside:
                batch.inside.insert(0, pending)
            else:
                batch.outside.append(pending)
        if batch.inside:
            self._queue(batch)
        else:
            self._sending = None
            self._release(batch)

    def _settle(self, messages: list[Pending]) -> None:
        """JetStream stored ``messages``: the tracker (which moves the confirmed
        position), then the observer."""
        self.last_ack_at = time.monotonic()
        observer = self._observer
        # Per transaction, not per message: a batch holds consecutive whole
        # transactions (each a run of messages), so only its runs' ends are looked for.
        tx: Transaction | None = None
        start = 0
        for index, message in enumerate(messages):
            if message.tx is not tx:
                if tx is not None:
                    self._acked(tx, index - start)
                tx, start = message.tx, index
        if tx is not None:
            self._acked(tx, len(messages) - start)
        if observer is not None:
            for route, n in Counter([message.route for message in messages]).items():
                observer.acked(route, n)

    def _acked(self, tx: Transaction, count: int) -> None:
        self._tracker.acked(tx, count)
        if tx.outstanding == 0 and tx.committed and self._observer is not None:
            self._observer.transaction_acked(tx)

    async def _watch_ack_timeout(self) -> None:
        interval = max(self._ack_timeout / 4, 0.05)
        while not self.failed.done():
            await asyncio.sleep(interval)
            batch = self._sending
            if batch is None or batch.token == -1:
                continue
            if time.monotonic() - batch.sent_at > self._ack_timeout:
                count = 1 if batch.one_by_one else len(batch.inside)
                self.fail(
                    PublishError(
                        f"no JetStream ack for an atomic batch of {count} messages on "
                        f"{batch.inside[0].subject} within {self._ack_timeout:g}s"
                    )
                )


def _log_batch_ack(stored: list[Pending], seq: int, in_flight: int) -> None:
    """The debug line of one batch's ack, in the per-message publisher's format: the
    batch's last message, how many messages the ack settled, its stream sequence."""
    last = stored[-1]
    log.debug(
        "acked",
        subject=last.subject,
        msg_id=parse_header_lines(last.header_lines).get("Nats-Msg-Id"),
        lsn=format_lsn(last.tx.final_lsn),
        route=last.route,
        acked=len(stored),
        in_flight=in_flight,
        seq=seq,
        duplicate=False,
    )
