"""One streaming session: connect both sides, reconcile with the stream (a resume point),
wire the stages, run the pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import structlog

from cdc_bridge import build
from cdc_bridge.bridge.catalog_watch import CatalogWatch
from cdc_bridge.bridge.failures import TRANSIENT_ERRORS
from cdc_bridge.bridge.pipeline import Pipeline
from cdc_bridge.bridge.stream_checks import (
    check_subjects_have_streams,
    check_tail,
    guarded_space,
    may_be_shared,
    read_tail,
    refuse_if_slot_was_dropped,
    warn_about_duplicate_window,
)
from cdc_bridge.bridge.stream_watch import check_stream_again, remember_stream, watch_stream
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.tracker import LsnTracker
from cdc_bridge.routing.dead_letters import DeadLetterPolicy
from cdc_bridge.sink.atomic_mode import atomic_mode
from cdc_bridge.sink.connect import (
    NatsPermissionError,
    connect_nats,
    ensure_stream,
    server_version_text,
)
from cdc_bridge.sink.fast_mode import FastMode, fast_mode
from cdc_bridge.sink.ordering import OrderGuard
from cdc_bridge.sink.publisher import JetStreamPublisher, Publisher, PublishError
from cdc_bridge.sink.reconcile import position_of
from cdc_bridge.source.plugins import decoder_for, envelope_columns, replication_dsn
from cdc_bridge.source.replication import ReplicationStream, SlotInUse
from cdc_bridge.source.setup import prepare_postgres

# What only some configs use (initial snapshots, audits, slot recovery, failover slots, a
# standby source, atomic or fast-ingest batches) is imported where it is used: start-up
# loads only what every session needs.
if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js.api import StreamInfo
    from nats.js.client import JetStreamContext

    from cdc_bridge.bridge.metrics import Metrics
    from cdc_bridge.bridge.pipeline import SessionStats
    from cdc_bridge.bridge.status import BridgeStatus
    from cdc_bridge.config.model import BridgeConfig
    from cdc_bridge.core.tracker import Transaction
    from cdc_bridge.routing.change_events import TypeNames
    from cdc_bridge.routing.router import Router
    from cdc_bridge.sink.atomic_mode import AtomicMode
    from cdc_bridge.sink.reconcile import Position, StreamTail
    from cdc_bridge.sink.stream_loss import StreamSeen
    from cdc_bridge.source.decoding import Decoder

log = structlog.get_logger("cdc_bridge.bridge.session")


@dataclass
class BridgeState:
    """What outlives a session: status, metrics, counters, positions known stored."""

    status: BridgeStatus
    metrics: Metrics
    known_duplicates: set[Position] = field(default_factory=set)
    warned_duplicate_window: bool = False
    warned_uncovered_routes: bool = False
    # Prefixes of logical messages seen and not published, each told once per process
    ignored_prefixes: set[str] = field(default_factory=set)
    told_guard_scope: bool = False
    sessions_started: int = 0  # that reached streaming set-up
    has_streamed: bool = False  # since the process started: then failures are retried
    # The stream as last seen: a later session refuses to carry on with another one.
    stream_seen: StreamSeen | None = None
    # Why atomic mode is off, as last told (said again only when the reason changes).
    told_atomic_off: str | None = None

    @property
    def stats(self) -> SessionStats:
        return self.status.stats


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a session starts streaming and what the stream already holds past it
    (reconcile.py): everything the pipeline needs to skip replays and keep order."""

    slot: str
    start: int  # the slot's confirmed_flush_lsn: the server resends everything after it
    tail: StreamTail
    stored_through: Position | None  # our newest stored event past ``start``, if any
    careful_start: bool  # ack each message for a while: this session may replay stored ones
    failover: bool | None  # the slot is a failover slot (None: the server has no such thing)
    type_names: TypeNames | None  # change tables' column types, for the decoder
    space: str | None = None  # the subject space the order guard and the tail read use


class SessionProgress:
    """What /status and the metrics read from a running session, when they ask: the
    tracker's confirmed position and the publisher's window (never copied)."""

    __slots__ = ("_publisher", "_tracker")

    def __init__(self, tracker: LsnTracker, publisher: Publisher) -> None:
        self._tracker = tracker
        self._publisher = publisher

    def confirmed(self) -> int:
        return self._tracker.confirmed

    def in_flight(self) -> int:
        return self._publisher.in_flight

    def last_ack_at(self) -> float:
        return self._publisher.last_ack_at


class NatsLoss:
    """The NATS connection's end, as the session learns it: ``lost`` is set when the
    connection goes, or when the server refuses us something (``denied``)."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.denials: list[NatsPermissionError] = []

    def denied(self, error: NatsPermissionError) -> None:
        # End the session: a refused publish never gets its ack, a refused inbox
        # subscription none at all. Waiting would only end in timeouts saying less.
        self.denials.append(error)
        self.lost.set()


async def run_session(
    config: BridgeConfig,
    router: Router,
    stop: asyncio.Event,
    state: BridgeState,
    on_streaming: Callable[[], None],
) -> None:
    """Connect both sides and stream until stop (returns) or a failure (raises):
    connect, reconcile (a resume point), wire, run."""
    loss = NatsLoss()
    nc = await connect_nats(config.nats, loss.lost.set, on_denied=loss.denied)
    stream: ReplicationStream | None = None
    try:
        stream_info, atomic, fast = await prepare_nats(nc, config, router, state)
        stream = await ReplicationStream.connect(
            replication_dsn(config),
            connect_timeout=config.postgres.connect_timeout,
            password=config.postgres.password,
        )
        source = f"{stream.system_id}/{config.postgres.slot}"
        space = guarded_space(config, nc, state)
        reconcile_started = time.monotonic()
        resume = await reconcile(
            config, nc.jetstream(), router, stream, source, state, space, atomic=atomic.enabled
        )
        reconciled_in = time.monotonic() - reconcile_started
        decoder, options = decoder_for(config, resume.type_names)
        await stream.start(slot=resume.slot, options=options)
        pipeline = wire(
            config, router, state, nc, stream, stream_info, source, resume, decoder, atomic, fast
        )
        log.info(
            "streaming",
            slot=resume.slot,
            lsn=format_lsn(resume.start),
            stream=config.nats.stream.name,
            atomic=atomic.enabled,
            fast_ingest=fast.enabled,
            build=build(),  # mypyc-compiled hot path, or pure Python (CDC_BRIDGE_PURE=1)
            stored_through=format_position(resume.tail.newest),
            # What finding the stream's tail cost: messages read, seconds with the slot.
            tail_read=resume.tail.scanned,
            reconciled_in=round(reconciled_in, 3),
        )
        on_streaming()
        await run(pipeline, stop, config, state, loss, nc, stream, source, resume)
    except TRANSIENT_ERRORS as exc:
        if loss.denials:  # the timeout or lost connection it caused says less than it does
            raise loss.denials[0] from exc
        raise
    finally:
        if stream is not None:
            await stream.close()
        if not nc.is_closed:
            await nc.close()


async def prepare_nats(
    nc: NatsClient, config: BridgeConfig, router: Router, state: BridgeState
) -> tuple[StreamInfo, AtomicMode, FastMode]:
    """The stream (created when missing, unless this process saw it before: then it was
    lost), the subject checks, the server's limits, atomic mode (atomic_mode.py), and in
    per-message mode whether fast-ingest batches carry it (fast_mode.py)."""
    await check_stream_again(nc, config, state)
    stream_info = await ensure_stream(nc, config.nats)
    remember_stream(config, stream_info, state)
    warn_about_duplicate_window(config, stream_info, state)
    await check_subjects_have_streams(nc, config, state)
    router.max_payload = nc.max_payload
    state.status.nats_version = server_version_text(nc.connected_server_version)
    atomic = await atomic_mode(nc, config.nats, stream_info)
    if not atomic.enabled and atomic.reason != state.told_atomic_off:
        state.told_atomic_off = atomic.reason
        log.info("atomic_transactions_off", reason=atomic.reason)
    fast = FastMode(False, "atomic mode is on")
    if not atomic.enabled:
        fast = await fast_mode(nc, config.nats, stream_info)
    return stream_info, atomic, fast


async def reconcile(
    config: BridgeConfig,
    js: JetStreamContext,
    router: Router,
    stream: ReplicationStream,
    source: str,
    state: BridgeState,
    space: str | None = None,
    *,
    atomic: bool = False,
) -> ResumePoint:
    """Get PostgreSQL ready (publication, slot; a lost slot recovered when configured),
    then read what the stream holds past the slot's confirmed position: the point this
    session resumes from."""
    stream_name = config.nats.stream.name
    if config.postgres.on_slot_lost == "recover":
        from cdc_bridge.bridge.recovery import recover_lost_slot

        # Before the stream's tail is read: the order guard starts after the replays.
        recovery = await recover_lost_slot(config, js, router, source)
        if recovery is not None:
            state.metrics.slot_recoveries.inc()
            state.metrics.rows_recovered.inc(recovery.republished)
    may_create_slot: Callable[[], Awaitable[None]] = partial(
        refuse_if_slot_was_dropped, config, js, stream, source, space
    )
    if config.outbox.snapshot_on_create:
        from cdc_bridge.bridge.initial_snapshot import before_slot_creation

        may_create_slot = before_slot_creation(config, may_create_slot)
    slot, wal_head, state.status.postgres_version, names = await prepare_postgres(
        config, may_create_slot=may_create_slot
    )
    if slot.active:
        raise SlotInUse(f"slot {slot.name} is in use by process {slot.active_pid}")
    failover = slot.failover
    primary = config.postgres.source == "primary"  # a standby's slot cannot fail over
    if slot.failover is False and config.postgres.failover is not False and primary:
        from cdc_bridge.bridge.failover import make_failover_slot

        failover = await make_failover_slot(stream, slot.name)
    state.status.failover = failover
    start = slot.confirmed_flush_lsn or 0
    # Our newest stored position is among our last messages in the stream: within one
    # window of the end per message (a dead letter replacing a refused message is sent
    # late); in atomic mode batches are stored in send order, so the last one holds it,
    # and a few more cover a previous session that published per message (what they
    # miss is replayed, and the batch's duplicate refusal finds it: atomic_publisher.py).
    lookback = _ATOMIC_LOOKBACK if atomic else config.nats.max_in_flight + 64
    tail = await read_tail(js, stream_name, source, start, lookback, space)
    check_tail(tail, wal_head, stream_name)
    state.known_duplicates = {p for p in state.known_duplicates if p[0] >= start}
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
    return ResumePoint(
        slot.name, start, tail, stored_through, careful_start, failover, names, space
    )


def wire(
    config: BridgeConfig,
    router: Router,
    state: BridgeState,
    nc: NatsClient,
    stream: ReplicationStream,
    stream_info: StreamInfo,
    source: str,
    resume: ResumePoint,
    decoder: Decoder,
    atomic: AtomicMode,
    fast: FastMode | None = None,
) -> Pipeline:
    """The session's stages, joined: tracker, order guard, publisher, pipeline."""
    tracker = LsnTracker(resume.start)
    subjects = tuple(stream_info.config.subjects or ())
    guard = OrderGuard(
        subjects, resume.tail.last_seq, resume.space, shared=may_be_shared(subjects, resume)
    )
    # What the publisher sends instead of a message JetStream can never store.
    dead_letters = DeadLetterPolicy(router)
    observer = PublishCounter(state)
    batched = atomic.enabled or (fast is not None and fast.enabled)
    per_message = JetStreamPublisher(
        nc,
        tracker,
        max_in_flight=config.nats.max_in_flight,
        ack_timeout=config.nats.ack_timeout,
        dead_letters=dead_letters,
        # Atomic and fast-ingest batches: only what they cannot carry, none of it chained.
        guard=None if batched else guard,
        observer=observer,
        careful_start=resume.careful_start and not batched,
    )
    publisher: Publisher = per_message
    # Replays of these are skipped by position: they are gap-free in commit order.
    in_stream = guard.covers
    if batched:
        # An atomic batch holds at most batch_max_messages; a fast-ingest batch, the window.
        if atomic.enabled:
            from cdc_bridge.sink.atomic_publisher import AtomicPublisher as BatchPublisher
        else:
            from cdc_bridge.sink.fast_publisher import FastPublisher as BatchPublisher
        batch_publisher = BatchPublisher(
            nc,
            tracker,
            max_messages=(
                config.nats.batch_max_messages if atomic.enabled else config.nats.max_in_flight
            ),
            ack_timeout=config.nats.ack_timeout,
            dead_letters=dead_letters,
            guard=guard,
            outside=per_message,
            observer=observer,
        )
        publisher, in_stream = batch_publisher, batch_publisher.in_batch
    pipeline = Pipeline(
        stream=stream,
        decoder=decoder,
        router=router,
        publisher=publisher,
        tracker=tracker,
        tables=frozenset(config.outbox.tables),
        status_interval=config.postgres.status_interval,
        stats=state.stats,
        source=source,
        stored_through=resume.stored_through,
        known_duplicates=state.known_duplicates,
        in_stream=in_stream,
        on_dead_letter=state.metrics.dead_lettered,
        message_prefixes=frozenset(config.outbox.message_prefixes),
        on_message_ignored=lambda prefix: message_ignored(state, prefix),
        envelope_columns=envelope_columns(config),
        change_tables=frozenset(config.outbox.change_tables),
    )
    progress = SessionProgress(tracker, publisher)
    state.status.progress = progress
    state.metrics.watch(progress)
    return pipeline


async def run(
    pipeline: Pipeline,
    stop: asyncio.Event,
    config: BridgeConfig,
    state: BridgeState,
    loss: NatsLoss,
    nc: NatsClient,
    stream: ReplicationStream,
    source: str,
    resume: ResumePoint,
) -> None:
    """Stream until stopped or failed; a lost NATS connection fails the publisher. Beside
    it: the stream is watched (stream_watch.py), so are the standbys' copies of a
    failover slot, a standby source gets standby snapshots while the primary is idle,
    and the stream is audited every audit.interval (continuous_audit.py)."""
    publisher = pipeline.publisher
    watch_lost = asyncio.create_task(loss.lost.wait())
    watch_lost.add_done_callback(partial(_fail_publisher, publisher))
    beside: list[asyncio.Task[None]] = []
    progress = state.status.progress
    # Watched from the start: the pipeline confirms nothing once it fails.
    confirmed = progress.confirmed if progress is not None else lambda: resume.start
    stream_watch = asyncio.create_task(watch_stream(nc, config, state, confirmed))
    beside.append(stream_watch)
    if resume.failover and progress is not None:
        from cdc_bridge.bridge.failover import watch_standbys

        beside.append(
            asyncio.create_task(
                watch_standbys(
                    config, stream, resume.slot, progress.confirmed, state.status, state.metrics
                )
            )
        )
    if config.postgres.source == "standby":
        from cdc_bridge.source.standby_source import snapshots_while_idle

        stats = state.stats
        beside.append(asyncio.create_task(snapshots_while_idle(config, lambda: stats.transactions)))
    else:  # (a standby source's catalog is the primary's: not watched yet)
        catalog = CatalogWatch(config, pipeline.tracker, config.postgres.status_interval)
        pipeline.final_check = catalog.final_check
        watch = asyncio.create_task(catalog.run())
        watch.add_done_callback(partial(_fail_publisher_with, publisher))
        beside.append(watch)
    if config.outbox.snapshot_on_create:  # also its failures are its own
        from cdc_bridge.bridge.initial_snapshot import run_initial_snapshots

        beside.append(asyncio.create_task(run_initial_snapshots(config)))
    if config.audit.interval:  # its failures are its own: never the session's
        from cdc_bridge.bridge.continuous_audit import audit_continuously

        beside.append(asyncio.create_task(audit_continuously(config, source, state.metrics)))
    try:
        await pipeline.run(stop, shutdown_timeout=config.shutdown_timeout, halt=stream_watch)
    finally:
        watch_lost.cancel()
        for task in beside:
            task.cancel()
        # Their connections close before the session ends (bounded): a watch cancelled in
        # the middle of a query would otherwise log psycopg's warning after `stopped`.
        await asyncio.wait([watch_lost, *beside], timeout=_BESIDE_CLOSE_TIMEOUT)
        # Never sent again: an id that repeats an older one would otherwise be
        # refused as a duplicate in every session, its successor's order with it.
        remember_already_stored(state, publisher.already_stored, source)


_BESIDE_CLOSE_TIMEOUT = 5.0  # seconds the watches beside a session get to close
_ATOMIC_LOOKBACK = 64  # messages of ours the tail read looks at in atomic mode


def _fail_publisher(publisher: Publisher, _: object) -> None:
    publisher.fail(PublishError("NATS connection lost"))


def _fail_publisher_with(publisher: Publisher, task: asyncio.Task[None]) -> None:
    """A watch beside the pipeline ended: its error ends the session."""
    if not task.cancelled() and isinstance(error := task.exception(), Exception):
        publisher.fail(error)


def message_ignored(state: BridgeState, prefix: str) -> None:
    """A transactional logical message the config does not publish: counted, and said
    once per prefix (a warning: its writer may think it was published)."""
    state.metrics.message_ignored(prefix)
    if prefix in state.ignored_prefixes:
        return
    state.ignored_prefixes.add(prefix)
    log.warning(
        "logical_message_ignored",
        prefix=prefix,
        error=f"a transactional logical message with prefix {prefix!r} was not published "
        "and the slot moved past it: to publish such messages as events, add "
        f"{prefix!r} to outbox.message_prefixes (further ones are only counted, in "
        "cdc_bridge_logical_messages_ignored_total)",
    )


class PublishCounter:
    """Counts acks, dead letters and batches for /status and the metrics (the
    publishers' observer)."""

    def __init__(self, state: BridgeState) -> None:
        self._stats = state.stats
        self._metrics = state.metrics

    def acked(self, route: str, count: int) -> None:
        self._stats.acked += count
        self._metrics.acked(route, count)

    def transaction_acked(self, tx: Transaction) -> None:
        self._metrics.transaction_acked(tx)

    def batch_stored(self, messages: int) -> None:
        self._metrics.batch_stored(messages)

    def batch_split(self) -> None:
        self._metrics.batch_split()

    def dead_lettered(self, msg_id: str, reason: str) -> None:
        self._stats.dead_lettered += 1
        self._metrics.dead_lettered(reason)
        log.warning("dead_lettered", msg_id=msg_id, error=reason)


def remember_already_stored(
    state: BridgeState, already_stored: list[dict[str, str]], source: str
) -> None:
    """The events of ours JetStream said it held already (their headers): skipped when
    replayed, as what the stream's tail shows is."""
    for headers in already_stored:
        position = position_of(headers, source)
        if position is not None:
            state.known_duplicates.add(position)


def format_position(position: Position | None) -> str | None:
    return None if position is None else f"{format_lsn(position[0])}#{position[1]}"
