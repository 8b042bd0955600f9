"""What the servers and the machine did while a relay drained its backlog.

On 2 cores, PostgreSQL (the walsender decoding the slot), nats-server (storing every
message) and the relay share the CPUs: a relay's events/s is bounded by all three, and
by whatever else runs on the machine. So each drain also takes, over the same window
(spawn of the relay to its last event stored), the CPU of nats-server, the CPU of
PostgreSQL (the postmaster and its children, the walsender among them) and the
machine's busy share from /proc/stat.

PostgreSQL's CPU is that of the postmaster and its live children (their schedstat) plus
what its children that ended have used (the postmaster's cutime + cstime, added when it
reaps them): a relay may exit, and its walsender with it, before the bench sees its last
event stored, and the walsender's work must still count.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import cpu_use


@dataclass(frozen=True, slots=True)
class MachineTicks:
    """Clock ticks of all CPUs since boot (/proc/stat's ``cpu`` line)."""

    idle: int  # idle + iowait: nothing runnable
    total: int  # every field but guest and guest_nice (already in user and nice)


def parse_proc_stat(text: str) -> MachineTicks | None:
    """The aggregate ``cpu`` line of /proc/stat; None if there is none."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:9]]  # user .. steal
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            return MachineTicks(idle=idle, total=sum(ticks))
    return None


def busy_share(before: MachineTicks | None, after: MachineTicks | None) -> float | None:
    """1 - idle / total between two readings: 1.0 means every CPU was busy throughout."""
    if before is None or after is None:
        return None
    total = after.total - before.total
    if total <= 0:
        return None
    return 1.0 - (after.idle - before.idle) / total


def reaped_children_ticks(stat: str) -> int:
    """cutime + cstime of /proc/<pid>/stat: clock ticks its children that ended (and were
    waited for) used, in user and system mode."""
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
    return int(fields[13]) + int(fields[14])  # fields 16 and 17


def per_event_us(seconds: float | None, events: int) -> float | None:
    """CPU seconds spread over ``events``, in microseconds per event."""
    if seconds is None or events <= 0:
        return None
    return seconds * 1e6 / events


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """What the servers and the machine did during one drain."""

    nats_cpu_seconds: float | None  # nats-server's on-CPU seconds
    postgres_cpu_seconds: float | None  # the postmaster and its children, summed
    machine_busy_share: float | None  # of all CPUs, 1 - idle share (/proc/stat)
    seconds: float  # the window they were measured over (wall clock)


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    nats: float | None  # nats-server's on-CPU seconds so far
    postgres: float | None  # on-CPU seconds so far, children that ended included
    ticks: MachineTicks | None
    at: float  # time.monotonic()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue  # a thread that ended while we looked
    return found


def _postgres_cpu(postmaster: int) -> float | None:
    """On-CPU seconds of the postmaster, its live children and those that ended; None
    where /proc says nothing (no such process, or a kernel without task/*/children)."""
    try:
        reaped = reaped_children_ticks(Path(f"/proc/{postmaster}/stat").read_text())
        pids = [postmaster, *_children(postmaster)]
    except OSError:
        return None
    total = reaped / os.sysconf("SC_CLK_TCK")
    for pid in pids:
        use = cpu_use(pid)
        if use is not None:  # None: it ended while we looked (then it is in cutime soon)
            total += use.on_cpu_seconds
    return total


def _machine_ticks() -> MachineTicks | None:
    try:
        return parse_proc_stat(Path("/proc/stat").read_text())
    except OSError:
        return None


def snapshot(nats_pid: int | None, postmaster_pid: int | None) -> ServerSnapshot:
    """The servers' CPU so far and the machine's ticks, now (None where not known)."""
    nats_use = None if nats_pid is None else cpu_use(nats_pid)
    return ServerSnapshot(
        nats=None if nats_use is None else nats_use.on_cpu_seconds,
        postgres=None if postmaster_pid is None else _postgres_cpu(postmaster_pid),
        ticks=_machine_ticks(),
        at=time.monotonic(),
    )


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def server_load(before: ServerSnapshot, after: ServerSnapshot) -> ServerLoad:
    return ServerLoad(
        nats_cpu_seconds=_spent(before.nats, after.nats),
        postgres_cpu_seconds=_spent(before.postgres, after.postgres),
        machine_busy_share=busy_share(before.ticks, after.ticks),
        seconds=after.at - before.at,
    )
