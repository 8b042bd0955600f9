"""`cdc-bridge dev --demo`: a producer writing ticket events, and a tap printing them."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys

import nats
import psycopg
from nats.aio.msg import Msg

_EVENT_SQL = """
INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload, headers)
VALUES ('ticket', %s, %s, %s, %s)
"""


async def produce_tickets(dsn: str, interval: float = 1.0) -> None:
    """Every ``interval``: one transaction that saves a ticket change and its event."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for number in itertools.count(1):
            ticket = f"T-{number:05d}"
            async with conn.transaction():
                for event_type in ("created", "assigned") if number % 3 else ("created",):
                    payload = {
                        "ticket": ticket,
                        "title": f"Demo ticket {number}",
                        "assignee": random.choice(["ana", "bo", "chen"]),
                    }
                    await conn.execute(
                        _EVENT_SQL,
                        (ticket, event_type, json.dumps(payload), json.dumps({"source": "demo"})),
                    )
            await asyncio.sleep(interval)


async def print_events(url: str, subject: str = "events.>") -> None:
    """Show what arrives on NATS, one line per event, as a consumer would see it."""
    nc = await nats.connect(url)

    async def show(msg: Msg) -> None:
        headers = msg.headers or {}
        print(
            f"  <- {msg.subject}  id={headers.get('Nats-Msg-Id', '?')[:8]}  "
            f"lsn={headers.get('Cdc-Lsn', '?')}  {msg.data.decode(errors='replace')}",
            file=sys.stdout,
            flush=True,
        )

    await nc.subscribe(subject, cb=show)
    try:
        await asyncio.Event().wait()
    finally:
        await nc.close()


if __name__ == "__main__":
    # `python -m cdc_bridge.dev.demo`: the docker-compose demo producer. Settings come from the
    # environment, like the bridge's own DSN (${CDC_BRIDGE_DSN} in its config).
    import os

    dsn = os.environ.get("CDC_BRIDGE_DSN")
    if not dsn:
        sys.exit("cdc_bridge.dev.demo: set CDC_BRIDGE_DSN to the outbox database's DSN")
    interval = float(os.environ.get("CDC_BRIDGE_DEMO_INTERVAL", "1"))
    print(f"cdc_bridge.dev.demo: one ticket transaction every {interval:g}s", flush=True)
    asyncio.run(produce_tickets(dsn, interval))
