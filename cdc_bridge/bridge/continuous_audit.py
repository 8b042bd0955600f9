"""Beside a streaming session (the leader's only): `cdc-bridge audit` every
``audit.interval``, over the rows created in [now - window, now - settle), with the
outcome in the metrics and the log.

The engine is bridge/audit.py's, as the command runs it: a READ ONLY snapshot of the
outbox tables, taken before the stream is read, and a headers-only read of the stream.
Each run has connections of its own (two to PostgreSQL, one to NATS), opened for the
run and closed after it: the publisher's connection carries acks, and a large read
sharing its socket and its reading task would delay them. The run shares the event
loop with the pipeline, so every step between two waits on I/O is kept short: a read
batch of 1,000 messages, a fetch of 10,000 rows, a sort of ``SORT_CHUNK`` entries.

Rows the bridge has not published yet would count as missing: ``settle`` leaves the
youngest out, so it must exceed the bridge's lag. A run that fails (a server down) is
one warning line; the next interval tries again. Nothing here ends the session.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from cdc_bridge.bridge.audit import AuditResult, audit_outbox
from cdc_bridge.bridge.metrics import Metrics
from cdc_bridge.sink.connect import close_failed_client, connect_nats
from cdc_bridge.source.outbox_rows import (
    Window,
    begin_snapshot,
    server_now,
)
from cdc_bridge.source.setup import connect_source

if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig

log = structlog.get_logger("cdc_bridge.bridge.continuous_audit")

# Stream entries sorted at once (the command's CHUNK is 100,000: ~0.1 s of the loop
# on a busy core, a stall the publisher would feel; 20,000 take a few milliseconds).
SORT_CHUNK = 20_000
SHOWN_IDS = 10  # ids named in the warning line
REPAIR = "cdc-bridge outbox replay --config FILE --missing"


async def audit_continuously(config: BridgeConfig, source: str, metrics: Metrics) -> None:
    """Runs until cancelled (the session's end). The first run waits one interval: a
    session that has just started may still be catching up."""
    interval = config.audit.interval
    while True:
        await asyncio.sleep(interval)
        started = time.monotonic()
        try:
            result = await audit_once(config, source)
        except Exception as exc:
            # Whatever went wrong (a server down, a permission missing), the audit is a
            # check beside the pipeline, never a reason to stop it. The log redacts.
            log.warning("audit_failed", error=str(exc) or type(exc).__name__, retry_in=interval)
            continue
        report(result, metrics, time.monotonic() - started)


async def audit_once(config: BridgeConfig, source: str) -> AuditResult:
    """One run over the recent window, on connections of its own."""
    tables = config.outbox.tables
    id_column = config.outbox.id_column  # every route's, checked when the config loaded
    nc = await connect_nats(config.nats, lambda: None)
    try:
        # The second is opened inside the first's block: a failed connect closes the first.
        async with (
            await connect_source(config) as snapshot,
            await connect_source(config) as lookups,
        ):
            await begin_snapshot(snapshot)  # before the stream is read: see bridge/audit.py
            now = await server_now(snapshot)
            window = Window(
                now - timedelta(seconds=config.audit.window),
                now - timedelta(seconds=config.audit.settle),
            )
            return await audit_outbox(
                nc.jetstream(),
                config.nats.stream.name,
                source,
                snapshot,
                lookups,
                tables=tables,
                id_column=id_column,
                window=window,
                chunk=SORT_CHUNK,
            )
    finally:
        await close_failed_client(nc, timeout=5.0)  # bounded: a dead server never answers


def report(result: AuditResult, metrics: Metrics, took: float) -> None:
    metrics.audited(result.missing, result.duplicated)
    window = result.window
    log.info(
        "audit",
        rows=result.rows,
        messages=result.ours,
        missing=result.missing,
        duplicated=result.duplicated,
        out_of_order=result.out_of_order,
        unretained=result.unretained,
        outside_retention=result.outside_retention,
        window_from=None if window.start is None else window.start.isoformat(),
        window_until=None if window.end is None else window.end.isoformat(),
        took=round(took, 3),
    )
    if result.clean:
        return
    log.warning(
        "audit_found_gaps",
        stream=result.stream,
        missing=result.missing,
        missing_ids=result.missing_ids[:SHOWN_IDS],
        duplicated=result.duplicated,
        duplicated_ids=result.duplicated_ids[:SHOWN_IDS],
        repair=REPAIR if result.missing else None,
    )
