"""Reading a whole stream's headers in bounded memory: for `audit` and `outbox replay`.

An ephemeral pull consumer with ``headers_only`` (the server sends no payloads) and no
acks (nothing to remember server-side), fetched in batches: memory is one batch, however
long the stream. The consumer is the only thing it creates, in memory, and deleted at the
end (``inactive_threshold`` removes it anyway if this process dies). The read ends at the
stream's last sequence when it started, so a bridge writing meanwhile cannot make it
endless.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

BATCH = 1_000  # messages per fetch
_FETCH_TIMEOUT = 5.0  # seconds; an empty fetch this long means nothing is left
_INACTIVE_THRESHOLD = 60.0  # seconds: the server drops the consumer if we vanish

Progress = Callable[[int, int], None]  # (messages read, messages to read)


@dataclass(frozen=True, slots=True)
class StreamRange:
    first_seq: int
    last_seq: int
    messages: int


async def stream_range(js: JetStreamContext, stream: str) -> StreamRange:
    state = (await js.stream_info(stream)).state
    return StreamRange(state.first_seq, state.last_seq, state.messages)


async def read_headers(
    js: JetStreamContext,
    stream: str,
    *,
    start_time: datetime | None = None,
    until_seq: int | None = None,
    progress: Progress | None = None,
) -> AsyncIterator[list[tuple[int, dict[str, str]]]]:
    """Batches of (stream sequence, headers), in sequence order, from the first message
    (or the first stored at ``start_time`` or later) through ``until_seq`` (default: the
    last sequence now). Deleted messages are simply not there."""
    span = await stream_range(js, stream)
    last = span.last_seq if until_seq is None else min(until_seq, span.last_seq)
    if not span.messages or last < span.first_seq:
        return
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        headers_only=True,
        deliver_policy=DeliverPolicy.ALL if start_time is None else DeliverPolicy.BY_START_TIME,
        opt_start_time=start_time,
        inactive_threshold=_INACTIVE_THRESHOLD,
        mem_storage=True,
        num_replicas=1,
    )
    sub = await js.pull_subscribe("", stream=stream, config=config)
    read = 0
    try:
        while True:
            try:
                msgs = await sub.fetch(BATCH, timeout=_FETCH_TIMEOUT)
            except nats.errors.TimeoutError:
                return  # nothing more to deliver (the tail was deleted, say)
            batch: list[tuple[int, dict[str, str]]] = []
            done = False
            for msg in msgs:
                meta = msg.metadata
                seq = meta.sequence.stream
                if seq > last:
                    done = True
                    break
                batch.append((seq, msg.headers or {}))
                if seq == last or meta.num_pending == 0:
                    done = True
                    break
            read += len(batch)
            if progress is not None:
                progress(read, span.messages)
            if batch:
                yield batch
            if done:
                return
    finally:
        consumer = sub._consumer  # the ephemeral name pull_subscribe chose
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, consumer)
