"""cdc_bridge.inbox behind a real bridge: the groups its handler gets are the producer's
transactions (all subjects, and a subset whose Cdc-Tx-Last may be elsewhere), applied
once each, one consumer transaction per source transaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import nats
import psycopg
from support.bridge import MakeBridge, start_bridge
from support.inbox import applied_rows, prepare_database, write_applied
from support.outbox import wait_for_ids
from support.transactions import boundaries_config, commit_transactions
from support.waiting import wait_until_async

from cdc_bridge.inbox import Event, Inbox

TIMEOUT = 60.0


async def consume_groups(
    nats_url: str, dsn: str, stream: str, durable: str, subjects: list[str], count: int
) -> list[list[str]]:
    """The ids of each group the handler got, once ``count`` groups were applied."""
    groups: list[list[str]] = []

    async def handler(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
        await write_applied(conn, events)
        groups.append([event.msg_id for event in events])

    nc = await nats.connect(nats_url)
    stop = asyncio.Event()
    inbox = Inbox(nc, dsn, stream=stream, durable=durable, subjects=subjects, handler=handler)
    task = asyncio.create_task(inbox.run(stop))
    try:
        await wait_until_async(lambda: len(groups) >= count, timeout=TIMEOUT)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, TIMEOUT)
        await nc.close()
    return groups


async def test_the_handler_gets_the_producer_transactions(
    pg_dsn: str, nats_url: str, unique_name: str, make_bridge: MakeBridge
) -> None:
    u, stream = unique_name, unique_name.upper()
    start_bridge(make_bridge, boundaries_config(pg_dsn, nats_url, u))
    transactions = commit_transactions(pg_dsn)
    await asyncio.to_thread(wait_for_ids, nats_url, stream, [i for tx in transactions for i in tx])
    prepare_database(pg_dsn)  # the consumer's tables, here in the producer's database

    groups = await consume_groups(nats_url, pg_dsn, stream, "all", [f"{u}.>"], len(transactions))
    assert groups == transactions
    rows = applied_rows(pg_dsn)
    txids = {}
    for msg_id, _lsn, _seq, txid in rows:
        txids[msg_id] = txid
    for tx in transactions:
        assert len({txids[i] for i in tx}) == 1  # one consumer transaction each

    # Tickets only: a transaction whose last event is a dead letter ends where the next
    # transaction's Cdc-Lsn starts; the dead letter that came first is not seen at all.
    tickets = await consume_groups(
        nats_url, pg_dsn, stream, "tickets", [f"{u}.ticket.*"], len(transactions)
    )
    assert tickets == [
        transactions[0], transactions[1], transactions[2], transactions[3][:2],
        transactions[4][1:], transactions[5],
    ]  # fmt: skip
