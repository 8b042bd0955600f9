"""Beside a streaming session: the catalog checked every status interval, and the slot
confirmed only as far as the last good check (source/catalog_watch.py says why).

Each check first notes the position the tracker would confirm, then reads the catalog:
a publication dropped (or a table dropped) at WAL position X had committed before any
position past X was received, so a check that finds all well vouches for what was
received before it began. Only then may status updates confirm that far
(``LsnTracker.ceiling``). A check that finds a problem stops the session with one
fatal line, the slot held at the last position a check vouched for.
"""

from __future__ import annotations

import asyncio

import psycopg
import structlog

from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.tracker import LsnTracker
from cdc_bridge.source.catalog_watch import REPAIR_AFTER_A_GAP, catalog_problem, read_identity
from cdc_bridge.source.replication import connection_string

log = structlog.get_logger("cdc_bridge.bridge.catalog_watch")


async def watch_catalog(config: BridgeConfig, tracker: LsnTracker, interval: float) -> None:
    """Runs until cancelled; raises FatalError when the catalog no longer delivers every
    event as configured (the caller fails the session with it)."""
    pg = config.postgres
    held_at = tracker.confirmed
    tracker.ceiling = held_at
    async with await psycopg.AsyncConnection.connect(
        connection_string(pg.dsn, pg.connect_timeout), autocommit=True, password=pg.password
    ) as conn:
        watched = pg.plugin == "pgoutput"
        started = await read_identity(conn, config) if watched else None
        while True:
            candidate = tracker.confirmed
            problem = await catalog_problem(conn, config, started)
            if problem is not None:
                raise FatalError(_stopped(config, problem, held_at))
            held_at = max(held_at, candidate)
            tracker.ceiling = held_at
            await asyncio.sleep(interval)


def _stopped(config: BridgeConfig, problem: str, held_at: int) -> str:
    return (
        f"{problem}, while the bridge was streaming. Rows committed since may not have been "
        f"decoded: the slot is held at {format_lsn(held_at)}, the last position checked. "
        f"Repair: fix it (cdc-bridge check --config <this file> says how), then "
        f"{REPAIR_AFTER_A_GAP}"
    )
