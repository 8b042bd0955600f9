"""One run's figures: the table printed at the end and the JSON saved under bench/results/."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import CpuUse
from bench.dbload import DatabaseLoad
from bench.latency import LatencyResult
from bench.profiling import FunctionCost


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
    def drain_events_per_second(self) -> float | None:
        if self.drain_seconds is None or self.drain_seconds <= 0:
            return None
        return self.events / self.drain_seconds


@dataclass(frozen=True, slots=True)
class BenchResult:
    timestamp: str  # UTC, ISO 8601
    settings: dict[str, Any]
    machine: dict[str, Any]
    recvlogical: Throughput
    plain: Throughput
    bridge: Throughput
    polling: Throughput
    bridge_latency: LatencyResult
    polling_latency: LatencyResult
    bridge_peak_rss_kib: int
    bridge_load: DatabaseLoad
    polling_load: DatabaseLoad
    total_seconds: float
    profile: tuple[FunctionCost, ...] = ()

    @property
    def bridge_vs_plain(self) -> float:
        return self.bridge.events_per_second / self.plain.events_per_second

    @property
    def bridge_vs_ceiling(self) -> float:
        return self.bridge.events_per_second / self.recvlogical.events_per_second


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
    }


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
        "ratios": {
            "bridge_vs_plain": round(result.bridge_vs_plain, 3),
            "bridge_vs_ceiling": round(result.bridge_vs_ceiling, 3),
        },
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
        "total_seconds": round(result.total_seconds, 1),
    }


def save_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")


def _mib(nbytes: int) -> str:
    return f"{nbytes / 1048576:.1f} MiB" if abs(nbytes) >= 1048576 else f"{nbytes} B"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


def render_table(result: BenchResult) -> str:
    settings = result.settings
    machine = result.machine
    ceiling = result.recvlogical.events_per_second
    plain = result.plain.events_per_second
    lines = [
        f"cdc-bridge benchmark {result.timestamp}: {settings['events']} events in "
        f"transactions of {settings['tx_size']}; {machine['nproc']} CPUs "
        f"({machine['cpu_model']}), git {machine['git_revision']}"
        + ("  [PROFILED: figures skewed]" if settings.get("profiled") else ""),
        "",
        f"{'Backlog drain':32}{'events/s':>10}{'seconds':>9}{'steady/s':>10}"
        f"{'vs plain':>10}{'vs ceiling':>12}{'per CPU-s':>11}{'CPU wait':>10}",
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
            f"{_percent(value.cpu_wait_share):>10}"
        )
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
        f"Bridge peak RSS (VmHWM) after the drain: {result.bridge_peak_rss_kib / 1024:.1f} MiB",
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
    lines += [
        "",
        f"ratios: bridge/plain {result.bridge_vs_plain:.2f}x, "
        f"bridge/ceiling {result.bridge_vs_ceiling:.2f}x; "
        f"total run {result.total_seconds:.0f} s",
    ]
    return "\n".join(lines)
