"""`python -m bench --quick` runs end to end and writes a complete result.

A smoke test only: it checks that every stage ran and every event arrived, never how
fast (figures from a shared test machine mean nothing). Two rounds rather than quick's
one, so that a second round (its own slots, fresh streams, a fresh bridge) is tried
too. The atomic/per-message drains run at a tiny size (every transaction size, the
other writer included), which adds about 40 s; so do the format drains (default,
CloudEvents, Debezium, payload paths: about 20 s). Each format drain already failed the
run unless its stored messages were of its format and on its routes' subjects.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_EVENTS = 10_000
ROUNDS = 2
MODE_EVENTS = 300
MODE_TX_SIZES = (1, 10, 100, 1000)
WRITER_TX_SIZE = 10
FORMAT_EVENTS = 300
FORMAT_VARIANTS = ("default", "cloudevents", "debezium", "payload_paths")


def run_module(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository root; fails the test on a non-zero exit."""
    run = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_quick_bench_runs_every_stage(tmp_path: Path) -> None:
    result_path = tmp_path / "bench.json"
    run = run_module(
        "bench",
        "--quick",
        "--rounds",
        str(ROUNDS),
        "--json",
        str(result_path),
        "--mode-events",
        str(MODE_EVENTS),
        "--mode-tx-sizes",
        ",".join(map(str, MODE_TX_SIZES)),
        "--writer-tx-size",
        str(WRITER_TX_SIZE),
        "--format-events",
        str(FORMAT_EVENTS),
        timeout=480,
    )
    assert "Backlog drain" in run.stdout
    assert "Atomic vs per-message drains" in run.stdout
    assert "Formats and payload paths" in run.stdout

    result = json.loads(result_path.read_text())
    for stage in ("pg_recvlogical", "plain_relay", "bridge", "polling_relay"):
        assert result["throughput"][stage]["events"] == QUICK_EVENTS
        assert result["throughput"][stage]["events_per_second"] > 0
    for stage in ("plain_relay", "bridge", "polling_relay"):  # spawn -> first event stored
        assert result["throughput"][stage]["startup_seconds"] > 0
    assert result["throughput"]["pg_recvlogical"]["startup_seconds"] is None
    assert "start-up s" in run.stdout
    assert result["settings"]["rounds"] == ROUNDS
    rounds = result["rounds"]
    for stage in ("pg_recvlogical", "plain_relay", "bridge"):
        assert [run["events"] for run in rounds[stage]] == [QUICK_EVENTS] * ROUNDS
        # The figure reported is one of the rounds: the median one
        assert result["throughput"][stage] == rounds[stage][rounds["median_round"][stage] - 1]
    assert len(rounds["ratios"]) == ROUNDS
    for relay in ("bridge", "polling_relay"):
        latency = result["latency_ms"][relay]
        assert latency["events"] > 0
        assert latency["received"] == latency["events"]  # nothing lost on the way
    assert result["database_load"]["bridge"]["rows_updated"] == 0
    assert result["database_load"]["polling_relay"]["rows_updated"] == QUICK_EVENTS
    assert result["bridge_peak_rss_mib"] > 0
    assert result["machine"]["nproc"] >= 1

    # Atomic and per-message mode, per transaction size; with the other writer for one.
    # (Each drain already failed the run unless the bridge's `streaming` line said the
    # mode it was meant to run in.)
    groups = result["modes"]["groups"]
    assert [group["tx_size"] for group in groups] == list(MODE_TX_SIZES)
    for group in groups:
        variants = {"per_message", "atomic", "fast"}
        if group["tx_size"] == WRITER_TX_SIZE:
            writers = {"per_message_with_writer", "atomic_with_writer", "fast_with_writer"}
            variants |= writers
            assert set(group["writer_rates"]) == writers
            for rates in group["writer_rates"].values():
                assert len(rates) == ROUNDS
                assert all(rate > 0 for rate in rates)
            assert set(group["ratios"]) == {
                "atomic_vs_per_message",
                "fast_vs_per_message",
                "fast_with_writer_vs_fast",
                "atomic_with_writer_vs_per_message_with_writer",
                "per_message_with_writer_vs_per_message",
                "atomic_with_writer_vs_atomic",
            }
        else:
            assert set(group["ratios"]) == {"atomic_vs_per_message", "fast_vs_per_message"}
            assert group["writer_rates"] == {}
        assert set(group["rounds"]) == variants
        for variant in variants:
            assert [run["events"] for run in group["rounds"][variant]] == [MODE_EVENTS] * ROUNDS
            assert group["throughput"][variant]["events_per_second"] > 0
        for ratio in group["ratios"].values():
            assert len(ratio["rounds"]) == ROUNDS

    check_formats(result["formats"], FORMAT_EVENTS, ROUNDS)


def check_formats(formats: dict[str, Any], events: int, rounds: int) -> None:
    """Every format variant drained every event in every round, compared with the default."""
    assert set(formats["throughput"]) == set(FORMAT_VARIANTS)
    for variant in FORMAT_VARIANTS:
        assert [run["events"] for run in formats["rounds"][variant]] == [events] * rounds
        assert formats["throughput"][variant]["events_per_second"] > 0
        assert len(formats["steady_events_per_cpu_second_rounds"][variant]) == rounds
    assert set(formats["ratios_to_default"]) == set(FORMAT_VARIANTS[1:])
    for ratio in formats["ratios_to_default"].values():
        assert len(ratio["rounds"]) == rounds


def test_format_drains_run_alone(tmp_path: Path) -> None:
    result_path = tmp_path / "formats.json"
    run = run_module(
        "bench",
        "--only-formats",
        "--quick",
        "--format-events",
        "200",
        "--json",
        str(result_path),
        timeout=180,
    )
    assert "Formats and payload paths" in run.stdout
    assert "Backlog drain" not in run.stdout
    result = json.loads(result_path.read_text())
    assert result["settings"]["only_formats"] is True
    check_formats(result["formats"], 200, 1)


def test_ab_harness_drains_every_tree_in_every_round() -> None:
    # The same checkout twice: it only has to run, drain everything and report medians.
    run = run_module("bench.ab", ".", ".", "--rounds", "1", "--events", "2000", timeout=180)
    assert run.stdout.count("round 1 ") == 2
    assert run.stdout.count("median ") == 1  # one tree, given twice
    assert run.stdout.count("start-up ") == 3  # every drain and the median
