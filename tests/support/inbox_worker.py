"""A consumer process for the inbox tests: ``python -m support.inbox_worker ...``.

It applies with the tests' handler and can kill itself (SIGKILL) right after the N-th
commit (before its acks) or in the middle of applying the M-th group (after writing part
of it). SIGTERM stops it after the current transaction (exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import nats
import psycopg

from cdc_bridge.inbox import Event, Inbox
from support.inbox import write_applied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--durable", required=True)
    parser.add_argument("--kill-after-commit", type=int, default=0, help="0: never")
    parser.add_argument("--kill-in-group", type=int, default=0, help="0: never")
    parser.add_argument("--max-in-flight", type=int, default=1000)
    args = parser.parse_args(argv)
    groups = 0
    commits = 0

    async def handler(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
        nonlocal groups
        groups += 1
        if groups == args.kill_in_group:
            await write_applied(conn, events[: max(1, len(events) // 2)])
            os.kill(os.getpid(), signal.SIGKILL)
        await write_applied(conn, events)

    async def after_commit(events: Sequence[Event]) -> None:
        nonlocal commits
        commits += 1
        print(f"committed {len(events)}", flush=True)
        if commits == args.kill_after_commit:
            os.kill(os.getpid(), signal.SIGKILL)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        nc = await nats.connect(args.nats)
        try:
            inbox = Inbox(
                nc, args.dsn, stream=args.stream, durable=args.durable, handler=handler,
                after_commit=after_commit, max_in_flight=args.max_in_flight,
            )  # fmt: skip
            print("started", flush=True)
            await inbox.run(stop)
            print("stopped", flush=True)
        finally:
            await nc.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
