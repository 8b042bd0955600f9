"""Reading a whole stream's headers in bounded memory: for `audit` and `outbox replay`.

An ephemeral pull consumer with ``headers_only`` (the server sends no payloads) and no
acks (nothing to remember server-side), fetched in batches: memory is one batch, however
long the stream. The consumer is the only thing it creates, in memory, and deleted at the
end (``inactive_threshold`` removes it anyway if this process dies). The read ends at the
stream's last sequence when it started, so a bridge writing meanwhile cannot make it
endless.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

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


async def limits_removed_before(js: JetStreamContext, stream: str) -> datetime | None:
    """When the stream's limits (max_age, max_msgs, max_bytes, per subject) have removed
    messages: the time its first remaining message was stored. None when they have not."""
    info = await js.stream_info(stream)
    config, state = info.config, info.state
    limits = (config.max_msgs, config.max_bytes, config.max_msgs_per_subject)
    limited = bool(config.max_age) or any(limit is not None and limit > 0 for limit in limits)
    if not limited or state.first_seq <= 1 or not state.messages:
        return None
    try:
        first = await js.get_msg(stream, seq=state.first_seq)
    except NotFoundError:  # removed meanwhile: the next one is later still
        first = await js.get_msg(stream, seq=state.first_seq, next=True)
    return first.time


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
    consumer = await _create_consumer(js, stream, start_time)
    # A plain subscription with a callback, not nats-py's fetch(): fetch waits for each
    # message with its own task and timeout, which cost more than everything else here.
    nc = js._nc
    inbox = nc.new_inbox()
    received: list[tuple[int, dict[str, str]]] = []
    ended = asyncio.Event()  # the current pull request is answered in full, or expired
    wanted = [0]

    async def on_message(msg: Msg) -> None:
        headers = msg.headers or {}
        if not msg.reply:  # a status: 404 no messages, 408 request expired
            if "Status" in headers:
                ended.set()
            return
        received.append((_stream_seq(msg.reply), headers))
        if len(received) >= wanted[0]:
            ended.set()

    sub = await nc.subscribe(inbox, cb=on_message, pending_msgs_limit=4 * BATCH)
    subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
    read = 0
    try:
        while True:
            ended.clear()
            wanted[0] = BATCH
            # no_wait: what is stored now comes at once, then a 404 status ends the answer
            request = {"batch": BATCH, "no_wait": True}
            await nc.publish(subject, json.dumps(request).encode(), reply=inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), _FETCH_TIMEOUT)
            batch = [entry for entry in received if entry[0] <= last]
            done = len(received) < BATCH or len(batch) < len(received) or batch[-1][0] >= last
            received.clear()
            read += len(batch)
            if progress is not None:
                progress(read, span.messages)
            if batch:
                yield batch
            if done:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, consumer)


async def _create_consumer(js: JetStreamContext, stream: str, start_time: datetime | None) -> str:
    config = ConsumerConfig(
        name=js._nc._nuid.next().decode(),
        ack_policy=AckPolicy.NONE,
        headers_only=True,
        deliver_policy=DeliverPolicy.ALL if start_time is None else DeliverPolicy.BY_START_TIME,
        opt_start_time=start_time,
        inactive_threshold=_INACTIVE_THRESHOLD,
        mem_storage=True,
        num_replicas=1,
    )
    info = await js.add_consumer(stream, config=config)
    return str(info.name)


def _stream_seq(reply: str) -> int:
    """The stream sequence in a JetStream delivery's reply subject, in either form:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`` (9 tokens), or with
    ``<domain>.<account hash>`` after ``$JS.ACK`` (12 or more tokens)."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])
