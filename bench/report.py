"""One run's figures: the table printed at the end and the JSON saved under bench/results/."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import CpuUse
from bench.dbload import DatabaseLoad
from bench.latency import LatencyResult
from bench.profiling import FunctionCost
from bench.serverload import ServerLoad, per_event_us


@dataclass(frozen=True, slots=True)
class Throughput:
    """A backlog drained: from the relay's start, and from its first event to its last."""

    events: int
    seconds: float  # process start -> last event stored (relays) or decoded (pg_recvlogical)
    drain_seconds: float | None = None  # first event stored -> last event stored
    # The relay process's CPU from its start to its last event: a busy machine distorts
    # events per CPU-second far less than events per second; and how long it waited for
    # a CPU, which says how busy the machine was
    cpu: CpuUse | None = None
    # What nats-server, PostgreSQL and the machine did over the same window (the WAL
    # drains and the polling relay; None elsewhere): what else the 2 cores were doing
    servers: ServerLoad | None = None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan

    @property
    def events_per_cpu_second(self) -> float | None:
        if self.cpu is None or self.cpu.on_cpu_seconds <= 0:
            return None
        return self.events / self.cpu.on_cpu_seconds

    @property
    def cpu_wait_share(self) -> float | None:
        """Of the elapsed time, the share spent runnable but waiting for a CPU."""
        if self.cpu is None or self.seconds <= 0:
            return None
        return self.cpu.runqueue_wait_seconds / self.seconds

    @property
    def startup_seconds(self) -> float | None:
        """From spawning the relay to its first event stored: imports, config, connections,
        start-up checks (for an atomic-mode bridge also building its first batch)."""
        if self.drain_seconds is None:
            return None
        return self.seconds - self.drain_seconds

    @property
    def drain_events_per_second(self) -> float | None:
        if self.drain_seconds is None or self.drain_seconds <= 0:
            return None
        return self.events / self.drain_seconds

    @property
    def relay_us_per_event(self) -> float | None:
        """The relay's own CPU per event (start-up included), in microseconds."""
        return None if self.cpu is None else per_event_us(self.cpu.on_cpu_seconds, self.events)

    @property
    def nats_us_per_event(self) -> float | None:
        """nats-server's CPU during the drain per event, in microseconds."""
        servers = self.servers
        return None if servers is None else per_event_us(servers.nats_cpu_seconds, self.events)

    @property
    def postgres_us_per_event(self) -> float | None:
        """PostgreSQL's CPU (walsender and every other backend) per event, in microseconds."""
        servers = self.servers
        return None if servers is None else per_event_us(servers.postgres_cpu_seconds, self.events)

    @property
    def machine_busy_share(self) -> float | None:
        """Of all the machine's CPUs during the drain, the share that was busy."""
        return None if self.servers is None else self.servers.machine_busy_share


def median_round(rounds: Sequence[Throughput]) -> int:
    """Index of the round with the median events/s; of an even count, the slower middle one.

    A real round rather than an average of rounds: its seconds, steady rate, CPU and CPU
    wait all belong to the same drain.
    """
    by_rate = sorted(range(len(rounds)), key=lambda index: rounds[index].events_per_second)
    return by_rate[(len(rounds) - 1) // 2]


@dataclass(frozen=True, slots=True)
class RoundRatios:
    """The bridge over the plain relay and over pg_recvlogical, within one round."""

    bridge_vs_plain: float
    bridge_vs_ceiling: float


# The variants of the atomic-mode drains (bench/modes.py): the bridge per message or in
# atomic batches, alone in its stream or with another writer in it
PER_MESSAGE = "per_message"
ATOMIC = "atomic"
PER_MESSAGE_WRITER = "per_message_with_writer"
ATOMIC_WRITER = "atomic_with_writer"
# Per-message mode through fast-ingest batches (nats.fast_ingest), alone and with the writer
FAST = "fast"
FAST_WRITER = "fast_with_writer"
MODE_VARIANTS = (PER_MESSAGE, ATOMIC, PER_MESSAGE_WRITER, ATOMIC_WRITER, FAST, FAST_WRITER)


@dataclass(frozen=True, slots=True)
class ModeGroup:
    """One backlog (``events`` in transactions of ``tx_size``) drained by every variant in
    interleaved rounds; each variant's figure is its median round."""

    tx_size: int
    events: int
    rounds: dict[str, tuple[Throughput, ...]]  # by variant, every round in order
    # The other writer's achieved msgs/s, by variant (those with the writer), per round
    writer_rates: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)

    def median(self, variant: str) -> Throughput:
        rounds = self.rounds[variant]
        return rounds[median_round(rounds)]

    def ratio(self, variant: str, base: str) -> float:
        """``variant`` over ``base``, events/s of their median rounds."""
        return self.median(variant).events_per_second / self.median(base).events_per_second

    def round_ratios(self, variant: str, base: str) -> list[float]:
        return [
            value.events_per_second / reference.events_per_second
            for value, reference in zip(self.rounds[variant], self.rounds[base], strict=True)
        ]

    def median_round_ratio(self, variant: str, base: str) -> float:
        """The median of the per-round ratios (of an even count, the lower middle)."""
        ratios = sorted(self.round_ratios(variant, base))
        return ratios[(len(ratios) - 1) // 2]

    def steady_ratio(self, variant: str, base: str) -> float | None:
        """``variant`` over ``base``, steady events/s (start-up left out) of the medians."""
        value = self.median(variant).drain_events_per_second
        reference = self.median(base).drain_events_per_second
        return None if value is None or not reference else value / reference

    def pairs(self) -> list[tuple[str, str, str]]:
        """(label, variant, base) of every ratio this group reports."""
        found: list[tuple[str, str, str]] = [("atomic/per-message", ATOMIC, PER_MESSAGE)]
        if FAST in self.rounds:
            found.append(("fast/per-message", FAST, PER_MESSAGE))
        if FAST_WRITER in self.rounds:
            found.append(("fast with writer/alone", FAST_WRITER, FAST))
        if PER_MESSAGE_WRITER in self.rounds:
            found += [
                ("atomic/per-message, with writer", ATOMIC_WRITER, PER_MESSAGE_WRITER),
                ("per-message with writer/alone", PER_MESSAGE_WRITER, PER_MESSAGE),
                ("atomic with writer/alone", ATOMIC_WRITER, ATOMIC),
            ]
        return found


# The variants of the format drains (bench/formats.py): the bench's default config, and
# the same with one feature on; each is compared with the default
FORMAT_DEFAULT = "default"
FORMAT_CLOUDEVENTS = "cloudevents"
FORMAT_DEBEZIUM = "debezium"
FORMAT_PAYLOAD_PATHS = "payload_paths"
FORMAT_VARIANTS = (FORMAT_DEFAULT, FORMAT_CLOUDEVENTS, FORMAT_DEBEZIUM, FORMAT_PAYLOAD_PATHS)


@dataclass(frozen=True, slots=True)
class FormatGroup:
    """One backlog drained by the bridge with each format variant in interleaved rounds;
    each variant's figure is its median round, its ratios are to ``default``."""

    events: int
    tx_size: int
    atomic: bool  # the publishing mode every variant ran in (the bridge's default here)
    rounds: dict[str, tuple[Throughput, ...]]  # by variant, every round in order
    # By variant, per round: events per CPU-second from the first event stored to the
    # last (start-up left out), None where not measured
    steady_cpu: dict[str, tuple[float | None, ...]] = dataclasses.field(default_factory=dict)

    def median(self, variant: str) -> Throughput:
        rounds = self.rounds[variant]
        return rounds[median_round(rounds)]

    def median_steady_cpu(self, variant: str) -> float | None:
        """The median round's events per CPU-second once started."""
        values = self.steady_cpu.get(variant, ())
        index = median_round(self.rounds[variant])
        return values[index] if index < len(values) else None

    def steady_cpu_round_ratios(self, variant: str) -> list[float]:
        found = []
        for mine, base in zip(
            self.steady_cpu.get(variant, ()), self.steady_cpu.get(FORMAT_DEFAULT, ()), strict=True
        ):
            if mine is not None and base:
                found.append(mine / base)
        return found

    def median_steady_cpu_ratio(self, variant: str) -> float | None:
        ratios = self.steady_cpu_round_ratios(variant)
        return _lower_median(ratios) if ratios else None

    def ratio(self, variant: str) -> float:
        """events/s of ``variant``'s median round over the default's."""
        return (
            self.median(variant).events_per_second / self.median(FORMAT_DEFAULT).events_per_second
        )

    def round_ratios(self, variant: str) -> list[float]:
        return [
            value.events_per_second / reference.events_per_second
            for value, reference in zip(
                self.rounds[variant], self.rounds[FORMAT_DEFAULT], strict=True
            )
        ]

    def cpu_round_ratios(self, variant: str) -> list[float]:
        """Per round, events per CPU-second of ``variant`` over the default's."""
        found = []
        for value, reference in zip(self.rounds[variant], self.rounds[FORMAT_DEFAULT], strict=True):
            mine, base = value.events_per_cpu_second, reference.events_per_cpu_second
            if mine is not None and base:
                found.append(mine / base)
        return found

    def median_round_ratio(self, variant: str) -> float:
        return _lower_median(self.round_ratios(variant))

    def median_cpu_ratio(self, variant: str) -> float | None:
        ratios = self.cpu_round_ratios(variant)
        return _lower_median(ratios) if ratios else None


def _lower_median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


@dataclass(frozen=True, slots=True)
class BenchResult:
    timestamp: str  # UTC, ISO 8601
    settings: dict[str, Any]
    machine: dict[str, Any]
    # The WAL drain stages ran in interleaved rounds (ceiling, plain, bridge, ceiling, ...):
    # every round of each, in order. The stage's figure is its median round.
    recvlogical_rounds: tuple[Throughput, ...]
    plain_rounds: tuple[Throughput, ...]
    bridge_rounds: tuple[Throughput, ...]
    polling: Throughput
    bridge_latency: LatencyResult
    polling_latency: LatencyResult
    bridge_peak_rss_kib: int
    bridge_load: DatabaseLoad
    polling_load: DatabaseLoad
    total_seconds: float
    profile: tuple[FunctionCost, ...] = ()
    modes: tuple[ModeGroup, ...] = ()  # the atomic/per-message drains, by transaction size
    modes_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    formats: FormatGroup | None = None  # the format drains (bench/formats.py); None: skipped

    @property
    def recvlogical(self) -> Throughput:
        return self.recvlogical_rounds[median_round(self.recvlogical_rounds)]

    @property
    def plain(self) -> Throughput:
        return self.plain_rounds[median_round(self.plain_rounds)]

    @property
    def bridge(self) -> Throughput:
        return self.bridge_rounds[median_round(self.bridge_rounds)]

    @property
    def bridge_vs_plain(self) -> float:
        return self.bridge.events_per_second / self.plain.events_per_second

    @property
    def bridge_vs_ceiling(self) -> float:
        return self.bridge.events_per_second / self.recvlogical.events_per_second

    @property
    def median_round_ratios(self) -> RoundRatios:
        """The median of each ratio over the rounds (of an even count, the lower middle).

        Within a round the stages run back to back, in the same phase of the machine's
        other load; across rounds they do not. So this is the steadier estimate of the
        two: the ratio of the median rounds may divide one round's bridge by another
        round's baseline.
        """
        ratios = self.round_ratios
        middle = (len(ratios) - 1) // 2
        return RoundRatios(
            sorted(r.bridge_vs_plain for r in ratios)[middle],
            sorted(r.bridge_vs_ceiling for r in ratios)[middle],
        )

    @property
    def round_ratios(self) -> list[RoundRatios]:
        """Each round's ratios: how far the noise of the machine moved them."""
        return [
            RoundRatios(
                bridge.events_per_second / plain.events_per_second,
                bridge.events_per_second / ceiling.events_per_second,
            )
            for ceiling, plain, bridge in zip(
                self.recvlogical_rounds, self.plain_rounds, self.bridge_rounds, strict=True
            )
        ]


def _throughput_json(value: Throughput) -> dict[str, Any]:
    return {
        **dataclasses.asdict(value),
        "events_per_second": round(value.events_per_second, 1),
        "drain_events_per_second": (
            None
            if value.drain_events_per_second is None
            else round(value.drain_events_per_second, 1)
        ),
        "events_per_cpu_second": (
            None if value.events_per_cpu_second is None else round(value.events_per_cpu_second, 1)
        ),
        "cpu_wait_share": (
            None if value.cpu_wait_share is None else round(value.cpu_wait_share, 3)
        ),
        "startup_seconds": _rounded(value.startup_seconds),
        "nats_us_per_event": _rounded(value.nats_us_per_event),
        "postgres_us_per_event": _rounded(value.postgres_us_per_event),
        "machine_busy_share": _rounded(value.machine_busy_share),
    }


def _ratios_json(ratios: RoundRatios) -> dict[str, float]:
    return {
        "bridge_vs_plain": round(ratios.bridge_vs_plain, 3),
        "bridge_vs_ceiling": round(ratios.bridge_vs_ceiling, 3),
    }


def _rounds_json(result: BenchResult) -> dict[str, Any]:
    """Every round of the drain stages; ``median_round`` (1-based) is the one reported."""
    stages = {
        "pg_recvlogical": result.recvlogical_rounds,
        "plain_relay": result.plain_rounds,
        "bridge": result.bridge_rounds,
    }
    return {
        **{
            stage: [_throughput_json(value) for value in rounds] for stage, rounds in stages.items()
        },
        "ratios": [_ratios_json(ratios) for ratios in result.round_ratios],
        "median_ratios": _ratios_json(result.median_round_ratios),
        "median_round": {stage: median_round(rounds) + 1 for stage, rounds in stages.items()},
    }


def _modes_json(result: BenchResult) -> dict[str, Any]:
    groups = []
    for group in result.modes:
        groups.append(
            {
                "tx_size": group.tx_size,
                "events": group.events,
                "throughput": {
                    variant: _throughput_json(group.median(variant)) for variant in group.rounds
                },
                "ratios": {
                    f"{variant}_vs_{base}": {
                        "median_rounds": round(group.ratio(variant, base), 3),
                        "median_of_rounds": round(group.median_round_ratio(variant, base), 3),
                        "rounds": [round(r, 3) for r in group.round_ratios(variant, base)],
                        "steady": _rounded(group.steady_ratio(variant, base)),
                    }
                    for _, variant, base in group.pairs()
                },
                "rounds": {
                    variant: [_throughput_json(value) for value in rounds]
                    for variant, rounds in group.rounds.items()
                },
                "median_round": {
                    variant: median_round(rounds) + 1 for variant, rounds in group.rounds.items()
                },
                "writer_rates": {
                    variant: [round(rate, 1) for rate in rates]
                    for variant, rates in group.writer_rates.items()
                },
            }
        )
    return {"settings": result.modes_settings, "groups": groups}


def formats_json(group: FormatGroup | None) -> dict[str, Any] | None:
    if group is None:
        return None
    variants = [variant for variant in group.rounds if variant != FORMAT_DEFAULT]
    return {
        "events": group.events,
        "tx_size": group.tx_size,
        "atomic": group.atomic,
        "throughput": {
            variant: {
                **_throughput_json(group.median(variant)),
                "steady_events_per_cpu_second": _rounded(group.median_steady_cpu(variant)),
            }
            for variant in group.rounds
        },
        "ratios_to_default": {
            variant: {
                "median_rounds": round(group.ratio(variant), 3),
                "median_of_rounds": round(group.median_round_ratio(variant), 3),
                "rounds": [round(r, 3) for r in group.round_ratios(variant)],
                "per_cpu_second_median_of_rounds": _rounded(group.median_cpu_ratio(variant)),
                "per_cpu_second_rounds": [round(r, 3) for r in group.cpu_round_ratios(variant)],
                "steady_per_cpu_second_median_of_rounds": _rounded(
                    group.median_steady_cpu_ratio(variant)
                ),
                "steady_per_cpu_second_rounds": [
                    round(r, 3) for r in group.steady_cpu_round_ratios(variant)
                ],
            }
            for variant in variants
        },
        "rounds": {
            variant: [_throughput_json(value) for value in rounds]
            for variant, rounds in group.rounds.items()
        },
        "median_round": {
            variant: median_round(rounds) + 1 for variant, rounds in group.rounds.items()
        },
        "steady_events_per_cpu_second_rounds": {
            variant: [_rounded(value) for value in values]
            for variant, values in group.steady_cpu.items()
        },
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def to_json(result: BenchResult) -> dict[str, Any]:
    return {
        "timestamp": result.timestamp,
        "settings": result.settings,
        "machine": result.machine,
        "throughput": {
            "pg_recvlogical": _throughput_json(result.recvlogical),
            "plain_relay": _throughput_json(result.plain),
            "bridge": _throughput_json(result.bridge),
            "polling_relay": _throughput_json(result.polling),
        },
        "ratios": _ratios_json(RoundRatios(result.bridge_vs_plain, result.bridge_vs_ceiling)),
        "rounds": _rounds_json(result),
        "latency_ms": {
            "bridge": dataclasses.asdict(result.bridge_latency),
            "polling_relay": dataclasses.asdict(result.polling_latency),
        },
        "bridge_peak_rss_mib": round(result.bridge_peak_rss_kib / 1024, 1),
        "database_load": {
            "bridge": dataclasses.asdict(result.bridge_load),
            "polling_relay": dataclasses.asdict(result.polling_load),
        },
        "profile_top_self": [dataclasses.asdict(cost) for cost in result.profile],
        "modes": _modes_json(result),
        "formats": formats_json(result.formats),
        "total_seconds": round(result.total_seconds, 1),
    }


def save_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")


def _mib(nbytes: int) -> str:
    return f"{nbytes / 1048576:.1f} MiB" if abs(nbytes) >= 1048576 else f"{nbytes} B"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


def _rounds_line(result: BenchResult) -> str:
    """Every round of the WAL drains on one line, so the spread behind the medians shows."""
    count = len(result.bridge_rounds)
    rates = [
        f"{label} " + " / ".join(f"{value.events_per_second:,.0f}" for value in rounds)
        for label, rounds in (
            ("ceiling", result.recvlogical_rounds),
            ("plain", result.plain_rounds),
            ("bridge", result.bridge_rounds),
        )
    ]
    ratios = result.round_ratios
    vs_plain = " / ".join(f"{r.bridge_vs_plain:.2f}x" for r in ratios)
    vs_ceiling = " / ".join(f"{r.bridge_vs_ceiling:.2f}x" for r in ratios)
    startups = " / ".join(_seconds(value.startup_seconds) for value in result.bridge_rounds)
    return (
        f"  {count} round{'s' if count != 1 else ''}, events/s: {'; '.join(rates)}; "
        f"bridge/plain {vs_plain}; bridge/ceiling {vs_ceiling}; bridge start-up s {startups}"
    )


def _servers_lines(rows: Sequence[tuple[str, Throughput]]) -> list[str]:
    """Who used the 2 cores during each drain: the relay, nats-server, PostgreSQL, in µs of
    CPU per event, and how busy the whole machine was (its other jobs included)."""
    measured = [(label, value) for label, value in rows if value.servers is not None]
    if not measured:
        return []
    lines = [
        "",
        f"{'CPU during the drain, µs/event':32}{'relay':>10}{'nats':>9}{'PG':>10}"
        f"{'sum':>10}{'machine busy':>14}",
    ]
    for label, value in measured:
        parts = (value.relay_us_per_event, value.nats_us_per_event, value.postgres_us_per_event)
        known = [part for part in parts if part is not None]
        lines.append(
            f"  {label:30}{micros(parts[0]):>10}{micros(parts[1]):>9}{micros(parts[2]):>10}"
            f"{micros(sum(known) if known else None):>10}"
            f"{percent(value.machine_busy_share):>14}"
        )
    return lines


def micros(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(result: BenchResult) -> str:
    settings = result.settings
    machine = result.machine
    ceiling = result.recvlogical.events_per_second
    plain = result.plain.events_per_second
    lines = [
        f"cdc-bridge benchmark {result.timestamp}: {settings['events']} events in "
        f"transactions of {settings['tx_size']}, WAL drains median of "
        f"{len(result.bridge_rounds)}; {machine['nproc']} CPUs "
        f"({machine['cpu_model']}), git {machine['git_revision']}"
        + ("  [PROFILED: figures skewed]" if settings.get("profiled") else ""),
        "",
        f"{'Backlog drain':32}{'events/s':>10}{'seconds':>9}{'steady/s':>10}"
        f"{'vs plain':>10}{'vs ceiling':>12}{'per CPU-s':>11}{'CPU wait':>10}"
        f"{'start-up s':>12}",
    ]
    rows = [
        ("pg_recvlogical (ceiling)", result.recvlogical),
        ("plain publish_async relay", result.plain),
        ("cdc-bridge", result.bridge),
        ("polling relay (SKIP LOCKED)", result.polling),
    ]
    for label, value in rows:
        rate = value.events_per_second
        lines.append(
            f"  {label:30}{rate:>10,.0f}{value.seconds:>9.2f}"
            f"{_count(value.drain_events_per_second):>10}"
            f"{_ratio(rate, plain):>10}{_ratio(rate, ceiling):>12}"
            f"{_count(value.events_per_cpu_second):>11}"
            f"{percent(value.cpu_wait_share):>10}"
            f"{_seconds(value.startup_seconds):>12}"
        )
    lines.append(_rounds_line(result))
    lines += _servers_lines(rows)
    lines += [
        "",
        f"{'Latency, COMMIT -> subscriber':32}{'p50 ms':>10}{'p99 ms':>9}{'max ms':>10}"
        f"{'received':>16}",
    ]
    for label, latency in (
        ("cdc-bridge", result.bridge_latency),
        ("polling relay (poll 100 ms)", result.polling_latency),
    ):
        lines.append(
            f"  {label:30}{latency.p50_ms:>10.2f}{latency.p99_ms:>9.2f}{latency.max_ms:>10.2f}"
            f"{f'{latency.received}/{latency.events}':>16}"
        )
    lines.append(
        f"  (producer: one event per transaction at {result.bridge_latency.rate:,.0f} and "
        f"{result.polling_latency.rate:,.0f} events/s achieved)"
    )
    lines += [
        "",
        f"Bridge peak RSS (VmHWM) after the drain, highest of its rounds: "
        f"{result.bridge_peak_rss_kib / 1024:.1f} MiB",
        "",
        f"{'Database load of the drain':32}{'updated':>10}{'HOT':>9}{'dead tup':>10}"
        f"{'WAL':>12}{'growth':>12}",
    ]
    for label, load in (("cdc-bridge", result.bridge_load), ("polling relay", result.polling_load)):
        lines.append(
            f"  {label:30}{load.rows_updated:>10,}{load.hot_updates:>9,}{load.dead_tuples:>10,}"
            f"{_mib(load.wal_bytes):>12}{_mib(load.table_growth_bytes):>12}"
        )
    if result.profile:
        lines += ["", "Bridge profile during the drain (py-spy, top functions by own samples):"]
        lines += [
            f"  {cost.self_pct:5.1f}% self {cost.total_pct:5.1f}% total  {cost.function}"
            for cost in result.profile
        ]
    lines += _modes_lines(result)
    if result.formats is not None:
        lines += formats_lines(result.formats)
    lines += [
        "",
        f"ratios of the median rounds: bridge/plain {result.bridge_vs_plain:.2f}x, "
        f"bridge/ceiling {result.bridge_vs_ceiling:.2f}x; median of the per-round ratios: "
        f"bridge/plain {result.median_round_ratios.bridge_vs_plain:.2f}x, "
        f"bridge/ceiling {result.median_round_ratios.bridge_vs_ceiling:.2f}x; "
        f"total run {result.total_seconds:.0f} s",
    ]
    return "\n".join(lines)


_VARIANT_LABELS = {
    PER_MESSAGE: "per-message",
    ATOMIC: "atomic",
    PER_MESSAGE_WRITER: "per-message + writer",
    ATOMIC_WRITER: "atomic + writer",
    FAST: "fast ingest",
    FAST_WRITER: "fast ingest + writer",
}


def _modes_lines(result: BenchResult) -> list[str]:
    """The atomic/per-message drains: a row per variant and transaction size, then ratios."""
    if not result.modes:
        return []
    settings = result.modes_settings
    lines = [
        "",
        f"Atomic vs per-message drains ({settings.get('events', '?')} events per backlog, "
        f"median of {settings.get('rounds', '?')}; other writer "
        f"{settings.get('writer_rate', '?')} msgs/s on {settings.get('writer_subjects', '?')})",
        f"{'  tx size, mode':32}{'events/s':>10}{'seconds':>9}{'steady/s':>10}"
        f"{'per CPU-s':>11}{'CPU wait':>10}{'start-up s':>12}",
    ]
    for group in result.modes:
        for variant in group.rounds:
            value = group.median(variant)
            label = f"{group.tx_size:>6,}  {_VARIANT_LABELS[variant]}"
            lines.append(
                f"  {label:30}{value.events_per_second:>10,.0f}{value.seconds:>9.2f}"
                f"{_count(value.drain_events_per_second):>10}"
                f"{_count(value.events_per_cpu_second):>11}"
                f"{percent(value.cpu_wait_share):>10}"
                f"{_seconds(value.startup_seconds):>12}"
            )
    lines.append(
        "  ratios (events/s of the median rounds; median of the per-round ratios; steady/s):"
    )
    for group in result.modes:
        for label, variant, base in group.pairs():
            steady = group.steady_ratio(variant, base)
            per_round = " / ".join(f"{r:.2f}x" for r in group.round_ratios(variant, base))
            lines.append(
                f"  {group.tx_size:>6,}  {label:34}{group.ratio(variant, base):>6.2f}x"
                f"{group.median_round_ratio(variant, base):>8.2f}x"
                f"{'-' if steady is None else f'{steady:.2f}x':>8}   rounds {per_round}"
            )
        for variant, writer_rates in group.writer_rates.items():
            rates = " / ".join(f"{rate:,.0f}" for rate in writer_rates)
            lines.append(
                f"  {group.tx_size:>6,}  other writer achieved msgs/s, "
                f"{_VARIANT_LABELS[variant]}: {rates}"
            )
    return lines


_FORMAT_LABELS = {
    FORMAT_DEFAULT: "default config",
    FORMAT_CLOUDEVENTS: "outbox.format: cloudevents",
    FORMAT_DEBEZIUM: "payload: debezium",
    FORMAT_PAYLOAD_PATHS: "payload paths",
}


def formats_lines(group: FormatGroup) -> list[str]:
    """The format drains: a row per variant, then its ratios to the default config."""
    rounds = len(group.rounds[FORMAT_DEFAULT])
    lines = [
        "",
        f"Formats and payload paths ({group.events} events in transactions of "
        f"{group.tx_size}, median of {rounds}; every variant "
        f"{'atomic' if group.atomic else 'per-message'}, as the default config runs here)",
        f"{'  config':32}{'events/s':>10}{'seconds':>9}{'steady/s':>10}"
        f"{'per CPU-s':>11}{'steady/CPU-s':>14}{'CPU wait':>10}{'start-up s':>12}",
    ]
    for variant in group.rounds:
        value = group.median(variant)
        lines.append(
            f"  {_FORMAT_LABELS[variant]:30}{value.events_per_second:>10,.0f}"
            f"{value.seconds:>9.2f}{_count(value.drain_events_per_second):>10}"
            f"{_count(value.events_per_cpu_second):>11}"
            f"{_count(group.median_steady_cpu(variant)):>14}"
            f"{percent(value.cpu_wait_share):>10}"
            f"{_seconds(value.startup_seconds):>12}"
        )
    lines.append(
        "  /default, medians of the per-round ratios of events/s, per CPU-s and steady/CPU-s "
        "(then events/s of the median rounds):"
    )
    for variant in group.rounds:
        if variant == FORMAT_DEFAULT:
            continue
        cpu = group.median_cpu_ratio(variant)
        steady = group.median_steady_cpu_ratio(variant)
        lines.append(
            f"  {_FORMAT_LABELS[variant]:30}{group.median_round_ratio(variant):>6.2f}x"
            f"{'-' if cpu is None else f'{cpu:.2f}x':>8}"
            f"{'-' if steady is None else f'{steady:.2f}x':>8}"
            f"{group.ratio(variant):>8.2f}x"
        )
        lines.append(
            "      rounds: events/s "
            + " / ".join(f"{r:.2f}x" for r in group.round_ratios(variant))
            + "; per CPU-s "
            + " / ".join(f"{r:.2f}x" for r in group.cpu_round_ratios(variant))
            + "; steady/CPU-s "
            + " / ".join(f"{r:.2f}x" for r in group.steady_cpu_round_ratios(variant))
        )
    return lines
