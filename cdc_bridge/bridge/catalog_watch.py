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
from typing import TYPE_CHECKING

import psycopg
import structlog
from psycopg.rows import TupleRow

from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.core.tracker import LsnTracker
from cdc_bridge.source.catalog_watch import (
    REPAIR_AFTER_A_GAP,
    CatalogIdentity,
    catalog_problem,
    read_identity,
)
from cdc_bridge.source.setup import connect_source

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

log = structlog.get_logger("cdc_bridge.bridge.catalog_watch")


class CatalogWatch:
    """``run`` beside the pipeline until cancelled; ``final_check`` at a clean stop, so
    the last status update may confirm everything acked (a restart then replays
    nothing)."""

    def __init__(self, config: BridgeConfig, tracker: LsnTracker, interval: float) -> None:
        self._config = config
        self._tracker = tracker
        self._interval = interval
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._started: CatalogIdentity | None = None
        self._held_at = tracker.confirmed
        tracker.ceiling = self._held_at

    async def run(self) -> None:
        """Raises FatalError when the catalog no longer delivers every event as
        configured (the caller fails the session with it)."""
        async with await connect_source(self._config) as conn:
            await self._identify(conn)
            self._conn = conn
            try:
                while True:
                    await self._check(conn)
                    await asyncio.sleep(self._interval)
            finally:
                self._conn = None

    async def final_check(self) -> None:
        """One more check, after the last ack: a good one lets the final status update
        confirm all of it. A problem is only logged here: start-up refuses it again."""
        try:
            conn = self._conn
            if conn is not None:
                await self._check(conn)
                return
            # Stopped before the watch was connected: a connection of its own.
            async with await connect_source(self._config) as own:
                await self._identify(own)
                await self._check(own)
        except Exception as exc:  # the stop goes on; what was vouched for stays confirmed
            log.warning("catalog_check_failed", error=str(exc))

    async def _identify(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """The identities later checks compare with (the first reading wins)."""
        if self._started is None and self._config.postgres.plugin == "pgoutput":
            self._started = await read_identity(conn, self._config)

    async def _check(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        tracker = self._tracker
        candidate = tracker.confirmed
        problem = await catalog_problem(conn, self._config, self._started)
        if problem is not None:
            raise FatalError(_stopped(problem, self._held_at))
        self._held_at = max(self._held_at, candidate)
        tracker.ceiling = self._held_at


def _stopped(problem: str, held_at: int) -> str:
    return (
        f"{problem}, while the bridge was streaming. Rows committed since may not have been "
        f"decoded: the slot is held at {format_lsn(held_at)}, the last position checked. "
        f"Repair: fix it (cdc-bridge check --config <this file> says how), then "
        f"{REPAIR_AFTER_A_GAP}"
    )
