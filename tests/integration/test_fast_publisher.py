"""Per-message mode through fast-ingest batches against a real nats-server (2.14+).

Messages formed while a batch is in flight go in the next one, the order guard on each
batch's first message (subject-scoped: another writer outside the space never breaks
it), flow acks that settle a batch's head before its commit, a stale guard failing
the session with nothing stored, a duplicate skipped, a message JetStream can never
store dead-lettered, and another writer at full speed beside it.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client as NatsClient
from support.batch_publishers import SOURCE, batch_publisher, publish_tx, stored
from support.nats_helpers import Observed

from cdc_bridge.bridge.logs import configure_logging
from cdc_bridge.core.headers import header_lines
from cdc_bridge.core.tracker import LsnTracker
from cdc_bridge.sink.fast_batches import FastForming, parse_reply
from cdc_bridge.sink.fast_publisher import FastPublisher
from cdc_bridge.sink.publisher import PublishError


@pytest.fixture(autouse=True)
def daemon_logging() -> None:
    configure_logging("console", "warning")


async def fast_publisher(
    nc: NatsClient,
    prefix: str,
    *,
    max_messages: int = 4096,
    space: str | None = None,
    last_seq: int = 0,
    max_msg_size: int | None = None,
    subjects: list[str] | None = None,
) -> tuple[FastPublisher, LsnTracker, Observed]:
    return await batch_publisher(
        FastPublisher,
        nc,
        prefix,
        max_messages=max_messages,
        space=space,
        last_seq=last_seq,
        max_msg_size=max_msg_size,
        subjects=subjects,
    )


def test_replies_are_read_as_the_server_sends_them() -> None:
    """Shapes captured from nats-server 2.15.1."""
    assert parse_reply(b'{"type":"ack","seq":500,"msgs":500}').kind == "flow"
    done = parse_reply(b'{"stream":"P","seq":12,"batch":"b6","count":1}')
    assert (done.kind, done.seq, done.count) == ("done", 12, 1)
    err = parse_reply(
        b'{"type":"err","seq":2,"error":{"code":400,"err_code":10071,'
        b'"description":"wrong last sequence: 12"}}'
    )
    assert (err.kind, err.seq) == ("err", 2) and "10071" in err.error
    refused = parse_reply(
        b'{"error":{"code":400,"err_code":10208,"description":"batch publish ID unknown"},'
        b'"stream":"P","seq":0}'
    )
    assert refused.kind == "refused" and "10208" in refused.error
    assert parse_reply(b'{"type":"gap","last_seq":2,"seq":3}').kind == "gap"
    assert parse_reply(b"garbage").kind == "refused"


def test_a_fast_batch_takes_partial_transactions() -> None:
    forming = FastForming(3)
    assert forming.take() is None
    assert not forming.sendable


async def test_messages_go_in_order_in_one_fast_batch(nats_url: str, unique_name: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, observed = await fast_publisher(nc, unique_name)
        subject = f"{unique_name}.ev.x"
        txs = [
            publish_tx(publisher, tracker, 0x1000 * n, [(subject, f"t{n}m{i}") for i in range(3)])
            for n in range(1, 5)
        ]
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        ids = [msg_id for _, _, msg_id in await stored(nc, unique_name.upper())]
        assert ids == [f"t{n}m{i}" for n in range(1, 5) for i in range(3)]
        assert tracker.confirmed == 0x4008
        assert observed.transactions == txs and observed.batches == [12]
        # The next batch names the sequence the last one ended at.
        publish_tx(publisher, tracker, 0x5000, [(subject, "e1"), (subject, "e2")])
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        assert tracker.confirmed == 0x5008 and observed.batches == [12, 2]
        await publisher.close()
    finally:
        await nc.close()


async def test_a_long_drain_is_settled_by_flow_acks_and_commits(
    nats_url: str, unique_name: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, _ = await fast_publisher(nc, unique_name, max_messages=1500)
        subject = f"{unique_name}.ev.x"
        for n in range(1, 5001):
            publish_tx(publisher, tracker, 0x10 * n, [(subject, f"m{n}")])
            if publisher.full:
                await publisher.wait_for_room()
            if n % 97 == 0:
                await publisher.flush()
        await publisher.flush()
        assert await publisher.wait_empty(10), publisher.failed
        ids = [msg_id for _, _, msg_id in await stored(nc, unique_name.upper())]
        assert ids == [f"m{n}" for n in range(1, 5001)]
        assert tracker.confirmed == 0x10 * 5000 + 8
        await publisher.close()
    finally:
        await nc.close()


async def test_a_stale_guard_fails_and_stores_nothing(nats_url: str, unique_name: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        space = f"{unique_name}.ev.>"
        publisher, tracker, _ = await fast_publisher(nc, unique_name, space=space, last_seq=7)
        subject = f"{unique_name}.ev.x"
        publish_tx(publisher, tracker, 0x1000, [(subject, f"m{i}") for i in range(5)])
        await publisher.flush()
        with pytest.raises(PublishError, match="wrong last sequence"):
            await asyncio.wait_for(publisher.failed, 5)
        assert await stored(nc, unique_name.upper()) == []
        assert tracker.confirmed == 0
        await publisher.close()
    finally:
        await nc.close()


async def test_a_duplicate_is_skipped_and_counts_as_stored(nats_url: str, unique_name: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, _ = await fast_publisher(nc, unique_name)
        subject = f"{unique_name}.ev.x"
        await nc.jetstream().publish(subject, b"{}", headers={"Nats-Msg-Id": "b"})
        publisher._guard.stored(1)  # the guard knows what the stream holds
        publish_tx(publisher, tracker, 0x1000, [(subject, "a"), (subject, "b"), (subject, "c")])
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        ids = [msg_id for _, _, msg_id in await stored(nc, unique_name.upper())]
        assert ids == ["b", "a", "c"]
        assert tracker.confirmed == 0x1008
        await publisher.close()
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "sizes", [[2, 2, 900, 2, 2], [900, 2, 2], [2, 2, 900]], ids=["middle", "first", "last"]
)
async def test_a_message_never_storable_is_dead_lettered_and_order_kept(
    nats_url: str, unique_name: str, sizes: list[int]
) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, observed = await fast_publisher(nc, unique_name, max_msg_size=400)
        subject = f"{unique_name}.ev.x"
        tx = tracker.begin(0x1000)
        for index, size in enumerate(sizes):
            headers = {"Nats-Msg-Id": f"m{index}", "Cdc-Lsn": "0/1000", "Cdc-Index": str(index)}
            headers |= {"Cdc-Table": "public.outbox", "Cdc-Source": SOURCE}
            publisher.publish(subject, b"x" * size, header_lines(headers), tx, "r", f"m{index}")
        tracker.commit(tx, 0x1008)
        publisher.committed(tx)
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        ids = [msg_id for _, _, msg_id in await stored(nc, unique_name.upper())]
        assert ids == [f"m{i}" for i, size in enumerate(sizes) if size < 400]
        assert len(await stored(nc, f"{unique_name.upper()}DLQ")) == 1
        assert tracker.confirmed == 0x1008 and observed.splits == 1
        await publisher.close()
    finally:
        await nc.close()


async def test_another_writer_at_full_speed_never_breaks_it(
    nats_url: str, unique_name: str
) -> None:
    """Another client writes the same stream outside the space as fast as it can; the
    guard holds on every batch and the space holds our messages gap-free, in order."""
    nc = await nats.connect(nats_url)
    other = await nats.connect(nats_url)
    try:
        space = f"{unique_name}.ev.>"
        publisher, tracker, _ = await fast_publisher(nc, unique_name, space=space, max_messages=300)
        stop = asyncio.Event()

        async def write_beside() -> int:
            js, sent = other.jetstream(), 0
            while not stop.is_set():
                acks = [js.publish(f"{unique_name}.other.y", b"o") for _ in range(20)]
                await asyncio.gather(*acks)
                sent += 20
            return sent

        beside = asyncio.create_task(write_beside())
        subject = f"{unique_name}.ev.x"
        total = 3000
        for n in range(1, total + 1):
            publish_tx(publisher, tracker, 0x10 * n, [(subject, f"m{n}")])
            if publisher.full:
                await publisher.wait_for_room()
            if n % 50 == 0:
                await publisher.flush()
                await asyncio.sleep(0)
        await publisher.flush()
        assert await publisher.wait_empty(20), publisher.failed
        stop.set()
        others = await beside
        found = await stored(nc, unique_name.upper())
        ours = [msg_id for _, subj, msg_id in found if subj == subject]
        assert ours == [f"m{n}" for n in range(1, total + 1)]
        assert others > 0 and len(found) == total + others
        # Interleaved for real: other writers' messages sit between ours.
        first_ours = next(i for i, (_, s, _) in enumerate(found) if s == subject)
        last_ours = max(i for i, (_, s, _) in enumerate(found) if s == subject)
        assert last_ours - first_ours + 1 > total
        assert tracker.confirmed == 0x10 * total + 8
        await publisher.close()
    finally:
        await other.close()
        await nc.close()
