"""The baseline: the plain Python relay most people would write first.

Logical replication over psycopg's COPY_BOTH (the same reading approach as
cdc_bridge/source/replication.py: ``get_copy_data(1)`` until it returns 0, only then
``consume_input``), the bridge's pgoutput decoder, and nats-py's ``js.publish_async``
with a window of 4,000 futures, each one awaited. It confirms the slot once, at the end.
No routing rules, no dead letters, no ordering checks, no metrics: what it costs is the
per-message price of nats-py's futures and of Python itself.

    python -m bench.plain_relay --dsn DSN --slot S --publication P --nats-url URL \
        --events N --result FILE
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from collections import deque

import nats
import psycopg
from nats.js.api import PubAck
from psycopg import pq
from psycopg.rows import TupleRow

from bench.children import write_result
from bench.cpu import cpu_use
from bench.workload import subject_for
from cdc_bridge.core.changes import Commit, Insert
from cdc_bridge.core.lsn import format_lsn
from cdc_bridge.source.decoding.pgoutput import PgoutputDecoder
from cdc_bridge.source.protocol import Keepalive, build_status_update, parse_copy_data

WINDOW = 4000  # futures in flight; the oldest is awaited before the next publish
SUBJECT_PREFIX = "plain"


class _CopyReader:
    """CopyData messages of a replication connection that is in COPY_BOTH state."""

    def __init__(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        self._pg = conn.pgconn
        self._pg.nonblocking = 1
        self._readable = asyncio.Event()
        asyncio.get_running_loop().add_reader(self._pg.socket, self._readable.set)

    async def next(self) -> bytes:
        while True:
            nbytes, data = self._pg.get_copy_data(1)
            if nbytes > 0:
                return bytes(data)
            if nbytes < 0:
                raise RuntimeError("the server ended the replication stream")
            self._readable.clear()
            await self._readable.wait()
            self._pg.consume_input()

    def send_status(self, flush_lsn: int) -> None:
        self._pg.put_copy_data(build_status_update(flush_lsn, flush_lsn, flush_lsn))
        while self._pg.flush() == 1:  # 34 bytes: in practice never more than once
            time.sleep(0.001)

    async def finish(self, flush_lsn: int) -> None:
        """Confirm, end the copy, and wait (briefly) for the server to end it too."""
        self.send_status(flush_lsn)
        self._pg.put_copy_end()
        self._pg.flush()
        async with asyncio.timeout(5):
            while self._pg.get_copy_data(1)[0] != -1:
                self._readable.clear()
                await self._readable.wait()
                self._pg.consume_input()
        asyncio.get_running_loop().remove_reader(self._pg.socket)
        while self._pg.get_result() is not None:
            pass


async def relay(
    dsn: str, slot: str, publication: str, nats_url: str, events: int
) -> dict[str, object]:
    started_at = time.time()
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    conn = await psycopg.AsyncConnection.connect(dsn, replication="database", autocommit=True)
    await conn.execute(
        f"START_REPLICATION SLOT {slot} LOGICAL 0/0 "
        f"(proto_version '1', publication_names '{publication}')"
    )
    assert conn.pgconn.status == pq.ConnStatus.OK
    reader = _CopyReader(conn)
    decoder = PgoutputDecoder()
    window: deque[asyncio.Future[PubAck]] = deque()
    published = 0
    last_commit_end = 0
    first_event_at = 0.0
    while published < events or last_commit_end == 0:
        message = parse_copy_data(await reader.next())
        if isinstance(message, Keepalive):
            if message.reply_requested:
                reader.send_status(last_commit_end)
            continue
        change = decoder.decode(message.payload)
        if isinstance(change, Insert):
            row = change.row
            payload = row["payload"]
            assert isinstance(payload, str)
            future = await js.publish_async(
                subject_for(SUBJECT_PREFIX, _text(row["aggregate_type"]), _text(row["event_type"])),
                payload.encode(),
                headers={"Nats-Msg-Id": _text(row["id"])},
            )
            if published == 0:
                first_event_at = time.time()
            published += 1
            window.append(future)
            if len(window) >= WINDOW:
                await window.popleft()
        elif isinstance(change, Commit) and published >= events:
            last_commit_end = change.end_lsn
    while window:
        await window.popleft()
    acked_at = time.time()
    cpu = cpu_use()
    await reader.finish(last_commit_end)
    await conn.close()
    await nc.close()
    return {
        "events": published,
        "started_at": started_at,
        "first_event_at": first_event_at,
        "acked_at": acked_at,
        "cpu": None if cpu is None else dataclasses.asdict(cpu),
        "confirmed_lsn": format_lsn(last_commit_end),
    }


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plain_relay", description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--slot", required=True)
    parser.add_argument("--publication", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--events", type=int, required=True, help="stop after this many")
    parser.add_argument("--result", required=True, help="write the JSON result here")
    args = parser.parse_args()
    result = asyncio.run(relay(args.dsn, args.slot, args.publication, args.nats_url, args.events))
    write_result(args.result, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
