"""Pipelined JetStream publishing with acks matched through one inbox subscription.

A message that wants an ack is published with a reply subject ``<inbox>.<token>``;
JetStream answers there. One wildcard subscription receives every ack, and the ack
book (ack_book.py) maps the token back to its message and says what the ack settles.
That costs far less per message than a Future per publish, and keeps the in-flight
window explicit. This module is the I/O around it: the subscription, the writes
(frames built by wire.py), waiting for room in the window, the ack timeout, and the
stream lookup that tells "no stream" from "no leader".

Failure model: any ack that is not a success (or that does not come within
``ack_timeout``) fails the whole pipeline. The session then starts over from the
slot's confirmed position and republishes with the same ``Nats-Msg-Id``, so nothing
that was not acked can be overtaken by a later event and forgotten. A message that can
never be stored (no stream for its subject, too large) is replaced by the dead letter
the ``DeadLetterPolicy`` gives for it. A session with nothing to replay starts without
``careful_start``: should a duplicate still come (an id the application used twice),
the session fails once, and the next one starts carefully and learns the duplicate
(``already_stored``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Protocol

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from cdc_bridge.core.headers import BODY_DROPPED, header_lines, parse_header_lines
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.tracker import LsnTracker, Transaction
from cdc_bridge.core.wire_text import MAX_HEADER_BLOCK, frame_problem, subject_limit
from cdc_bridge.routing.dead_letters import DeadLetterPolicy, unsendable_dead_letter
from cdc_bridge.routing.router import DEAD_LETTER_ROUTE
from cdc_bridge.sink.ack_book import AckBook, InFlight, Settlement, UnrepliedRun
from cdc_bridge.sink.acks import Ack, AckKind, classify
from cdc_bridge.sink.ordering import OrderGuard
from cdc_bridge.sink.stream_limits import StreamLimit, describe_limit_refusal
from cdc_bridge.sink.wire import Frames, header_block

log = structlog.get_logger("cdc_bridge.sink.publisher")

_STORED = AckKind.STORED
_DUPLICATE = AckKind.DUPLICATE
_NO_RESPONDERS = AckKind.NO_RESPONDERS
_PERMANENT = AckKind.PERMANENT


class PublishError(Exception):
    """The pipeline cannot go on: restart the session and replay from the slot."""


class StreamLimitError(PublishError):
    """The stream is full (a limit with discard: new): transient like every PublishError,
    since the message is fine; its text names the stream, the limit and the fix."""

    def __init__(
        self, stream: str, limit: StreamLimit, config: dict[str, object] | None, subject: str
    ) -> None:
        super().__init__(describe_limit_refusal(stream, limit, config, subject))
        self.stream = stream
        self.limit = limit


class PublishObserver(Protocol):
    """Told what happened to published messages (metrics, counters, logs)."""

    def acked(self, route: str, count: int) -> None: ...

    def transaction_acked(self, tx: Transaction) -> None: ...

    def dead_lettered(self, msg_id: str, reason: str) -> None: ...


class Publisher(Protocol):
    """What the pipeline and the session use of a publisher: JetStreamPublisher (one
    message at a time, pipelined) or AtomicPublisher (atomic batches, atomic_publisher.py)."""

    failed: asyncio.Future[None]
    last_ack_at: float

    @property
    def in_flight(self) -> int: ...

    @property
    def full(self) -> bool: ...

    @property
    def already_stored(self) -> list[dict[str, str]]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def wait_for_room(self) -> None: ...

    def publish(
        self, subject: str, data: bytes, header_lines: str, tx: Transaction, route: str, msg_id: str
    ) -> None: ...

    def committed(self, tx: Transaction) -> None: ...

    async def flush(self) -> None: ...

    async def wait_empty(self, timeout: float) -> bool: ...

    def fail(self, error: Exception) -> None: ...


class JetStreamPublisher:
    def __init__(
        self,
        nc: NatsClient,
        tracker: LsnTracker,
        *,
        max_in_flight: int,
        ack_timeout: float,
        dead_letters: DeadLetterPolicy,
        guard: OrderGuard | None = None,
        observer: PublishObserver | None = None,
        careful_start: bool = True,
    ) -> None:
        self._nc = nc
        self._tracker = tracker
        self._max_in_flight = max_in_flight
        self._ack_timeout = ack_timeout
        self._dead_letters = dead_letters
        self._guard = guard
        self._observer = observer
        self.last_ack_at = time.monotonic()  # for stall detection
        self._max_subject = subject_limit()  # bytes of subject an HPUB line can carry
        inbox = nc.new_inbox()
        self._inbox = inbox
        self._prefix_len = len(inbox) + 1
        # Frames queued, not yet handed to nats-py (see flush).
        self._frames = Frames(nc, inbox)
        # Chained messages that each get an ack first: only when this session replays
        # events the stream may already hold (see ack_book.py).
        self._book = AckBook(careful=2 * max_in_flight if careful_start else 0)
        self._space = asyncio.Event()
        self._space.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchdog: asyncio.Task[None] | None = None
        # Checked once per session: a debug line per ack, or nothing per ack at all.
        self._debug = log.is_enabled_for(logging.DEBUG)
        self._limit_refused = False  # a full stream was reported (see _refused_by_limit)

    async def start(self) -> None:
        await self._nc.subscribe(self._inbox + ".*", cb=self._on_ack)
        self._watchdog = asyncio.create_task(self._watch_ack_timeouts())

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if not self.failed.done():
            self.failed.cancel()

    @property
    def in_flight(self) -> int:
        return self._book.in_flight

    @property
    def window(self) -> int:
        """Messages in flight at most now: one while others write the stream (the order
        guard then names every predecessor by its sequence, see ordering.py)."""
        guard = self._guard
        return 1 if guard is not None and guard.shared else self._max_in_flight

    @property
    def full(self) -> bool:
        """The window is full: call ``wait_for_room`` before publishing more."""
        return self._book.in_flight >= self.window

    @property
    def already_stored(self) -> list[dict[str, str]]:
        """The headers of every message JetStream answered "duplicate" for this session:
        it held them already, so a later session need not send them again."""
        return [entry.headers for entry in self._book.already_stored]

    async def wait_for_room(self) -> None:
        """Send what is queued, then wait until acks make room in the window."""
        await self.flush()
        while self._book.in_flight >= self.window:
            self._space.clear()
            await self._wait_or_fail(self._space)

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
        """Queue one message (never waits: check ``full`` and ``wait_for_room``).

        ``header_lines`` holds every header as ``Name: value\r\n`` (``Nats-Msg-Id:
        msg_id`` among them); the order guard's expectation is added here. Messages go
        out in batches: call ``flush`` after a batch of events (the pipeline does, after
        each read), or they wait for the next flush. ``counted``: already counted as
        sent (a dead letter in place of a message, see ``_replace``; in atomic mode, a
        message its batch could not carry).
        """
        book = self._book
        if not counted:
            if not book.in_flight:
                # Idle until now: stall detection measures from here, not from the last ack.
                self.last_ack_at = time.monotonic()
            self._tracker.sent(tx)
        guard = self._guard
        chained = guard is not None and guard.covers(subject)
        # Nothing in flight: the predecessor's stream sequence is known (ordering.py).
        expectation = guard.expectation(not book.in_flight) if guard is not None and chained else ""
        try:
            block = header_block(header_lines, expectation)
        except UnicodeEncodeError:  # the router refuses such text: the last line of defence
            block = b""
        block_size = len(block)
        size = block_size + len(data)
        if (
            not block
            or size > self._nc.max_payload
            or block_size > MAX_HEADER_BLOCK
            or len(subject) * 4 > self._max_subject
        ):
            problem = self._frame_problem(subject, block, size)
            if problem is not None:
                if route == DEAD_LETTER_ROUTE:
                    self._shed_body(subject, block, data, header_lines, tx, msg_id, problem)
                    return
                # The server would refuse it for good, or close the connection on it, on
                # every replay. Dead-letter it instead (before it is chained: it must not
                # become the next message's predecessor).
                entry = InFlight(subject, data, header_lines, tx, time.monotonic(), route)
                self._replace(entry, problem)
                return
        frames = self._frames
        if not frames.parts:
            book.batch_started = time.monotonic()
        if not book.in_flight:
            self._empty.clear()
        if chained:
            assert guard is not None
            guard.advance(msg_id)  # here, at queue time: the wire order is the chain
            token = book.add_chained(subject, data, header_lines, tx, route)
        else:
            token = book.add(subject, data, header_lines, tx, route)
        frames.add(subject, token, block, data, block_size, size)

    def _frame_problem(self, subject: str, block: bytes, size: int) -> str | None:
        if not block:
            return "headers hold text that is not valid Unicode (a lone surrogate)"
        max_payload = self._nc.max_payload
        return frame_problem(subject, len(block), size, max_payload, self._max_subject)

    def _shed_body(
        self,
        subject: str,
        block: bytes,
        data: bytes,
        header_lines: str,
        tx: Transaction,
        msg_id: str,
        problem: str,
    ) -> None:
        """A dead letter that does not fit: when it would without its body, it goes
        without (the row keeps it), saying so in a header. One that still cannot be sent
        stops the bridge."""
        if data and self._frame_problem(subject, block, len(block)) is None:
            lines = f"{header_lines}{BODY_DROPPED}: {len(data)} bytes\r\n"
            self.publish(subject, b"", lines, tx, DEAD_LETTER_ROUTE, msg_id, counted=True)
            return
        self.fail(unsendable_dead_letter(msg_id, problem))

    def committed(self, tx: Transaction) -> None:
        """The pipeline saw the commit; if every event was acked already, it is done."""
        if tx.outstanding == 0 and tx.published and self._observer is not None:
            self._observer.transaction_acked(tx)

    async def flush(self) -> None:
        """Hand the queued frames to nats-py as one write (see wire.py)."""
        frames = self._frames
        if not frames.parts:
            return
        tail = self._book.reply_to_tail()
        if tail is not None:
            frames.ask_reply_of_last_unreplied(tail.subject, tail.token)
        if self._nc.is_closed:
            self.fail(PublishError("NATS connection lost"))
            raise PublishError("NATS connection lost")
        await frames.write()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until every message is acked; False when the timeout ran out first."""
        try:
            await asyncio.wait_for(self._wait_or_fail(self._empty), timeout)
        except (TimeoutError, PublishError):
            return False
        return True

    def fail(self, error: Exception) -> None:
        if not self.failed.done():
            self.failed.set_exception(error)
        # Wake publishers blocked on the window so they see the failure.
        self._space.set()
        self._empty.set()

    async def _wait_or_fail(self, event: asyncio.Event) -> None:
        await event.wait()
        if self.failed.done() and not self.failed.cancelled():
            exc = self.failed.exception()
            if exc is not None:
                raise exc

    async def _on_ack(self, msg: Msg) -> None:
        try:
            entry = self._book.take(int(msg.subject[self._prefix_len :]))
        except ValueError:
            return
        if entry is None:
            return  # an ack for a previous session's token, or after a timeout: ignore
        ack = classify(msg.data, msg.headers)
        kind = ack.kind
        before = self._book.in_flight
        if kind is _STORED:
            stored = self._book.stored(entry)
            self._settle(stored)
            self._guard_stored(entry, msg, stored)
        elif kind is _DUPLICATE:
            settled = self._book.duplicate(entry)
            if settled is None:
                self._refused(entry, "a duplicate id among messages not yet acked one by one")
            else:
                self._settle(settled)
                self._guard_stored(entry, msg, settled)
        elif ack.limit is not None:
            await self._refused_by_limit(entry, ack.stream, ack.limit)
        elif entry.chained:
            self._refused(entry, ack.reason)
        elif kind is _NO_RESPONDERS:
            await self._settle_no_responders(entry)
        elif kind is _PERMANENT:
            self._book.withdraw(entry)  # its replacement counts instead
            self._replace(entry, ack.reason)
            await self._flush_or_fail()
        else:
            self._refused(entry, ack.reason)
        in_flight = self._book.in_flight
        if in_flight < self.window:
            self._space.set()
        if not in_flight:
            self._empty.set()
        if self._debug:
            _log_ack(msg, entry, ack, before - in_flight, in_flight)

    def _guard_stored(self, entry: InFlight, msg: Msg, settled: Settlement) -> None:
        """A chained ack gives the guard its sequence: the predecessor the next message
        names once nothing is in flight (the last chained message always gets an ack),
        and whether another writer's messages came in between."""
        guard = self._guard
        if guard is not None and entry.chained and guard.space is not None:
            count = sum(n for _, n in settled.transactions)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                guard.stored(int(json.loads(msg.data)["seq"]), count)

    def _settle(self, settled: Settlement) -> None:
        """The one place where what an ack settled is accounted for: the tracker (which
        moves the confirmed position), then the observer."""
        self.last_ack_at = time.monotonic()
        tracker = self._tracker
        observer = self._observer
        for tx, count in settled.transactions:
            tracker.acked(tx, count)
            if tx.outstanding == 0 and tx.committed and observer is not None:
                observer.transaction_acked(tx)
        if observer is not None:
            for route, count in settled.routes.items():
                observer.acked(route, count)

    def _refused(self, entry: InFlight, reason: str) -> None:
        self.fail(PublishError(f"JetStream refused a message on {entry.subject}: {reason}"))

    async def _refused_by_limit(self, entry: InFlight, stream: str, limit: StreamLimit) -> None:
        """A full stream. Only the first refusal is reported: the pipeline has failed by
        the time the next one comes."""
        if self._limit_refused:
            return
        self._limit_refused = True
        self.fail(await limit_error(self._nc, self._ack_timeout, stream, limit, entry.subject))

    async def _flush_or_fail(self) -> None:
        with contextlib.suppress(PublishError):  # flush has failed the pipeline already
            await self.flush()

    def _replace(self, entry: InFlight, reason: str) -> None:
        """Swap a message that can never be stored for its dead letter.

        The transaction keeps waiting (its outstanding count is unchanged) until the
        replacement is acked. The replacement skips the window: this may run inside
        the ack callback, and waiting there for acks would wait forever. It goes out
        with the next flush, which the caller makes.
        """
        headers = entry.headers
        try:
            subject, data, replacement = self._dead_letters.replacement(
                entry.subject, entry.data, headers, reason
            )
        except Exception as exc:  # the policy says stop (e.g. no dead letter)
            self.fail(exc)
            return
        msg_id = replacement["Nats-Msg-Id"]
        if self._observer is not None:
            self._observer.dead_lettered(msg_id, reason)
        lines = header_lines(replacement)
        self.publish(subject, data, lines, entry.tx, DEAD_LETTER_ROUTE, msg_id, counted=True)

    async def _settle_no_responders(self, entry: InFlight) -> None:
        """No responders means permanent only when no stream captures the subject at all."""
        try:
            reply = await self._nc.request(
                "$JS.API.STREAM.NAMES",
                json.dumps({"subject": entry.subject}).encode(),
                timeout=self._ack_timeout,
            )
            streams = json.loads(reply.data).get("streams") or []
        except Exception as exc:  # any failure here: retry the whole session later
            self.fail(
                PublishError(
                    f"no responders on {entry.subject}, and the stream "
                    f"lookup failed: {type(exc).__name__}"
                )
            )
            return
        if streams:
            self.fail(
                PublishError(f"stream {streams[0]} did not answer for {entry.subject} (no leader?)")
            )
        else:
            self._book.withdraw(entry)  # its replacement counts instead
            self._replace(entry, f"no stream captures subject {entry.subject}")
            await self._flush_or_fail()

    async def _watch_ack_timeouts(self) -> None:
        interval = max(self._ack_timeout / 4, 0.05)
        while not self.failed.done():
            await asyncio.sleep(interval)
            oldest = self._book.oldest()
            if oldest is None:
                continue
            waited = time.monotonic() - oldest.sent_at
            if waited > self._ack_timeout:
                what = (
                    f"a message of route {next(iter(oldest.routes))}"
                    if isinstance(oldest, UnrepliedRun)
                    else f"a message on {oldest.subject}"
                )
                self.fail(
                    PublishError(f"no JetStream ack for {what} within {self._ack_timeout:g}s")
                )


async def limit_error(
    nc: NatsClient, timeout: float, stream: str, limit: StreamLimit, subject: str
) -> StreamLimitError:
    """The failure for a full stream, naming the limit's configured value, read from the
    stream's info now (it may have been edited since the session started)."""
    config: dict[str, object] | None = None
    if stream:
        try:
            jsm = nc.jsm(timeout=min(timeout, 2.0))
            config = (await jsm.stream_info(stream)).config.as_dict()
        except Exception:  # the line just lacks the value: the refusal is what counts
            config = None
    return StreamLimitError(stream or "<stream>", limit, config, subject)


def _log_ack(msg: Msg, entry: InFlight, ack: Ack, acked: int, in_flight: int) -> None:
    """The debug line of one pub ack: the message it answers, how many messages it acked
    (a chained ack covers every chained message sent before it), the stream sequence."""
    fields: dict[str, object] = {
        "subject": entry.subject,
        "msg_id": parse_header_lines(entry.header_lines).get("Nats-Msg-Id"),
        "lsn": format_lsn(entry.tx.final_lsn),
        "route": entry.route,
        "acked": acked,
        "in_flight": in_flight,
    }
    if ack.kind is _STORED or ack.kind is _DUPLICATE:
        fields["seq"] = json.loads(msg.data).get("seq")
        fields["duplicate"] = ack.kind is _DUPLICATE
    else:
        fields["error"] = ack.reason or ack.kind.name.lower()
    log.debug("acked", **fields)
