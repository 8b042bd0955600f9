"""Pipelined JetStream publishing with acks matched through one inbox subscription.

Each message is published with a reply subject ``<inbox>.<token>``; JetStream answers
there with a pub ack. One wildcard subscription receives every ack and a plain dict
maps the token back to the transaction it belongs to. That costs far less per message
than a Future per publish, and keeps the in-flight window explicit.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from cdc_bridge.ordering import OrderGuard
from cdc_bridge.routing import DEAD_LETTER_ROUTE
from cdc_bridge.tracker import LsnTracker, Transaction

# JetStream API error codes for a message that will fail the same way every time.
_ERR_MESSAGE_TOO_LARGE = 10054
PERMANENT_ERR_CODES = frozenset({_ERR_MESSAGE_TOO_LARGE})


class PublishError(Exception):
    """The pipeline cannot go on: restart the session and replay from the slot."""


@dataclass(slots=True)
class InFlight:
    subject: str
    data: bytes
    headers: dict[str, str]
    tx: Transaction
    sent_at: float
    route: str


# Given a message that can never be stored and the reason, return its replacement
# (subject, data, headers), or raise to stop the pipeline.
Rejection = Callable[[InFlight, str], tuple[str, bytes, dict[str, str]]]


class AckObserver(Protocol):
    """Told about every successful ack (metrics)."""

    def acked(self, route: str, tx: Transaction) -> None: ...

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
        self._frames: list[bytes] = []  # queued, not yet handed to nats-py (see flush)
        self._prefix_len = len(self._inbox) + 1
        self._next_token = 0
        self._in_flight: dict[str, InFlight] = {}  # insertion order = publish order
        self._space = asyncio.Event()
        self._space.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acked_total = 0
        self.duplicates_total = 0
        self._watchdog: asyncio.Task[None] | None = None

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
        return len(self._in_flight)

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str], tx: Transaction, route: str
    ) -> None:
        """Queue one message; waits only while the in-flight window is full.

        Messages go out in batches: call ``flush`` after a batch of events (the
        pipeline does, after each read), or they wait for the next flush.
        """
        if len(self._in_flight) >= self._max_in_flight:
            await self.flush()
            while len(self._in_flight) >= self._max_in_flight:
                self._space.clear()
                await self._wait_or_fail(self._space)
        if not self._in_flight:
            # Idle until now: stall detection measures from here, not from the last ack.
            self.last_ack_at = time.monotonic()
        self._tracker.sent(tx)
        self._queue(subject, data, headers, tx, route)

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
        if not self._frames:
            return
        if self._nc.is_closed:
            self.fail(PublishError("NATS connection lost"))
            raise PublishError("NATS connection lost")
        batch = b"".join(self._frames)
        self._frames.clear()
        await self._nc._send_command(batch)
        await self._nc._flush_pending()

    def _queue(
        self, subject: str, data: bytes, headers: dict[str, str], tx: Transaction, route: str
    ) -> None:
        guard = self._guard if self._guard is not None and self._guard.covers(subject) else None
        header_block = encode_headers(headers)
        size = len(header_block) + len(data) + (guard.stamp_size() if guard else 0)
        if size > self._nc.max_payload and route != DEAD_LETTER_ROUTE:
            # The router checked the row, but our own headers came on top: the server
            # would close the connection on it, on every replay. Dead-letter it instead
            # (before stamping: it must not become the next message's predecessor).
            entry = InFlight(subject, data, headers, tx, time.monotonic(), route)
            reason = (
                f"message of {size} bytes with headers exceeds the server's max_payload "
                f"{self._nc.max_payload}"
            )
            self._replace(entry, reason)
            return
        if guard is not None:
            guard.stamp(headers)  # here, at queue time: the wire order is the chain
            header_block = encode_headers(headers)
        token = str(self._next_token)
        self._next_token += 1
        self._in_flight[token] = InFlight(subject, data, headers, tx, time.monotonic(), route)
        self._empty.clear()
        self._frames.append(
            b"HPUB %s %s.%s %d %d\r\n%s%s\r\n"
            % (
                subject.encode(),
                self._inbox_bytes,
                token.encode(),
                len(header_block),
                len(header_block) + len(data),
                header_block,
                data,
            )
        )

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
        entry = self._in_flight.pop(msg.subject[self._prefix_len :], None)
        if entry is None:
            return  # an ack for a previous session's token, or after a timeout: ignore
        problem = _ack_problem(msg)
        if problem is None or problem is _DUPLICATE:
            self.acked_total += 1
            self.last_ack_at = time.monotonic()
            if problem is _DUPLICATE:
                self.duplicates_total += 1
                if self._on_duplicate is not None:
                    self._on_duplicate(entry)
            tx = entry.tx
            self._tracker.acked(tx)
            if self._observer is not None:
                self._observer.acked(entry.route, tx)
                if tx.outstanding == 0 and tx.committed:
                    self._observer.transaction_acked(tx)
        elif problem == _NO_RESPONDERS:
            await self._settle_no_responders(entry)
        elif problem[0]:
            self._replace(entry, problem[1])
            await self._flush_or_fail()
        else:
            self.fail(PublishError(f"JetStream refused a message on {entry.subject}: {problem[1]}"))
            return
        if len(self._in_flight) < self._max_in_flight:
            self._space.set()
        if not self._in_flight:
            self._empty.set()

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
        self._queue(subject, data, headers, entry.tx, DEAD_LETTER_ROUTE)

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
            self._replace(entry, f"no stream captures subject {entry.subject}")
            await self._flush_or_fail()

    async def _watch_ack_timeouts(self) -> None:
        interval = max(self._ack_timeout / 4, 0.05)
        while not self.failed.done():
            await asyncio.sleep(interval)
            if not self._in_flight:
                continue
            oldest = next(iter(self._in_flight.values()))
            waited = time.monotonic() - oldest.sent_at
            if waited > self._ack_timeout:
                self.fail(
                    PublishError(
                        f"no JetStream ack for a message on {oldest.subject} within "
                        f"{self._ack_timeout:g}s"
                    )
                )


def encode_headers(headers: dict[str, str]) -> bytes:
    """The NATS/1.0 header block. Names and values were checked where they were made
    (config, router); none holds CR or LF, so nothing needs escaping here."""
    return (
        "NATS/1.0\r\n" + "".join([f"{k}: {v}\r\n" for k, v in headers.items()]) + "\r\n"
    ).encode()


_NO_RESPONDERS = (False, "no responders")
_DUPLICATE = (False, "duplicate")  # stored earlier: as good as an ack


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
