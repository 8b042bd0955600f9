"""The primary's failover, as the bridge sees it (PostgreSQL 17+ failover slots).

Making the slot a failover slot, the one fatal line when a promoted standby lacks the
slot, and a watch on the standbys' copies of it for /status and the metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
import structlog

from cdc_bridge.bridge.metrics import Metrics
from cdc_bridge.bridge.status import BridgeStatus
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.source.replication import ReplicationStream
from cdc_bridge.source.standbys import (
    StandbySlot,
    behind_bytes,
    standby_document,
    standby_slots,
)

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

log = structlog.get_logger("cdc_bridge.bridge.failover")

STANDBY_CHECK_INTERVAL = 15.0  # seconds between looks at the standbys' copies of the slot


def failover_without_synchronized_slot(
    config: BridgeConfig, stream: ReplicationStream, newest: int
) -> str:
    """The one fatal line when a promoted standby lacks the slot whose events we published.

    Creating a new slot there would silently skip everything committed between the
    last event published and now: never do that, say how to recover instead.
    """
    slot = config.postgres.slot
    return (
        f"failover without a synchronized slot: slot {slot} is missing on the new primary "
        f"{stream.server} (timeline {stream.timeline}), and stream "
        f"{config.nats.stream.name} holds its events up to LSN {format_lsn(newest)}; "
        "creating a new slot would skip what was committed since. Repair: recover as "
        "docs/production.md#high-availability says (on PostgreSQL 17+ a failover slot "
        "synchronized to the standby avoids this)"
    )


async def make_failover_slot(stream: ReplicationStream, slot: str) -> bool:
    """Turn an existing slot into a failover slot, or say why it stays as it is."""
    try:
        await stream.enable_failover(slot)
    except psycopg.Error as exc:
        log.warning(
            "slot_not_failover",
            slot=slot,
            error=f"slot {slot} is not a failover slot and could not be made one "
            f"({str(exc).strip().splitlines()[0]}): a failover of the primary would lose it "
            f"(fix: as a replication role, ALTER_REPLICATION_SLOT {slot} (FAILOVER true))",
        )
        return False
    log.info("slot_failover_enabled", slot=slot)
    return True


async def watch_standbys(
    config: BridgeConfig,
    stream: ReplicationStream,
    slot: str,
    confirmed: Callable[[], int],
    status: BridgeStatus,
    metrics: Metrics,
) -> None:
    """Every STANDBY_CHECK_INTERVAL: each standby of the DSN, is its copy synchronized?

    Runs for the session (cancelled at its end). A standby that cannot be asked counts
    as not synchronized: after a failover to it the bridge would stop.
    """
    warned: set[str] = set()
    while True:
        try:
            found = await standby_slots(
                config.postgres.dsn, stream.address, slot, config.postgres.password
            )
        except Exception as exc:  # a monitoring aid: never let it end the session
            log.warning("standby_check_failed", error=status.redactor(f"{exc}".strip()))
            found = []
        record_standbys(found, confirmed(), slot, status, metrics, warned)
        await asyncio.sleep(STANDBY_CHECK_INTERVAL)


def record_standbys(
    found: list[StandbySlot],
    confirmed: int,
    slot: str,
    status: BridgeStatus,
    metrics: Metrics,
    warned: set[str],
) -> None:
    """One look at the standbys into /status, the metrics and (once per standby until
    its copy is ready) a warning: all by StandbySlot.synchronized, the one rule."""
    states = [(s, behind_bytes(s, confirmed)) for s in found]
    status.standbys = [standby_document(s, behind, status.redactor) for s, behind in states]
    metrics.standbys([(s.server, s.synchronized, behind) for s, behind in states])
    for standby in found:
        if standby.synchronized:
            warned.discard(standby.server)
        elif standby.server not in warned:
            warned.add(standby.server)
            why = status.redactor(standby.not_ready or "")
            log.warning(
                "failover_slot_not_synchronized",
                slot=slot,
                standby=standby.server,
                error=f"standby {standby.server} has no usable copy of slot {slot} "
                f"({why}): a failover to it stops the bridge (fix: cdc-bridge check)",
            )
