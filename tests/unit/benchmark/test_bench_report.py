"""The servers-and-machine figures of a drain in the bench's report and JSON."""

from __future__ import annotations

import pytest

from bench.cpu import CpuUse
from bench.report import Throughput, _servers_lines, _throughput_json
from bench.serverload import ServerLoad

LOAD = ServerLoad(
    nats_cpu_seconds=0.5, postgres_cpu_seconds=0.25, machine_busy_share=0.97, seconds=2.0
)


def test_per_event_figures() -> None:
    drained = Throughput(50_000, 2.0, 1.5, CpuUse(1.0, 0.2), LOAD)
    assert drained.relay_us_per_event == pytest.approx(20.0)
    assert drained.nats_us_per_event == pytest.approx(10.0)
    assert drained.postgres_us_per_event == pytest.approx(5.0)
    assert drained.machine_busy_share == pytest.approx(0.97)


def test_unmeasured_figures_are_none() -> None:
    drained = Throughput(50_000, 2.0)
    assert drained.relay_us_per_event is None
    assert drained.nats_us_per_event is None
    assert drained.postgres_us_per_event is None
    assert drained.machine_busy_share is None


def test_json_keeps_the_old_keys_and_adds_the_new() -> None:
    without = _throughput_json(Throughput(50_000, 2.0, 1.5, CpuUse(1.0, 0.2)))
    found = _throughput_json(Throughput(50_000, 2.0, 1.5, CpuUse(1.0, 0.2), LOAD))
    new = {"servers", "nats_us_per_event", "postgres_us_per_event", "machine_busy_share"}
    assert set(found) == set(without)
    assert {key: found[key] for key in found if key not in new} == {
        key: value for key, value in without.items() if key not in new
    }
    assert found["events_per_cpu_second"] == 50_000.0
    assert found["nats_us_per_event"] == 10.0
    assert found["postgres_us_per_event"] == 5.0
    assert found["machine_busy_share"] == 0.97
    assert found["servers"]["nats_cpu_seconds"] == 0.5
    assert without["nats_us_per_event"] is None


def test_servers_lines_one_per_measured_stage() -> None:
    lines = _servers_lines(
        [
            ("pg_recvlogical (ceiling)", Throughput(50_000, 1.0, servers=LOAD)),
            ("plain publish_async relay", Throughput(50_000, 2.0, 1.5, CpuUse(1.0, 0.2), LOAD)),
            ("unmeasured", Throughput(50_000, 2.0)),
        ]
    )
    assert lines[0] == ""
    assert lines[1].startswith("CPU during the drain")
    assert len(lines) == 4
    assert lines[2].split()[-5:] == ["-", "10.0", "5.0", "15.0", "97%"]
    assert lines[3].split()[-5:] == ["20.0", "10.0", "5.0", "35.0", "97%"]
    assert all(len(line) <= 110 for line in lines)


def test_servers_lines_none_measured() -> None:
    assert _servers_lines([("x", Throughput(1, 1.0))]) == []
