"""examples/inbox_consumer.py, run as a user would: it copies every event once, and
SIGTERM stops it cleanly. docs/application.md shows it; a test checks it shows this file.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import nats
import psycopg
from support.inbox import create_stream, make_transactions, publish_sync
from support.paths import REPO
from support.waiting import wait_until

EXAMPLE = REPO / "examples" / "inbox_consumer.py"
GUIDE = REPO / "docs" / "application.md"
TIMEOUT = 120.0


def copied(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT msg_id FROM events_copy").fetchall()]
        except psycopg.errors.UndefinedTable:
            return []


def test_the_example_copies_each_event_once_and_stops_on_sigterm(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()

    async def make_stream() -> None:
        nc = await nats.connect(nats_url)
        try:
            await create_stream(nc, stream, u)
        finally:
            await nc.close()

    asyncio.run(make_stream())
    txs = make_transactions(u, [2, 3, 1])
    publish_sync(nats_url, txs)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NATS_URL": nats_url,
        "INBOX_DSN": pg_dsn,
        "STREAM": stream,
        "SUBJECTS": f"{u}.a,{u}.b",
    }
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE)], env=env, cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        everything = [i for tx in txs for i in tx.ids]
        wait_until(lambda: len(copied(pg_dsn)) == len(everything), timeout=TIMEOUT)
        more = make_transactions(u, [2], first=4)
        publish_sync(nats_url, more)
        everything += list(more[0].ids)
        wait_until(lambda: len(copied(pg_dsn)) == len(everything), timeout=TIMEOUT)
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, out
    assert sorted(copied(pg_dsn)) == sorted(everything)


def test_the_guide_shows_the_example_as_it_runs() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    section = guide[guide.index("## The consumer side: cdc_bridge.inbox") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the section shows no Python code"
    assert match.group(1) in EXAMPLE.read_text(encoding="utf-8")
