"""Wiring, the session supervisor, reconnects with backoff, and clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
import psycopg
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamInfo
from psycopg import sql
from psycopg.rows import TupleRow

from cdc_bridge.change_events import ACTION_PSEUDO_COLUMN, TypeNames
from cdc_bridge.config import BridgeConfig, redact_dsn
from cdc_bridge.decoding import wal2json
from cdc_bridge.decoding.pgoutput import PgoutputDecoder
from cdc_bridge.http import HttpEndpoint
from cdc_bridge.leadership import Leadership
from cdc_bridge.lsn import format_lsn
from cdc_bridge.messages import EnvelopeColumns
from cdc_bridge.metrics import Metrics
from cdc_bridge.nats_setup import NatsPermissionError, connect_nats, ensure_stream
from cdc_bridge.ordering import OrderGuard
from cdc_bridge.pipeline import Decoder, Pipeline, PoisonRowError, SessionStats, UndecodableChange
from cdc_bridge.preflight import check_stream_coverage
from cdc_bridge.protocol import ProtocolError
from cdc_bridge.publisher import DuplicateHandler, JetStreamPublisher, PublishError, Rejection
from cdc_bridge.reconcile import Position, StreamTail, read_stream_tail
from cdc_bridge.redaction import redact
from cdc_bridge.replication import ReplicationError, ReplicationStream, SlotInUse, connection_string
from cdc_bridge.routing import Router
from cdc_bridge.slots import (
    SlotInfo,
    column_type_names,
    create_publication,
    create_slot,
    current_wal_lsn,
    get_slot,
    publication_exists,
    publication_info,
    publication_tables,
    replica_identity,
    slot_lag,
    table_columns,
)
from cdc_bridge.status import BridgeStatus
from cdc_bridge.tracker import LsnTracker, Transaction

MAX_LSN = (1 << 64) - 1
STANDBY_POLL_SECONDS = 1.0  # a standby takes over within about this after the lock frees
HEALTHY_AFTER_SECONDS = 10.0  # a session up this long resets the reconnect backoff

log = structlog.get_logger("cdc_bridge.daemon")


class FatalError(Exception):
    """Retrying cannot help: say it in one line and exit non-zero."""


# Failures a retry can cure: servers down or restarting, connections cut, acks lost.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    ReplicationError,
    PublishError,
    nats.errors.Error,
    OSError,
    TimeoutError,
)


class Backoff:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s ... 30 s."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._next = self._first


class FailureLog:
    """Log a failure once, repeats at most once a minute, and recovery once."""

    def __init__(self, every: float = 60.0) -> None:
        self._every = every
        self._last_message: str | None = None
        self._last_logged = 0.0
        self._repeats = 0

    def failed(self, message: str, retry_in: float) -> None:
        now = time.monotonic()
        if message != self._last_message or now - self._last_logged >= self._every:
            log.warning(
                "session_failed", error=message, retry_in=round(retry_in, 1), repeats=self._repeats
            )
            self._last_message = message
            self._last_logged = now
            self._repeats = 0
        else:
            self._repeats += 1

    def streaming(self) -> None:
        if self._last_message is not None:
            log.info("recovered", after=self._last_message)
        self._last_message = None
        self._repeats = 0


def decoder_for(
    config: BridgeConfig, type_names: TypeNames | None = None
) -> tuple[Decoder, list[tuple[str, str]]]:
    """The plugin's decoder and its START_REPLICATION options. ``type_names`` names the
    change tables' column types for pgoutput (see prepare_postgres)."""
    outbox = config.outbox
    change_tables = frozenset(outbox.change_tables)
    if config.postgres.plugin == "wal2json":
        options = wal2json.wal2json_options(
            outbox.tables, outbox.message_prefixes, outbox.change_tables
        )
        return wal2json.Wal2jsonDecoder(change_tables), options
    options = [
        ("proto_version", "1"),
        ("publication_names", config.postgres.publication),
    ]
    if outbox.message_prefixes:
        options.append(("messages", "true"))  # of every prefix: the pipeline picks its own
    if type_names is None:
        return PgoutputDecoder(change_tables), options
    return PgoutputDecoder(change_tables, type_names), options


def replication_dsn(config: BridgeConfig) -> str:
    """The DSN of the replication connection, with the session settings the plugin's
    output depends on (wal2json mangles bytea unless bytea_output is hex)."""
    pg = config.postgres
    if pg.plugin != "wal2json":
        return pg.dsn
    return connection_string(pg.dsn, pg.connect_timeout, options=wal2json.SESSION_OPTIONS)


def envelope_columns(config: BridgeConfig) -> EnvelopeColumns:
    outbox = config.outbox
    return EnvelopeColumns(outbox.id_column, outbox.payload_column, outbox.headers_column)


async def prepare_outbox(conn: psycopg.AsyncConnection[TupleRow], config: BridgeConfig) -> None:
    """Check the outbox tables and the routes' columns; create the publication if missing."""
    pg = config.postgres
    # Message events are rows of the envelope's columns (messages.py).
    known_columns = (
        set(envelope_columns(config).names()) if config.outbox.message_prefixes else set()
    )
    for table in config.outbox.tables:
        columns = await table_columns(conn, table)
        if columns is None:
            raise FatalError(
                f"outbox.table: table {table} does not exist (create it, e.g. with "
                "sql/outbox.sql, or run `cdc-bridge init`)"
            )
        known_columns.update(columns)
    known_columns.update(await check_change_tables(conn, config))
    missing = sorted(config.template_columns() - known_columns - {"table"})
    if missing:
        described = ", ".join((*config.outbox.tables, *config.outbox.change_tables))
        raise FatalError(
            f"routes: column {missing[0]!r} is used by a route but is not a column of "
            f"{described} (columns: {', '.join(sorted(known_columns))})"
        )
    tables, operations = publication_plan(config)
    # The publication must exist before the slot: pgoutput looks it up as of each
    # change's position, and fails on changes from before it existed.
    if not await publication_exists(conn, pg.publication):
        try:
            if tables:
                await create_publication(conn, pg.publication, tables, operations)
            else:  # messages only: pgoutput still needs a publication, one without tables
                await conn.execute(
                    sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(pg.publication))
                )
        except psycopg.errors.InsufficientPrivilege as exc:
            # The least-privilege role (sql/role.sql) may not: an admin makes it once.
            raise FatalError(
                f"postgres.publication: publication {pg.publication} does not exist, and "
                f"role {conn.info.user} may not create it ({exc.diag.message_primary}); "
                "an administrator creates it once: cdc-bridge init --config <this file> "
                "--dsn <an admin's DSN>"
            ) from None
        log.info("publication_created", publication=pg.publication, tables=list(tables))
        return
    covered = await publication_tables(conn, pg.publication)
    uncovered = [t for t in tables if t not in covered]
    if uncovered:
        raise FatalError(
            f"postgres.publication: publication {pg.publication} does not include "
            f"{uncovered[0]}; its events would never arrive (fix: ALTER PUBLICATION "
            f"{pg.publication} ADD TABLE {uncovered[0]})"
        )
    info = await publication_info(conn, pg.publication)
    if info is not None and not set(operations) <= set(info.operations):
        raise FatalError(
            f"postgres.publication: publication {pg.publication} publishes only "
            f"{', '.join(info.operations) or 'nothing'}; change events need updates and "
            f"deletes (fix: ALTER PUBLICATION {pg.publication} SET (publish = "
            f"'{', '.join(operations)}'))"
        )


def publication_plan(config: BridgeConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The tables the publication must include, and the operations it must publish.

    Change tables are published in the bridge's one publication, with updates and
    deletes for all of its tables: a second publication would be safe only if it existed
    before the slot's position (pgoutput fails on any change from before a publication
    in publication_names was created), which adding change tables to a running bridge
    cannot ensure. The outbox tables' updates and deletes then arrive too; the decoder
    skips them. wal2json reads no publication: its tables are in add-tables instead.
    """
    outbox = config.outbox
    if config.postgres.plugin == "pgoutput" and outbox.change_tables:
        return (*outbox.tables, *outbox.change_tables), ("insert", "update", "delete")
    return outbox.tables, ("insert",)


async def check_change_tables(
    conn: psycopg.AsyncConnection[TupleRow], config: BridgeConfig
) -> set[str]:
    """Check that the change tables exist and can identify updated and deleted rows;
    their columns (and ``action``), for checking the routes."""
    outbox = config.outbox
    if not outbox.change_tables:
        return set()
    known_columns = {ACTION_PSEUDO_COLUMN}
    pgoutput = config.postgres.plugin == "pgoutput"
    # With pgoutput the outbox tables' updates and deletes are published too (see
    # publication_plan): PostgreSQL then refuses them on a table without an identity.
    checked = [*outbox.change_tables, *(outbox.tables if pgoutput else ())]
    for table in checked:
        identity = await replica_identity(conn, table)
        if identity is None:
            key = "change_tables" if table in outbox.change_tables else "table"
            raise FatalError(f"outbox.{key}: table {table} does not exist")
        if table in outbox.change_tables:
            known_columns.update(await table_columns(conn, table) or ())
        if identity.identifies_rows:
            continue
        how = f"REPLICA IDENTITY {identity.setting.upper()}" + (
            " without a primary key" if identity.setting == "default" else ""
        )
        fix = f"add a primary key, or ALTER TABLE {table} REPLICA IDENTITY FULL"
        if pgoutput:
            raise FatalError(
                f"outbox.change_tables: {table} has no replica identity ({how}): once the "
                "publication publishes updates and deletes, PostgreSQL refuses UPDATE and "
                f"DELETE on it (fix: {fix})"
            )
        log.warning(
            "change_table_without_identity",
            table=table,
            error=f"{how}: wal2json skips its updates and deletes, only inserts become "
            f"change events (fix: {fix})",
        )
    return known_columns


async def prepare_postgres(
    config: BridgeConfig, *, may_create_slot: Callable[[], Awaitable[None]] | None = None
) -> tuple[SlotInfo, int, str, TypeNames | None]:
    """Outbox, publication and slot ready: the slot, the server's WAL head, its version,
    and for pgoutput the names of the change tables' column types (None without any).

    ``may_create_slot`` runs before a missing slot is created and may refuse by raising.
    """
    pg = config.postgres
    async with await psycopg.AsyncConnection.connect(
        connection_string(pg.dsn, pg.connect_timeout), autocommit=True, password=pg.password
    ) as conn:
        await prepare_outbox(conn, config)
        slot = await get_slot(conn, pg.slot)
        if slot is None:
            if may_create_slot is not None:
                await may_create_slot()
            await create_slot(conn, pg.slot, pg.plugin)
            slot = await get_slot(conn, pg.slot)
            assert slot is not None
            log.warning(
                "slot_created",
                slot=pg.slot,
                lsn=format_lsn(slot.confirmed_flush_lsn or 0),
                error="new slot: only events committed from now on are streamed",
            )
        check_slot(config, slot, str(conn.info.dbname))
        names = None
        if pg.plugin == "pgoutput" and config.outbox.change_tables:
            names = TypeNames(await column_type_names(conn, config.outbox.change_tables))
        wal_head = await current_wal_lsn(conn)
        return slot, wal_head, server_version(conn.info.server_version), names


def server_version(number: int) -> str:
    """libpq's 150004 -> "15.4"."""
    return f"{number // 10000}.{number % 10000}"


def check_slot(config: BridgeConfig, slot: SlotInfo, dbname: str) -> None:
    name = slot.name
    if slot.plugin != config.postgres.plugin:
        raise FatalError(
            f"postgres.slot: slot {name} uses plugin {slot.plugin}, the config says "
            f"{config.postgres.plugin} (drop and recreate it: `cdc-bridge slots drop {name}`)"
        )
    if slot.database != dbname:
        raise FatalError(
            f"postgres.slot: slot {name} belongs to database {slot.database}, the DSN "
            f"connects to {dbname}"
        )
    if slot.wal_status == "lost":
        raise FatalError(
            f"slot {name} is invalidated (wal_status = lost): PostgreSQL removed WAL it "
            "still needed, so events were lost. Recreate it (`cdc-bridge slots drop "
            f"{name}`, then start the bridge) and reconcile the outbox by hand"
        )


@dataclass
class BridgeState:
    """What outlives a session: status, metrics, counters, positions known stored."""

    status: BridgeStatus
    metrics: Metrics
    known_duplicates: set[Position] = field(default_factory=set)
    warned_duplicate_window: bool = False
    warned_uncovered_routes: bool = False

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
            newest = (await read_stream_tail(js, stream_name, source, MAX_LSN, 1)).newest
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
        start = slot.confirmed_flush_lsn or 0
        lookback = config.nats.max_in_flight + 64
        tail = await read_stream_tail(js, stream_name, source, start, lookback)
        check_tail(tail, wal_head, stream_name)
        state.known_duplicates = {p for p in state.known_duplicates if p[0] >= start}
        guard = OrderGuard(tuple(stream_info.config.subjects or ()), tail.last_seq)
        tracker = LsnTracker(start)
        decoder, options = decoder_for(config, names)
        await stream.start(slot=config.postgres.slot, options=options)

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
            stored_through=tail.newest if tail.newest and tail.newest[0] >= start else None,
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
        try:
            await pipeline.run(stop, shutdown_timeout=config.shutdown_timeout)
        finally:
            watch_lost.cancel()
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

    def acked(self, route: str, tx: Transaction) -> None:
        self._stats.acked += 1
        self._metrics.acked(route, tx)

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


async def run_bridge(config: BridgeConfig, stop: asyncio.Event) -> int:
    """Serve HTTP, win leadership, supervise sessions until stopped. Returns the exit code."""
    pg = config.postgres
    status = BridgeStatus(slot=pg.slot, stream=config.nats.stream.name, redactor=config.redactor())
    metrics = Metrics()
    state = BridgeState(status=status, metrics=metrics)
    log.info(
        "starting",
        slot=pg.slot,
        dsn=redact_dsn(pg.dsn),
        servers=[redact_dsn(s) for s in config.nats.servers],
    )
    http: HttpEndpoint | None = None
    if config.http.host is not None and config.http.port is not None:
        http = HttpEndpoint(
            config.http.host, config.http.port, status, metrics, config.stall_timeout
        )
        try:
            await http.start()
        except OSError as exc:
            log.error(
                "fatal", error=f"http.listen: cannot listen on {config.http.listen}: {exc.strerror}"
            )
            return 1
    leadership = Leadership(pg.dsn, pg.slot, pg.connect_timeout, password=pg.password)
    progress = asyncio.create_task(log_progress(state, config))
    try:
        while not stop.is_set():
            if not await become_leader(leadership, stop, state):
                return 0
            code = await lead(config, leadership, stop, state)
            metrics.is_leader.set(0)
            if code is not None:
                return code
        return 0
    finally:
        progress.cancel()
        status.role = "stopped"
        await leadership.release()
        if http is not None:
            await http.close()


async def become_leader(leadership: Leadership, stop: asyncio.Event, state: BridgeState) -> bool:
    """Wait (as standby) until this process holds the slot's lock; False when stopped."""
    backoff = Backoff(first=1.0, cap=10.0)
    failures = FailureLog()
    announced = False
    while not stop.is_set():
        try:
            if await leadership.try_acquire():
                failures.streaming()
                state.metrics.is_leader.set(1)
                log.info("leadership_acquired", slot=state.status.slot)
                return True
            delay = STANDBY_POLL_SECONDS
            if not announced:
                log.info(
                    "standby",
                    slot=state.status.slot,
                    error="another bridge holds this slot's leadership lock; waiting",
                )
                announced = True
            state.status.role = "standby"
        except psycopg.Error as exc:
            delay = backoff.next_delay()
            failures.failed(describe(exc), delay)
            state.status.failed(describe(exc))
            state.status.role = "connecting"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return False


async def lead(
    config: BridgeConfig, leadership: Leadership, stop: asyncio.Event, state: BridgeState
) -> int | None:
    """Run sessions while leader. An exit code ends the process; None: leadership lost."""
    router = Router(config)
    backoff = Backoff()
    failures = FailureLog()
    session_stop = asyncio.Event()
    lost_leadership = asyncio.create_task(leadership.hold())
    forward_stop = asyncio.create_task(stop.wait())

    def end_sessions(_: object) -> None:
        session_stop.set()

    lost_leadership.add_done_callback(end_sessions)
    forward_stop.add_done_callback(end_sessions)

    healthy: asyncio.TimerHandle | None = None

    def recovered() -> None:
        backoff.reset()
        failures.streaming()

    def streaming() -> None:
        # Count it as recovered only once the session has held up for a while: one that
        # fails right after starting (a poisoned message, say) keeps backing off.
        nonlocal healthy
        state.status.role = "streaming"
        healthy = asyncio.get_running_loop().call_later(HEALTHY_AFTER_SECONDS, recovered)

    try:
        while not session_stop.is_set():
            state.status.role = "connecting"
            if healthy is not None:
                healthy.cancel()
            try:
                await run_session(config, router, session_stop, state, streaming)
                break
            except (FatalError, PoisonRowError, UndecodableChange, ProtocolError) as exc:
                state.status.failed(str(exc))
                log.error("fatal", error=str(exc))
                return 1
            except SlotInUse as exc:
                delay = backoff.next_delay()
                failures.failed(f"{exc} (waiting for it to be released)", delay)
            except TRANSIENT_ERRORS as exc:
                delay = backoff.next_delay()
                message = describe(exc)
                failures.failed(message, delay)
                state.status.failed(message)
                state.metrics.reconnects.labels(failure_target(exc)).inc()
            state.status.role = "reconnecting"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session_stop.wait(), delay)
    finally:
        if healthy is not None:
            healthy.cancel()
        lost_leadership.cancel()
        forward_stop.cancel()
    if stop.is_set():
        return 0
    log.warning(
        "leadership_lost",
        slot=config.postgres.slot,
        error="the leadership lock session ended; standing by",
    )
    await leadership.release()
    return None


def failure_target(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error | ReplicationError):
        return "postgres"
    return "nats"


async def log_progress(
    state: BridgeState, config: BridgeConfig, every: float = 30.0, lag_every: float = 5.0
) -> None:
    """A periodic progress line instead of a line per event; refreshes slot lag often."""
    stats = state.stats
    last_rows, last_logged = stats.rows, time.monotonic()
    while True:
        await asyncio.sleep(lag_every)
        status = state.status
        if status.role == "standby":
            continue
        with contextlib.suppress(Exception):  # lag is a nicety: never let it stop the bridge
            await refresh_slot_lag(config, state)
        now = time.monotonic()
        if now - last_logged < every:
            continue
        rate = (stats.rows - last_rows) / (now - last_logged)
        last_rows, last_logged = stats.rows, now
        log.info(
            "progress",
            role=status.role,
            events_per_second=round(rate, 1),
            events=stats.rows,
            dead_lettered=stats.dead_lettered,
            lsn=format_lsn(status.confirmed_lsn) if status.confirmed_lsn else None,
            lag_bytes=status.lag_bytes,
            in_flight=status.in_flight() if status.in_flight else 0,
        )


async def refresh_slot_lag(config: BridgeConfig, state: BridgeState) -> None:
    pg = config.postgres
    async with await psycopg.AsyncConnection.connect(
        connection_string(pg.dsn, pg.connect_timeout), autocommit=True, password=pg.password
    ) as conn:
        lag = await slot_lag(conn, pg.slot)
    if lag is not None:
        state.status.lag_bytes, state.status.retained_bytes = lag
        state.metrics.lag_bytes.set(lag[0])
        state.metrics.retained_bytes.set(lag[1])


def describe(exc: BaseException) -> str:
    """One line for a failure. Drivers' messages may quote a DSN or URL: redacted here
    (and the literal secrets are masked again where the line is logged or served)."""
    text = str(exc).strip().splitlines()
    detail = redact(text[0]) if text else ""
    if isinstance(exc, nats.errors.NoServersError):
        return "cannot connect to any NATS server"
    if isinstance(exc, psycopg.OperationalError):
        return f"PostgreSQL: {detail}"
    if isinstance(exc, NatsPermissionError):
        return detail  # already says what it is: "NATS permissions: ..."
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
