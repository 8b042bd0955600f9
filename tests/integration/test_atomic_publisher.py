"""The atomic-mode publisher against a real nats-server (2.12+ atomic batches).

Whole transactions grouped into batches, large ones cut at the limit, the order guard
on each batch's first message, a duplicate id or a message JetStream can never store
found by sending the refused batch one message at a time, and what the batch cannot
carry (outside the subject space) sent after the batch is acked.
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
from cdc_bridge.sink.atomic_publisher import SINGLES_UP_TO, AtomicPublisher
from cdc_bridge.sink.publisher import PublishError


@pytest.fixture(autouse=True)
def daemon_logging() -> None:
    """The publisher logs (a batch split): as the daemon does, not to whatever stream an
    earlier test in this worker left configured (structlog caches a logger's output on
    its first use)."""
    configure_logging("console", "warning")


async def atomic_publisher(
    nc: NatsClient,
    prefix: str,
    *,
    max_messages: int = 1000,
    space: str | None = None,
    last_seq: int = 0,
    max_msg_size: int | None = None,
) -> tuple[AtomicPublisher, LsnTracker, Observed]:
    return await batch_publisher(
        AtomicPublisher,
        nc,
        prefix,
        max_messages=max_messages,
        space=space,
        last_seq=last_seq,
        max_msg_size=max_msg_size,
    )


async def batch_sizes(nc: NatsClient, stream: str) -> list[int]:
    """How many messages each stored batch held, in order (by Nats-Batch-Id)."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    sizes: list[int] = []
    last = None
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        batch = ((await js.get_msg(stream, seq)).headers or {}).get("Nats-Batch-Id")
        if batch is None:
            continue
        if batch != last:
            sizes.append(0)
            last = batch
        sizes[-1] += 1
    return sizes


async def test_transactions_published_together_go_in_one_batch(
    nats_url: str, unique_name: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, observed = await atomic_publisher(nc, unique_name)
        subject = f"{unique_name}.ev.x"
        txs = [
            publish_tx(publisher, tracker, 0x1000, [(subject, "a1"), (subject, "a2")]),
            publish_tx(publisher, tracker, 0x2000, [(subject, f"b{n}") for n in range(3)]),
            publish_tx(publisher, tracker, 0x3000, [(subject, "c1")]),
        ]
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        ids = [msg_id for _, _, msg_id in await stored(nc, unique_name.upper())]
        assert ids == ["a1", "a2", "b0", "b1", "b2", "c1"]
        assert await batch_sizes(nc, unique_name.upper()) == [6]
        assert tracker.confirmed == 0x3008
        assert observed.transactions == txs and observed.acked_per_route == {"r": 6}
        assert observed.batches == [6] and observed.splits == 0
        # The next batch names the sequence the last one ended at: a stale guard fails.
        publish_tx(publisher, tracker, 0x4000, [(subject, "d1")])
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        assert tracker.confirmed == 0x4008
        await publisher.close()
    finally:
        await nc.close()


async def test_a_few_one_message_transactions_go_one_by_one_more_in_a_batch(
    nats_url: str, unique_name: str
) -> None:
    """Up to SINGLES_UP_TO transactions of one message each are published plainly, one
    after the other (each guarded), instead of a staged batch; one more go in one batch."""
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, observed = await atomic_publisher(nc, unique_name)
        subject = f"{unique_name}.ev.x"
        singles = [0x1000 * n for n in range(1, SINGLES_UP_TO + 1)]
        for lsn in singles:
            publish_tx(publisher, tracker, lsn, [(subject, f"single{lsn:x}")])
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        assert tracker.confirmed == singles[-1] + 8
        assert await batch_sizes(nc, unique_name.upper()) == []
        assert observed.batches == [1] * SINGLES_UP_TO and observed.splits == 0
        batched = [singles[-1] + 0x1000 * n for n in range(1, SINGLES_UP_TO + 2)]
        for lsn in batched:
            publish_tx(publisher, tracker, lsn, [(subject, f"batched{lsn:x}")])
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        assert tracker.confirmed == batched[-1] + 8
        assert await batch_sizes(nc, unique_name.upper()) == [SINGLES_UP_TO + 1]
        ids = [msg_id for _, _, msg_id in await stored(nc, unique_name.upper())]
        assert ids == [f"single{n:x}" for n in singles] + [f"batched{n:x}" for n in batched]
        await publisher.close()
    finally:
        await nc.close()


async def test_a_large_transaction_is_cut_at_the_limit(nats_url: str, unique_name: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, _ = await atomic_publisher(nc, unique_name, max_messages=10)
        subject = f"{unique_name}.ev.x"
        tx = tracker.begin(0x1000)
        for index in range(25):
            headers = {"Nats-Msg-Id": f"m{index}", "Cdc-Lsn": "0/1000", "Cdc-Source": SOURCE}
            publisher.publish(subject, b"{}", header_lines(headers), tx, "r", f"m{index}")
            if publisher.full:
                await publisher.wait_for_room()
        tracker.commit(tx, 0x1008)
        publisher.committed(tx)
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        ids = [msg_id for _, _, msg_id in await stored(nc, unique_name.upper())]
        assert ids == [f"m{n}" for n in range(25)]
        assert await batch_sizes(nc, unique_name.upper()) == [10, 10, 5]
        assert tracker.confirmed == 0x1008
        await publisher.close()
    finally:
        await nc.close()


async def test_an_id_stored_already_is_found_and_the_rest_is_stored(
    nats_url: str, unique_name: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, observed = await atomic_publisher(nc, unique_name)
        subject = f"{unique_name}.ev.x"
        publish_tx(publisher, tracker, 0x1000, [(subject, "a")])
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        # "a" again (an application that reused an id): JetStream refuses the whole batch.
        events = [(subject, "b"), (subject, "a"), (subject, "c")]
        publish_tx(publisher, tracker, 0x2000, events)
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        assert not publisher.failed.done()
        ids = [msg_id for _, _, msg_id in await stored(nc, unique_name.upper())]
        assert ids == ["a", "b", "c"]
        assert [h["Nats-Msg-Id"] for h in publisher.already_stored] == ["a"]
        assert observed.splits == 1 and observed.batches == [1, 1, 1]  # a, then b and c
        assert tracker.confirmed == 0x2008
        await publisher.close()
    finally:
        await nc.close()


async def test_a_message_the_stream_refuses_for_good_is_dead_lettered_after_the_batch(
    nats_url: str, unique_name: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        # The dead letters' subject is in another stream: sent after the batch's ack.
        publisher, tracker, observed = await atomic_publisher(nc, unique_name, max_msg_size=2000)
        subject = f"{unique_name}.ev.x"
        tx = tracker.begin(0x1000)
        for index, (msg_id, size) in enumerate([("a", 10), ("big", 5000), ("c", 10)]):
            headers = {"Nats-Msg-Id": msg_id, "Cdc-Lsn": "0/1000", "Cdc-Index": str(index)}
            headers |= {"Cdc-Table": "public.outbox", "Cdc-Source": SOURCE}
            publisher.publish(subject, b"x" * size, header_lines(headers), tx, "r", msg_id)
        tracker.commit(tx, 0x1008)
        publisher.committed(tx)
        await publisher.flush()
        assert await publisher.wait_empty(5), publisher.failed
        assert not publisher.failed.done()
        found = [(s, i) for _, s, i in await stored(nc, unique_name.upper())]
        assert found == [(subject, "a"), (subject, "c")]
        dead = [(s, i) for _, s, i in await stored(nc, f"{unique_name.upper()}DLQ")]
        assert dead == [(f"{unique_name}dlq.x", "big")]
        assert [msg_id for msg_id, _ in observed.dead_letters] == ["big"]
        assert tracker.confirmed == 0x1008
        await publisher.close()
    finally:
        await nc.close()


async def test_a_stale_order_guard_fails_the_session(nats_url: str, unique_name: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher, tracker, _ = await atomic_publisher(nc, unique_name, last_seq=5)
        publish_tx(publisher, tracker, 0x1000, [(f"{unique_name}.ev.x", "a")])
        await publisher.flush()
        assert not await publisher.wait_empty(5)
        with pytest.raises(PublishError, match="wrong last sequence"):
            publisher.failed.result()
        assert tracker.confirmed == 0
        assert (await nc.jetstream().stream_info(unique_name.upper())).state.messages == 0
        await publisher.close()
    finally:
        await nc.close()


async def test_another_writer_outside_the_space_never_breaks_the_guard(
    nats_url: str, unique_name: str
) -> None:
    nc = await nats.connect(nats_url)
    other = await nats.connect(nats_url)
    stop = asyncio.Event()

    async def other_writer() -> int:
        sent = 0
        while not stop.is_set():
            for _ in range(20):
                await other.publish(f"{unique_name}.other.x", b"{}")
            sent += 20
            await other.flush()
        return sent

    try:
        publisher, tracker, _ = await atomic_publisher(nc, unique_name, space=f"{unique_name}.ev.>")
        writer = asyncio.create_task(other_writer())
        subject = f"{unique_name}.ev.x"
        for n in range(100):
            events = [(subject, f"m{n}.{k}") for k in range(3)]
            publish_tx(publisher, tracker, 0x1000 + n * 0x10, events)
            await publisher.flush()
            await asyncio.sleep(0.002)
        assert await publisher.wait_empty(10)
        stop.set()
        assert await writer > 0
        assert not publisher.failed.done()
        ours = [i for _, s, i in await stored(nc, unique_name.upper()) if s == subject]
        assert ours == [f"m{n}.{k}" for n in range(100) for k in range(3)]
        assert tracker.confirmed == 0x1000 + 99 * 0x10 + 8
        await publisher.close()
    finally:
        stop.set()
        await other.close()
        await nc.close()
