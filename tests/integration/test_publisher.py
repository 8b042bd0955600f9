"""The publisher's I/O shell against a real nats-server: what it reports, not calls back.

Duplicates come back as values (``already_stored``) for the session to remember, and a
message no stream captures is replaced by the dead letter the policy (built from the
routing config) gives for it, counted through the observer.
"""

from __future__ import annotations

import json

import nats
from nats.aio.client import Client as NatsClient

from cdc_bridge.config.load import parse_config
from cdc_bridge.core.headers import header_lines
from cdc_bridge.core.tracker import LsnTracker, Transaction
from cdc_bridge.routing.dead_letters import DeadLetterPolicy
from cdc_bridge.routing.router import Router
from cdc_bridge.sink.ordering import OrderGuard
from cdc_bridge.sink.publisher import JetStreamPublisher

CONFIG = """
postgres: {{dsn: "postgresql://u@localhost/db", slot: s, publication: p}}
nats: {{servers: ["{url}"], stream: {{name: {stream}, subjects: ["{prefix}.>"]}}}}
outbox: {{table: public.outbox}}
routes:
  - subject: "{prefix}.{{aggregate_type}}"
dead_letter: {{subject: "{prefix}.dlq"}}
"""


class Observed:
    def __init__(self) -> None:
        self.acked_per_route: dict[str, int] = {}
        self.transactions: list[Transaction] = []
        self.dead_letters: list[tuple[str, str]] = []

    def acked(self, route: str, count: int) -> None:
        self.acked_per_route[route] = self.acked_per_route.get(route, 0) + count

    def transaction_acked(self, tx: Transaction) -> None:
        self.transactions.append(tx)

    def dead_lettered(self, msg_id: str, reason: str) -> None:
        self.dead_letters.append((msg_id, reason))


def bridge_headers(msg_id: str, index: int = 0) -> dict[str, str]:
    return {
        "Nats-Msg-Id": msg_id,
        "Cdc-Lsn": "0/16B3748",
        "Cdc-Index": str(index),
        "Cdc-Table": "public.outbox",
        "Cdc-Source": "7301/s",
    }


async def publisher_for(
    nc: NatsClient, url: str, prefix: str, *, chained: bool
) -> tuple[JetStreamPublisher, LsnTracker, Observed]:
    stream = prefix.upper()
    await nc.jetstream().add_stream(name=stream, subjects=[f"{prefix}.>"])
    config = parse_config(CONFIG.format(url=url, stream=stream, prefix=prefix), env={})
    tracker = LsnTracker(0)
    observed = Observed()
    publisher = JetStreamPublisher(
        nc,
        tracker,
        max_in_flight=100,
        ack_timeout=5,
        dead_letters=DeadLetterPolicy(Router(config)),
        guard=OrderGuard((f"{prefix}.>",), 0) if chained else None,
        observer=observed,
        careful_start=True,
    )
    await publisher.start()
    return publisher, tracker, observed


async def test_a_duplicate_is_reported_as_already_stored(nats_url: str, unique_name: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, observed = await publisher_for(
            nc, nats_url, unique_name, chained=True
        )
        tx = tracker.begin(0x16B3748)
        for index, msg_id in enumerate(["a", "b", "a"]):  # "a" twice: JetStream drops one
            headers = bridge_headers(msg_id, index)
            subject = f"{unique_name}.x"
            publisher.publish(subject, b"{}", header_lines(headers), tx, "r", msg_id)
        tracker.commit(tx, 0x16B3800)
        publisher.committed(tx)
        await publisher.flush()
        assert await publisher.wait_empty(5)
        assert publisher.already_stored == [bridge_headers("a", 2)]
        assert tracker.confirmed == 0x16B3800
        assert observed.acked_per_route == {"r": 3} and observed.transactions == [tx]
        await publisher.close()
    finally:
        await nc.close()


async def test_a_subject_no_stream_captures_is_replaced_by_its_dead_letter(
    nats_url: str, unique_name: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, observed = await publisher_for(
            nc, nats_url, unique_name, chained=False
        )
        tx = tracker.begin(0x16B3748)
        nowhere = f"{unique_name}nowhere.x"
        publisher.publish(nowhere, b'{"a":1}', header_lines(bridge_headers("m1")), tx, "r", "m1")
        tracker.commit(tx, 0x16B3800)
        await publisher.flush()
        assert await publisher.wait_empty(5)
        assert tracker.confirmed == 0x16B3800
        reason = f"no stream captures subject {nowhere}"
        assert observed.dead_letters == [("m1", reason)]
        assert observed.acked_per_route == {"dead_letter": 1}
        stored = await nc.jetstream().get_last_msg(unique_name.upper(), f"{unique_name}.dlq")
        assert stored.data == b'{"a":1}'
        assert stored.headers is not None
        assert stored.headers["Cdc-Error"] == reason
        assert stored.headers["Cdc-Subject"] == nowhere
        assert stored.headers["Nats-Msg-Id"] == "m1"
        assert json.loads(stored.data) == {"a": 1}
        await publisher.close()
    finally:
        await nc.close()
