"""Pipelined JetStream publishing with acks matched through one inbox subscription.

A message that wants an ack is published with a reply subject ``<inbox>.<token>``;
JetStream answers there. One wildcard subscription receives every ack and a plain
dict maps the token back to its message. That costs far less per message than a
Future per publish, and keeps the in-flight window explicit.

Messages to the bridge's own stream form a chain (ordering.py): each names its
predecessor, so JetStream stores one only if every earlier one is stored. An ack for
one of them therefore acks all the chained messages sent before it, and most of them
are sent without a reply subject at all: one ack per ``ACK_EVERY`` chained messages
(and for the last of each flush) instead of one each. A duplicate ack proves nothing
about its predecessors (deduplication is checked before the expectation), so it
fails the session; a session that replays events the stream may already hold
(``careful_start``) asks an ack of each message for a while, which is when replays
and their duplicates happen. A session with nothing to replay skips that: should a
duplicate still come (an id the application used twice), the session fails once, and
the next one starts carefully and learns the duplicate. Chained messages sent without
a reply subject are kept only as runs (transaction, route, count): nothing about them
is needed again, because a problem with any of them fails the session.

Failure model: any ack that is not a success (or that does not come within
``ack_timeout``) fails the whole pipeline. The session then starts over from the
slot's confirmed position and republishes with the same ``Nats-Msg-Id``, so nothing
that was not acked can be overtaken by a later event and forgotten. A message that can
never be stored (no stream for its subject, too large) is handed to ``on_rejected``
instead, which publishes a dead letter in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from cdc_bridge.core.headers import header_lines, parse_header_lines
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.tracker import LsnTracker, Transaction
from cdc_bridge.routing.router import DEAD_LETTER_ROUTE
from cdc_bridge.sink.ordering import OrderGuard

log = structlog.get_logger("cdc_bridge.sink.publisher")

# JetStream API error codes for a message that will fail the same way every time.
_ERR_MESSAGE_TOO_LARGE = 10054
PERMANENT_ERR_CODES = frozenset({_ERR_MESSAGE_TOO_LARGE})


class PublishError(Exception):
    """The pipeline cannot go on: restart the session and replay from the slot."""


# Chained messages per requested ack once a session is past its careful start.
ACK_EVERY = 64


@dataclass(slots=True)
class InFlight:
    """A message sent with a reply subject: everything needed to replace or report it."""

    subject: str
    data: bytes
    header_lines: str  # "Name: value\r\n" for every header but the order guard's
    tx: Transaction
    sent_at: float
    route: str
    token: int = 0
    chained: bool = False  # in the bridge's own stream, stamped with its predecessor

    @property
    def headers(self) -> dict[str, str]:
        """The headers as a dict (for the rare paths: dead letters, duplicates)."""
        return parse_header_lines(self.header_lines)


class _Run:
    """Consecutive chained messages of one transaction sent without a reply subject:
    the ack of a later chained message acks them all."""

    __slots__ = ("count", "routes", "sent_at", "tx")

    def __init__(self, tx: Transaction, route: str, sent_at: float) -> None:
        self.tx = tx
        self.sent_at = sent_at
        self.count = 1
        self.routes = {route: 1}  # for the metrics: how many of them each route made


# Given a message that can never be stored and the reason, return its replacement
# (subject, data, headers), or raise to stop the pipeline.
Rejection = Callable[[InFlight, str], tuple[str, bytes, dict[str, str]]]


class AckObserver(Protocol):
    """Told about successful acks (metrics)."""

    def acked(self, route: str, count: int) -> None: ...

    def transaction_acked(self, tx: Transaction) -> None: ...


# Told about a message JetStream already held (a duplicate ack).
DuplicateHandler = Callable[[InFlight], None]


class JetStreamPublisher:
    def __init__(
        self,
        nc: NatsClient,
        tracker: LsnTracker,
        *,
        max_in_flight: int,
        ack_timeout: float,
        on_rejected: Rejection,
        guard: OrderGuard | None = None,
        on_duplicate: DuplicateHandler | None = None,
        observer: AckObserver | None = None,
        careful_start: bool = True,
    ) -> None:
        self._nc = nc
        self._tracker = tracker
        self._max_in_flight = max_in_flight
        self._ack_timeout = ack_timeout
        self._on_rejected = on_rejected
        self._guard = guard
        self._on_duplicate = on_duplicate
        self._observer = observer
        self.last_ack_at = time.monotonic()  # for stall detection
        self._inbox = nc.new_inbox()
        self._inbox_bytes = self._inbox.encode()
        # Queued frames, not yet handed to nats-py (see flush), each as four parts:
        # the HPUB line, the header block, the payload, CRLF.
        self._parts: list[bytes] = []
        self._prefix_len = len(self._inbox) + 1
        self._next_token = 0
        self._count = 0  # messages sent and not yet acked
        self._awaiting: dict[int, InFlight] = {}  # sent with a reply subject, by token
        self._chain: deque[InFlight | _Run] = deque()  # chained, not yet acked, in order
        self._unreplied_tail: _Unreplied | None = None  # see flush
        self._batch_started = time.monotonic()  # when the first queued frame was queued
        self._since_reply = 0
        # Chained messages that each get an ack first: only when this session replays
        # events the stream may already hold (see the module docstring).
        self._careful = 2 * max_in_flight if careful_start else 0
        self._space = asyncio.Event()
        self._space.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchdog: asyncio.Task[None] | None = None
        # Checked once per session: a debug line per ack, or nothing per ack at all.
        self._debug = log.is_enabled_for(logging.DEBUG)

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
        return self._count

    @property
    def full(self) -> bool:
        """The window is full: call ``wait_for_room`` before publishing more."""
        return self._count >= self._max_in_flight

    async def wait_for_room(self) -> None:
        """Send what is queued, then wait until acks make room in the window."""
        await self.flush()
        while self._count >= self._max_in_flight:
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
    ) -> None:
        """Queue one message (never waits: check ``full`` and ``wait_for_room``).

        ``header_lines`` holds every header as ``Name: value\r\n`` (``Nats-Msg-Id:
        msg_id`` among them); the order guard's expectation is added here. Messages go
        out in batches: call ``flush`` after a batch of events (the pipeline does, after
        each read), or they wait for the next flush.
        """
        if not self._count:
            # Idle until now: stall detection measures from here, not from the last ack.
            self.last_ack_at = time.monotonic()
        self._tracker.sent(tx)
        self._queue(subject, data, header_lines, tx, route, msg_id)

    def committed(self, tx: Transaction) -> None:
        """The pipeline saw the commit; if every event was acked already, it is done."""
        if tx.outstanding == 0 and tx.published and self._observer is not None:
            self._observer.transaction_acked(tx)

    async def flush(self) -> None:
        """Hand the queued frames to nats-py as one write.

        nats-py's own ``publish`` costs more per message than everything else the
        bridge does (header checks and encoding, a flusher wake-up per call). The
        frames here are built once, in order, and given to the client's pending
        buffer in one piece, so they stay ordered with its own commands (SUB, PING).
        ``_send_command``/``_flush_pending`` are private: nats-py is pinned to a minor
        version range in pyproject.toml for that reason.
        """
        if not self._parts:
            return
        if self._unreplied_tail is not None:
            self._reply_to_tail(self._unreplied_tail)
        if self._nc.is_closed:
            self.fail(PublishError("NATS connection lost"))
            raise PublishError("NATS connection lost")
        batch = b"".join(self._parts)
        self._parts.clear()
        await self._nc._send_command(batch)
        await self._nc._flush_pending()

    def _reply_to_tail(self, tail: _Unreplied) -> None:
        """Every chained message must be followed by one that gets an ack, or it would
        wait for the next flush (or for ever, at the end of a burst): the last one of a
        flush asks for a reply after all. It leaves its run for an entry of its own."""
        head_index, subject, data, lines, tx, route, block_size = tail
        run = self._chain[-1]
        assert type(run) is _Run and run.tx is tx
        run.count -= 1
        run.routes[route] -= 1
        if not run.count:
            self._chain.pop()
        entry = self._entry(subject, data, lines, tx, route)
        entry.sent_at = run.sent_at
        entry.chained = True
        self._chain.append(entry)
        size = block_size + len(data)
        self._parts[head_index] = self._head(subject, entry.token, block_size, size)
        self._unreplied_tail = None
        self._since_reply = 0

    def _queue(
        self,
        subject: str,
        data: bytes,
        header_lines: str,
        tx: Transaction,
        route: str,
        msg_id: str,
    ) -> None:
        guard = self._guard
        chained = guard is not None and guard.covers(subject)
        expectation = guard.expectation() if guard is not None and chained else ""
        block = f"NATS/1.0\r\n{header_lines}{expectation}\r\n".encode()
        block_size = len(block)
        size = block_size + len(data)
        if size > self._nc.max_payload and route != DEAD_LETTER_ROUTE:
            # The router checked the row, but our own headers came on top: the server
            # would close the connection on it, on every replay. Dead-letter it instead
            # (before it is chained: it must not become the next message's predecessor).
            entry = InFlight(subject, data, header_lines, tx, time.monotonic(), route)
            reason = (
                f"message of {size} bytes with headers exceeds the server's max_payload "
                f"{self._nc.max_payload}"
            )
            self._replace(entry, reason)
            return
        parts = self._parts
        if not parts:
            self._batch_started = time.monotonic()
        if not self._count:
            self._empty.clear()
        self._count += 1
        if not chained:
            entry = self._entry(subject, data, header_lines, tx, route)
            parts += (self._head(subject, entry.token, block_size, size), block, data, b"\r\n")
            return
        assert guard is not None
        guard.advance(msg_id)  # here, at queue time: the wire order is the chain
        self._since_reply += 1
        if self._careful > 0 or self._since_reply >= ACK_EVERY:
            if self._careful > 0:
                self._careful -= 1
            entry = self._entry(subject, data, header_lines, tx, route)
            entry.chained = True
            self._chain.append(entry)
            self._since_reply = 0
            self._unreplied_tail = None
            parts += (self._head(subject, entry.token, block_size, size), block, data, b"\r\n")
            return
        # The common case: a chained message without a reply subject.
        chain = self._chain
        last = chain[-1] if chain else None
        if type(last) is _Run and last.tx is tx:
            last.count += 1
            routes = last.routes
            routes[route] = routes.get(route, 0) + 1
        else:
            chain.append(_Run(tx, route, self._batch_started))
        self._unreplied_tail = (len(parts), subject, data, header_lines, tx, route, block_size)
        head = f"HPUB {subject} {block_size} {size}\r\n".encode()
        parts += (head, block, data, b"\r\n")

    def _entry(
        self, subject: str, data: bytes, header_lines: str, tx: Transaction, route: str
    ) -> InFlight:
        """A message that gets a reply subject: registered under a new token."""
        token = self._next_token
        self._next_token += 1
        entry = InFlight(subject, data, header_lines, tx, self._batch_started, route, token)
        self._awaiting[token] = entry
        return entry

    def _head(self, subject: str, token: int, block_size: int, size: int) -> bytes:
        """The HPUB line of a message that asks for a reply at ``<inbox>.<token>``."""
        return f"HPUB {subject} {self._inbox}.{token} {block_size} {size}\r\n".encode()

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
            entry = self._awaiting.pop(int(msg.subject[self._prefix_len :]), None)
        except ValueError:
            return
        if entry is None:
            return  # an ack for a previous session's token, or after a timeout: ignore
        problem = _ack_problem(msg)
        before = self._count
        if entry.chained:
            self._on_chained_ack(entry, problem)
        elif problem is None or problem is _DUPLICATE:
            if problem is _DUPLICATE:
                self._duplicate(entry)
            self._acked(entry)
        elif problem == _NO_RESPONDERS:
            await self._settle_no_responders(entry)
        elif problem[0]:
            self._count -= 1  # its replacement counts instead
            self._replace(entry, problem[1])
            await self._flush_or_fail()
        else:
            self._refused(entry, problem[1])
        if self._count < self._max_in_flight:
            self._space.set()
        if not self._count:
            self._empty.set()
        if self._debug:
            _log_ack(msg, entry, problem, before - self._count, self._count)

    def _on_chained_ack(self, entry: InFlight, problem: tuple[bool, str] | None) -> None:
        chain = self._chain
        if problem is _DUPLICATE and chain and chain[0] is entry:
            self._duplicate(entry)  # nothing unacked before it: as good as stored
            problem = None
        if problem is None:
            # Stored, so every chained message before it is stored too.
            self.last_ack_at = time.monotonic()
            awaiting = self._awaiting
            by_route: dict[str, int] = {}
            while chain:
                head = chain.popleft()
                if isinstance(head, _Run):
                    self._acked_many(head.tx, head.count)
                    for route, count in head.routes.items():
                        by_route[route] = by_route.get(route, 0) + count
                    continue
                if head is not entry:
                    awaiting.pop(head.token, None)
                self._acked_many(head.tx, 1)
                by_route[head.route] = by_route.get(head.route, 0) + 1
                if head is entry:
                    break
            if self._observer is not None:
                for route, count in by_route.items():
                    self._observer.acked(route, count)
        elif problem is _DUPLICATE:
            self._duplicate(entry)
            self._refused(entry, "a duplicate id among messages not yet acked one by one")
        else:
            self._refused(entry, problem[1])

    def _acked(self, entry: InFlight) -> None:
        self.last_ack_at = time.monotonic()
        self._acked_many(entry.tx, 1)
        if self._observer is not None:
            self._observer.acked(entry.route, 1)

    def _acked_many(self, tx: Transaction, count: int) -> None:
        self._count -= count
        self._tracker.acked(tx, count)
        if tx.outstanding == 0 and tx.committed and self._observer is not None:
            self._observer.transaction_acked(tx)

    def _duplicate(self, entry: InFlight) -> None:
        if self._on_duplicate is not None:
            self._on_duplicate(entry)

    def _refused(self, entry: InFlight, reason: str) -> None:
        self.fail(PublishError(f"JetStream refused a message on {entry.subject}: {reason}"))

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
        try:
            subject, data, headers = self._on_rejected(entry, reason)
        except Exception as exc:  # the rejection policy says stop (e.g. no dead letter)
            self.fail(exc)
            return
        lines = header_lines(headers)
        self._queue(subject, data, lines, entry.tx, DEAD_LETTER_ROUTE, headers["Nats-Msg-Id"])

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
            self._count -= 1  # its replacement counts instead
            self._replace(entry, f"no stream captures subject {entry.subject}")
            await self._flush_or_fail()

    async def _watch_ack_timeouts(self) -> None:
        interval = max(self._ack_timeout / 4, 0.05)
        while not self.failed.done():
            await asyncio.sleep(interval)
            waiting: list[InFlight | _Run] = []
            if self._chain:
                waiting.append(self._chain[0])
            first_awaiting = next(iter(self._awaiting.values()), None)
            if first_awaiting is not None:
                waiting.append(first_awaiting)
            if not waiting:
                continue
            oldest = min(waiting, key=lambda e: e.sent_at)
            waited = time.monotonic() - oldest.sent_at
            if waited > self._ack_timeout:
                what = (
                    f"a message of route {next(iter(oldest.routes))}"
                    if isinstance(oldest, _Run)
                    else f"a message on {oldest.subject}"
                )
                self.fail(
                    PublishError(f"no JetStream ack for {what} within {self._ack_timeout:g}s")
                )


# The last chained message queued without a reply subject (see ``flush``): the index
# of its HPUB line in the queued parts, subject, data, header lines, transaction,
# route, header block size.
_Unreplied = tuple[int, str, bytes, str, Transaction, str, int]


_NO_RESPONDERS = (False, "no responders")
_DUPLICATE = (False, "duplicate")  # stored earlier: as good as an ack


def _log_ack(
    msg: Msg, entry: InFlight, problem: tuple[bool, str] | None, acked: int, in_flight: int
) -> None:
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
    if problem is None or problem is _DUPLICATE:
        fields["seq"] = json.loads(msg.data).get("seq")
        fields["duplicate"] = problem is _DUPLICATE
    else:
        fields["error"] = problem[1]
    log.debug("acked", **fields)


def _ack_problem(msg: Msg) -> tuple[bool, str] | None:
    """None for a stored (or duplicate) message, else (permanent, reason)."""
    headers = msg.headers
    if headers and headers.get("Status") == "503":
        # Nothing is subscribed to the subject: no stream, or a stream between leaders.
        return _NO_RESPONDERS
    if not msg.data:
        return False, f"empty reply (status {headers.get('Status') if headers else 'none'})"
    try:
        reply = json.loads(msg.data)
    except ValueError:
        return False, "unreadable pub ack"
    error = reply.get("error")
    if error is None:
        return _DUPLICATE if reply.get("duplicate") else None
    err_code = error.get("err_code")
    description = error.get("description", "unknown error")
    return err_code in PERMANENT_ERR_CODES, f"{description} (err_code {err_code})"
