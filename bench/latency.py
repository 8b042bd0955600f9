"""Commit-to-subscriber latency: a paced producer child, a core NATS subscriber here.

The subscriber stamps ``time.time()`` when each message reaches its callback; the
producer stamps ``time.time()`` right after each COMMIT returned. Both run on this
machine's clock, so the difference is the event's whole trip: WAL (or poll), relay,
JetStream, subscriber. Messages are matched by their ``Nats-Msg-Id`` (the outbox id).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.msg import Msg

from bench.children import Child

# After the producer is done, how long stragglers may take before they count as missing.
_STRAGGLER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class LatencyResult:
    events: int  # committed by the producer
    received: int  # of those, seen by the subscriber
    rate: float  # events per second the producer achieved
    p50_ms: float
    p99_ms: float
    max_ms: float


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (p100 = the max)."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(pct / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def summarise(
    commits: list[tuple[str, float]], receipts: dict[str, float], rate: float
) -> LatencyResult:
    latencies = sorted(
        (receipts[event_id] - committed) * 1000
        for event_id, committed in commits
        if event_id in receipts
    )
    return LatencyResult(
        events=len(commits),
        received=len(latencies),
        rate=rate,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=percentile(latencies, 100),
    )


async def measure_latency(
    *,
    nats_url: str,
    subjects: str,
    dsn: str,
    table: str,
    rate: float,
    seconds: float,
    work_dir: Path,
    name: str,
) -> LatencyResult:
    """Produce into ``table`` at ``rate`` for ``seconds``; time arrivals on ``subjects``.

    The relay under test must already be running.
    """
    receipts: dict[str, float] = {}

    async def on_message(msg: Msg) -> None:
        stamped = time.time()
        event_id = (msg.headers or {}).get("Nats-Msg-Id")
        if event_id is not None:
            receipts.setdefault(event_id, stamped)

    nc = await nats.connect(nats_url)
    try:
        await nc.subscribe(subjects, cb=on_message)
        await nc.flush()  # the subscription is registered before the first commit
        producer = Child(
            "bench.producer",
            ["--dsn", dsn, "--table", table, "--rate", str(rate), "--seconds", str(seconds)],
            work_dir,
            name,
        )
        producer.start()
        try:
            produced = await producer.result(timeout=seconds * 3 + 30)
        finally:
            producer.kill()
        commits = [(str(event_id), float(at)) for event_id, at in produced["commits"]]
        deadline = time.monotonic() + _STRAGGLER_TIMEOUT
        while time.monotonic() < deadline and any(eid not in receipts for eid, _ in commits):
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    return summarise(commits, receipts, float(produced["achieved_rate"]))
