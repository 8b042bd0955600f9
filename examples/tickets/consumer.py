"""A consumer keeping its own copy of the tickets, from the TICKETS JetStream stream.

It reads with a durable pull consumer (JetStream remembers how far it got, across
restarts of either side) and is idempotent twice over:

- by ``Nats-Msg-Id``: each message's id is recorded in the same SQLite transaction that
  applies it, and a message whose id is already recorded is acknowledged and skipped.
  A crash between that commit and the ack, or a redelivery, changes nothing.
- by version: every event carries the whole ticket with its version, and an older
  version never overwrites a newer one.

Acknowledged only after the SQLite commit: a message the consumer could not store is
delivered again. Its copy lives in a SQLite file (WAL mode, so others may read it while
it runs): tables ``tickets`` and ``processed_messages``.

    python consumer.py --nats nats://127.0.0.1:4222 --db tickets-copy.sqlite3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

STREAM = "TICKETS"
DURABLE = "tickets-copy"
SUBJECTS = "tickets.events.*"  # created and updated (bridge.yaml's routes)
RETRY_PAUSE = 0.5  # between attempts while NATS or the stream is not there (yet)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    id      TEXT    PRIMARY KEY,
    title   TEXT    NOT NULL,
    status  TEXT    NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS processed_messages (
    msg_id       TEXT    PRIMARY KEY,
    stream_seq   INTEGER NOT NULL,
    processed_at TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
);
"""


def open_copy(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit below
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def apply_message(db: sqlite3.Connection, msg_id: str, stream_seq: int, data: bytes) -> bool:
    """Store one event in the copy, once; False if this id was processed before."""
    ticket = json.loads(data)
    db.execute("BEGIN IMMEDIATE")
    try:
        first_time = db.execute(
            "INSERT INTO processed_messages (msg_id, stream_seq) VALUES (?, ?)"
            " ON CONFLICT (msg_id) DO NOTHING",
            (msg_id, stream_seq),
        ).rowcount
        if first_time:
            # Created and updated carry the same whole ticket: one upsert serves both.
            db.execute(
                "INSERT INTO tickets (id, title, status, version) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET title = excluded.title,"
                " status = excluded.status, version = excluded.version"
                " WHERE excluded.version > tickets.version",
                (ticket["id"], ticket["title"], ticket["status"], ticket["version"]),
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return bool(first_time)


async def connect(url: str, stop: asyncio.Event) -> Client | None:
    """Connect, trying again until NATS answers (or ``stop``); reconnects forever after."""
    while not stop.is_set():
        try:
            return await nats.connect(
                url,
                connect_timeout=2,
                reconnect_time_wait=RETRY_PAUSE,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
            )
        except (OSError, nats.errors.Error, TimeoutError):
            await _pause(stop)
    return None


async def subscribe(
    js: JetStreamContext, stop: asyncio.Event, stream: str, durable: str
) -> JetStreamContext.PullSubscription | None:
    """The durable pull subscription, once the bridge has created the stream."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=30
    )
    while not stop.is_set():
        try:
            return await js.pull_subscribe(SUBJECTS, durable=durable, stream=stream, config=config)
        except (NotFoundError, nats.errors.Error, TimeoutError):
            await _pause(stop)
    return None


async def run_consumer(
    url: str,
    db_path: Path,
    stop: asyncio.Event,
    *,
    stream: str = STREAM,
    durable: str = DURABLE,
) -> None:
    db = open_copy(db_path)
    client = await connect(url, stop)
    try:
        if client is None:
            return
        subscription = await subscribe(client.jetstream(), stop, stream, durable)
        while subscription is not None and not stop.is_set():
            try:
                messages = await subscription.fetch(batch=100, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nothing new, or NATS is away: the client reconnects by itself
            except nats.errors.Error as exc:
                print(f"consumer: fetch failed ({type(exc).__name__}), retrying", flush=True)
                await _pause(stop)
                continue
            for msg in messages:
                await handle(db, msg)
    finally:
        if client is not None:
            await client.close()
        db.close()


async def handle(db: sqlite3.Connection, msg: Msg) -> None:
    headers = msg.headers or {}
    stream_seq = msg.metadata.sequence.stream
    msg_id = headers.get("Nats-Msg-Id") or f"seq-{stream_seq}"
    try:
        fresh = apply_message(db, msg_id, stream_seq, msg.data)
    except (ValueError, KeyError, TypeError) as exc:
        # Not a ticket: never deliver it again (a real service would dead-letter it).
        print(f"consumer: {msg.subject} #{stream_seq} is not a ticket ({exc!r})", flush=True)
        await msg.term()
        return
    verb = "applied" if fresh else "skipped duplicate"
    print(f"consumer: {verb} {msg.subject} #{stream_seq} id={msg_id}", flush=True)
    await msg.ack()


async def _pause(stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), RETRY_PAUSE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The tickets consumer of examples/tickets.")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--db", default="tickets-copy.sqlite3", help="the copy's SQLite file")
    parser.add_argument("--stream", default=STREAM)
    parser.add_argument("--durable", default=DURABLE, help="the durable consumer's name")
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(f"consumer: reading {args.stream} as {args.durable} into {args.db}", flush=True)
        await run_consumer(args.nats, Path(args.db), stop, stream=args.stream, durable=args.durable)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
