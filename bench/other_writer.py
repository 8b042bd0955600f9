"""Another writer in the bridge's stream: JetStream publishes at a fixed rate until SIGTERM.

Its subjects (``writer.<n % 10>``) are captured by the bridge's stream but lie outside
the bridge's subject space (``bench.>``), as another service sharing the stream would
be. Each publish awaits its ack, paced at ``start + i / rate`` without sleeping when
behind, like bench/producer.py.

    python -m bench.other_writer --nats-url URL --rate 500 --result FILE
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

import nats

from bench.children import mark_ready, write_result

SUBJECT_PREFIX = "writer"
_PAYLOAD = b'{"source":"other-writer","status":"ok","note":"not the bridge\'s"}'


async def write(nats_url: str, rate: float, result_path: str) -> dict[str, object]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    published = 0
    try:
        await js.publish(f"{SUBJECT_PREFIX}.warm", _PAYLOAD)  # the stream exists and answers
        published = 1
        mark_ready_at = time.time()
        start = time.perf_counter()
        n = 0
        while not stop.is_set():
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            await js.publish(f"{SUBJECT_PREFIX}.{n % 10}", _PAYLOAD)
            published += 1
            n += 1
            if n == 1:
                mark_ready(result_path)  # writing at its pace: the parent may start timing
        ended_at = time.time()
    finally:
        await nc.close()
    seconds = ended_at - mark_ready_at
    return {
        "published": published,
        "seconds": seconds,
        "achieved_rate": (published - 1) / seconds if seconds > 0 else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.other_writer", description=__doc__)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second")
    parser.add_argument("--result", required=True, help="write the JSON result here")
    args = parser.parse_args()
    write_result(args.result, asyncio.run(write(args.nats_url, args.rate, args.result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
