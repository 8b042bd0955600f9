"""The bridge in atomic mode against per-message mode, alone in its stream or not.

For each transaction size a backlog is committed once, after one slot per variant and
round was made, and every variant drains the very same changes in interleaved rounds
(per-message, atomic, then, for the writer's transaction size, per-message and atomic
again with another client writing into the stream). Each variant's figure is its
median round, as for the main drains.

Every drain gets a fresh stream made here, the same for every variant: ``BENCH`` on
``bench.>`` and ``writer.>``, file storage, the 2 min dedupe window, ``allow_atomic``
on. What differs is the bridge's ``nats.atomic_transactions``: ``true`` (atomic
batches, or the bridge refuses to start) or ``false`` (per message, pipelined); and the
bridge's ``streaming`` log line must say ``atomic=`` accordingly, or the run fails.
The bridge's subject space is ``bench.>``; the other writer publishes on ``writer.*``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from bench.bridge_run import STREAM, SUBJECT_PREFIX, BridgeUnderTest, bridge_config
from bench.children import Child
from bench.other_writer import SUBJECT_PREFIX as WRITER_PREFIX
from bench.report import (
    ATOMIC,
    ATOMIC_WRITER,
    FAST,
    FAST_WRITER,
    PER_MESSAGE,
    PER_MESSAGE_WRITER,
    ModeGroup,
    Throughput,
)
from bench.stack import PUBLICATION, BenchStack, create_slot, drop_slot
from bench.streams import create_stream, delete_stream, wait_for_subject_messages
from bench.workload import OUTBOX_TABLE, commit_backlog

BRIDGE_SUBJECTS = f"{SUBJECT_PREFIX}.>"
WRITER_SUBJECTS = f"{WRITER_PREFIX}.>"
STREAM_SUBJECTS = [BRIDGE_SUBJECTS, WRITER_SUBJECTS]

# variant -> (atomic mode?, another writer?, fast-ingest batches?)
_VARIANTS = {
    PER_MESSAGE: (False, False, False),
    ATOMIC: (True, False, False),
    PER_MESSAGE_WRITER: (False, True, False),
    ATOMIC_WRITER: (True, True, False),
    FAST: (False, False, True),
    FAST_WRITER: (False, True, True),
}


@dataclass(frozen=True, slots=True)
class ModeSettings:
    events: int  # per backlog (one per transaction size)
    tx_sizes: tuple[int, ...]
    writer_tx_size: int | None  # the transaction size drained with the other writer too
    writer_rate: float  # messages per second
    rounds: int

    def variants(self, tx_size: int) -> tuple[str, ...]:
        if tx_size == self.writer_tx_size:
            return (PER_MESSAGE, ATOMIC, FAST, PER_MESSAGE_WRITER, ATOMIC_WRITER, FAST_WRITER)
        return (PER_MESSAGE, ATOMIC, FAST)

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "tx_sizes": list(self.tx_sizes),
            "writer_tx_size": self.writer_tx_size,
            "writer_rate": self.writer_rate,
            "writer_subjects": WRITER_SUBJECTS,
            "rounds": self.rounds,
            "stream": {
                "subjects": STREAM_SUBJECTS,
                "storage": "file",
                "duplicate_window_s": 120,
                "allow_atomic": True,
                "allow_batched": True,
            },
        }

    @property
    def slots(self) -> int:
        """Slots that exist at once: those of one transaction size."""
        return max(len(self.variants(size)) for size in self.tx_sizes) * self.rounds


def _timeout(events: int) -> float:
    return 60.0 + events / 1000  # generous, as for the main drains


class WrongMode(RuntimeError):
    """The bridge did not run in the mode the row is about."""


def bridge_mode_config(
    stack: BenchStack, slot: str, *, atomic: bool, fast: bool = False
) -> dict[str, Any]:
    config = bridge_config(
        dsn=stack.dsn, nats_url=stack.nats.url, slot=slot, publication=PUBLICATION
    )
    nats_section = config["nats"]
    nats_section["stream"] = {
        "name": STREAM,
        "subjects": list(STREAM_SUBJECTS),
        "allow_atomic": True,
        "allow_batched": True,
    }
    nats_section["atomic_transactions"] = atomic
    nats_section["fast_ingest"] = fast
    nats_section["subject_space"] = BRIDGE_SUBJECTS
    # The `streaming` line (info) says which mode it runs in
    config["logging"]["level"] = "info"
    return config


def streaming_mode(log_path: Path, key: str = "atomic") -> bool | None:
    """``key`` of the bridge's ``streaming`` log line (JSON lines); None if it has none."""
    found: bool | None = None
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"streaming"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "streaming":
            found = bool(record.get(key))
    return found


async def _drain_variant(
    nc: NatsClient,
    stack: BenchStack,
    settings: ModeSettings,
    variant: str,
    slot: str,
    name: str,
    writer_rates: dict[str, list[float]],
) -> Throughput:
    atomic, with_writer, fast = _VARIANTS[variant]
    work_dir = stack.work_dir("modes")
    await create_stream(nc, STREAM, list(STREAM_SUBJECTS), allow_atomic=True, allow_batched=True)
    writer: Child | None = None
    bridge: BridgeUnderTest | None = None
    try:
        if with_writer:
            writer = Child(
                "bench.other_writer",
                ["--nats-url", stack.nats.url, "--rate", str(settings.writer_rate)],
                work_dir,
                f"{name}_writer",
            )
            writer.start()
            await writer.wait_ready(timeout=30)
        config = bridge_mode_config(stack, slot, atomic=atomic, fast=fast)
        bridge = BridgeUnderTest(config, work_dir, name)
        bridge.start()
        state = await wait_for_subject_messages(
            nc,
            STREAM,
            BRIDGE_SUBJECTS,
            settings.events,
            _timeout(settings.events),
            bridge.check_alive,
        )
        cpu = bridge.cpu_use()
        # Timed by the stream's clock, on the bridge's subjects only: spawn -> its last
        # event stored, and its first event stored -> its last
        assert state.first_ts is not None and state.last_ts is not None
        drained = Throughput(
            settings.events, state.last_ts - bridge.spawned_at, state.last_ts - state.first_ts, cpu
        )
        code = bridge.stop()
        if code != 0:
            raise RuntimeError(f"the bridge exited with code {code}; log {bridge.log_path}")
        if writer is not None:
            writer.terminate()
            result = await writer.result(timeout=30)
            writer_rates.setdefault(variant, []).append(float(result["achieved_rate"]))
    finally:
        if bridge is not None:
            bridge.stop()
        if writer is not None:
            writer.kill()
    assert bridge is not None
    for key, wanted in (("atomic", atomic), ("fast_ingest", fast)):
        ran = streaming_mode(bridge.log_path, key)
        if ran is not wanted:
            raise WrongMode(
                f"{name}: the bridge was to run with {key}={wanted} but its streaming line "
                f"says {key}={ran}; log {bridge.log_path}"
            )
    await delete_stream(nc, STREAM)
    return drained


async def run_modes(
    nc: NatsClient,
    stack: BenchStack,
    settings: ModeSettings,
    say: Callable[[str], None],
) -> tuple[ModeGroup, ...]:
    groups = []
    for tx_size in settings.tx_sizes:
        groups.append(await _run_group(nc, stack, settings, tx_size, say))
    return tuple(groups)


def _slot(variant: str, tx_size: int, round_no: int) -> str:
    return f"bench_{variant}_{tx_size}_{round_no}"


async def _run_group(
    nc: NatsClient,
    stack: BenchStack,
    settings: ModeSettings,
    tx_size: int,
    say: Callable[[str], None],
) -> ModeGroup:
    variants: Sequence[str] = settings.variants(tx_size)
    for round_no in range(1, settings.rounds + 1):
        for variant in variants:
            create_slot(stack.dsn, _slot(variant, tx_size, round_no))
    say(f"modes: committing {settings.events} events in transactions of {tx_size}")
    commit_backlog(stack.dsn, OUTBOX_TABLE, settings.events, tx_size)
    rounds: dict[str, list[Throughput]] = {variant: [] for variant in variants}
    writer_rates: dict[str, list[float]] = {}
    for round_no in range(1, settings.rounds + 1):
        for variant in variants:
            slot = _slot(variant, tx_size, round_no)
            drained = await _drain_variant(nc, stack, settings, variant, slot, slot, writer_rates)
            drop_slot(stack.dsn, slot)
            say(
                f"modes: tx {tx_size}, round {round_no}/{settings.rounds}, {variant}: "
                f"{drained.events_per_second:,.0f} events/s"
            )
            rounds[variant].append(drained)
    return ModeGroup(
        tx_size=tx_size,
        events=settings.events,
        rounds={variant: tuple(values) for variant, values in rounds.items()},
        writer_rates={variant: tuple(rates) for variant, rates in writer_rates.items()},
    )
