"""The classic polling outbox relay, for comparison: the pattern the outbox usually starts from.

Every poll, in one transaction: ``SELECT ... WHERE NOT published ORDER BY seq LIMIT 500
FOR UPDATE SKIP LOCKED``, publish each row with ``js.publish_async`` (all futures
awaited), ``UPDATE ... SET published = true``, commit. A full batch polls again at once;
a short one sleeps the poll interval first. Every event therefore costs an UPDATE (a new
row version, a dead tuple, WAL) on top of its INSERT, and waits up to a poll interval.

    python -m bench.polling_relay --dsn DSN --nats-url URL --result FILE
        [--until-empty] [--batch 500] [--poll-interval 0.1]

``--until-empty`` drains a backlog and exits at the first empty poll; without it the
relay polls until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import time

import nats
import psycopg

from bench.children import mark_ready, write_result
from bench.cpu import cpu_use
from bench.workload import subject_for

SUBJECT_PREFIX = "poll"
WINDOW = 4000  # nats-py's publish_async limit; a batch (500) never reaches it

_SELECT_BATCH = """
SELECT seq, id::text, aggregate_type, event_type, payload::text
FROM public.outbox_polling
WHERE NOT published
ORDER BY seq
LIMIT %s
FOR UPDATE SKIP LOCKED
"""
_MARK_PUBLISHED = "UPDATE public.outbox_polling SET published = true WHERE seq = ANY(%s)"


async def relay(
    dsn: str,
    nats_url: str,
    result_path: str,
    *,
    batch: int,
    poll_interval: float,
    until_empty: bool,
) -> dict[str, object]:
    started_at = time.time()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    published = 0
    polls = 0
    first_event_at = 0.0
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        mark_ready(result_path)
        while not stop.is_set():
            async with conn.transaction():
                cursor = await conn.execute(_SELECT_BATCH, (batch,))
                rows = await cursor.fetchall()
                polls += 1
                futures = []
                for _seq, event_id, aggregate_type, event_type, payload in rows:
                    futures.append(
                        await js.publish_async(
                            subject_for(SUBJECT_PREFIX, aggregate_type, event_type),
                            payload.encode(),
                            headers={"Nats-Msg-Id": event_id},
                        )
                    )
                for future in futures:
                    await future
                if rows:
                    await conn.execute(_MARK_PUBLISHED, ([row[0] for row in rows],))
            if rows and not first_event_at:
                first_event_at = time.time()
            published += len(rows)
            if not rows and until_empty:
                break
            if len(rows) < batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_interval)
    done_at = time.time()
    cpu = cpu_use()
    await nc.close()
    return {
        "events": published,
        "polls": polls,
        "started_at": started_at,
        "first_event_at": first_event_at,
        "done_at": done_at,
        "cpu": None if cpu is None else dataclasses.asdict(cpu),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.polling_relay", description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--poll-interval", type=float, default=0.1, help="seconds")
    parser.add_argument("--until-empty", action="store_true", help="exit at the first empty poll")
    parser.add_argument("--result", required=True, help="write the JSON result here")
    args = parser.parse_args()
    result = asyncio.run(
        relay(
            args.dsn,
            args.nats_url,
            args.result,
            batch=args.batch,
            poll_interval=args.poll_interval,
            until_empty=args.until_empty,
        )
    )
    write_result(args.result, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
