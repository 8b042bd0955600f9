"""The bench's servers-and-machine figures (bench/serverload.py): the pure arithmetic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.serverload import (
    MachineTicks,
    ServerSnapshot,
    busy_share,
    parse_proc_stat,
    per_event_us,
    reaped_children_ticks,
    server_load,
    snapshot,
)

PROC_STAT = """\
cpu  176275 0 47931 127464 1498 0 2910 153 7 0
cpu0 76957 0 22560 76798 437 0 1234 70 0 0
cpu1 99317 0 25370 50665 1060 0 1675 83 0 0
intr 123 4 5
"""


def test_proc_stat_counts_iowait_as_idle_and_leaves_guest_out() -> None:
    ticks = parse_proc_stat(PROC_STAT)
    assert ticks == MachineTicks(
        idle=127464 + 1498, total=176275 + 47931 + 127464 + 1498 + 2910 + 153
    )


def test_proc_stat_without_a_cpu_line() -> None:
    assert parse_proc_stat("intr 1 2\n") is None


def test_busy_share_is_one_minus_the_idle_share() -> None:
    before = MachineTicks(idle=1000, total=4000)
    assert busy_share(before, MachineTicks(idle=1050, total=4200)) == pytest.approx(0.75)
    assert busy_share(before, MachineTicks(idle=1200, total=4200)) == pytest.approx(0.0)


def test_busy_share_unknown_without_both_readings_or_ticks() -> None:
    ticks = MachineTicks(idle=1, total=2)
    assert busy_share(None, ticks) is None
    assert busy_share(ticks, None) is None
    assert busy_share(ticks, ticks) is None


def test_reaped_children_ticks_are_cutime_plus_cstime() -> None:
    # A command name with spaces and a parenthesis, as a process may choose
    stat = "4242 (post (gres) x) S 1 4242 4242 0 -1 4194560 900 5000 0 3 11 7 130 45 20 0 1 0"
    assert reaped_children_ticks(stat) == 130 + 45


def test_reaped_children_ticks_of_this_process() -> None:
    assert reaped_children_ticks(Path("/proc/self/stat").read_text()) >= 0


def test_per_event_us() -> None:
    assert per_event_us(0.5, 50_000) == pytest.approx(10.0)
    assert per_event_us(None, 10) is None
    assert per_event_us(1.0, 0) is None


def test_server_load_subtracts_the_snapshots() -> None:
    before = ServerSnapshot(
        nats=2.0, postgres=1.0, ticks=MachineTicks(idle=100, total=200), at=10.0
    )
    after = ServerSnapshot(nats=2.5, postgres=1.5, ticks=MachineTicks(idle=120, total=400), at=12.5)
    load = server_load(before, after)
    assert load.nats_cpu_seconds == pytest.approx(0.5)
    assert load.postgres_cpu_seconds == pytest.approx(0.5)
    assert load.machine_busy_share == pytest.approx(0.9)
    assert load.seconds == pytest.approx(2.5)


def test_server_load_unknown_where_a_snapshot_did_not_say() -> None:
    before = ServerSnapshot(nats=None, postgres=None, ticks=None, at=0.0)
    after = ServerSnapshot(nats=1.0, postgres=1.0, ticks=None, at=1.0)
    load = server_load(before, after)
    assert load.nats_cpu_seconds is None
    assert load.postgres_cpu_seconds is None
    assert load.machine_busy_share is None


def test_snapshot_of_this_process_as_its_own_postmaster() -> None:
    taken = snapshot(os.getpid(), os.getpid())
    assert taken.nats is not None and taken.nats > 0
    assert taken.postgres is not None and taken.postgres > 0
    assert taken.ticks is not None and taken.ticks.total > 0


def test_snapshot_of_no_servers() -> None:
    taken = snapshot(None, None)
    assert taken.nats is None and taken.postgres is None
