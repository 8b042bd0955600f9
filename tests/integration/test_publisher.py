"""The publisher's I/O shell against a real nats-server: what it reports, not calls back.

Duplicates come back as values (``already_stored``) for the session to remember, and a
message no stream captures is replaced by the dead letter the policy (built from the
routing config) gives for it, counted through the observer.
"""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.aio.client import Client as NatsClient
from support.nats_helpers import Observed

from cdc_bridge.config.load import parse_config
from cdc_bridge.core.headers import header_lines
from cdc_bridge.core.tracker import LsnTracker
from cdc_bridge.routing.dead_letters import DeadLetterPolicy
from cdc_bridge.routing.router import Router
from cdc_bridge.sink.ordering import OrderGuard
from cdc_bridge.sink.publisher import JetStreamPublisher, PublishError

CONFIG = """
postgres: {{dsn: "postgresql://u@localhost/db", slot: s, publication: p}}
nats: {{servers: ["{url}"], stream: {{name: {stream}, subjects: ["{prefix}.>"]}}}}
outbox: {{table: public.outbox}}
routes:
  - subject: "{prefix}.{{aggregate_type}}"
dead_letter: {{subject: "{prefix}.dlq"}}
"""


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
        publisher, tracker, observed = await publisher_for(nc, nats_url, unique_name, chained=True)
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
        publisher, tracker, observed = await publisher_for(nc, nats_url, unique_name, chained=False)
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


# --- a subject space shared with other writers (issue 17) ----------------------------


async def _publish_one_by_one(
    nc: NatsClient, guard: OrderGuard, prefix: str, count: int
) -> tuple[JetStreamPublisher, LsnTracker]:
    """``count`` one-event transactions into ``prefix``.ours.x, each acked before the next
    (a bridge at a steady, modest rate), while another client writes ``prefix``.other.x
    as fast as it can."""
    config = parse_config(CONFIG.format(url="nats://x", stream="S", prefix=prefix), env={})
    tracker = LsnTracker(0)
    publisher = JetStreamPublisher(
        nc,
        tracker,
        max_in_flight=100,
        ack_timeout=5,
        dead_letters=DeadLetterPolicy(Router(config)),
        guard=guard,
        careful_start=False,
    )
    await publisher.start()
    stop = asyncio.Event()

    async def other_writer() -> None:
        other = await nats.connect(nc.connected_url.geturl() if nc.connected_url else "")
        try:
            while not stop.is_set():
                for _ in range(20):
                    await other.publish(f"{prefix}.other.x", b"{}")
                await other.flush()
        finally:
            await other.close()

    writer = asyncio.create_task(other_writer())
    try:
        for n in range(count):
            lsn = 0x1000 + n * 0x10
            tx = tracker.begin(lsn)
            headers = bridge_headers(f"m{n}") | {"Cdc-Lsn": f"0/{lsn:X}"}
            publisher.publish(f"{prefix}.ours.x", b"{}", header_lines(headers), tx, "r", f"m{n}")
            tracker.commit(tx, lsn + 8)
            await publisher.flush()
            if not await publisher.wait_empty(5):
                break
            await asyncio.sleep(0.002)
    finally:
        stop.set()
        await writer
    return publisher, tracker


async def test_a_writer_outside_the_subject_space_never_breaks_the_order_guard(
    nats_url: str, unique_name: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=unique_name.upper(), subjects=[f"{unique_name}.>"])
        guard = OrderGuard((f"{unique_name}.>",), 0, space=f"{unique_name}.ours.>")
        publisher, tracker = await _publish_one_by_one(nc, guard, unique_name, 200)
        assert not publisher.failed.done(), publisher.failed.exception()
        assert tracker.confirmed == 0x1000 + 199 * 0x10 + 8
        info = await js.stream_info(unique_name.upper(), subjects_filter=f"{unique_name}.>")
        assert info.state.subjects is not None
        assert info.state.subjects[f"{unique_name}.ours.x"] == 200
        assert info.state.subjects[f"{unique_name}.other.x"] > 200  # really interleaved
        await publisher.close()
    finally:
        await nc.close()


async def test_the_stream_wide_guard_breaks_on_another_writer(
    nats_url: str, unique_name: str
) -> None:
    # What the subject space fixes (and what servers before 2.11 still get).
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(name=unique_name.upper(), subjects=[f"{unique_name}.>"])
        guard = OrderGuard((f"{unique_name}.>",), 0)
        publisher, _ = await _publish_one_by_one(nc, guard, unique_name, 200)
        assert publisher.failed.done()
        with pytest.raises(PublishError, match="wrong last"):
            publisher.failed.result()
        await publisher.close()
    finally:
        await nc.close()
