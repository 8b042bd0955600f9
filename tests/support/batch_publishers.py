"""The batch publishers (atomic, fast-ingest) against a real nats-server, set up as the
session sets them up: a stream of their own, dead letters in a second stream, the
per-message publisher for what a batch cannot carry."""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from cdc_bridge.config.load import parse_config
from cdc_bridge.core.headers import header_lines
from cdc_bridge.core.tracker import LsnTracker, Transaction
from cdc_bridge.routing.dead_letters import DeadLetterPolicy
from cdc_bridge.routing.router import Router
from cdc_bridge.sink.atomic_publisher import AtomicPublisher
from cdc_bridge.sink.ordering import OrderGuard
from cdc_bridge.sink.publisher import JetStreamPublisher
from support.nats_helpers import Observed

SOURCE = "7301/s"

# Dead letters in a stream of their own (created by ``batch_publisher``).
CONFIG = """
postgres: {{dsn: "postgresql://u@localhost/db", slot: s, publication: p}}
nats: {{servers: ["nats://x"], stream: {{name: {stream}, subjects: ["{prefix}.>"]}}}}
outbox: {{table: public.outbox}}
routes:
  - subject: "{prefix}.{{aggregate_type}}"
dead_letter: {{subject: "{prefix}dlq.x"}}
"""

P = TypeVar("P", bound=AtomicPublisher)  # AtomicPublisher, or FastPublisher (a subclass)


async def batch_publisher(
    kind: type[P],
    nc: NatsClient,
    prefix: str,
    *,
    max_messages: int,
    space: str | None = None,
    last_seq: int = 0,
    max_msg_size: int | None = None,
    subjects: list[str] | None = None,
) -> tuple[P, LsnTracker, Observed]:
    """A started publisher of ``kind`` on a new stream ``prefix.upper()`` that allows its
    batches (``allow_atomic``, or ``allow_batched`` for fast ingest)."""
    stream = prefix.upper()
    subjects = subjects or [f"{prefix}.>"]
    atomic = kind is AtomicPublisher
    await nc.jetstream().add_stream(
        StreamConfig(
            name=stream,
            subjects=subjects,
            max_msg_size=max_msg_size,
            allow_atomic=True if atomic else None,
            allow_batched=None if atomic else True,
        )
    )
    await nc.jetstream().add_stream(name=f"{stream}DLQ", subjects=[f"{prefix}dlq.>"])
    config = parse_config(CONFIG.format(stream=stream, prefix=prefix), env={})
    tracker = LsnTracker(0)
    observed = Observed()
    policy = DeadLetterPolicy(Router(config))
    outside = JetStreamPublisher(
        nc, tracker, max_in_flight=100, ack_timeout=5, dead_letters=policy, observer=observed
    )
    publisher = kind(
        nc,
        tracker,
        max_messages=max_messages,
        ack_timeout=5,
        dead_letters=policy,
        guard=OrderGuard(tuple(subjects), last_seq, space),
        outside=outside,
        observer=observed,
    )
    await publisher.start()
    return publisher, tracker, observed


def publish_tx(
    publisher: AtomicPublisher,
    tracker: LsnTracker,
    lsn: int,
    events: list[tuple[str, str]],
    data: bytes = b"{}",
) -> Transaction:
    """One committed transaction of ``events`` (subject, msg id)."""
    tx = tracker.begin(lsn)
    for index, (subject, msg_id) in enumerate(events):
        headers = {
            "Nats-Msg-Id": msg_id,
            "Cdc-Lsn": f"0/{lsn:X}",
            "Cdc-Index": str(index),
            "Cdc-Table": "public.outbox",
            "Cdc-Source": SOURCE,
        }
        publisher.publish(subject, data, header_lines(headers), tx, "r", msg_id)
    tracker.commit(tx, lsn + 8)
    publisher.committed(tx)
    return tx


async def stored(nc: NatsClient, stream: str) -> list[tuple[int, str, str]]:
    """(sequence, subject, msg id) of every message in ``stream``."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    found: list[tuple[int, str, str]] = []
    if not info.state.messages:
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        found.append((seq, msg.subject or "", (msg.headers or {}).get("Nats-Msg-Id", "")))
    return found
