"""One benchmark run, stage by stage, on one throwaway PostgreSQL and nats-server.

1. One slot per WAL drain stage and round is created, then the backlog is committed once:
   every WAL reader (pg_recvlogical, the plain relay, the bridge) drains the very same
   changes, in every round.
2. Round after round: pg_recvlogical drains its slot (the ceiling); the plain
   publish_async relay drains its slot into a fresh stream of its own; a fresh bridge
   drains its slot into a fresh stream, and its peak RSS and the WAL written while it
   drained are read. Each stage's figure is its median round.
3. In the last round, that round's bridge, still running, carries a paced
   1-event-per-transaction load while a subscriber times each event (latency).
4. The polling relay drains the same number of rows from its own table (throughput and
   database load), then runs continuously under the same paced load (latency).
5. The bridge in atomic mode against per-message mode, for several transaction sizes,
   alone in its stream and with another writer in it (bench/modes.py).
6. The bridge with CloudEvents, Debezium's envelope and payload paths, each against the
   default config (bench/formats.py).

Stages run one after another, never side by side: the machine has 2 cores.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
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
from bench.formats import FormatSettings, run_formats
from bench.latency import LatencyResult, measure_latency
from bench.machine import describe_machine
from bench.modes import ModeSettings, run_modes
from bench.plain_relay import SUBJECT_PREFIX as PLAIN_PREFIX
from bench.polling_relay import SUBJECT_PREFIX as POLLING_PREFIX
from bench.profiling import FunctionCost, PySpyRecorder, top_functions
from bench.recvlogical import drain_with_pg_recvlogical
from bench.report import (
    BenchResult,
    FormatGroup,
    ModeGroup,
    Throughput,
    formats_json,
    formats_lines,
    median_round,
)
from bench.serverload import ServerLoad, server_load
from bench.stack import PUBLICATION, BenchStack, create_slot, drop_slot, server_version, wal_lsn
from bench.streams import (
    StreamState,
    create_stream,
    delete_stream,
    stream_state,
    wait_for_messages,
)
from bench.workload import OUTBOX_TABLE, POLLING_TABLE, commit_backlog

PLAIN_STREAM = "PLAIN"
POLLING_STREAM = "POLL"


@dataclass(frozen=True, slots=True)
class Settings:
    events: int
    tx_size: int
    rounds: int  # of the WAL drain stages, interleaved; each reports its median round
    latency_rate: float  # events per second, one per transaction
    latency_seconds: float
    profile_dir: Path | None  # sample the last round's bridge with py-spy during its drain
    keep: bool  # leave the servers' folder (logs, data) behind
    modes: ModeSettings | None = None  # the atomic/per-message drains; None: skipped
    formats: FormatSettings | None = None  # the format drains; None: skipped
    profile_native: bool = False  # py-spy --native: the compiled functions by name


@dataclass(frozen=True, slots=True)
class DrainStage:
    """A WAL reader drained once per round, each time from a slot of its own."""

    name: str
    label: str

    def slot(self, round_no: int) -> str:
        return f"bench_{self.name}_{round_no}"


CEILING = DrainStage("recvlogical", "pg_recvlogical")
PLAIN = DrainStage("plain", "plain publish_async relay")
BRIDGE = DrainStage("bridge", "cdc-bridge")
DRAIN_STAGES = (CEILING, PLAIN, BRIDGE)  # the order within every round

# Drains the slot given, in the round given (1-based): that round's figures
Drain = Callable[[str, int], Awaitable[Throughput]]


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


async def _drain_with(
    nc: NatsClient,
    stack: BenchStack,
    relay: Child,
    stream: str,
    events: int,
    result_timeout: float,
) -> tuple[StreamState, dict[str, Any], ServerLoad]:
    """Start a relay, wait until its stream holds every event, then collect its result;
    and what the servers and the machine did from its start to its last event stored."""
    before = stack.server_snapshot()
    relay.start()
    try:
        state = await wait_for_messages(
            nc, stream, events, _drain_timeout(events), relay.check_alive
        )
        servers = server_load(before, stack.server_snapshot())
        return state, await relay.result(timeout=result_timeout), servers
    finally:
        relay.kill()


def _stored(
    events: int,
    spawned_at: float,
    state: StreamState,
    cpu: CpuUse | None,
    servers: ServerLoad | None = None,
) -> Throughput:
    """Timed by the stream's own clock: spawn -> last stored, first stored -> last stored."""
    assert state.first_ts is not None and state.last_ts is not None
    return Throughput(
        events, state.last_ts - spawned_at, state.last_ts - state.first_ts, cpu, servers
    )


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
    slots = len(DRAIN_STAGES) * settings.rounds
    if settings.modes is not None:
        slots = max(slots, settings.modes.slots)
    if settings.formats is not None:
        slots = max(slots, settings.formats.slots)
    with BenchStack(keep=settings.keep, slots=slots) as stack:
        dsn = stack.dsn
        nc = await nats.connect(stack.nats.url)
        try:
            machine = describe_machine(
                postgres_version=server_version(dsn),
                nats_version=_version_text(nc),
            )
            for round_no in range(1, settings.rounds + 1):
                for stage in DRAIN_STAGES:
                    create_slot(dsn, stage.slot(round_no))
            progress.say(f"committing {settings.events} events into {OUTBOX_TABLE}")
            commit_backlog(dsn, OUTBOX_TABLE, settings.events, settings.tx_size)
            endpos = wal_lsn(dsn)

            bridge = _BridgeRounds(nc, stack, settings, progress)
            drains: dict[DrainStage, Drain] = {
                CEILING: partial(_ceiling, stack, endpos, settings.events),
                PLAIN: partial(_plain_relay, nc, stack, settings),
                BRIDGE: bridge.drain,
            }
            rounds = await _drain_rounds(dsn, drains, settings.rounds, progress)

            progress.say(f"polling relay: committing {settings.events} events, draining them")
            polling, polling_load = await _polling_drain(nc, stack, settings)
            progress.say("polling relay: latency run")
            polling_latency = await _polling_latency(nc, stack, settings)
            modes: tuple[ModeGroup, ...] = ()
            if settings.modes is not None:
                modes = await run_modes(nc, stack, settings.modes, progress.say)
            formats: FormatGroup | None = None
            if settings.formats is not None:
                formats = await run_formats(nc, stack, settings.formats, progress.say)
        finally:
            await nc.close()
    assert bridge.latency is not None, "the last round runs the latency run"
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
            "rounds": settings.rounds,
        },
        machine=machine,
        recvlogical_rounds=tuple(rounds[CEILING]),
        plain_rounds=tuple(rounds[PLAIN]),
        bridge_rounds=tuple(rounds[BRIDGE]),
        polling=polling,
        bridge_latency=bridge.latency,
        polling_latency=polling_latency,
        # The most memory any round's bridge needed; the database load of the round whose
        # figures the table shows
        bridge_peak_rss_kib=max(bridge.peak_rss_kib),
        bridge_load=bridge.loads[median_round(rounds[BRIDGE])],
        polling_load=polling_load,
        total_seconds=progress.elapsed,
        profile=tuple(bridge.profile),
        modes=modes,
        modes_settings={} if settings.modes is None else settings.modes.as_json(),
        formats=formats,
    )


async def run_formats_only(settings: FormatSettings, keep: bool = False) -> dict[str, Any]:
    """The format drains alone (``--only-formats``), on a stack of their own: the JSON."""
    progress = _Progress()
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    progress.say("starting PostgreSQL and nats-server")
    with BenchStack(keep=keep, slots=max(3, settings.slots)) as stack:
        nc = await nats.connect(stack.nats.url)
        try:
            machine = describe_machine(
                postgres_version=server_version(stack.dsn), nats_version=_version_text(nc)
            )
            group = await run_formats(nc, stack, settings, progress.say)
        finally:
            await nc.close()
    machine["loadavg_at_end"] = [round(load, 2) for load in os.getloadavg()[:2]]
    return {
        "timestamp": timestamp,
        "settings": {**settings.as_json(), "only_formats": True},
        "machine": machine,
        "formats": formats_json(group),
        "formats_table": formats_lines(group),
        "total_seconds": round(progress.elapsed, 1),
    }


async def _drain_rounds(
    dsn: str, drains: dict[DrainStage, Drain], rounds: int, progress: _Progress
) -> dict[DrainStage, list[Throughput]]:
    """Round after round, each stage drains its slot of that round, which is then dropped.

    Interleaved, not stage after stage: on a shared machine a noisy minute then skews one
    round of every stage rather than every round of one stage, and the medians (and the
    ratios between them) shrug it off.
    """
    figures: dict[DrainStage, list[Throughput]] = {stage: [] for stage in DRAIN_STAGES}
    for round_no in range(1, rounds + 1):
        for stage in DRAIN_STAGES:
            slot = stage.slot(round_no)
            progress.say(f"round {round_no}/{rounds}, {stage.label}: draining slot {slot}")
            drained = await drains[stage](slot, round_no)
            drop_slot(dsn, slot)  # the WAL it retained is not needed any more
            progress.say(
                f"round {round_no}/{rounds}, {stage.label}: "
                f"{drained.events_per_second:,.0f} events/s"
            )
            figures[stage].append(drained)
    return figures


async def _ceiling(
    stack: BenchStack, endpos: int, events: int, slot: str, round_no: int
) -> Throughput:
    """pg_recvlogical up to ``endpos``; the same in every round."""
    before = stack.server_snapshot()
    seconds = drain_with_pg_recvlogical(stack.dsn, slot, PUBLICATION, endpos)
    servers = server_load(before, stack.server_snapshot())
    return Throughput(events, seconds, servers=servers)


async def _plain_relay(
    nc: NatsClient, stack: BenchStack, settings: Settings, slot: str, round_no: int
) -> Throughput:
    await create_stream(nc, PLAIN_STREAM, [f"{PLAIN_PREFIX}.>"])
    relay = Child(
        "bench.plain_relay",
        [
            "--dsn",
            stack.dsn,
            "--slot",
            slot,
            "--publication",
            PUBLICATION,
            "--nats-url",
            stack.nats.url,
            "--events",
            str(settings.events),
        ],
        stack.work_dir("plain"),
        f"plain_relay_{round_no}",
    )
    state, result, servers = await _drain_with(nc, stack, relay, PLAIN_STREAM, settings.events, 30)
    # Its files and memory are not the bridge's problem; and the next round's relay must
    # not have its messages dropped as duplicates
    await delete_stream(nc, PLAIN_STREAM)
    return _stored(settings.events, relay.spawned_at, state, _child_cpu(result), servers)


class _BridgeRounds:
    """The bridge's drain, once per round: a fresh process on the round's slot each time.

    The last round's bridge, still running after its drain, also carries the latency run
    (and is the one profiled), as a single bridge stage would.
    """

    def __init__(
        self, nc: NatsClient, stack: BenchStack, settings: Settings, progress: _Progress
    ) -> None:
        self._nc = nc
        self._stack = stack
        self._settings = settings
        self._progress = progress
        self.peak_rss_kib: list[int] = []  # per round
        self.loads: list[DatabaseLoad] = []  # per round
        self.latency: LatencyResult | None = None  # the last round's
        self.profile: list[FunctionCost] = []  # the last round's, with --profile

    async def drain(self, slot: str, round_no: int) -> Throughput:
        nc, stack, settings = self._nc, self._stack, self._settings
        last = round_no == settings.rounds
        config = bridge_config(
            dsn=stack.dsn, nats_url=stack.nats.url, slot=slot, publication=PUBLICATION
        )
        work_dir = stack.work_dir("bridge")
        bridge = BridgeUnderTest(config, work_dir, f"bridge_{round_no}")
        meter = LoadMeter(stack.dsn, OUTBOX_TABLE)
        before = stack.server_snapshot()
        bridge.start()
        try:
            timeout = _drain_timeout(settings.events)
            recorder = None
            if last and settings.profile_dir is not None:
                # Attach once it is draining: py-spy cannot read a half-started interpreter
                await wait_for_messages(nc, BRIDGE_STREAM, 1, timeout, bridge.check_alive)
                recorder = PySpyRecorder(
                    bridge.pid, settings.profile_dir, "bridge", native=settings.profile_native
                )
            state = await wait_for_messages(
                nc, BRIDGE_STREAM, settings.events, timeout, bridge.check_alive
            )
            servers = server_load(before, stack.server_snapshot())
            if recorder is not None:
                collapsed = recorder.stop()
                self.profile = top_functions(collapsed)
                self._progress.say(f"profile of the drain: {collapsed}")
            cpu = bridge.cpu_use()
            self.peak_rss_kib.append(bridge.peak_rss_kib())
            self.loads.append(meter.finish())
            drained = _stored(settings.events, bridge.spawned_at, state, cpu, servers)
            if last:
                self.latency = await self._latency(work_dir)
        finally:
            code = bridge.stop()
        if code != 0:
            raise RuntimeError(f"the bridge exited with code {code}; log {bridge.log_path}")
        # The next round's bridge starts on a fresh stream, as this one did: nothing to
        # deduplicate against, no tail to read at start-up
        await delete_stream(nc, BRIDGE_STREAM)
        return drained

    async def _latency(self, work_dir: Path) -> LatencyResult:
        stack, settings = self._stack, self._settings
        self._progress.say("cdc-bridge: latency run, with the same bridge still running")
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
        after = await stream_state(self._nc, BRIDGE_STREAM)
        self._progress.say(f"cdc-bridge stream holds {after.messages} messages")
        return latency


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
    state, result, servers = await _drain_with(
        nc, stack, relay, POLLING_STREAM, settings.events, 60
    )
    load = meter.finish(expected_updates=settings.events)
    drained = _stored(settings.events, relay.spawned_at, state, _child_cpu(result), servers)
    return drained, load


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
