"""Helpers for the inbox tests: a stream of source transactions published as the bridge
would (its headers), a handler that writes what it applies, and what that table holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import psycopg
from nats.aio.client import Client
from nats.js.api import StreamConfig

from cdc_bridge.inbox import Event, Inbox, create_inbox_tables_sync
from support.waiting import wait_until_async

# The consumer's own table: one row per event its handler applied, with the id of the
# consumer transaction that applied it. No unique key, so a double apply shows.
APPLIED_TABLE = """
CREATE TABLE IF NOT EXISTS applied (
    n          bigint GENERATED ALWAYS AS IDENTITY,  -- the order they were applied in
    msg_id     text   NOT NULL,
    lsn        text,
    stream_seq bigint NOT NULL,
    txid       bigint NOT NULL DEFAULT txid_current()
)
"""


@dataclass(frozen=True, slots=True)
class SourceTx:
    """A source transaction as the bridge publishes it: its LSN and its events' ids and
    subjects, in order."""

    lsn: str
    ids: tuple[str, ...]
    subjects: tuple[str, ...]


def make_transactions(prefix: str, sizes: Sequence[int], *, first: int = 1) -> list[SourceTx]:
    """Transactions of the given sizes; events alternate between two subjects."""
    txs = []
    for number, size in enumerate(sizes, start=first):
        ids = tuple(f"{prefix}-{number}-{index}" for index in range(size))
        subjects = tuple(f"{prefix}.{'a' if index % 2 == 0 else 'b'}" for index in range(size))
        txs.append(SourceTx(f"0/{number * 0x100:X}", ids, subjects))
    return txs


async def create_stream(nc: Client, stream: str, prefix: str, **config: Any) -> None:
    await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"], **config))


async def publish(nc: Client, txs: Sequence[SourceTx]) -> None:
    """Publish the transactions with the bridge's headers (Nats-Msg-Id, Cdc-Lsn,
    Cdc-Index, Cdc-Tx-Last on the last), each stored before the next is sent."""
    js = nc.jetstream()
    for tx in txs:
        for index, (msg_id, subject) in enumerate(zip(tx.ids, tx.subjects, strict=True)):
            headers = {"Nats-Msg-Id": msg_id, "Cdc-Lsn": tx.lsn, "Cdc-Index": str(index)}
            if index == len(tx.ids) - 1:
                headers["Cdc-Tx-Last"] = "true"
            await js.publish(subject, msg_id.encode(), headers=headers)


def publish_sync(url: str, txs: Sequence[SourceTx]) -> None:
    async def run() -> None:
        nc = await nats.connect(url)
        try:
            await publish(nc, txs)
        finally:
            await nc.close()

    asyncio.run(run())


def prepare_database(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_inbox_tables_sync(conn)
        conn.execute(APPLIED_TABLE)


async def write_applied(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
    """The tests' handler: one row per event, in the inbox's transaction."""
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO applied (msg_id, lsn, stream_seq) VALUES (%s, %s, %s)",
            [(e.msg_id, e.cdc_lsn, e.stream_seq) for e in events],
        )


def applied_rows(dsn: str) -> list[tuple[str, str | None, int, int]]:
    """(msg_id, lsn, stream_seq, txid) of every applied row, in the order applied."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT msg_id, lsn, stream_seq, txid FROM applied ORDER BY n"
        ).fetchall()


def applied_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM applied").fetchone()
        return int(row[0]) if row else 0


def check_exactly_once_and_whole(dsn: str, txs: Sequence[SourceTx]) -> None:
    """Every event applied exactly once, in stream order, each source transaction in one
    consumer transaction that holds nothing else."""
    rows = applied_rows(dsn)
    ids = [row[0] for row in rows]
    expected = [msg_id for tx in txs for msg_id in tx.ids]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicated, f"applied more than once: {duplicated[:10]}"
    assert sorted(ids) == sorted(expected), "not every event applied"
    assert ids == expected, "not applied in stream order"
    by_tx: dict[int, set[str]] = {}
    by_lsn: dict[str | None, set[int]] = {}
    for _msg_id, lsn, _seq, txid in rows:
        by_tx.setdefault(txid, set()).add(str(lsn))
        by_lsn.setdefault(lsn, set()).add(txid)
    split = {lsn: txids for lsn, txids in by_lsn.items() if len(txids) > 1}
    assert not split, f"source transactions applied in several consumer transactions: {split}"
    mixed = {txid: lsns for txid, lsns in by_tx.items() if len(lsns) > 1}
    assert not mixed, f"consumer transactions holding several source transactions: {mixed}"


TIMEOUT = 60.0  # the machine is shared: generous, never a measure of speed


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def running(inbox: Inbox) -> AsyncIterator[tuple[asyncio.Task[None], asyncio.Event]]:
    """The inbox running in a task; stopped (and awaited) on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(inbox.run(stop))
    try:
        yield task, stop
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, TIMEOUT)


async def all_applied(dsn: str, txs: Sequence[SourceTx]) -> None:
    total = sum(len(tx.ids) for tx in txs)
    await wait_until_async(
        lambda: applied_count(dsn) >= total, timeout=TIMEOUT, message=f"{total} events applied"
    )
