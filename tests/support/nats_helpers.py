"""Read what actually landed in a JetStream stream (nats-py, against a real server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.js.api import StreamInfo
from nats.js.errors import NotFoundError
from nats.js.manager import JetStreamManager

from cdc_bridge.core.tracker import Transaction
from cdc_bridge.dev.nats_server import NatsServer

# Headers JetStream keeps on every message of an atomic batch (atomic mode).
BATCH_HEADER_PREFIX = "Nats-Batch-"


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One stored message, as a consumer of the stream would see it."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


@asynccontextmanager
async def _manager(url: str, timeout: float) -> AsyncIterator[JetStreamManager]:
    client: Client = await nats.connect(
        url, connect_timeout=timeout, allow_reconnect=False, max_reconnect_attempts=0
    )
    try:
        yield client.jsm(timeout=timeout)
    finally:
        await client.close()


async def stream_info(url: str, stream: str, timeout: float = 5.0) -> StreamInfo:
    """The stream's config and state (message count, first/last sequence)."""
    async with asyncio.timeout(timeout), _manager(url, timeout) as jsm:
        return await jsm.stream_info(stream)


async def fetch_stream_messages(
    url: str, stream: str, timeout: float = 10.0
) -> list[StreamMessage]:
    """Every message the stream holds now, in sequence order.

    Reads by sequence ("the next message at or after N, any subject") up to the last sequence
    the stream reported when we started, so gaps from deleted messages cost nothing and the
    result is a consistent snapshot even while a publisher keeps going. No consumer is
    created, so reading changes nothing on the server. JetStream's bookkeeping of atomic
    batches (``Nats-Batch-*``) is left out: it says how the bridge happened to group
    transactions, not what it published.
    """
    messages: list[StreamMessage] = []
    async with asyncio.timeout(timeout), _manager(url, timeout) as jsm:
        state = (await jsm.stream_info(stream)).state
        next_seq, last_seq = state.first_seq, state.last_seq
        while state.messages and next_seq <= last_seq:
            try:
                raw = await jsm.get_msg(stream, seq=next_seq, subject=">", next=True)
            except NotFoundError:
                break  # nothing at or after next_seq any more (purged meanwhile)
            if raw.seq is None or raw.seq > last_seq:
                break
            messages.append(
                StreamMessage(
                    seq=raw.seq,
                    subject=raw.subject or "",
                    data=raw.data or b"",
                    headers={
                        str(k): str(v)
                        for k, v in (raw.headers or {}).items()
                        if not str(k).startswith(BATCH_HEADER_PREFIX)
                    },
                )
            )
            next_seq = raw.seq + 1
    return messages


async def delete_all_streams(url: str, timeout: float = 10.0) -> list[str]:
    """Delete every stream on the server; the names deleted. For cleanup between tests."""
    async with asyncio.timeout(timeout), _manager(url, timeout) as jsm:
        infos: list[StreamInfo] = []
        while page := await jsm.streams_info(offset=len(infos)):  # listed a page at a time
            infos.extend(page)
        names = [info.config.name for info in infos if info.config.name]
        for name in names:
            await jsm.delete_stream(name)
    return names


@contextmanager
def nats_with_max_payload(folder: Path, max_payload: int) -> Iterator[NatsServer]:
    """A test's own nats-server whose max_payload is ``max_payload``."""
    config = folder / "nats.conf"
    config.write_text(f"max_payload: {max_payload}\n")
    server = NatsServer(folder / "nats", extra_args=["-c", str(config)])
    server.start()
    try:
        yield server
    finally:
        server.close()


class Observed:
    """A publisher's observer that records what it is told."""

    def __init__(self) -> None:
        self.acked_per_route: dict[str, int] = {}
        self.transactions: list[Transaction] = []
        self.dead_letters: list[tuple[str, str]] = []
        self.batches: list[int] = []  # messages of each atomic batch stored
        self.splits = 0

    def acked(self, route: str, count: int) -> None:
        self.acked_per_route[route] = self.acked_per_route.get(route, 0) + count

    def transaction_acked(self, tx: Transaction) -> None:
        self.transactions.append(tx)

    def dead_lettered(self, msg_id: str, reason: str) -> None:
        self.dead_letters.append((msg_id, reason))

    def batch_stored(self, messages: int) -> None:
        self.batches.append(messages)

    def batch_split(self) -> None:
        self.splits += 1
