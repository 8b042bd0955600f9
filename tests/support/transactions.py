"""Source transactions of known shapes, for the tests of transaction boundaries
(``Cdc-Tx-Last``): sizes 1, 3 and 50, and dead letters first and last."""

from __future__ import annotations

from typing import Any

from support.outbox import Event, bridge_config, insert_events


def boundaries_config(
    pg_dsn: str, nats_url: str, u: str, *, atomic: bool | None = None
) -> dict[str, Any]:
    """Tickets go to ``<u>.ticket.<event_type>``; any other aggregate_type matches no
    route (a dead letter made by the router); ``stray`` rows go to a subject no stream
    captures (a dead letter made by the publisher, once JetStream has no responders).
    ``atomic``: nats.atomic_transactions (None: the default, auto)."""
    routes = [
        {"when": {"aggregate_type": "ticket"}, "subject": f"{u}.ticket.{{event_type}}"},
        {"when": {"aggregate_type": "stray"}, "subject": f"other{u}.stray"},
    ]
    config = bridge_config(pg_dsn, nats_url, u, routes=routes)
    config["dead_letter"] = {"subject": f"{u}.dlq"}
    if atomic is not None:
        config["nats"]["atomic_transactions"] = atomic
    return config


def ticket(n: int) -> Event:
    return Event(event_type=f"e{n % 3}", payload={"n": n})


def unrouted() -> Event:
    return Event(aggregate_type="unrouted", payload={"p": "no route"})


def commit_transactions(dsn: str, *, stray_last: bool = False) -> list[list[str]]:
    """Commit the transactions one after another; the ids of each, in insert order.

    ``stray_last`` adds a last transaction ending with a row JetStream has no stream for:
    its dead letter is published only after the refusal, so it may be stored after
    later transactions' events (hence last, where nothing comes after it)."""
    shapes = [
        [ticket(0)],
        [ticket(n) for n in range(3)],
        [ticket(n) for n in range(50)],
        [ticket(0), ticket(1), unrouted()],  # a dead letter is the last event
        [unrouted(), ticket(0)],  # ... and the first
        [ticket(7)],
    ]
    if stray_last:
        shapes.append([ticket(0), Event(aggregate_type="stray")])
    return [insert_events(dsn, rows) for rows in shapes]
