"""Pruning ``cdc_inbox``: forgetting the ids that can no longer come back.

An id is kept so that a second copy of its message is not applied again. A copy can come
back two ways: redelivered by JetStream (the inbox reads again from the position its
database holds, so only sequences above it), or published again by the bridge, which a
stream deduplicates by ``Nats-Msg-Id`` for its ``duplicate_window`` and stores again
after that. So a row may go once both hold: its sequence is at or below the consumer's
position, and it was recorded longer ago than the stream's duplicate window (it was
published before it was recorded). ``cdc-bridge outbox replay`` of rows older than that
does apply them again: replaying is asking for it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import psycopg
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from cdc_bridge.inbox import _tables

DEFAULT_BATCH_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What ``prune_inbox`` did (or, in a dry run, would do)."""

    consumer: str
    rows: int  # deleted, or that a dry run would delete
    recorded_before: datetime.datetime  # rows recorded before this (the database's clock)
    up_to_seq: int | None  # and at or below this stream sequence; None: no position here
    dry_run: bool
    why_none: str = ""  # when nothing could go: why


async def prune_inbox(
    conn: psycopg.AsyncConnection[Any],
    nc_or_js: Client | JetStreamContext,
    *,
    stream: str,
    consumer: str,
    older_than: datetime.timedelta | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PruneResult:
    """Delete ``consumer``'s inbox rows that cannot be delivered to it again.

    The horizon is computed here: rows recorded longer ago than ``stream``'s
    ``duplicate_window`` (or ``older_than``, if longer) and at or below the consumer's
    position in that stream (``cdc_inbox_position``). A consumer with no position, or a
    position in another stream (deleted and made again), has nothing pruned. Deletes in
    transactions of ``batch_size`` rows; ``dry_run`` only counts.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be 1 or more")
    js = nc_or_js.jetstream() if isinstance(nc_or_js, Client) else nc_or_js
    info = await js.stream_info(stream)
    window = datetime.timedelta(seconds=info.config.duplicate_window or 0)
    keep = max(window, older_than or datetime.timedelta(0))
    cursor = await conn.execute("SELECT now() - %s::interval", (keep,))
    row = await cursor.fetchone()
    assert row is not None
    before: datetime.datetime = row[0]
    position = await _tables.read_position(conn, consumer)
    if position is None or position.stream != stream:
        where = "" if position is None else f" (its position is in stream {position.stream})"
        why = f"consumer {consumer} has no position in stream {stream}{where}"
        return PruneResult(consumer, 0, before, None, dry_run, why)
    if position.stream_created != info.created:
        why = (
            f"consumer {consumer}'s position is in an earlier stream {stream} (deleted and"
            " made again); it has not read this one yet"
        )
        return PruneResult(consumer, 0, before, None, dry_run, why)
    seq = position.stream_seq
    if dry_run:
        rows = await _count(conn, consumer, seq, before)
    else:
        rows = await _delete(conn, consumer, seq, before, batch_size)
    return PruneResult(consumer, rows, before, seq, dry_run)


_WHERE = "consumer = %(consumer)s AND stream_seq <= %(seq)s AND applied_at < %(before)s"


async def _count(
    conn: psycopg.AsyncConnection[Any], consumer: str, seq: int, before: datetime.datetime
) -> int:
    cursor = await conn.execute(
        f"SELECT count(*) FROM public.cdc_inbox WHERE {_WHERE}",
        {"consumer": consumer, "seq": seq, "before": before},
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _delete(
    conn: psycopg.AsyncConnection[Any],
    consumer: str,
    seq: int,
    before: datetime.datetime,
    batch_size: int,
) -> int:
    params = {"consumer": consumer, "seq": seq, "before": before, "limit": batch_size}
    deleted = 0
    while True:
        async with conn.transaction():
            cursor = await conn.execute(
                "DELETE FROM public.cdc_inbox WHERE (consumer, msg_id) IN ("
                f"SELECT consumer, msg_id FROM public.cdc_inbox WHERE {_WHERE}"
                " LIMIT %(limit)s)",
                params,
            )
        deleted += cursor.rowcount
        if cursor.rowcount < batch_size:
            return deleted
