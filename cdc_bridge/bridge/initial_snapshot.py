"""``outbox.snapshot_on_create``: a new slot's change tables snapshotted first.

A slot streams only what commits after its creation, so the rows a change table held
before the bridge would never reach the stream. With ``snapshot_on_create`` the bridge
does what ``cdc-bridge snapshot`` does (source/snapshot.py: chunks locked FOR SHARE,
each row a logical message the bridge itself turns into an ``R`` event) for every
change table, beside streaming: the rows are published consistent with the changes
around them, and nothing is merged.

The snapshots are registered in ``outbox.snapshot_table`` (unfinished, one per change
table, id ``<slot>-created-<UTC time>``) **before** the slot is created, so a bridge
killed anywhere between the two still finds them; every session of the leader resumes
the unfinished ones of its slot until they finish (a standby bridge holds no session,
so it never writes). A bridge whose slot already exists registers nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
import structlog

from cdc_bridge.core.errors import FatalError
from cdc_bridge.source import snapshot as sql_snapshot
from cdc_bridge.source.catalog import AsyncConn
from cdc_bridge.source.setup import connect_source
from cdc_bridge.source.standby_source import connect_primary

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

log = structlog.get_logger("cdc_bridge.bridge.initial_snapshot")

_MARK = "-created-"
_SLOT_PART = 40  # a snapshot id has at most 64 characters: 40 + 9 + 16 (the time)
PROGRESS_EVERY = 10.0  # seconds between initial_snapshot_progress lines
RETRY_AFTER = 10.0  # seconds before a snapshot that failed (connection, lock) tries again


def initial_snapshot_id(slot: str, now: datetime) -> str:
    return f"{slot[:_SLOT_PART]}{_MARK}{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def is_initial_snapshot(slot: str, snapshot_id: str) -> bool:
    """Registered when this slot (by name) was created."""
    prefix = f"{slot[:_SLOT_PART]}{_MARK}"
    return snapshot_id.startswith(prefix) and len(snapshot_id) == len(prefix) + 16


def before_slot_creation(
    config: BridgeConfig, check: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    """The session's ``may_create_slot`` with ``outbox.snapshot_on_create`` (the session
    imports this module only then): ``check``, then the snapshots registered."""

    async def registered() -> None:
        await check()
        await register_initial_snapshots(config)

    return registered


async def _connect(config: BridgeConfig) -> AsyncConn:
    """Where the rows are written: the primary (a standby source's slot decodes them)."""
    if config.postgres.source == "standby":
        return await connect_primary(config)
    return await connect_source(config)


async def register_initial_snapshots(config: BridgeConfig) -> None:
    """One unfinished snapshot per change table, before the slot exists. Refuses (a
    fatal line) what would make them fail later: a table without a primary key, a
    role without the grants, a progress table it cannot create."""
    outbox = config.outbox
    progress_table = outbox.snapshot_table
    snapshot_id = initial_snapshot_id(config.postgres.slot, datetime.now(UTC))
    async with await _connect(config) as conn:
        problem = await snapshot_problem(conn, config)
        if problem is not None:
            reason, fix = problem
            raise FatalError(f"outbox.snapshot_on_create: {reason} (fix: {fix})")
        if not await sql_snapshot.progress_table_exists(conn, progress_table):
            try:
                await sql_snapshot.create_progress_table(conn, progress_table)
            except psycopg.errors.InsufficientPrivilege:
                raise FatalError(
                    f"outbox.snapshot_on_create: cannot create the progress table "
                    f"{progress_table} (fix: create it as sql/role.sql does, or set "
                    "outbox.snapshot_table to a table this role may create)"
                ) from None
        chunk = sql_snapshot.default_chunk(config.nats.batch_max_messages)
        registered = []
        async with conn.transaction():
            for table in outbox.change_tables:
                # An earlier attempt to create the slot registered it already (and failed
                # after): one snapshot per table, never two.
                earlier = await sql_snapshot.progress_of(conn, progress_table, table)
                if any(_unfinished_initial(config, p) for p in earlier):
                    continue
                await sql_snapshot.start_progress(
                    conn, progress_table, snapshot_id, table, None, chunk
                )
                registered.append(table)
    if registered:
        log.info("initial_snapshot_registered", snapshot=snapshot_id, tables=registered)


async def snapshot_problem(conn: AsyncConn, config: BridgeConfig) -> tuple[str, str] | None:
    """Why the change tables could not be snapshotted and the fix, or None: what `run`
    refuses to create a slot for and `check` reports."""
    for table in config.outbox.change_tables:
        shape = await sql_snapshot.table_shape(conn, table)
        if shape is not None and not shape.key:
            return (
                f"{table} has no primary key, which a snapshot reads it by",
                "add one, or set snapshot_on_create: false and publish its rows another way",
            )
        missing = await sql_snapshot.missing_privileges(conn, table, config.outbox.snapshot_table)
        if missing:
            return (
                f"role lacks {'; '.join(missing)} to snapshot {table}",
                "grant them, see sql/role.sql's snapshot_tables",
            )
    return None


def _unfinished_initial(config: BridgeConfig, progress: sql_snapshot.Progress) -> bool:
    return progress.finished_at is None and is_initial_snapshot(
        config.postgres.slot, progress.snapshot_id
    )


async def run_initial_snapshots(config: BridgeConfig) -> None:
    """Beside the session: each unfinished snapshot of this slot's creation, resumed
    where its progress row says, until all are finished. Its failures are its own (it
    tries again); the session stops it by cancelling, which rolls back at most a chunk."""
    while True:
        try:
            await _snapshot_unfinished(config)
            return
        except LookupError as exc:  # its progress row was deleted: a choice, not a failure
            log.error("initial_snapshot_stopped", error=str(exc))
            return
        except (psycopg.Error, OSError) as exc:
            log.warning(
                "initial_snapshot_failed",
                error=f"{exc} (trying again in {RETRY_AFTER:.0f} s; it resumes after the "
                "last chunk it committed)",
            )
        await asyncio.sleep(RETRY_AFTER)


async def _snapshot_unfinished(config: BridgeConfig) -> None:
    progress_table = config.outbox.snapshot_table
    async with await _connect(config) as conn:
        if not await sql_snapshot.progress_table_exists(conn, progress_table):
            return
        for table in config.outbox.change_tables:
            for progress in await sql_snapshot.progress_of(conn, progress_table, table):
                if _unfinished_initial(config, progress):
                    await _snapshot(conn, config, progress)


async def _snapshot(conn: AsyncConn, config: BridgeConfig, progress: sql_snapshot.Progress) -> None:
    table, snapshot_id = progress.table, progress.snapshot_id
    shape = await sql_snapshot.table_shape(conn, table)
    if shape is None or not shape.key:
        log.error(
            "initial_snapshot_skipped",
            snapshot=snapshot_id,
            table=table,
            error="the table is gone or has no primary key: its rows are not snapshotted "
            f"(fix: restore it, then `cdc-bridge snapshot --table {table} --id {snapshot_id}`)",
        )
        return
    while not await sql_snapshot.try_lock(conn, table):
        pid = await sql_snapshot.lock_holder(conn, table)
        log.info("initial_snapshot_waiting", snapshot=snapshot_id, table=table, holder_pid=pid)
        await asyncio.sleep(RETRY_AFTER)
    try:
        log.info(
            "initial_snapshot_started",
            snapshot=snapshot_id,
            table=table,
            resumed_after_rows=progress.rows,
        )
        started = last_said = time.monotonic()

        def said(rows: int, chunk: sql_snapshot.Chunk) -> None:
            nonlocal last_said
            now = time.monotonic()
            if not chunk.last and now - last_said >= PROGRESS_EVERY:
                last_said = now
                log.info("initial_snapshot_progress", snapshot=snapshot_id, table=table, rows=rows)

        rows, chunks, _ = await sql_snapshot.write_chunks(
            conn,
            shape,
            config.outbox.snapshot_table,
            snapshot_id,
            progress.where_clause,
            progress.chunk_size,
            progress.last_key,
            stopping=lambda: False,
            on_chunk=said,
        )
        log.info(
            "initial_snapshot_finished",
            snapshot=snapshot_id,
            table=table,
            rows=progress.rows + rows,
            chunks=progress.chunks + chunks,
            seconds=round(time.monotonic() - started, 3),
        )
    finally:
        await sql_snapshot.unlock(conn, table)
