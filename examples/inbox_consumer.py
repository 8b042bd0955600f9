"""The consumer side in a few lines: cdc_bridge.inbox copying events into PostgreSQL.

    python examples/inbox_consumer.py  (NATS_URL, INBOX_DSN, STREAM, SUBJECTS in the env)

Each event is applied once, each source transaction whole, in stream order; SIGTERM or
Ctrl-C stops it after the transaction it is applying. docs/application.md explains it.
"""

import asyncio
import os
import signal

import nats
import psycopg

from cdc_bridge.inbox import Inbox, create_inbox_tables

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
DSN = os.environ.get("INBOX_DSN", "postgresql://app@127.0.0.1/app_copy")
STREAM = os.environ.get("STREAM", "TICKETS")
SUBJECTS = os.environ.get("SUBJECTS", "tickets.events.*").split(",")
TABLE = "CREATE TABLE IF NOT EXISTS events_copy (msg_id text PRIMARY KEY, subject text, data text)"


async def handle(conn, events):
    """One source transaction's events, in a transaction the inbox commits."""
    for event in events:
        await conn.execute(
            "INSERT INTO events_copy (msg_id, subject, data) VALUES (%s, %s, %s)",
            (event.msg_id, event.subject, event.data.decode()),
        )


async def main():
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await create_inbox_tables(conn)  # the inbox's tables, and ours
        await conn.execute(TABLE)
    nc = await nats.connect(NATS_URL)
    inbox = Inbox(nc, DSN, stream=STREAM, durable="events-copy", subjects=SUBJECTS, handler=handle)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    await inbox.run(stop)
    await nc.close()


asyncio.run(main())
