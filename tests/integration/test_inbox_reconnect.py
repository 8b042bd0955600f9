"""cdc_bridge.inbox losing its PostgreSQL connection mid-run: its backend terminated
(pg_terminate_backend) in the middle of a transaction and while idle, and its server
restarted. The inbox connects again by itself, takes the lock again, reads on from the
position in its database: every transaction applied once and whole, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from support.inbox import (
    TIMEOUT,
    all_applied,
    check_exactly_once_and_whole,
    connected,
    create_stream,
    make_transactions,
    prepare_database,
    publish,
    running,
    write_applied,
)

from cdc_bridge.dev.postgres_server import PostgresServer
from cdc_bridge.inbox import Event, Inbox

LOST = "lost the PostgreSQL connection"


async def terminate_applier(dsn: str) -> int:
    """End the backend holding the inbox's advisory lock in this database; its pid."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
        )
        rows = await cursor.fetchall()
    assert len(rows) == 1 and rows[0][1], rows
    return int(rows[0][0])


async def test_a_terminated_backend_mid_transaction_or_idle_applies_nothing_twice(
    pg_dsn: str, nats_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    txs = make_transactions(u, [2, 3, 4, 1, 5, 2, 3, 1, 2, 4, 3, 2])
    more = make_transactions(u, [3, 1, 2], first=len(txs) + 1)
    cut_in = {txs[2].lsn, txs[8].lsn}  # their first try loses the connection mid-way
    entered, terminated = asyncio.Event(), asyncio.Event()

    async def handler(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
        await write_applied(conn, events[:1])
        if events[0].cdc_lsn in cut_in:
            cut_in.discard(events[0].cdc_lsn)
            entered.set()
            await terminated.wait()
        await write_applied(conn, events[1:])  # fails if the backend is gone

    caplog.set_level(logging.INFO, logger="cdc_bridge.inbox")
    pids = []
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u)
        await publish(nc, txs)
        inbox = Inbox(nc, pg_dsn, stream=stream, durable="copy", handler=handler)
        async with running(inbox) as (task, _stop):
            for _ in range(2):
                await asyncio.wait_for(entered.wait(), TIMEOUT)
                entered.clear()
                pids.append(await terminate_applier(pg_dsn))
                terminated.set()
                await asyncio.sleep(0)
                terminated.clear()
            await all_applied(pg_dsn, txs)
            pids.append(await terminate_applier(pg_dsn))  # idle, waiting for messages
            await publish(nc, more)
            await all_applied(pg_dsn, txs + more)
            assert not task.done()
    check_exactly_once_and_whole(pg_dsn, txs + more)
    assert len(set(pids)) == 3  # a new backend each time
    lost = [r for r in caplog.records if LOST in r.getMessage()]
    assert len(lost) == 3 and all(r.levelno == logging.WARNING for r in lost)


async def test_a_restarted_server_is_connected_to_again(
    isolated_pg_server: PostgresServer,
    nats_url: str,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL stopped while transactions are being applied, down a while (failed
    connects, growing pauses), then started again."""
    u, stream = unique_name, unique_name.upper()
    dsn = await asyncio.to_thread(
        isolated_pg_server.create_database, f"db_{u}", outbox_schema=False
    )
    prepare_database(dsn)
    first = make_transactions(u, [3, 2, 4])
    during = make_transactions(u, [2, 5, 1, 3, 2, 4, 1, 2], first=4)
    after = make_transactions(u, [2, 3], first=12)

    async def slow(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
        await write_applied(conn, events)
        await asyncio.sleep(0.05)  # so that the stop is likely to land in a transaction

    caplog.set_level(logging.INFO, logger="cdc_bridge.inbox")
    async with connected(nats_url) as nc:
        await create_stream(nc, stream, u)
        inbox = Inbox(nc, dsn, stream=stream, durable="copy", handler=slow)
        async with running(inbox) as (task, _stop):
            await publish(nc, first)
            await all_applied(dsn, first)
            await publish(nc, during)
            await asyncio.to_thread(isolated_pg_server.stop, "fast")
            await asyncio.sleep(2.0)  # connects fail meanwhile
            await asyncio.to_thread(isolated_pg_server.start)
            await publish(nc, after)
            await all_applied(dsn, first + during + after)
            assert not task.done()
    check_exactly_once_and_whole(dsn, first + during + after)
    assert any(LOST in r.getMessage() for r in caplog.records)


async def test_a_first_connect_that_fails_raises(nats_url: str, unique_name: str) -> None:
    """Only a connection that worked is retried: a wrong DSN at the start is an error."""
    async with connected(nats_url) as nc:
        inbox = Inbox(
            nc, "postgresql://nobody@127.0.0.1:1/none", stream=unique_name.upper(),
            durable="copy", handler=write_applied,
        )  # fmt: skip
        with pytest.raises(psycopg.OperationalError):
            await asyncio.wait_for(inbox.run(), TIMEOUT)
