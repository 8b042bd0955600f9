"""``postgres.source: standby``: the slot lives on a hot standby (PostgreSQL 16+).

Logical decoding on a standby keeps the decoding load off the primary, but a standby
cannot write: the publication is created on the primary (``postgres.primary_dsn``), and
the standby must have replayed it before the slot starts. A standby's slot is created,
and its decoding moves on, only when it replays a running-transactions record, which an
idle primary never writes by itself: ``pg_log_standby_snapshot()`` on the primary makes
one now (at slot creation, and while the outbox is idle).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
import structlog
from psycopg.rows import TupleRow

from cdc_bridge.core.errors import FatalError
from cdc_bridge.source.catalog import (
    DECODING_ON_STANDBY_SINCE,
    AsyncConn,
    create_slot,
    current_wal_lsn,
    in_recovery,
    log_standby_snapshot,
    wait_for_replay,
)
from cdc_bridge.source.replication import connection_string

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

log = structlog.get_logger("cdc_bridge.source.standby_source")

REPLAY_TIMEOUT = 60.0  # seconds the standby may take to replay the publication
SNAPSHOT_NUDGE = 0.5  # seconds between snapshots while a slot is being created


async def connect_primary(config: BridgeConfig) -> psycopg.AsyncConnection[TupleRow]:
    pg = config.postgres
    assert pg.primary_dsn is not None  # the config requires it with source: standby
    return await psycopg.AsyncConnection.connect(
        connection_string(pg.primary_dsn, pg.connect_timeout),
        autocommit=True,
        password=pg.password,
    )


async def require_standby(conn: AsyncConn, config: BridgeConfig) -> None:
    """postgres.dsn must reach a hot standby that can decode (16+)."""
    where = f"{conn.info.host}:{conn.info.port}"
    if not await in_recovery(conn):
        raise FatalError(
            f"postgres.source: standby, but postgres.dsn reaches {where}, which is a primary "
            "(not in recovery): point postgres.dsn at a hot standby, or set "
            "postgres.source: primary"
        )
    if conn.info.server_version < DECODING_ON_STANDBY_SINCE:
        raise FatalError(
            f"postgres.source: standby needs PostgreSQL 16 or later (logical decoding on a "
            f"standby), {where} runs {conn.info.server_version // 10000}: set "
            "postgres.source: primary"
        )
    if config.postgres.failover is True:
        raise FatalError(
            "postgres.failover: true cannot go with postgres.source: standby (PostgreSQL "
            "cannot make a slot created on a standby a failover slot) (fix: set "
            "postgres.failover to auto or false)"
        )


async def wait_until_replayed(conn: AsyncConn, primary_lsn: int) -> None:
    """The standby has replayed what the primary wrote up to ``primary_lsn`` (the
    publication): a slot started before that would fail on the missing publication."""
    if not await wait_for_replay(conn, primary_lsn, REPLAY_TIMEOUT):
        raise psycopg.OperationalError(
            f"the standby {conn.info.host}:{conn.info.port} did not replay the primary's WAL "
            f"up to the publication within {REPLAY_TIMEOUT:.0f}s"
        )


async def create_slot_on_standby(
    conn: AsyncConn, primary: AsyncConn, name: str, plugin: str
) -> None:
    """Create the slot on the standby, making standby snapshots on the primary meanwhile.
    Every command that creates a standby source's slot (`run`, `init`, `slots create`)
    comes here, after ``wait_until_replayed`` has seen the publication replayed."""

    async def nudge() -> None:
        while True:
            await log_standby_snapshot(primary)
            await asyncio.sleep(SNAPSHOT_NUDGE)

    nudging = asyncio.create_task(nudge())
    try:
        await create_slot(conn, name, plugin)
    finally:
        nudging.cancel()
        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
            await nudging


async def primary_wal_lsn(primary: AsyncConn) -> int:
    return await current_wal_lsn(primary)


IDLE_SNAPSHOT_INTERVAL = 10.0  # seconds without a transaction before a standby snapshot


async def snapshots_while_idle(config: BridgeConfig, transactions: Callable[[], int]) -> None:
    """While no transaction arrives for IDLE_SNAPSHOT_INTERVAL, a standby snapshot on the
    primary: the standby's decoding (and so the confirmed position) then moves on even
    when the primary writes nothing. Runs for the session; failures are logged once."""
    seen = transactions()
    warned = False
    while True:
        await asyncio.sleep(IDLE_SNAPSHOT_INTERVAL)
        now = transactions()
        if now != seen:
            seen = now
            continue
        try:
            async with await connect_primary(config) as primary:
                await log_standby_snapshot(primary)
            warned = False
        except psycopg.Error as exc:
            if not warned:
                warned = True
                log.warning(
                    "standby_snapshot_failed",
                    error=f"pg_log_standby_snapshot() on the primary failed "
                    f"({str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}): "
                    "while the outbox is idle the standby's slot may not move on (fix: GRANT "
                    "EXECUTE ON FUNCTION pg_log_standby_snapshot() TO the bridge's role)",
                )
