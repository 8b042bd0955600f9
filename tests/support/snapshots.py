"""A change table ``public.accounts`` snapshotted beside a writer, and the stream replayed
into a copy of it: what the snapshot tests (integration and chaos) share."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
import psycopg
from nats.aio.msg import Msg

Row = tuple[int, str | None]  # (balance, note) of an accounts row


def create_accounts(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.accounts (id int PRIMARY KEY, balance int NOT NULL, note text)"
        )
        conn.execute(
            "INSERT INTO public.accounts SELECT g, g * 10, 'original ' || g"
            " FROM generate_series(1, %s) g",
            (rows,),
        )


def table_rows(dsn: str) -> dict[int, Row]:
    with psycopg.connect(dsn) as conn:
        return {k: (b, n) for k, b, n in conn.execute("SELECT id, balance, note FROM accounts")}


def change_a_row(conn: psycopg.Connection[Any], rng: random.Random, key: int) -> None:
    """One writer's statement on ``key``: an update (half the time), a delete, or an
    insert (an update of the note when the key is there)."""
    action = rng.random()
    if action < 0.5:
        conn.execute(
            "UPDATE accounts SET balance = balance + 1, note = %s WHERE id = %s",
            [f"updated {rng.random():.6f}", key],
        )
    elif action < 0.75:
        conn.execute("DELETE FROM accounts WHERE id = %s", [key])
    else:
        conn.execute(
            "INSERT INTO accounts VALUES (%s, %s, 'inserted')"
            " ON CONFLICT (id) DO UPDATE SET note = 'reinserted'",
            [key, key],
        )


@dataclass(frozen=True, slots=True)
class Seen:
    msg_id: str
    subject: str
    data: bytes


async def _consume(url: str, stream: str, handle: Callable[[Seen], None], timeout: float) -> int:
    """Hand every message the stream holds now to ``handle``, in stream order (an ordered
    push consumer: nothing is kept here); how many."""
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        async with asyncio.timeout(timeout):
            js = nc.jetstream(timeout=10)
            state = (await js.stream_info(stream)).state
            if not state.messages:
                return 0
            last_seq = state.last_seq
            done = asyncio.Event()
            count = 0

            async def collect(msg: Msg) -> None:
                nonlocal count
                seq = msg.metadata.sequence.stream
                if seq > last_seq or done.is_set():
                    done.set()
                    return
                count += 1
                headers = msg.headers or {}
                handle(Seen(headers.get("Nats-Msg-Id", ""), msg.subject, msg.data))
                if seq == last_seq:
                    done.set()

            sub = await js.subscribe(
                ">", stream=stream, cb=collect, ordered_consumer=True,
                pending_msgs_limit=-1, pending_bytes_limit=-1,
            )  # fmt: skip
            try:
                await done.wait()
            finally:
                await sub.unsubscribe()
            return count
    finally:
        await nc.close()


def consume_stream(url: str, stream: str, handle: Callable[[Seen], None], timeout: float) -> int:
    return asyncio.run(_consume(url, stream, handle, timeout))


class Replay:
    """The stream, in order, applied to a copy of the table as it was before."""

    def __init__(self, copy: dict[int, Row], prefix: str) -> None:
        self.copy = copy
        self.prefix = prefix
        self.reads: Counter[int] = Counter()
        self.changes = 0
        self.faults: list[str] = []
        self.snapshot_ids: set[str] = set()
        self._ids: set[str] = set()
        self.duplicate_ids: Counter[str] = Counter()

    def see(self, message: Seen) -> None:
        if message.msg_id in self._ids:
            self.duplicate_ids[message.msg_id] += 1
        self._ids.add(message.msg_id)
        if not message.subject.startswith(self.prefix):
            return
        change = json.loads(message.data)
        if change["action"] == "D":
            self.changes += 1
            [key_column] = change["identity"]
            self.copy.pop(key_column["value"], None)
            return
        values = {c["name"]: c["value"] for c in change["columns"]}
        key, row = values["id"], (values["balance"], values["note"])
        if change["action"] == "R":
            self.reads[key] += 1
            self.snapshot_ids.add(message.msg_id.split(":", 1)[0])
            if self.copy.get(key) != row:
                self.faults.append(
                    f"R of {key} ({message.msg_id}) is {row}, the stream had {self.copy.get(key)}"
                )
        else:
            self.changes += 1
            self.copy[key] = row
