"""A consumer keeping its own copy of the tickets, from the TICKETS JetStream stream.

It uses ``cdc_bridge.inbox``, the consumer side of the library: its copy lives in a
PostgreSQL database of its own (table ``tickets``, and the inbox's ``cdc_inbox*`` tables).
Each event is applied once, in the transaction that records its ``Nats-Msg-Id``, and
acknowledged only after the commit: a crash, a redelivery or a replay changes nothing.
Every event carries the whole ticket with its version, and an older version never
overwrites a newer one, so the copy is right whatever came first.

    python consumer.py --nats nats://127.0.0.1:4222 --dsn postgresql://app@127.0.0.1/tickets_copy

SIGTERM or Ctrl-C stops it after the transaction it is applying.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import psycopg
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from cdc_bridge.inbox import Event, Inbox, create_inbox_tables

STREAM = "TICKETS"
DURABLE = "tickets-copy"
SUBJECTS = ["tickets.events.*"]  # created and updated (bridge.yaml's routes)
RETRY_PAUSE = 0.5  # between attempts while NATS or the stream is not there (yet)

SCHEMA = """
CREATE TABLE IF NOT EXISTS public.tickets (
    id      text    PRIMARY KEY,
    title   text    NOT NULL,
    status  text    NOT NULL,
    version integer NOT NULL
)
"""


async def apply_tickets(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
    """The handler: one source transaction's events, in the inbox's transaction."""
    for event in events:
        ticket = json.loads(event.data)  # not a ticket: retried, then parked
        # Created and updated carry the same whole ticket: one upsert serves both.
        await conn.execute(
            "INSERT INTO public.tickets (id, title, status, version) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET title = excluded.title,"
            " status = excluded.status, version = excluded.version"
            " WHERE excluded.version > tickets.version",
            (ticket["id"], ticket["title"], ticket["status"], ticket["version"]),
        )


async def print_applied(events: Sequence[Event]) -> None:
    for event in events:
        print(
            f"consumer: applied {event.subject} #{event.stream_seq} id={event.msg_id}", flush=True
        )


async def connect(url: str, stop: asyncio.Event) -> Client | None:
    """Connect, trying again until NATS answers (or ``stop``); reconnects forever after."""
    while not stop.is_set():
        try:
            return await nats.connect(
                url,
                connect_timeout=2,
                reconnect_time_wait=RETRY_PAUSE,
                max_reconnect_attempts=-1,
                error_cb=_nats_error,
            )
        except (OSError, nats.errors.Error, TimeoutError):
            await _pause(stop)
    return None


async def _nats_error(exc: Exception) -> None:
    # One line while NATS is away (nats-py would log a traceback per attempt).
    print(f"consumer: NATS: {type(exc).__name__}: {exc}", flush=True)


async def wait_for_stream(nc: Client, stream: str, stop: asyncio.Event) -> bool:
    """Until the bridge has created the stream (``cdc-bridge init`` or its first start)."""
    while not stop.is_set():
        try:
            await nc.jetstream().stream_info(stream)
            return True
        except (NotFoundError, nats.errors.Error, TimeoutError):
            await _pause(stop)
    return False


async def run_consumer(
    url: str, dsn: str, stop: asyncio.Event, *, stream: str = STREAM, durable: str = DURABLE
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await create_inbox_tables(conn)
        await conn.execute(SCHEMA)
    nc = await connect(url, stop)
    if nc is None:
        return
    try:
        if await wait_for_stream(nc, stream, stop):
            inbox = Inbox(
                nc, dsn, stream=stream, durable=durable, subjects=SUBJECTS,
                handler=apply_tickets, after_commit=print_applied,
            )  # fmt: skip
            await inbox.run(stop)
    finally:
        await nc.close()


async def _pause(stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), RETRY_PAUSE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The tickets consumer of examples/tickets.")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--dsn", required=True, help="the copy's PostgreSQL database")
    parser.add_argument("--stream", default=STREAM)
    parser.add_argument("--durable", default=DURABLE, help="the durable consumer's name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"consumer: reading {args.stream} as {args.durable}", flush=True)
        await run_consumer(args.nats, args.dsn, stop, stream=args.stream, durable=args.durable)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
