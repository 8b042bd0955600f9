"""One streaming session: connect both sides, reconcile with the stream, run the pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamInfo

from cdc_bridge.bridge.failover import (
    failover_without_synchronized_slot,
    make_failover_slot,
    watch_standbys,
)
from cdc_bridge.bridge.failures import TRANSIENT_ERRORS
from cdc_bridge.bridge.metrics import Metrics
from cdc_bridge.bridge.pipeline import Pipeline, SessionStats
from cdc_bridge.bridge.status import BridgeStatus
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.tracker import LsnTracker, Transaction
from cdc_bridge.routing.router import Router
from cdc_bridge.sink.connect import NatsPermissionError, connect_nats, ensure_stream
from cdc_bridge.sink.coverage import check_stream_coverage
from cdc_bridge.sink.ordering import OrderGuard
from cdc_bridge.sink.publisher import DuplicateHandler, JetStreamPublisher, PublishError, Rejection
from cdc_bridge.sink.reconcile import Position, StreamTail, newest_source, read_stream_tail
from cdc_bridge.source.plugins import decoder_for, envelope_columns, replication_dsn
from cdc_bridge.source.replication import ReplicationStream, SlotInUse
from cdc_bridge.source.setup import prepare_postgres
from cdc_bridge.source.standby_source import snapshots_while_idle

log = structlog.get_logger("cdc_bridge.bridge.session")


MAX_LSN = (1 << 64) - 1


@dataclass
class BridgeState:
    """What outlives a session: status, metrics, counters, positions known stored."""

    status: BridgeStatus
    metrics: Metrics
    known_duplicates: set[Position] = field(default_factory=set)
    warned_duplicate_window: bool = False
    warned_uncovered_routes: bool = False
    sessions_started: int = 0  # that reached streaming set-up

    @property
    def stats(self) -> SessionStats:
        return self.status.stats


async def run_session(
    config: BridgeConfig,
    router: Router,
    stop: asyncio.Event,
    state: BridgeState,
    on_streaming: Callable[[], None],
) -> None:
    """Connect both sides and stream until stop (returns) or a failure (raises)."""
    lost = asyncio.Event()
    denials: list[NatsPermissionError] = []

    def denied(error: NatsPermissionError) -> None:
        # End the session: a refused publish never gets its ack, a refused inbox
        # subscription none at all. Waiting would only end in timeouts saying less.
        denials.append(error)
        lost.set()

    nc = await connect_nats(config.nats, lost.set, on_denied=denied)
    stream: ReplicationStream | None = None
    try:
        js = nc.jetstream()
        stream_info = await ensure_stream(nc, config.nats)
        warn_about_duplicate_window(config, stream_info, state)
        await check_subjects_have_streams(nc, config, state)
        router.max_payload = nc.max_payload
        state.status.nats_version = str(nc._server_info.get("version"))
        stream = await ReplicationStream.connect(
            replication_dsn(config),
            connect_timeout=config.postgres.connect_timeout,
            password=config.postgres.password,
        )
        source = f"{stream.system_id}/{config.postgres.slot}"
        stream_name = config.nats.stream.name

        async def refuse_if_slot_was_dropped() -> None:
            assert stream is not None
            newest = (await read_stream_tail(js, stream_name, source, MAX_LSN, 1)).newest
            if newest is not None and stream.timeline > 1:
                raise FatalError(failover_without_synchronized_slot(config, stream, newest[0]))
            if newest is None:
                # The stream's events came from another server under this slot's name: a
                # different system identifier, so not a restart of the same cluster
                last = await newest_source(js, stream_name)
                slot_suffix = f"/{config.postgres.slot}"
                if last is not None and last[0].endswith(slot_suffix) and last[0] != source:
                    raise FatalError(failover_without_synchronized_slot(config, stream, last[1]))
            if newest is not None:
                raise FatalError(
                    f"slot {config.postgres.slot} is missing, but stream {stream_name} holds "
                    f"its events up to LSN {format_lsn(newest[0])}: the slot was dropped, and "
                    "events committed since then may never have been published. Reconcile, "
                    f"then accept the loss with `cdc-bridge slots create {config.postgres.slot}`"
                )

        slot, wal_head, state.status.postgres_version, names = await prepare_postgres(
            config, may_create_slot=refuse_if_slot_was_dropped
        )
        if slot.active:
            raise SlotInUse(f"slot {slot.name} is in use by process {slot.active_pid}")
        failover = slot.failover
        primary = config.postgres.source == "primary"  # a standby's slot cannot fail over
        if slot.failover is False and config.postgres.failover is not False and primary:
            failover = await make_failover_slot(stream, slot.name)
        state.status.failover = failover
        start = slot.confirmed_flush_lsn or 0
        lookback = config.nats.max_in_flight + 64
        tail = await read_stream_tail(js, stream_name, source, start, lookback)
        check_tail(tail, wal_head, stream_name)
        state.known_duplicates = {p for p in state.known_duplicates if p[0] >= start}
        guard = OrderGuard(tuple(stream_info.config.subjects or ()), tail.last_seq)
        tracker = LsnTracker(start)
        decoder, options = decoder_for(config, names)
        await stream.start(slot=config.postgres.slot, options=options)
        stored_through = tail.newest if tail.newest and tail.newest[0] >= start else None
        # Duplicates come from replaying what the stream already holds: the publisher
        # starts by acking every message then, and in every session after a failed one
        # (sessions only end by failing or stopping), so a duplicate it did not expect
        # costs one failed session, never a loop of them (see publisher.py).
        careful_start = (
            state.sessions_started > 0
            or stored_through is not None
            or not tail.complete
            or bool(state.known_duplicates)
        )
        state.sessions_started += 1

        def make_publisher(
            on_rejected: Rejection, on_duplicate: DuplicateHandler
        ) -> JetStreamPublisher:
            return JetStreamPublisher(
                nc,
                tracker,
                max_in_flight=config.nats.max_in_flight,
                ack_timeout=config.nats.ack_timeout,
                on_rejected=on_rejected,
                guard=guard,
                on_duplicate=on_duplicate,
                observer=AckCounter(state),
                careful_start=careful_start,
            )

        pipeline = Pipeline(
            stream=stream,
            decoder=decoder,
            router=router,
            publisher_factory=make_publisher,
            tracker=tracker,
            tables=frozenset(config.outbox.tables),
            status_interval=config.postgres.status_interval,
            stats=state.stats,
            source=source,
            stored_through=stored_through,
            known_duplicates=state.known_duplicates,
            in_stream=guard.covers,
            on_dead_letter=state.metrics.dead_lettered,
            message_prefixes=frozenset(config.outbox.message_prefixes),
            envelope_columns=envelope_columns(config),
        )
        publisher = pipeline.publisher
        state.status.confirmed = lambda: tracker.confirmed
        state.status.in_flight = lambda: publisher.in_flight
        state.status.last_ack_at = lambda: publisher.last_ack_at
        state.metrics.confirmed_lsn.set_function(lambda: tracker.confirmed)
        state.metrics.in_flight.set_function(lambda: publisher.in_flight)
        log.info(
            "streaming",
            slot=slot.name,
            lsn=format_lsn(start),
            stream=stream_name,
            stored_through=format_position(tail.newest),
        )
        on_streaming()
        watch_lost = asyncio.create_task(lost.wait())
        watch_lost.add_done_callback(
            lambda _: pipeline.publisher.fail(PublishError("NATS connection lost"))
        )
        watch = None
        if failover:
            confirmed = lambda: tracker.confirmed  # noqa: E731
            watch = asyncio.create_task(
                watch_standbys(config, stream, slot.name, confirmed, state.status, state.metrics)
            )
        snapshots = (
            asyncio.create_task(snapshots_while_idle(config, lambda: state.stats.transactions))
            if config.postgres.source == "standby"
            else None
        )
        try:
            await pipeline.run(stop, shutdown_timeout=config.shutdown_timeout)
        finally:
            watch_lost.cancel()
            for task in (watch, snapshots):
                if task is not None:
                    task.cancel()
    except TRANSIENT_ERRORS as exc:
        if denials:  # the timeout or lost connection it caused says less than it does
            raise denials[0] from exc
        raise
    finally:
        if stream is not None:
            await stream.close()
        if not nc.is_closed:
            await nc.close()


class AckCounter:
    """Counts acks for /status and the metrics (the publisher's AckObserver)."""

    def __init__(self, state: BridgeState) -> None:
        self._stats = state.stats
        self._metrics = state.metrics

    def acked(self, route: str, count: int) -> None:
        self._stats.acked += count
        self._metrics.acked(route, count)

    def transaction_acked(self, tx: Transaction) -> None:
        self._metrics.transaction_acked(tx)


def format_position(position: Position | None) -> str | None:
    return None if position is None else f"{format_lsn(position[0])}#{position[1]}"


def check_tail(tail: StreamTail, wal_head: int, stream_name: str) -> None:
    if tail.newest is not None and tail.newest[0] > wal_head:
        raise FatalError(
            f"stream {stream_name} holds events from LSN {format_lsn(tail.newest[0])}, beyond "
            f"the database's WAL head {format_lsn(wal_head)}: the database was restored or "
            "replaced, and the stream cannot be reconciled with it automatically"
        )
    if not tail.complete:
        log.warning(
            "stream_tail_incomplete",
            stream=stream_name,
            error=f"read {tail.scanned} messages back without reaching the slot's position; "
            "events stored before that may be published again if the duplicate window passed",
        )


async def check_subjects_have_streams(
    nc: NatsClient, config: BridgeConfig, state: BridgeState
) -> None:
    """A dead-letter subject no stream stores is fatal; a route's is worth a warning.

    A route's rows still go somewhere safe (the publisher dead-letters what no stream
    captures), but poison rows with nowhere to go would stop the bridge later anyway.
    """
    for problem in await check_stream_coverage(nc, config):
        if problem.startswith("dead_letter."):
            raise FatalError(problem)
        if not state.warned_uncovered_routes:
            log.warning("route_not_stored", error=problem)
    state.warned_uncovered_routes = True


def warn_about_duplicate_window(config: BridgeConfig, info: StreamInfo, state: BridgeState) -> None:
    window = info.config.duplicate_window or 0.0
    needed = config.postgres.status_interval + config.nats.ack_timeout
    if window < needed and not state.warned_duplicate_window:
        state.warned_duplicate_window = True
        log.warning(
            "duplicate_window_short",
            stream=info.config.name,
            error=f"the stream's duplicate_window ({window:g}s) is shorter than "
            f"postgres.status_interval + nats.ack_timeout ({needed:g}s); replays are still "
            "skipped by reading the stream's tail, but a wider window is a cheap safety net",
        )
