"""``postgres.on_slot_lost: recover``: a lost slot replaced, and its gap republished.

When the slot is invalidated (wal_status = lost), or missing while the stream holds this
bridge's events (dropped, or not on this server after a failover), the leader, before
it streams:

1. creates a recovery slot with an exported snapshot (source/slot_snapshot.py). Rows
   committed before its consistent point are visible in the snapshot, the rest will
   come through the slot;
2. reads, in that snapshot, the retained outbox rows the stream does not hold (the
   audit's comparison, bridge/audit.py) and publishes them, ``Cdc-Replay: true``, in
   commit order as far as it is known (bridge/replay.py), one ack at a time;
3. copies the recovery slot to the configured name (same consistent point) and drops it;
   streaming then starts from that point, after every republished row.

A kill at any step is safe. Before step 3 the configured slot is still missing, so the
next start recovers again from a fresh snapshot, and what was already republished is in
the stream, hence not published twice; after it, a leftover recovery slot is dropped.
Rows deleted before the recovery (pruned) cannot be checked or republished: the warning
says from when the retained rows start.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from psycopg import sql

from cdc_bridge.bridge.audit import audit_stream
from cdc_bridge.bridge.replay import ReplayRefused, ReplayResult, replay_rows
from cdc_bridge.core.errors import FatalError
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.routing.router import Router
from cdc_bridge.sink.reconcile import read_stream_tail
from cdc_bridge.source.catalog import AsyncConn, current_wal_lsn, drop_slot, get_slot
from cdc_bridge.source.outbox_rows import (
    AGE_COLUMN,
    Window,
    created_times,
    ids_in_order,
    track_commit_timestamp,
)
from cdc_bridge.source.setup import connect_source
from cdc_bridge.source.slot_snapshot import copy_slot, import_snapshot, slot_with_snapshot
from cdc_bridge.source.tables import table_identifier

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

log = structlog.get_logger("cdc_bridge.bridge.recovery")
_MAX_LSN = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Recovery:
    reason: str
    lsn: int  # the new slot's consistent point
    republished: int
    in_stream: int  # retained rows the stream already held
    oldest_retained: datetime | None
    result: ReplayResult


def recovery_slot_name(slot: str) -> str:
    """A name of its own (a slot name has at most 63 characters)."""
    return "cdc_bridge_recover_" + hashlib.sha256(slot.encode()).hexdigest()[:16]


async def recover_lost_slot(
    config: BridgeConfig, js: JetStreamContext, router: Router, source: str
) -> Recovery | None:
    """Recover when the slot is lost (see the module's text); None when it is not."""
    pg = config.postgres
    async with await connect_source(config) as conn:
        reason = await _lost_reason(conn, config, js, source)
        temp = recovery_slot_name(pg.slot)
        if await get_slot(conn, temp) is not None:
            await drop_slot(conn, temp)  # a recovery killed midway, or done but not cleaned
        if reason is None:
            return None
        log.warning("slot_recovering", slot=pg.slot, error=f"slot {pg.slot} is {reason}")
        slot = await get_slot(conn, pg.slot)
        if slot is not None:  # invalidated: it can never stream again
            await drop_slot(conn, pg.slot)
        recovery = await _republish(config, js, router, source, reason, temp)
        await copy_slot(conn, temp, pg.slot)
        await drop_slot(conn, temp)
    _log(config, recovery)
    return recovery


async def _lost_reason(
    conn: AsyncConn, config: BridgeConfig, js: JetStreamContext, source: str
) -> str | None:
    pg = config.postgres
    slot = await get_slot(conn, pg.slot)
    if slot is not None:
        return "invalidated (wal_status = lost)" if slot.wal_status == "lost" else None
    if await get_slot(conn, recovery_slot_name(pg.slot)) is not None:
        return "missing (a recovery was interrupted)"
    try:
        tail = await read_stream_tail(js, config.nats.stream.name, source, _MAX_LSN, 1)
    except NotFoundError:  # no stream yet: nothing was ever published
        return None
    if tail.newest is None:
        return None  # a first start: nothing to recover
    if tail.newest[0] > await current_wal_lsn(conn):
        return None  # the database was replaced: the session's own checks stop on that
    return (
        f"missing (dropped, or not on this server after a failover), while the stream holds "
        f"its events up to LSN {format_lsn(tail.newest[0])}"
    )


async def _republish(
    config: BridgeConfig,
    js: JetStreamContext,
    router: Router,
    source: str,
    reason: str,
    temp: str,
) -> Recovery:
    pg = config.postgres
    tables = config.outbox.tables
    id_column = config.outbox.id_column
    async with await connect_source(config) as reader:
        async with slot_with_snapshot(
            pg.dsn, temp, pg.plugin, connect_timeout=pg.connect_timeout, password=pg.password
        ) as (lsn, snapshot):
            await import_snapshot(reader, snapshot)
        wanted: set[tuple[str, str]] = set()
        audit = await audit_stream(
            js,
            config.nats.stream.name,
            source,
            lambda chosen: ids_in_order(reader, tables, id_column, chosen),
            None,
            tables=frozenset(tables),
            id_column=id_column,
            window=Window(),
            created_at=lambda keys: created_times(reader, id_column, keys),
            on_missing=lambda row_id, table: wanted.add((row_id, table)),
        )
        info = await js.stream_info(config.nats.stream.name)
        try:
            result = await replay_rows(
                js,
                reader,
                config,
                router,
                wanted,
                source=source,
                stream_subjects=tuple(info.config.subjects or ()),
                window=audit.window,  # narrowed to what the stream still holds
                by_commit_timestamp=await track_commit_timestamp(reader),
                publish=True,
            )
        except ReplayRefused as exc:
            raise FatalError(
                f"recovering slot {pg.slot}: {exc} (fix: what it names, then start the "
                "bridge again; or set postgres.on_slot_lost: fail and repair by hand: "
                "docs/operating.md#incident-the-slot-is-lost)"
            ) from None
        oldest = await _oldest_retained(reader, tables)
    return Recovery(
        reason=reason,
        lsn=lsn,
        republished=result.published,
        in_stream=audit.rows - audit.missing,
        oldest_retained=oldest,
        result=result,
    )


async def _oldest_retained(conn: AsyncConn, tables: tuple[str, ...]) -> datetime | None:
    oldest: datetime | None = None
    for table in tables:
        cur = await conn.execute(
            sql.SQL("SELECT min({}) FROM {}").format(
                sql.Identifier(AGE_COLUMN), table_identifier(table)
            )
        )
        row = await cur.fetchone()
        value = row[0] if row else None
        if isinstance(value, datetime) and (oldest is None or value < oldest):
            oldest = value
    return oldest


def _log(config: BridgeConfig, recovery: Recovery) -> None:
    result = recovery.result
    since = recovery.oldest_retained.isoformat() if recovery.oldest_retained else "none"
    log.warning(
        "slot_recovered",
        slot=config.postgres.slot,
        lsn=format_lsn(recovery.lsn),
        republished=recovery.republished,
        already_in_stream=recovery.in_stream,
        dedup_refused=result.dedup_refused,
        other_stream=result.other_stream,
        oldest_retained=since,
        error=f"slot {config.postgres.slot} was {recovery.reason}: republished "
        f"{recovery.republished} retained outbox rows the stream did not hold "
        f"(Cdc-Replay: true) and streams from a new slot at {format_lsn(recovery.lsn)}. "
        f"Rows deleted before this (retained rows start at {since}) could not be checked"
        + (
            "; changes of outbox.change_tables in the gap cannot be recovered (no rows record them)"
            if config.outbox.change_tables
            else ""
        ),
    )
