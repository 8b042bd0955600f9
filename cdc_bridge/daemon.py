"""Wiring, the session supervisor, reconnects with backoff, and clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

import nats.errors
import psycopg
import structlog

from cdc_bridge.config import BridgeConfig, redact_dsn
from cdc_bridge.decoding.pgoutput import PgoutputDecoder
from cdc_bridge.lsn import format_lsn
from cdc_bridge.nats_setup import connect_nats, ensure_stream
from cdc_bridge.pipeline import Decoder, Pipeline, PoisonRowError, SessionStats
from cdc_bridge.publisher import JetStreamPublisher, PublishError, Rejection
from cdc_bridge.replication import ReplicationError, ReplicationStream, SlotInUse, connection_string
from cdc_bridge.routing import Router
from cdc_bridge.slots import (
    SlotInfo,
    create_publication,
    create_slot,
    get_slot,
    publication_exists,
    publication_tables,
    table_columns,
)
from cdc_bridge.tracker import LsnTracker

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


def decoder_for(config: BridgeConfig) -> tuple[Decoder, list[tuple[str, str]]]:
    if config.postgres.plugin != "pgoutput":
        raise FatalError(
            f"postgres.plugin: {config.postgres.plugin!r} is not supported yet (use pgoutput)"
        )
    options = [
        ("proto_version", "1"),
        ("publication_names", config.postgres.publication),
    ]
    return PgoutputDecoder(), options


async def prepare_postgres(config: BridgeConfig) -> SlotInfo:
    """Check the outbox tables, create the publication and slot when missing."""
    pg = config.postgres
    async with await psycopg.AsyncConnection.connect(
        connection_string(pg.dsn, pg.connect_timeout), autocommit=True
    ) as conn:
        known_columns: set[str] = set()
        for table in config.outbox.tables:
            columns = await table_columns(conn, table)
            if columns is None:
                raise FatalError(
                    f"outbox.table: table {table} does not exist (create it, e.g. with "
                    "sql/outbox.sql, or run `cdc-bridge init`)"
                )
            known_columns.update(columns)
        missing = sorted(config.template_columns() - known_columns - {"table"})
        if missing:
            raise FatalError(
                f"routes: column {missing[0]!r} is used by a route but is not a column of "
                f"{', '.join(config.outbox.tables)} (columns: {', '.join(sorted(known_columns))})"
            )
        # The publication must exist before the slot: pgoutput looks it up as of each
        # change's position, and fails on changes from before it existed.
        if not await publication_exists(conn, pg.publication):
            await create_publication(conn, pg.publication, config.outbox.tables)
            log.info(
                "publication_created", publication=pg.publication, tables=list(config.outbox.tables)
            )
        else:
            covered = await publication_tables(conn, pg.publication)
            uncovered = [t for t in config.outbox.tables if t not in covered]
            if uncovered:
                raise FatalError(
                    f"postgres.publication: publication {pg.publication} does not include "
                    f"{uncovered[0]}; its events would never arrive (fix: ALTER PUBLICATION "
                    f"{pg.publication} ADD TABLE {uncovered[0]})"
                )
        slot = await get_slot(conn, pg.slot)
        if slot is None:
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
        return slot


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


async def run_session(
    config: BridgeConfig,
    router: Router,
    stop: asyncio.Event,
    stats: SessionStats,
    on_streaming: Callable[[], None],
) -> None:
    """Connect both sides and stream until stop (returns) or a failure (raises)."""
    lost = asyncio.Event()
    nc = await connect_nats(config.nats, lost.set)
    try:
        await ensure_stream(nc, config.nats)
        router.max_payload = nc.max_payload
        slot = await prepare_postgres(config)
        if slot.active:
            raise SlotInUse(f"slot {slot.name} is in use by process {slot.active_pid}")
        decoder, options = decoder_for(config)
        start = slot.confirmed_flush_lsn or 0
        tracker = LsnTracker(start)
        stream = await ReplicationStream.start(
            config.postgres.dsn,
            slot=config.postgres.slot,
            options=options,
            connect_timeout=config.postgres.connect_timeout,
        )

        def make_publisher(t: LsnTracker, on_rejected: Rejection) -> JetStreamPublisher:
            return JetStreamPublisher(
                nc,
                t,
                max_in_flight=config.nats.max_in_flight,
                ack_timeout=config.nats.ack_timeout,
                on_rejected=on_rejected,
            )

        pipeline = Pipeline(
            stream=stream,
            decoder=decoder,
            router=router,
            publisher_factory=make_publisher,
            tracker=tracker,
            tables=frozenset(config.outbox.tables),
            status_interval=config.postgres.status_interval,
            stats=stats,
        )
        log.info("streaming", slot=slot.name, lsn=format_lsn(start), stream=config.nats.stream.name)
        on_streaming()
        watch_lost = asyncio.create_task(lost.wait())
        watch_lost.add_done_callback(
            lambda _: pipeline.publisher.fail(PublishError("NATS connection lost"))
        )
        try:
            await pipeline.run(stop, shutdown_timeout=config.shutdown_timeout)
        finally:
            watch_lost.cancel()
    finally:
        if not nc.is_closed:
            await nc.close()


async def run_bridge(config: BridgeConfig, stop: asyncio.Event) -> int:
    """Supervise sessions until stopped. Returns the process exit code."""
    router = Router(config)
    stats = SessionStats()
    backoff = Backoff()
    failures = FailureLog()

    def streaming() -> None:
        backoff.reset()
        failures.streaming()

    log.info(
        "starting",
        slot=config.postgres.slot,
        dsn=redact_dsn(config.postgres.dsn),
        servers=[redact_url(s) for s in config.nats.servers],
    )
    while not stop.is_set():
        try:
            await run_session(config, router, stop, stats, streaming)
            return 0
        except (FatalError, PoisonRowError) as exc:
            log.error("fatal", error=str(exc))
            return 1
        except SlotInUse as exc:
            delay = backoff.next_delay()
            failures.failed(f"{exc} (waiting for it to be released)", delay)
        except TRANSIENT_ERRORS as exc:
            delay = backoff.next_delay()
            failures.failed(describe(exc), delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return 0


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    if isinstance(exc, nats.errors.NoServersError):
        return "cannot connect to any NATS server"
    if isinstance(exc, psycopg.OperationalError):
        return f"PostgreSQL: {detail}"
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
