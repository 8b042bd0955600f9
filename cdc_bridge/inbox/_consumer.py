"""The inbox's consumer loop: fetch, group, apply in the consumer's database, then ack.

One process applies for a consumer at a time: it holds a PostgreSQL advisory lock (on the
connection it applies with) for as long as it runs; another process started with the
same consumer name waits for that lock, so two processes never apply the same events
and transactions are never split between them.

The consumer's position lives in its database (``cdc_inbox_position``, written in every
apply transaction): on start the durable JetStream consumer is created again from the
next sequence. So what a crashed process left unacknowledged is read again in stream
order, not redelivered later out of order; and a commit followed by a crash before the
ack changes nothing (the position is past it, and its ids are recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import psycopg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cdc_bridge.inbox import _tables
from cdc_bridge.inbox._events import Event, Group, Grouper, event_of

log = logging.getLogger("cdc_bridge.inbox")

Handler = Callable[[psycopg.AsyncConnection[Any], Sequence[Event]], Awaitable[None]]
AfterCommit = Callable[[Sequence[Event]], Awaitable[None]]

FETCH_BATCH = 100
FETCH_TIMEOUT = 1.0  # also how long a stop request may wait for an idle fetch
LOCK_RETRY = 1.0
# Pauses before connecting again after losing PostgreSQL (the last one repeats); back to
# the first once a connection has taken the lock.
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class _ConnectionLost(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Progress:
    connected: bool = False  # this try made a connection
    locked: bool = False  # and took the lock with it


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Inbox:
    """A JetStream durable consumer whose handler runs in a PostgreSQL transaction.

    ``handler(conn, events)`` gets the events of one source transaction (or one event,
    with ``whole_transactions=False``) that this consumer has not applied before, and
    does its writes on ``conn``, inside the transaction the inbox opened: it must not
    commit or roll back. The inbox records the events' ids in that same transaction and
    acks the messages only after the commit.
    """

    def __init__(
        self,
        nc_or_js: Client | JetStreamContext,
        conninfo: str,
        *,
        stream: str,
        durable: str,
        handler: Handler,
        subjects: Sequence[str] | None = None,
        whole_transactions: bool = True,
        max_attempts: int = 5,
        backoff: Sequence[float] = (1.0, 5.0, 30.0),
        max_in_flight: int = 1000,
        ack_wait: float = 60.0,
        after_commit: AfterCommit | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be 1 or more")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be 1 or more")
        if not backoff or any(pause < 0 for pause in backoff):
            raise ValueError("backoff must be one or more pauses of 0 seconds or more")
        self._js = nc_or_js.jetstream() if isinstance(nc_or_js, Client) else nc_or_js
        self._conninfo = conninfo
        self.stream = stream
        self.durable = durable
        self._handler = handler
        self._subjects = list(subjects or [])
        self._whole = whole_transactions
        self._max_attempts = max_attempts
        self._backoff = tuple(backoff)
        self._max_in_flight = max_in_flight
        self._ack_wait = ack_wait
        self._after_commit = after_commit
        self._stream_created: Any = None

    # --- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set; then return after the group being applied.

        A lost PostgreSQL connection (the server restarted, the backend terminated, the
        network) is not the end: the inbox connects again, with growing pauses, takes
        the lock again (or waits as a standby, if another process took it meanwhile)
        and reads on from the position its database holds. Nothing is applied twice:
        what the lost connection committed is past that position, with its ids.
        Failing to connect the first time raises: a wrong DSN is not retried."""
        stop = stop or asyncio.Event()
        failures = 0
        connected_once = False
        while not stop.is_set():
            progress = _Progress()
            try:
                await self._run_connected(stop, progress)
                return
            except _ConnectionLost as lost:
                connected_once = connected_once or progress.connected
                if not connected_once and lost.__cause__ is not None:
                    raise lost.__cause__ from None  # the first connect: a wrong DSN, say
                failures = 0 if progress.locked else failures + 1
                pause = RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF) - 1)]
                log.warning(
                    "inbox %s: lost the PostgreSQL connection (%s); connecting again in %gs",
                    self.durable,
                    lost.reason,
                    pause,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)

    async def _run_connected(self, stop: asyncio.Event, progress: _Progress) -> None:
        """One connection's life: lock, subscribe from the position, consume."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise _ConnectionLost(_first_line(exc)) from exc  # could not connect
        progress.connected = True
        async with conn:
            try:
                if not await self._wait_for_lock(conn, stop):
                    return
                progress.locked = True
                sub = await self._subscribe(conn)
                try:
                    await self._consume(conn, sub, stop)
                finally:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            except Exception as exc:
                # Asked before leaving ``async with``, which closes the connection.
                if conn.broken or conn.closed:
                    raise _ConnectionLost(_first_line(exc)) from exc
                raise

    async def _wait_for_lock(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> bool:
        said = False
        while not stop.is_set():
            if await _tables.try_lock(conn, self.durable):
                if said:
                    log.info("inbox %s: the other process is gone, applying now", self.durable)
                return True
            if not said:
                log.info("inbox %s: another process applies for it; waiting", self.durable)
                said = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOCK_RETRY)
        return False

    async def _subscribe(
        self, conn: psycopg.AsyncConnection[Any]
    ) -> JetStreamContext.PullSubscription:
        """The durable consumer, made again from the position the database holds."""
        info = await self._js.stream_info(self.stream)
        self._stream_created = info.created
        position = await _tables.read_position(conn, self.durable)
        start = 1
        if position is not None:
            if position.stream == self.stream and position.stream_created == info.created:
                start = position.stream_seq + 1
            else:
                log.warning(
                    "inbox %s: stream %s is not the one its position was in; reading it from"
                    " the start (recorded ids are skipped)",
                    self.durable,
                    self.stream,
                )
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(self.stream, self.durable)
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_wait=self._ack_wait,
            max_ack_pending=self._max_in_flight,
            max_deliver=-1,
        )
        if len(self._subjects) == 1:
            config.filter_subject = self._subjects[0]
        elif self._subjects:
            config.filter_subjects = self._subjects
        await self._js.add_consumer(self.stream, config)
        log.info("inbox %s: reading %s from sequence %d", self.durable, self.stream, start)
        return await self._js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def _consume(
        self,
        conn: psycopg.AsyncConnection[Any],
        sub: JetStreamContext.PullSubscription,
        stop: asyncio.Event,
    ) -> None:
        grouper: Grouper[Msg] = Grouper(whole_transactions=self._whole)
        highest_seen = 0
        clock = asyncio.get_running_loop().time
        last_touch = clock()
        while not stop.is_set():
            open_group = grouper.open
            room = self._max_in_flight - (len(open_group.items) if open_group else 0)
            try:
                msgs = await sub.fetch(batch=max(1, min(FETCH_BATCH, room)), timeout=FETCH_TIMEOUT)
            except (nats.errors.TimeoutError, TimeoutError):
                msgs = []
            except nats.errors.Error as exc:
                # NATS away (the client reconnects by itself): try again shortly.
                log.warning("inbox %s: fetch failed (%s); retrying", self.durable, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), LOCK_RETRY)
                continue
            if open_group is not None and clock() - last_touch > self._ack_wait / 3:
                await _touch(open_group.items)  # still waiting for the rest of it
                last_touch = clock()
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq <= highest_seen:
                    # A copy redelivered while we held or after we settled the original:
                    # a held one is acked with its group; a settled one needs its ack.
                    held = grouper.open
                    if held is None or all(e.stream_seq != seq for e in held.events):
                        await msg.ack()
                    continue
                highest_seen = seq
                event = event_of(self.stream, msg.subject, msg.data, msg.headers, seq)
                for group in grouper.add(event, msg):
                    if not await self._settle(conn, group, stop):
                        return  # stopped while waiting to retry it
                part = grouper.open
                if part is not None and len(part.items) >= self._max_in_flight:
                    # JetStream sends nothing more until something is acked: apply what
                    # we have of this transaction, whole, and go on with the rest.
                    log.warning(
                        "inbox %s: transaction %s has more than %d events here; applying"
                        " it in parts of that size",
                        self.durable,
                        part.lsn,
                        self._max_in_flight,
                    )
                    grouper.take_open()
                    if not await self._settle(conn, part, stop):
                        return
                if stop.is_set():
                    return  # after the group being applied; the rest is read again later

    # --- one group ----------------------------------------------------------------------

    async def _settle(
        self, conn: psycopg.AsyncConnection[Any], group: Group[Msg], stop: asyncio.Event
    ) -> bool:
        """Apply the group (retrying) or park it; then ack or terminate its messages.
        False if ``stop`` came while it waited to try again (nothing settled)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with _keeping_alive(group.items, self._ack_wait):
                    applied = await self._apply(conn, group.events)
                break
            except Exception as exc:
                if conn.broken or conn.closed:
                    raise  # the lock went with the connection: start again
                error = f"{type(exc).__name__}: {exc}"
                if attempt >= self._max_attempts:
                    await self._park(conn, group, error, attempt)
                    return True
                pause = self._backoff[min(attempt, len(self._backoff)) - 1]
                log.warning(
                    "inbox %s: handler failed on sequences %d..%d (attempt %d of %d,"
                    " again in %gs): %s",
                    self.durable,
                    group.events[0].stream_seq,
                    group.events[-1].stream_seq,
                    attempt,
                    self._max_attempts,
                    pause,
                    error,
                )
                async with _keeping_alive(group.items, self._ack_wait):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause)
                if stop.is_set():
                    return False  # not applied, not acked: read again on the next start
        if self._after_commit is not None:
            await self._after_commit(applied)
        await _ack_all(group.items)
        return True

    async def _apply(
        self, conn: psycopg.AsyncConnection[Any], events: Sequence[Event]
    ) -> list[Event]:
        """One consumer transaction: record the ids, run the handler on the new ones,
        move the position. The events applied now."""
        async with conn.transaction():
            fresh_ids = await _tables.record(conn, self.durable, events)
            fresh = [event for event in events if event.msg_id in fresh_ids]
            if fresh:
                await self._handler(conn, fresh)
            await self._save_position(conn, events[-1].stream_seq)
        return fresh

    async def _park(
        self, conn: psycopg.AsyncConnection[Any], group: Group[Msg], error: str, attempts: int
    ) -> None:
        async with conn.transaction():
            await _tables.park(
                conn, self.durable, self.stream, group.events, error=error, attempts=attempts
            )
            await self._save_position(conn, group.events[-1].stream_seq)
        for msg in group.items:
            await msg.term()
        log.error(
            "inbox %s: parked sequences %d..%d (lsn %s, %d events) after %d attempts in"
            " cdc_inbox_parked: %s",
            self.durable,
            group.events[0].stream_seq,
            group.events[-1].stream_seq,
            group.lsn,
            len(group.events),
            attempts,
            error,
        )

    async def _save_position(self, conn: psycopg.AsyncConnection[Any], seq: int) -> None:
        position = _tables.Position(self.stream, self._stream_created, seq)
        await _tables.save_position(conn, self.durable, position)


async def _ack_all(msgs: Sequence[Msg]) -> None:
    for msg in msgs[:-1]:
        await msg.ack()
    if msgs:
        # One round trip for the group: the server handles a connection's acks in order.
        with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
            await msgs[-1].ack_sync(timeout=5)


async def _touch(msgs: Sequence[Msg]) -> None:
    for msg in msgs:
        await msg.in_progress()


@contextlib.asynccontextmanager
async def _keeping_alive(msgs: Sequence[Msg], ack_wait: float) -> AsyncIterator[None]:
    """Tell JetStream the messages are being worked on while the body runs."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(ack_wait / 3)
            await _touch(msgs)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
