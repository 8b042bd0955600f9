"""cdc_bridge.inbox in real processes killed with SIGKILL: between a commit and its acks,
and in the middle of applying a transaction, again and again while events keep coming.
Every source transaction ends up applied exactly once and whole; SIGTERM stops a
consumer cleanly after the transaction it applies.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import nats
from support.inbox import (
    SourceTx,
    applied_count,
    check_exactly_once_and_whole,
    create_stream,
    make_transactions,
    prepare_database,
    publish_sync,
)
from support.paths import REPO
from support.waiting import wait_until

TIMEOUT = 120.0


def start_worker(
    nats_url: str, dsn: str, stream: str, *, kill_after_commit: int = 0, kill_in_group: int = 0
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "support.inbox_worker", "--nats", nats_url, "--dsn", dsn,
         "--stream", stream, "--durable", "copy",
         "--kill-after-commit", str(kill_after_commit), "--kill-in-group", str(kill_in_group)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip


def make_stream(nats_url: str, stream: str, prefix: str) -> None:
    async def run() -> None:
        nc = await nats.connect(nats_url)
        try:
            await create_stream(nc, stream, prefix)
        finally:
            await nc.close()

    asyncio.run(run())


@contextmanager
def publishing(nats_url: str, batches: Sequence[Sequence[SourceTx]]) -> Iterator[threading.Thread]:
    """Publish the batches one after another in a thread (load while consumers die)."""

    def run() -> None:
        for batch in batches:
            publish_sync(nats_url, batch)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(TIMEOUT)


def stop_cleanly(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0, out
    assert "stopped" in out
    return out


def test_kill_9_between_commit_and_ack_and_while_applying_under_load(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    make_stream(nats_url, stream, u)
    rng = random.Random(33)
    batches = [
        make_transactions(u, [rng.randint(1, 12) for _ in range(20)], first=1 + 20 * b)
        for b in range(8)
    ]
    txs = [tx for batch in batches for tx in batch]
    total = sum(len(tx.ids) for tx in txs)
    kills = 0
    with publishing(nats_url, batches) as publisher:
        for round_number in range(12):
            in_commit = round_number % 2 == 0
            worker = start_worker(
                nats_url, pg_dsn, stream,
                kill_after_commit=rng.randint(1, 6) if in_commit else 0,
                kill_in_group=0 if in_commit else rng.randint(1, 6),
            )  # fmt: skip
            try:
                worker.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                worker.kill()  # nothing left to apply for it to die on
                worker.wait()
            kills += worker.returncode == -signal.SIGKILL
        publisher.join(TIMEOUT)
    assert kills >= 6
    worker = start_worker(nats_url, pg_dsn, stream)
    wait_until(lambda: applied_count(pg_dsn) >= total, timeout=TIMEOUT, message="all applied")
    stop_cleanly(worker)
    check_exactly_once_and_whole(pg_dsn, txs)


def test_two_processes_on_one_durable_taking_over_from_each_other(
    pg_dsn: str, nats_url: str, unique_name: str
) -> None:
    """Two workers on the same durable at all times; whichever applies dies (SIGKILL)
    after a few commits and is replaced by a new one, while events keep coming."""
    u, stream = unique_name, unique_name.upper()
    prepare_database(pg_dsn)
    make_stream(nats_url, stream, u)
    rng = random.Random(7)
    batches = [
        make_transactions(u, [rng.randint(1, 8) for _ in range(15)], first=1 + 15 * b)
        for b in range(4)
    ]
    txs = [tx for batch in batches for tx in batch]
    total = sum(len(tx.ids) for tx in txs)

    def doomed() -> subprocess.Popen[str]:
        return start_worker(nats_url, pg_dsn, stream, kill_after_commit=rng.randint(2, 6))

    workers = [doomed(), doomed()]
    kills = 0
    with publishing(nats_url, batches):
        deadline = time.monotonic() + TIMEOUT
        while kills < 8 and applied_count(pg_dsn) < total and time.monotonic() < deadline:
            for index, worker in enumerate(workers):
                if worker.poll() is not None:
                    assert worker.returncode == -signal.SIGKILL
                    kills += 1
                    workers[index] = doomed()
            time.sleep(0.1)
    for worker in workers:
        worker.kill()
        worker.wait()
    assert kills >= 3
    last = start_worker(nats_url, pg_dsn, stream)
    wait_until(lambda: applied_count(pg_dsn) >= total, timeout=TIMEOUT, message="all applied")
    stop_cleanly(last)
    check_exactly_once_and_whole(pg_dsn, txs)
