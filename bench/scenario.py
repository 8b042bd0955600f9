"""One benchmark run, stage by stage, on one throwaway PostgreSQL and nats-server.

1. Three slots are created, then the backlog is committed once: every WAL reader
   (pg_recvlogical, the plain relay, the bridge) drains the very same changes.
2. pg_recvlogical drains its slot: the ceiling.
3. The plain publish_async relay drains its slot into its own stream.
4. The bridge drains its slot into its stream; its peak RSS and the WAL written while
   it drained are read; then, still running, it carries a paced 1-event-per-transaction
   load while a subscriber times each event (latency).
5. The polling relay drains the same number of rows from its own table (throughput and
   database load), then runs continuously under the same paced load (latency).

Stages run one after another, never side by side: the machine has 2 cores.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from bench.bridge_run import STREAM as BRIDGE_STREAM
from bench.bridge_run import SUBJECT_PREFIX as BRIDGE_PREFIX
from bench.bridge_run import BridgeUnderTest, bridge_config
from bench.children import Child
from bench.cpu import CpuUse
from bench.dbload import DatabaseLoad, LoadMeter
from bench.latency import LatencyResult, measure_latency
from bench.machine import describe_machine
from bench.plain_relay import SUBJECT_PREFIX as PLAIN_PREFIX
from bench.polling_relay import SUBJECT_PREFIX as POLLING_PREFIX
from bench.profiling import FunctionCost, PySpyRecorder, top_functions
from bench.recvlogical import drain_with_pg_recvlogical
from bench.report import BenchResult, Throughput
from bench.stack import PUBLICATION, BenchStack, create_slot, drop_slot, server_version, wal_lsn
from bench.streams import (
    StreamState,
    create_stream,
    delete_stream,
    stream_state,
    wait_for_messages,
)
from bench.workload import OUTBOX_TABLE, POLLING_TABLE, commit_backlog

SLOT_CEILING = "bench_recvlogical"
SLOT_PLAIN = "bench_plain"
SLOT_BRIDGE = "bench_bridge"
PLAIN_STREAM = "PLAIN"
POLLING_STREAM = "POLL"


@dataclass(frozen=True, slots=True)
class Settings:
    events: int
    tx_size: int
    latency_rate: float  # events per second, one per transaction
    latency_seconds: float
    profile_dir: Path | None  # sample the bridge with py-spy during the drain
    keep: bool  # leave the servers' folder (logs, data) behind


class _Progress:
    def __init__(self) -> None:
        self._started = time.monotonic()

    def say(self, message: str) -> None:
        print(
            f"[bench {time.monotonic() - self._started:6.1f}s] {message}",
            file=sys.stderr,
            flush=True,
        )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started


def _drain_timeout(events: int) -> float:
    return 60.0 + events / 1000  # generous: a stage that is 10x slower still finishes


def _stored(events: int, spawned_at: float, state: StreamState, cpu: CpuUse | None) -> Throughput:
    """Timed by the stream's own clock: spawn -> last stored, first stored -> last stored."""
    assert state.first_ts is not None and state.last_ts is not None
    return Throughput(events, state.last_ts - spawned_at, state.last_ts - state.first_ts, cpu)


def _version_text(nc: NatsClient) -> str:
    version = nc.connected_server_version
    return f"{version.major}.{version.minor}.{version.patch}"


def _child_cpu(result: dict[str, Any]) -> CpuUse | None:
    cpu = result.get("cpu")
    return None if cpu is None else CpuUse(**cpu)


async def run_bench(settings: Settings) -> BenchResult:
    progress = _Progress()
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    progress.say("starting PostgreSQL and nats-server")
    with BenchStack(keep=settings.keep) as stack:
        dsn = stack.dsn
        nc = await nats.connect(stack.nats.url)
        try:
            machine = describe_machine(
                postgres_version=server_version(dsn),
                nats_version=_version_text(nc),
            )
            for slot in (SLOT_CEILING, SLOT_PLAIN, SLOT_BRIDGE):
                create_slot(dsn, slot)
            progress.say(f"committing {settings.events} events into {OUTBOX_TABLE}")
            commit_backlog(dsn, OUTBOX_TABLE, settings.events, settings.tx_size)
            endpos = wal_lsn(dsn)

            progress.say("pg_recvlogical: draining its slot")
            seconds = drain_with_pg_recvlogical(dsn, SLOT_CEILING, PUBLICATION, endpos)
            ceiling = Throughput(settings.events, seconds)
            drop_slot(dsn, SLOT_CEILING)

            progress.say("plain publish_async relay: draining its slot")
            plain = await _plain_relay(nc, stack, settings)
            drop_slot(dsn, SLOT_PLAIN)

            progress.say("cdc-bridge: draining its slot, then the latency run")
            bridge, rss_kib, bridge_load, bridge_latency, profile = await _bridge(
                nc, stack, settings, progress
            )

            progress.say(f"polling relay: committing {settings.events} events, draining them")
            polling, polling_load = await _polling_drain(nc, stack, settings)
            progress.say("polling relay: latency run")
            polling_latency = await _polling_latency(nc, stack, settings)
        finally:
            await nc.close()
    # A busy machine (other jobs on the 2 cores) is the first suspect for odd figures
    machine["loadavg_at_end"] = [round(load, 2) for load in os.getloadavg()[:2]]
    return BenchResult(
        timestamp=timestamp,
        settings={
            "events": settings.events,
            "tx_size": settings.tx_size,
            "latency_rate": settings.latency_rate,
            "latency_seconds": settings.latency_seconds,
            "profiled": settings.profile_dir is not None,
        },
        machine=machine,
        recvlogical=ceiling,
        plain=plain,
        bridge=bridge,
        polling=polling,
        bridge_latency=bridge_latency,
        polling_latency=polling_latency,
        bridge_peak_rss_kib=rss_kib,
        bridge_load=bridge_load,
        polling_load=polling_load,
        total_seconds=progress.elapsed,
        profile=tuple(profile),
    )


async def _plain_relay(nc: NatsClient, stack: BenchStack, settings: Settings) -> Throughput:
    await create_stream(nc, PLAIN_STREAM, [f"{PLAIN_PREFIX}.>"])
    relay = Child(
        "bench.plain_relay",
        [
            "--dsn",
            stack.dsn,
            "--slot",
            SLOT_PLAIN,
            "--publication",
            PUBLICATION,
            "--nats-url",
            stack.nats.url,
            "--events",
            str(settings.events),
        ],
        stack.work_dir("plain"),
        "plain_relay",
    )
    relay.start()
    try:
        timeout = _drain_timeout(settings.events)
        state = await wait_for_messages(
            nc, PLAIN_STREAM, settings.events, timeout, relay.check_alive
        )
        result = await relay.result(timeout=30)
    finally:
        relay.kill()
    await delete_stream(nc, PLAIN_STREAM)  # its files and memory are not the bridge's problem
    return _stored(settings.events, relay.spawned_at, state, _child_cpu(result))


async def _bridge(
    nc: NatsClient, stack: BenchStack, settings: Settings, progress: _Progress
) -> tuple[Throughput, int, DatabaseLoad, LatencyResult, list[FunctionCost]]:
    config = bridge_config(
        dsn=stack.dsn, nats_url=stack.nats.url, slot=SLOT_BRIDGE, publication=PUBLICATION
    )
    work_dir = stack.work_dir("bridge")
    bridge = BridgeUnderTest(config, work_dir)
    meter = LoadMeter(stack.dsn, OUTBOX_TABLE)
    profile: list[FunctionCost] = []
    bridge.start()
    try:
        timeout = _drain_timeout(settings.events)
        recorder = None
        if settings.profile_dir is not None:
            # Attach once it is draining: py-spy cannot read a half-started interpreter
            await wait_for_messages(nc, BRIDGE_STREAM, 1, timeout, bridge.check_alive)
            recorder = PySpyRecorder(bridge.pid, settings.profile_dir, "bridge")
        state = await wait_for_messages(
            nc, BRIDGE_STREAM, settings.events, timeout, bridge.check_alive
        )
        if recorder is not None:
            collapsed = recorder.stop()
            profile = top_functions(collapsed)
            progress.say(f"profile of the drain: {collapsed}")
        cpu = bridge.cpu_use()
        rss_kib = bridge.peak_rss_kib()
        load = meter.finish()
        drained = _stored(settings.events, bridge.spawned_at, state, cpu)
        progress.say(f"cdc-bridge drained at {drained.events_per_second:,.0f} events/s")
        latency = await measure_latency(
            nats_url=stack.nats.url,
            subjects=f"{BRIDGE_PREFIX}.>",
            dsn=stack.dsn,
            table=OUTBOX_TABLE,
            rate=settings.latency_rate,
            seconds=settings.latency_seconds,
            work_dir=work_dir,
            name="producer",
        )
        after = await stream_state(nc, BRIDGE_STREAM)
        progress.say(f"cdc-bridge stream holds {after.messages} messages")
    finally:
        code = bridge.stop()
    if code != 0:
        raise RuntimeError(f"the bridge exited with code {code}; log {bridge.log_path}")
    return drained, rss_kib, load, latency, profile


async def _polling_drain(
    nc: NatsClient, stack: BenchStack, settings: Settings
) -> tuple[Throughput, DatabaseLoad]:
    commit_backlog(stack.dsn, POLLING_TABLE, settings.events, settings.tx_size)
    await create_stream(nc, POLLING_STREAM, [f"{POLLING_PREFIX}.>"])
    meter = LoadMeter(stack.dsn, POLLING_TABLE)
    relay = Child(
        "bench.polling_relay",
        ["--dsn", stack.dsn, "--nats-url", stack.nats.url, "--until-empty"],
        stack.work_dir("polling"),
        "polling_drain",
    )
    relay.start()
    try:
        timeout = _drain_timeout(settings.events)
        state = await wait_for_messages(
            nc, POLLING_STREAM, settings.events, timeout, relay.check_alive
        )
        result = await relay.result(timeout=60)
    finally:
        relay.kill()
    load = meter.finish(expected_updates=settings.events)
    return _stored(settings.events, relay.spawned_at, state, _child_cpu(result)), load


async def _polling_latency(nc: NatsClient, stack: BenchStack, settings: Settings) -> LatencyResult:
    work_dir = stack.work_dir("polling")
    relay = Child(
        "bench.polling_relay",
        ["--dsn", stack.dsn, "--nats-url", stack.nats.url, "--poll-interval", "0.1"],
        work_dir,
        "polling_continuous",
    )
    relay.start()
    try:
        await relay.wait_ready(timeout=30)
        latency = await measure_latency(
            nats_url=stack.nats.url,
            subjects=f"{POLLING_PREFIX}.>",
            dsn=stack.dsn,
            table=POLLING_TABLE,
            rate=settings.latency_rate,
            seconds=settings.latency_seconds,
            work_dir=work_dir,
            name="producer",
        )
        relay.terminate()
        await relay.result(timeout=30)
    finally:
        relay.kill()
    return latency
